"""``nnUNetv2_mona_evaluate``: per-volume, per-class Dice / HD95 / ASD of a prediction folder, two protocols.

**MONA protocol** (method_spec A.4; the numbers the MONA / ARCO / ACTION papers report): each foreground class
of each whole 3D volume as a binary mask, medpy's metrics on the voxel grid *without* spacing (HD95 and ASD in
voxels; ASD is medpy's one-directional ``asd(pred, gt)``), and two special cases:

* prediction non-empty, reference empty -> (Dice, HD95, ASD) = (1, 0, 0)
* prediction empty (whatever the reference) -> (0, 0, 0)

Per class, the mean over volumes; the summary value is the mean of these class means.

**Spacing-aware protocol** (mm): the same metrics with the voxel spacing of the reference image (SimpleITK), but
without invented values: Dice is undefined (left out) when a class is absent from both masks and 0 when it is
absent from exactly one; HD95 / ASD are undefined (left out, counted in ``undefined``) when either mask is empty.
Averaging order as above: class-wise over the volumes where defined, then over the classes.

Note: a missed structure scores HD95 = ASD = 0 under the MONA protocol; read its distances together with Dice.
"""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mona.benchmark.surface_metrics import asd, dice, hd95
from nnunet_mona.cli.arguments import command_parser, run_command

METRICS = ("dice", "hd95", "asd")
PROTOCOLS = {
    "mona": "MONA protocol (method_spec A.4): medpy-style metrics on the voxel grid without spacing (HD95/ASD in "
            "voxels, ASD = mean distance prediction surface -> reference surface); prediction non-empty & "
            "reference empty -> (Dice, HD95, ASD) = (1, 0, 0); prediction empty -> (0, 0, 0); class-wise mean over "
            "volumes, then mean over classes.",
    "mm": "Spacing-aware: same metrics with the reference image's spacing (HD95/ASD in mm); Dice undefined when "
          "the class is absent from both masks, HD95/ASD undefined when either mask is empty; undefined values "
          "are left out (and counted); class-wise mean over volumes, then mean over classes.",
}


class EvaluationError(ValueError):
    """A problem with the input folders; the message says what is wrong."""


