"""What the ACDC converters share: label map, case naming, patient grouping, labeled-patient lists,
split files, dataset.json and the output folder logic.

A converter only has to describe its source as a :class:`CaseSource` (training cases, evaluation
cases, a function that reads one case as SimpleITK images) and call :func:`write_datasets`.

Layout written (``nnUNet_raw/DatasetXXX_Name``)::

    imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz    training cases (all, or the labeled ones)
    imagesUnlabeled/<case>_0000.nii.gz                      only with unlabeled_mode 'images'
    imagesTs/<case>_0000.nii.gz, labelsTs/<case>.nii.gz    evaluation cases (never in training)
    dataset.json
    splits_final_<N>labeled.json                            one per labeled count N
    splits_final.json                                       only when a default split is requested

Split files are nnU-Net split files with a single fold: ``[{"train": [...], "val": [...],
"unlabeled": [...]}]``; ``train`` = all cases (frames) of the N labeled patients, ``val`` = the same
cases (scarce-label setting: there is no labeled case to spare; the real evaluation is imagesTs),
``unlabeled`` = all other training cases (unlabeled mode 'split'), or ``[]`` (mode 'images': the
unlabeled images are in imagesUnlabeled/ and reach the trainers through
``nnUNetv2_mona_preprocess_unlabeled``; 'unlabeled' must only name imagesTr cases). To use one, copy it to
``nnUNet_preprocessed/DatasetXXX_Name/splits_final.json`` (nnU-Net also copies a
``splits_final.json`` found in the raw folder there at planning time, if none exists yet).
"""
import json
import os
import re
import shutil
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
# 'MRI' (anything but 'CT') makes nnU-Net z-score each image on its own
CHANNEL_NAMES = {"0": "MRI"}
FILE_ENDING = ".nii.gz"
PATIENT_REGEX = r"^(patient\d+)_frame\d+$"
_PATIENT_RE = re.compile(PATIENT_REGEX)

# Labeled subsets of MONA / ACTION / SSL4MIS (first N patients of SSL4MIS' train.list order)
LABELED_PATIENT_LISTS: Dict[int, Tuple[str, ...]] = {
    1: ("patient099",),
    3: ("patient099", "patient038", "patient050"),
    7: ("patient099", "patient038", "patient050", "patient100", "patient058", "patient021", "patient049"),
}
DEFAULT_LABELED_COUNTS = (1, 3, 7)
DEFAULT_SPLIT_IF_FLAG_ONLY = 3

# Patient order of SSL4MIS' ACDC train.list (70 patients); "N labeled" = the first N of these.
SSL4MIS_TRAIN_PATIENT_ORDER = tuple(f"patient{i:03d}" for i in (
    99, 38, 50, 100, 58, 21, 49, 20, 72, 40, 60, 89, 4, 56, 98, 96, 31, 18, 94, 47, 48, 55, 97, 74, 43,
    41, 63, 37, 95, 54, 26, 88, 32, 69, 6, 71, 12, 73, 61, 17, 25, 10, 57, 29, 51, 5, 36, 46, 62, 34,
    76, 92, 70, 77, 67, 3, 91, 16, 14, 44, 42, 90, 53, 27, 35, 86, 23, 9, 79, 15))
# The 10 patients of SSL4MIS' ACDC val.list
SSL4MIS_VAL_PATIENTS = tuple(f"patient{i:03d}" for i in (28, 85, 82, 87, 19, 30, 78, 45, 2, 39))


class ConversionError(RuntimeError):
    """The input is not in the expected format, or the output cannot be written as asked."""


# ----------------------------------------------------------------------------- naming
def patient_id(patient) -> str:
    """``38``, ``'38'``, ``'038'`` or ``'patient038'`` -> ``'patient038'``."""
    s = str(patient).strip()
    m = re.fullmatch(r"(?:patient)?(\d+)", s)
    if m is None:
        raise ConversionError(f"not a patient id: {patient!r} (expected a number or 'patientXXX')")
    return f"patient{int(m.group(1)):03d}"


def case_name(patient, frame: int) -> str:
    """``case_name(38, 1) == 'patient038_frame01'``"""
    return f"{patient_id(patient)}_frame{int(frame):02d}"


