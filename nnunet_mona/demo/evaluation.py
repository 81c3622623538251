"""Dice of each trainer's test-set predictions, computed by nnU-Net's own evaluation, as a table.

Protocol (nnU-Net's ``compute_metrics_on_folder``): Dice per test case and class; a class absent from both the
reference and the prediction of a case gives NaN for that case and is left out of that class's average
(a false positive on a case without the class gives 0); ``mean`` is the average of the foreground classes.
"""
import json
import math
import os
import warnings
from typing import Dict, List, Optional

import numpy as np

TRAINER_DISPLAY_NAMES = {
    "nnUNetTrainerBudget": "nnU-Net (labeled only)",
    "nnUNetTrainerMeanTeacher": "Mean Teacher",
    "nnUNetTrainerMeanTeacher_randomStart": "Mean Teacher (no warm-up)",
    "nnUNetTrainerMeanTeacher_MSE": "Mean Teacher (MSE)",
    "nnUNetTrainerMONA": "MONA",
}


def display_name(trainer: str) -> str:
    return TRAINER_DISPLAY_NAMES.get(trainer, trainer)


def evaluate_folder(pred_folder: str, ref_folder: str, dataset_json_file: str, plans_file: str) -> dict:
    """nnU-Net's evaluation of ``pred_folder`` against ``ref_folder``, written to ``pred_folder/summary.json``.

    Same numbers as ``compute_metrics_on_folder2`` (nnUNetv2_evaluate_folder): nnU-Net's ``compute_metrics`` per
    case and the same aggregation, but in this process: its 'spawn' pool costs more than the evaluation of a few
    small cases on a small CPU. Returns nnU-Net's summary dict ('metric_per_case', 'mean', 'foreground_mean')
    with string keys, as in summary.json."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(dataset_json_file)
    file_ending = dataset_json["file_ending"]
    refs = sorted(f for f in os.listdir(ref_folder) if f.endswith(file_ending))
    missing = [f for f in refs if not os.path.isfile(os.path.join(pred_folder, f))]
    if missing:
        raise RuntimeError(f"{len(missing)} test case(s) have no prediction in {pred_folder}: {missing[:5]}")
    reader = determine_reader_writer_from_dataset_json(dataset_json, os.path.join(ref_folder, refs[0]))()
    label_manager = PlansManager(plans_file).get_label_manager(dataset_json)
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    per_case = [compute_metrics(os.path.join(ref_folder, f), os.path.join(pred_folder, f), reader, labels,
                                label_manager.ignore_label) for f in refs]
    with warnings.catch_warnings():  # nanmean of a class absent everywhere: NaN, like nnU-Net
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {r: {m: np.nanmean([c["metrics"][r][m] for c in per_case]) for m in per_case[0]["metrics"][r]}
                 for r in labels}
    foreground_mean = {m: np.mean([means[r][m] for r in labels]) for m in per_case[0]["metrics"][labels[0]]}
    for item in per_case + [means, foreground_mean]:
        recursive_fix_for_json_export(item)
    summary = {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean}
    save_summary_json(summary, os.path.join(pred_folder, "summary.json"))  # (makes a JSON-safe copy)
    with open(os.path.join(pred_folder, "summary.json"), encoding="utf-8") as f:
        return json.load(f)


def _clean(value) -> Optional[float]:
    """float in [0, 1] rounded to 4 digits, or None for NaN/missing."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def dice_row(summary: dict, class_names: Dict[int, str]) -> Dict[str, Optional[float]]:
    """{class name: Dice averaged over test cases, ..., 'mean': average over the foreground classes}."""
    row = {name: _clean(summary["mean"].get(str(label), {}).get("Dice")) for label, name in class_names.items()}
    return _with_foreground_mean(row)


def _with_foreground_mean(row: Dict[str, Optional[float]]) -> Dict[str, Optional[float]]:
    """``row`` plus 'mean': the average of its defined classes (nnU-Net's foreground_mean is NaN as soon as one
    class is NaN everywhere; we average the defined ones)."""
    present = [v for v in row.values() if v is not None]
    return {**row, "mean": round(sum(present) / len(present), 4) if present else None}


def dice_rows_by_group(summary: dict, class_names: Dict[int, str], groups: Dict[str, List[str]],
                       file_ending: str = ".nii.gz") -> Dict[str, Dict[str, Optional[float]]]:
    """``dice_row`` restricted to each group of test cases: {group: {class name: Dice, ..., 'mean': ...}}.

    ``groups``: {group name: case ids}. Same per-case numbers and NaN rule as the whole-set row."""
    by_case = {os.path.basename(c["reference_file"])[:-len(file_ending)]: c["metrics"]
               for c in summary["metric_per_case"]}
    rows = {}
    for group, cases in groups.items():
        per_class = {}
        for label, name in class_names.items():
            values = [by_case[c].get(str(label), {}).get("Dice") for c in cases if c in by_case]
            values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
            per_class[name] = round(sum(values) / len(values), 4) if values else None
        rows[group] = _with_foreground_mean(per_class)
    return rows


def markdown_group_table(rows: Dict[str, Dict[str, Dict[str, Optional[float]]]], class_names: List[str],
                         group_titles: Dict[str, str]) -> str:
    """Rows: trainers; for each group (in ``group_titles``' order) its classes and mean (Dice in %)."""
    header = ["trainer"] + [f"{title}: {c}" for title in group_titles.values() for c in list(class_names) + ["mean"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for trainer, groups in rows.items():
        cells = [f"{100 * groups[g][c]:.1f}" if groups[g].get(c) is not None else "n/a"
                 for g in group_titles for c in list(class_names) + ["mean"]]
        lines.append("| " + " | ".join([display_name(trainer)] + cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: Dict[str, Dict[str, Optional[float]]], class_names: List[str]) -> str:
    """Rows: trainers; columns: every foreground class, then the mean (Dice in %, one decimal)."""
    header = ["trainer"] + list(class_names) + ["mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for trainer, row in rows.items():
        cells = [f"{100 * row[c]:.1f}" if row.get(c) is not None else "n/a" for c in list(class_names) + ["mean"]]
        lines.append("| " + " | ".join([f"{display_name(trainer)} (`{trainer}`)"] + cells) + " |")
    return "\n".join(lines)


def write_results(work_dir: str, rows: Dict[str, Dict[str, Optional[float]]], class_names: List[str],
                  protocol: dict, by_group: Optional[dict] = None) -> Dict[str, str]:
    """Writes ``results.md`` and ``results.json`` into ``work_dir``; returns their paths.

    ``by_group`` (optional): {'titles': {group: title}, 'cases': {group: case ids}, 'dice': {trainer: {group:
    row}}, 'note': text}, a second table of the same Dice by group of test cases."""
    table = markdown_table(rows, class_names)
    md_path = os.path.join(work_dir, "results.md")
    json_path = os.path.join(work_dir, "results.json")
    lines = ["# nnunet_mona demo: Dice on the held-out test patients", "", table, "",
             "Dice in % per class (nnU-Net's evaluation: per test case, classes absent from both reference and "
             "prediction skipped), mean = average over the foreground classes.", "", "Protocol:", ""]
    if by_group:
        lines[6:6] = [markdown_group_table(by_group["dice"], class_names, by_group["titles"]), "",
                      by_group["note"], ""]
    lines += [f"- {k}: {v}" for k, v in protocol.items()]
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"classes": list(class_names), "dice": rows,
                   "display_names": {t: display_name(t) for t in rows}, "protocol": protocol,
                   **({"dice_by_group": by_group} if by_group else {})}, f, indent=2)
    return {"markdown": md_path, "json": json_path}