def _nan_to_none(value: float) -> Optional[float]:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def class_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """Both protocols for one binary class mask pair. ``spacing`` in array-axis order.
    Returns ``{'mona': {dice, hd95, asd}, 'mm': {dice, hd95, asd}, 'pred_voxels', 'gt_voxels'}`` (NaN = undefined)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    d = dice(pred, gt)
    if has_pred and has_gt:
        mona = {"dice": d, "hd95": hd95(pred, gt), "asd": asd(pred, gt)}
        mm = {"dice": d, "hd95": hd95(pred, gt, spacing), "asd": asd(pred, gt, spacing)}
    else:
        mona = {"dice": 1.0, "hd95": 0.0, "asd": 0.0} if has_pred else {"dice": 0.0, "hd95": 0.0, "asd": 0.0}
        mm = {"dice": d, "hd95": float("nan"), "asd": float("nan")}  # d: 0, or NaN if both are empty
    return {"mona": mona, "mm": mm, "pred_voxels": int(pred.sum()), "gt_voxels": int(gt.sum())}


def volume_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], labels: Sequence[int]) -> Dict[int, dict]:
    """:func:`class_metrics` for every label of one volume (integer label maps of equal shape)."""
    if pred.shape != gt.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from reference shape {gt.shape}")
    return {int(l): class_metrics(pred == l, gt == l, spacing) for l in labels}


def summarize(per_volume: Dict[str, Dict[int, dict]], labels: Sequence[int], names: Sequence[str]) -> dict:
    """Class-wise means over volumes, then the mean over classes, for both protocols."""
    summary = {}
    for protocol in ("mona", "mm"):
        per_class, undefined = {}, {}
        for label, name in zip(labels, names):
            per_class[name], undefined[name] = {}, {}
            for metric in METRICS:
                values = np.array([per_volume[c][label][protocol][metric] for c in per_volume], dtype=np.float64)
                defined = values[~np.isnan(values)]
                per_class[name][metric] = float(defined.mean()) if defined.size else None
                undefined[name][metric] = int(values.size - defined.size)
        mean = {}
        for metric in METRICS:
            class_means = [per_class[n][metric] for n in names if per_class[n][metric] is not None]
            mean[metric] = float(np.mean(class_means)) if class_means else None
        summary[protocol] = {"mean": mean, "per_class": per_class}
        if protocol == "mm":
            summary[protocol]["undefined"] = undefined
    summary["volume_ratio"] = volume_ratios(per_volume, labels, names)
    return summary


def volume_ratios(per_volume: Dict[str, Dict[int, dict]], labels: Sequence[int], names: Sequence[str]) -> dict:
    """Per class, predicted over reference voxels: summed over the volumes ('total') and the median of the volumes
    that have the class ('median'; None if none has it). Above 1 the model over-segments the class, below 1 it
    misses some of it: a bias that Dice alone does not show."""
    ratios = {}
    if not all("pred_voxels" in per_volume[c][label] for c in per_volume for label in labels):
        return ratios  # metrics from elsewhere without voxel counts
    for label, name in zip(labels, names):
        pred = [per_volume[c][label]["pred_voxels"] for c in per_volume]
        ref = [per_volume[c][label]["gt_voxels"] for c in per_volume]
        per = [p / r for p, r in zip(pred, ref) if r > 0]
        ratios[name] = {"total": sum(pred) / sum(ref) if sum(ref) else None,
                        "median": float(np.median(per)) if per else None}
    return ratios


def _read(path: str):
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def list_cases(gt_folder: str, file_ending: str) -> List[str]:
    cases = sorted(f[:-len(file_ending)] for f in os.listdir(gt_folder) if f.endswith(file_ending))
    if not cases:
        raise EvaluationError(f"No reference files ending with {file_ending!r} in {gt_folder}")
    return cases


def evaluate_folders(pred_folder: str, gt_folder: str, labels: Optional[Sequence[int]] = None,
                     names: Optional[Sequence[str]] = None, file_ending: str = ".nii.gz") -> dict:
    """Evaluate every reference file of ``gt_folder`` against the file of the same name in ``pred_folder``.

    ``labels``: foreground label values (default: all non-zero values found in the references); ``names``: their
    display names (default: the values). Returns ``{'protocols', 'labels', 'cases', 'per_volume', 'summary'}``
    with Dice in [0, 1], distances in voxels ('mona') and mm ('mm'), and None for undefined values.
    """
    for folder, what in ((pred_folder, "prediction"), (gt_folder, "reference")):
        if not os.path.isdir(folder):
            raise EvaluationError(f"The {what} folder does not exist: {folder}")
    cases = list_cases(gt_folder, file_ending)
    missing = [c for c in cases if not os.path.isfile(os.path.join(pred_folder, c + file_ending))]
    if missing:
        raise EvaluationError(f"{len(missing)} of {len(cases)} reference case(s) have no prediction in {pred_folder}: "
                              f"{missing[:10]}")
    if labels is None:
        found = set()
        for c in cases:
            found.update(np.unique(_read(os.path.join(gt_folder, c + file_ending))[0]).tolist())
        labels = sorted(int(v) for v in found if v != 0)
    labels = [int(l) for l in labels]
    names = [str(l) for l in labels] if names is None else list(names)
    if len(names) != len(labels):
        raise EvaluationError(f"{len(names)} name(s) for {len(labels)} label(s): {names} vs {labels}")
    if not labels:
        raise EvaluationError("No foreground label to evaluate")
    per_volume = {}
    for c in cases:
        gt, spacing = _read(os.path.join(gt_folder, c + file_ending))
        pred, _ = _read(os.path.join(pred_folder, c + file_ending))
        try:
            per_volume[c] = volume_metrics(pred, gt, spacing, labels)
        except EvaluationError as e:
            raise EvaluationError(f"{c}: {e}") from None
    summary = summarize(per_volume, labels, names)
    per_volume_json = {c: {name: {k: ({m: _nan_to_none(x) for m, x in v.items()} if isinstance(v, dict) else v)
                                  for k, v in per_volume[c][label].items()}
                           for label, name in zip(labels, names)} for c in cases}
    return {"protocols": PROTOCOLS, "prediction_folder": os.path.abspath(pred_folder),
            "reference_folder": os.path.abspath(gt_folder), "labels": dict(zip(names, labels)), "cases": cases,
            "per_volume": per_volume_json, "summary": summary}


def _fmt(value: Optional[float], scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def markdown_table(result: dict) -> str:
    """Rows: each class and the mean; columns: Dice [%], HD95, ASD for both protocols."""
    s = result["summary"]
    lines = ["| class | Dice [%] (MONA) | HD95 [vox] | ASD [vox] | Dice [%] (mm prot.) | HD95 [mm] | ASD [mm] | "
             "predicted / reference volume (median) |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = s.get("volume_ratio", {})
    rows = [(n, s["mona"]["per_class"][n], s["mm"]["per_class"][n], ratios.get(n, {}).get("median"))
            for n in result["labels"]]
    rows.append(("**mean**", s["mona"]["mean"], s["mm"]["mean"], None))
    for name, mona, mm, ratio in rows:
        lines.append(f"| {name} | {_fmt(mona['dice'], 100, 1)} | {_fmt(mona['hd95'])} | {_fmt(mona['asd'])} | "
                     f"{_fmt(mm['dice'], 100, 1)} | {_fmt(mm['hd95'])} | {_fmt(mm['asd'])} | "
                     f"{'' if name == '**mean**' else _fmt(ratio)} |")
    return "\n".join(lines)


def save_json(obj, path: str) -> None:
    """Write JSON atomically (a killed run never leaves a half-written file behind)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def entry_point(argv=None) -> None:
    parser = command_parser(
        "nnUNetv2_mona_evaluate",
        "Per-volume, per-class Dice / HD95 / ASD of a prediction folder against a reference folder, "
                    "under the MONA protocol (voxel grid, MONA's special cases) and spacing-aware (mm). Writes "
                    "a JSON file (per volume and summary) and prints a markdown table.")
    parser.add_argument("-p", required=True, help="folder with the predicted label maps")
    parser.add_argument("-g", required=True, help="folder with the reference label maps (same file names)")
    parser.add_argument("-o", required=True, help="output JSON file")
    parser.add_argument("--labels", type=int, nargs="+", default=None,
                        help="foreground label values to evaluate. Default: every non-zero value in the references")
    parser.add_argument("--names", nargs="+", default=None,
                        help="display names of --labels, same order (e.g. RV MYO LV). Default: the values")
    parser.add_argument("--file_ending", default=".nii.gz", help="file ending of the label maps. Default: .nii.gz")
    args = parser.parse_args(argv)

    def main() -> int:
        result = evaluate_folders(args.p, args.g, args.labels, args.names, args.file_ending)
        save_json(result, args.o)
        print(f"{len(result['cases'])} volume(s); {args.o}\n")
        print(markdown_table(result))
        return 0
    run_command(main, (EvaluationError,))


if __name__ == "__main__":  # python -m, where the console scripts are not installed (the device)
    entry_point()