def patient_of(case: str) -> str:
    """``'patient038_frame01' -> 'patient038'`` (regex :data:`PATIENT_REGEX`)."""
    m = _PATIENT_RE.match(case)
    if m is None:
        raise ConversionError(f"case name {case!r} does not match {PATIENT_REGEX}")
    return m.group(1)


def group_by_patient(cases: Sequence[str]) -> "OrderedDict[str, List[str]]":
    """Cases grouped by patient, patients in order of first appearance."""
    groups: "OrderedDict[str, List[str]]" = OrderedDict()
    for c in cases:
        groups.setdefault(patient_of(c), []).append(c)
    return groups


# ----------------------------------------------------------------------------- splits
def labeled_patients_for(n: int, available_patients: Sequence[str],
                         patient_order: Sequence[str] = SSL4MIS_TRAIN_PATIENT_ORDER) -> List[str]:
    """The N labeled patients: the published list for N in 1/3/7, else the first N of ``patient_order``
    (restricted to ``available_patients``, then the remaining available patients in sorted order)."""
    available = set(available_patients)
    if n < 1:
        raise ConversionError(f"number of labeled patients must be >= 1, got {n}")
    if n in LABELED_PATIENT_LISTS:
        chosen = list(LABELED_PATIENT_LISTS[n])
    else:
        order = [p for p in patient_order if p in available]
        order += sorted(available - set(order))
        if n > len(order):
            raise ConversionError(f"{n} labeled patients asked for, but only {len(order)} training patients exist")
        chosen = order[:n]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise ConversionError(f"labeled patients for N={n} are not among the training patients: {missing}")
    return chosen


def make_split(train_cases: Sequence[str], labeled_patients: Sequence[str],
               unlabeled_cases: Optional[Sequence[str]] = None) -> Dict[str, List[str]]:
    """One fold: train = val = all cases of ``labeled_patients``; unlabeled = ``unlabeled_cases`` if
    given, else all other ``train_cases``."""
    lab = set(labeled_patients)
    train = [c for c in train_cases if patient_of(c) in lab]
    if unlabeled_cases is None:
        unlabeled_cases = [c for c in train_cases if patient_of(c) not in lab]
    unlabeled = list(unlabeled_cases)
    assert not {patient_of(c) for c in unlabeled} & lab, "a labeled patient's frame ended up in 'unlabeled'"
    return {"train": train, "val": list(train), "unlabeled": unlabeled}


def split_filename(n: int) -> str:
    return f"splits_final_{n}labeled.json"


def check_disjoint(train_cases: Sequence[str], eval_cases: Sequence[str]) -> None:
    """Evaluation cases must share no patient with the training cases (all frames of a patient
    stay on one side)."""
    overlap = sorted({patient_of(c) for c in train_cases} & {patient_of(c) for c in eval_cases})
    if overlap:
        raise ConversionError(f"evaluation patients also appear in training: {overlap}")


# ----------------------------------------------------------------------------- output
def get_raw_root(raw_root: Optional[str] = None) -> str:
    """``raw_root`` or ``$nnUNet_raw`` (read at call time)."""
    raw_root = raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise ConversionError("no output folder: set the nnUNet_raw environment variable or pass -o")
    return raw_root


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 1 <= dataset_id <= 999:
        raise ConversionError(f"dataset id must be in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ConversionError(f"dataset name may only contain letters, digits, '_' and '-': {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def check_output_folder(raw_root: str, dataset_id: int, name: str, overwrite: bool) -> str:
    """Path of the dataset folder; refuses an existing one without ``overwrite`` and any other
    dataset with the same id (nnU-Net needs unique ids)."""
    folder_name = dataset_folder_name(dataset_id, name)
    prefix = f"Dataset{dataset_id:03d}_"
    if os.path.isdir(raw_root):
        others = [d for d in os.listdir(raw_root) if d.startswith(prefix) and d != folder_name
                  and os.path.isdir(os.path.join(raw_root, d))]
        if others:
            raise ConversionError(f"dataset id {dataset_id} is already used by {others} in {raw_root}; "
                                  f"choose another id with -d (nnU-Net needs unique ids)")
    folder = os.path.join(raw_root, folder_name)
    if os.path.exists(folder) and not overwrite:
        raise ConversionError(f"output dataset exists: {folder} (pass --overwrite to replace it)")
    return folder


def save_json(obj, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def write_dataset_json(folder: str, num_training: int, name: str, description: str, **extra) -> None:
    """nnU-Net v2 dataset.json (channel 'MRI', labels RV/MYO/LV) plus informative extra keys."""
    content = {"channel_names": CHANNEL_NAMES, "labels": LABELS, "numTraining": int(num_training),
               "file_ending": FILE_ENDING, "name": name, "description": description,
               "reference": "Bernard et al., IEEE TMI 2018 (ACDC)", "licence": "CC BY-NC-SA 4.0"}
    content.update(extra)
    save_json(content, os.path.join(folder, "dataset.json"))


def check_label_values(label: np.ndarray, what: str) -> None:
    values = np.unique(label)
    bad = [int(v) for v in values if v not in LABELS.values()]
    if bad:
        raise ConversionError(f"{what}: unexpected label values {bad} (expected {sorted(LABELS.values())})")


class Progress:
    """Prints a line every ``every`` volumes (and at the end)."""

    def __init__(self, total: int, every: int = 20, what: str = "volumes", stream=sys.stdout):
        self.total, self.every, self.what, self.stream = total, max(1, int(every)), what, stream
        self.done, self.t0 = 0, time.time()

    def step(self, label: str = "") -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            print(f"  {self.done}/{self.total} {self.what} ({label}) {time.time() - self.t0:.1f} s",
                  file=self.stream, flush=True)


# ----------------------------------------------------------------------------- the writer
@dataclass
class CaseSource:
    """A dataset to convert. ``read_case(case, with_label)`` returns ``(image, label or None)`` as
    SimpleITK images (label values 0..3); it is only asked for labels that are written."""
    train_cases: List[str]
    eval_cases: List[str]
    read_case: Callable[[str, bool], Tuple[sitk.Image, Optional[sitk.Image]]]
    description: str
    patient_order: Sequence[str] = SSL4MIS_TRAIN_PATIENT_ORDER
    extra_json: Dict = field(default_factory=dict)


@dataclass
class _Target:
    dataset_id: int
    name: str
    counts: List[int]
    folder: str = ""


def plan_targets(dataset_id: int, name: str, mode: str, counts: Sequence[int]) -> List[_Target]:
    """'split': one dataset holding every count's split file; 'images': one dataset per count
    (ids dataset_id, dataset_id+1, ...; name suffix ``_<N>lab``)."""
    if mode == "split":
        return [_Target(dataset_id, name, list(counts))]
    if mode == "images":
        return [_Target(dataset_id + i, f"{name}_{n}lab", [n]) for i, n in enumerate(counts)]
    raise ConversionError(f"unknown unlabeled mode {mode!r} (expected 'split' or 'images')")


def write_datasets(source: CaseSource, dataset_id: int, name: str, mode: str = "split",
                   counts: Optional[Sequence[int]] = None, default_split: Optional[int] = None,
                   overwrite: bool = False, raw_root: Optional[str] = None, progress_every: int = 20,
                   stream=sys.stdout) -> List[str]:
    """Write the nnU-Net raw dataset(s) for ``source``; returns their folders.

    Every check runs before anything is written; each dataset is written into a hidden temporary
    folder that is renamed at the end, so a failure leaves no half-written dataset behind.
    """
    if counts is None:
        counts = list(DEFAULT_LABELED_COUNTS) if mode == "split" else [default_split or DEFAULT_SPLIT_IF_FLAG_ONLY]
    counts = list(dict.fromkeys(int(n) for n in counts))
    if default_split is not None and default_split not in counts:
        raise ConversionError(f"--default_split {default_split} is not one of the labeled counts {counts}")
    if len(set(source.train_cases)) != len(source.train_cases) or not source.train_cases:
        raise ConversionError("training cases are empty or contain duplicates")
    check_disjoint(source.train_cases, source.eval_cases)
    train_patients = list(group_by_patient(source.train_cases))
    labeled = {n: labeled_patients_for(n, train_patients, source.patient_order) for n in counts}
    raw_root = get_raw_root(raw_root)
    targets = plan_targets(dataset_id, name, mode, counts)
    for t in targets:
        t.folder = check_output_folder(raw_root, t.dataset_id, t.name, overwrite)
    os.makedirs(raw_root, exist_ok=True)

    written: Dict[Tuple[str, str], str] = {}  # (case, 'image'|'label') -> file already written
    for t in targets:
        tmp = os.path.join(raw_root, ".incomplete_" + os.path.basename(t.folder))
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_one(source, t, labeled, mode, default_split, tmp, written, progress_every, stream)
            if os.path.exists(t.folder):
                shutil.rmtree(t.folder)
            os.rename(tmp, t.folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _assert_no_leak(t.folder)
        # later datasets copy from the final folder
        for key, path in list(written.items()):
            if path.startswith(tmp + os.sep):
                written[key] = t.folder + path[len(tmp):]
        print(f"wrote {t.folder}", file=stream, flush=True)
    return [t.folder for t in targets]


def _write_one(source: CaseSource, t: _Target, labeled: Dict[int, List[str]], mode: str,
               default_split: Optional[int], tmp: str, written: Dict, progress_every: int, stream) -> None:
    if mode == "split":
        tr_cases, unl_cases = list(source.train_cases), []
    else:
        lab = set(labeled[t.counts[0]])
        tr_cases = [c for c in source.train_cases if patient_of(c) in lab]
        unl_cases = [c for c in source.train_cases if patient_of(c) not in lab]
    jobs = ([(c, "imagesTr", "labelsTr") for c in tr_cases] + [(c, "imagesUnlabeled", None) for c in unl_cases]
            + [(c, "imagesTs", "labelsTs") for c in source.eval_cases])
    for sub in {j[1] for j in jobs} | {j[2] for j in jobs if j[2]}:
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    print(f"{os.path.basename(t.folder)}: {len(tr_cases)} training, {len(unl_cases)} unlabeled, "
          f"{len(source.eval_cases)} evaluation volumes", file=stream, flush=True)
    progress = Progress(len(jobs), progress_every, stream=stream)
    n_eval_labels = 0
    for case, img_dir, lab_dir in jobs:
        img_path = os.path.join(tmp, img_dir, f"{case}_0000{FILE_ENDING}")
        lab_path = os.path.join(tmp, lab_dir, f"{case}{FILE_ENDING}") if lab_dir else None
        need_img = (case, "image") not in written
        need_lab = lab_path is not None and (case, "label") not in written
        image = label = None
        if need_img or need_lab:
            image, label = source.read_case(case, need_lab)
        if need_img:
            sitk.WriteImage(image, img_path, True)
            written[(case, "image")] = img_path
        else:
            shutil.copyfile(written[(case, "image")], img_path)
        if lab_path is not None:
            if need_lab and label is None and lab_dir == "labelsTr":
                raise ConversionError(f"no label for training case {case}")
            if need_lab and label is not None:
                sitk.WriteImage(label, lab_path, True)
                written[(case, "label")] = lab_path
            elif not need_lab:
                shutil.copyfile(written[(case, "label")], lab_path)
            if os.path.isfile(lab_path) and lab_dir == "labelsTs":
                n_eval_labels += 1
        progress.step(case)
    if source.eval_cases and n_eval_labels < len(source.eval_cases):
        print(f"WARNING: {len(source.eval_cases) - n_eval_labels} evaluation cases have no label "
              f"(labelsTs incomplete)", file=stream, flush=True)

    write_dataset_json(tmp, len(tr_cases), t.name, source.description, numTest=len(source.eval_cases),
                       numUnlabeled=len(unl_cases), unlabeled_mode=mode,
                       labeled_patients={str(n): labeled[n] for n in t.counts}, **source.extra_json)
    for n in t.counts:
        # images mode: 'unlabeled' stays empty, the unlabeled images come from imagesUnlabeled/ (the trainers
        # read 'unlabeled' as cases of the labeled preprocessed folder, see nnunet_mona.data.unlabeled_pool)
        split = [make_split(tr_cases, labeled[n], [] if mode == "images" else None)]
        save_json(split, os.path.join(tmp, split_filename(n)))
        if default_split == n:
            save_json(split, os.path.join(tmp, "splits_final.json"))


def _assert_no_leak(folder: str) -> None:
    """Post-hoc check on disk: no evaluation patient among the training / unlabeled images."""
    def patients(sub):
        d = os.path.join(folder, sub)
        if not os.path.isdir(d):
            return set()
        return {patient_of(f[:-len("_0000" + FILE_ENDING)]) for f in os.listdir(d) if f.endswith(FILE_ENDING)}
    ts = patients("imagesTs")
    assert not ts & (patients("imagesTr") | patients("imagesUnlabeled")), f"evaluation patients in training: {folder}"


# ----------------------------------------------------------------------------- command line
def add_common_arguments(parser, default_id: int, default_name: str) -> None:
    """Options shared by both ACDC converters."""
    parser.add_argument("-d", "--dataset_id", type=int, default=default_id,
                        help=f"nnU-Net dataset id of the output (default {default_id}); with --unlabeled_mode "
                             f"images one dataset per labeled count gets ids d, d+1, ...")
    parser.add_argument("-n", "--name", default=default_name,
                        help=f"dataset name, output is nnUNet_raw/DatasetXXX_<name> (default {default_name}); "
                             f"--unlabeled_mode images appends _<N>lab")
    parser.add_argument("-o", "--nnunet_raw", default=None,
                        help="output root folder (default: the nnUNet_raw environment variable)")
    parser.add_argument("--labeled_patients", type=int, nargs="+", default=None, metavar="N",
                        help="numbers of labeled patients N to write split files for (default 1 3 7 with "
                             "--unlabeled_mode split, the --default_split value (else 3) with images). "
                             "N=1/3/7 use the MONA/SSL4MIS lists (patient099; +038 050; +100 058 021 049), "
                             "other N the first N patients of SSL4MIS' train.list order")
    parser.add_argument("--unlabeled_mode", choices=("split", "images"), default="split",
                        help="split (default): all training volumes in imagesTr/labelsTr, label scarcity "
                             "simulated by splits_final_<N>labeled.json; images: only the N labeled patients "
                             "in imagesTr/labelsTr, the other training volumes in imagesUnlabeled/ without "
                             "labels (split files then have an empty 'unlabeled' list; run "
                             "nnUNetv2_mona_preprocess_unlabeled after planning), one dataset per N")
    parser.add_argument("--default_split", type=int, nargs="?", const=DEFAULT_SPLIT_IF_FLAG_ONLY, default=None,
                        metavar="N",
                        help="also write the N-labeled split as splits_final.json in the raw folder (nnU-Net "
                             f"copies it to nnUNet_preprocessed at planning). Flag alone: N="
                             f"{DEFAULT_SPLIT_IF_FLAG_ONLY}. Not given: no splits_final.json is written")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output dataset folder (refused otherwise)")
    parser.add_argument("--downsample", default=1, metavar="F",
                        help="in-plane downsampling factor, a positive integer (default 1: native). F x F blocks: "
                             "image mean, label majority with ties to the higher label; spacing x F. "
                             "--downsample 2 / 4: the CPU-scale ACDC protocols (nnUNetv2_mona_benchmark "
                             "--preset acdc_cpu / acdc_cpu_quarter)")
    parser.add_argument("--progress_every", type=int, default=20, metavar="K",
                        help="print a progress line every K volumes (default 20)")


def run_from_args(source_factory: Callable[[], CaseSource], args) -> List[str]:
    """Build the source and write the dataset(s); a :class:`ConversionError` exits with status 2."""
    from nnunet_mona.conversion.downsample import check_factor, downsampling_reader

    try:
        try:
            factor = check_factor(getattr(args, "downsample", 1))
        except ValueError as e:
            raise ConversionError(str(e)) from None
        t0 = time.time()
        source = source_factory()
        if factor != 1:
            source.read_case = downsampling_reader(source.read_case, factor)
            source.description += f"; in-plane downsampled x{factor} (block mean / label majority)"
            source.extra_json = {**source.extra_json, "inplane_downsample": factor}
            if "written_spacing_xyz" in source.extra_json:
                sx, sy, sz = source.extra_json["written_spacing_xyz"]
                source.extra_json["written_spacing_xyz"] = [sx * factor, sy * factor, sz]
        folders = write_datasets(source, args.dataset_id, args.name, args.unlabeled_mode, args.labeled_patients,
                                 args.default_split, args.overwrite, args.nnunet_raw, args.progress_every)
        print(f"done in {time.time() - t0:.1f} s", flush=True)
        return folders
    except ConversionError as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
