"""The official ACDC release -> nnU-Net raw (``nnUNetv2_mona_convert_acdc``).

Source layout (``-i``, the ``database`` folder; its parent is accepted too)::

    training/patientXXX/Info.cfg                      'ED: <frame>' and 'ES: <frame>' lines
    training/patientXXX/patientXXX_frameNN.nii.gz     3D frame (ED and ES are used)
    training/patientXXX/patientXXX_frameNN_gt.nii.gz  its label (0 bg, 1 RV, 2 MYO, 3 LV)
    training/patientXXX/patientXXX_4d.nii.gz          4D cine: ignored
    testing/patientXXX/...                            same layout; the evaluation cases (optional)

Cases are named ``patientXXX_frameNN`` (the original frame numbers; the SSL4MIS h5 files number
ED/ES frames 01/02 instead). Images and labels are copied with SimpleITK, keeping spacing, origin
and direction (labels are cast to uint8 and given the image's geometry after a consistency check).

Evaluation cases (imagesTs/labelsTs): the ``testing/`` patients, or, with ``--val_patients``, the
listed ``training/`` patients (``--val_patients ssl4mis`` = SSL4MIS' 10 val patients), which are
then removed from training and ``testing/`` is not used.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mona.conversion.common import (SSL4MIS_VAL_PATIENTS, ConversionError, CaseSource, add_common_arguments,
                                           case_name, check_label_values, patient_id, patient_of, run_from_args)
from nnunet_mona.cli.arguments import command_parser


def find_database_root(input_folder: str) -> str:
    """The folder holding ``training/`` (``input_folder`` or ``input_folder/database``)."""
    for cand in (input_folder, os.path.join(input_folder, "database")):
        if os.path.isdir(os.path.join(cand, "training")):
            return cand
    found = sorted(os.listdir(input_folder))[:15] if os.path.isdir(input_folder) else "(folder does not exist)"
    raise ConversionError(f"{input_folder} is not the official ACDC 'database' folder: expected training/patientXXX/ "
                          f"(and optionally testing/) in it or in its database/ subfolder; found: {found}")


def read_info_cfg(path: str) -> Dict[str, str]:
    """``Info.cfg`` as a dict (``{'ED': '1', 'ES': '12', 'Group': ..., ...}``)."""
    info = {}
    with open(path) as f:
        for line in f:
            if ":" in line:
                key, value = line.split(":", 1)
                info[key.strip()] = value.strip()
    return info


def _frame_file(patient_dir: str, case: str, suffix: str = "") -> Optional[str]:
    for ending in (".nii.gz", ".nii"):
        p = os.path.join(patient_dir, f"{case}{suffix}{ending}")
        if os.path.isfile(p):
            return p
    return None


def index_patients(split_dir: str, require_labels: bool) -> Dict[str, Tuple[str, List[str]]]:
    """patient -> (folder, [ED case, ES case]) for every ``patientXXX`` folder of ``split_dir``."""
    patients = {}
    entries = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not entries:
        raise ConversionError(f"{split_dir} has no patient folders (expected patientXXX/)")
    for d in entries:
        pdir = os.path.join(split_dir, d)
        try:
            pid = patient_id(d)
        except ConversionError:
            raise ConversionError(f"{pdir}: folder name is not patientXXX")
        cfg = os.path.join(pdir, "Info.cfg")
        if not os.path.isfile(cfg):
            raise ConversionError(f"{pdir}: Info.cfg missing (expected lines 'ED: <frame>' and 'ES: <frame>'); "
                                  f"found: {sorted(os.listdir(pdir))}")
        info = read_info_cfg(cfg)
        try:
            frames = list(dict.fromkeys(int(float(info[k])) for k in ("ED", "ES")))
        except (KeyError, ValueError):
            raise ConversionError(f"{cfg}: expected integer 'ED: N' and 'ES: M' lines, found {info}")
        cases = [case_name(pid, fr) for fr in frames]
        for c in cases:
            if _frame_file(pdir, c) is None:
                raise ConversionError(f"{pdir}: {c}.nii.gz (frame named in Info.cfg) missing; found: "
                                      f"{sorted(os.listdir(pdir))}")
            if require_labels and _frame_file(pdir, c, "_gt") is None:
                raise ConversionError(f"{pdir}: label {c}_gt.nii.gz missing")
        patients[pid] = (pdir, cases)
    return patients


class NiftiReader:
    """Reads one case (image and optionally ``_gt`` label) with SimpleITK, geometry kept."""

    def __init__(self, case_dirs: Dict[str, str]):
        self.case_dirs = case_dirs

    def __call__(self, case: str, with_label: bool):
        pdir = self.case_dirs[case]
        image = sitk.ReadImage(_frame_file(pdir, case))
        if image.GetDimension() != 3:
            raise ConversionError(f"{case}: expected a 3D image, found {image.GetDimension()}D")
        label = None
        lab_file = _frame_file(pdir, case, "_gt") if with_label else None
        if lab_file is not None:
            lab = sitk.ReadImage(lab_file)
            if lab.GetSize() != image.GetSize() or not np.allclose(lab.GetSpacing(), image.GetSpacing(), rtol=1e-3):
                raise ConversionError(f"{case}: label geometry (size {lab.GetSize()}, spacing {lab.GetSpacing()}) "
                                      f"differs from the image (size {image.GetSize()}, spacing {image.GetSpacing()})")
            arr = sitk.GetArrayFromImage(lab)
            if np.any(arr != np.round(arr)):
                raise ConversionError(f"{case}: label has non-integer values")
            arr = arr.astype(np.uint8)
            check_label_values(arr, case)
            label = sitk.GetImageFromArray(arr)
            label.CopyInformation(image)
        return image, label


def build_source(input_folder: str, val_patients: Optional[Sequence[str]] = None) -> CaseSource:
    """Index the official release (format checks that need no pixel data happen here)."""
    root = find_database_root(input_folder)
    training = index_patients(os.path.join(root, "training"), require_labels=True)
    if val_patients:
        if len(val_patients) == 1 and str(val_patients[0]).lower() == "ssl4mis":
            val_patients = SSL4MIS_VAL_PATIENTS
        val = list(dict.fromkeys(patient_id(p) for p in val_patients))
        missing = [p for p in val if p not in training]
        if missing:
            raise ConversionError(f"--val_patients not found in {root}/training: {missing}")
        evaluation = {p: training.pop(p) for p in val}
        if os.path.isdir(os.path.join(root, "testing")):
            print("note: --val_patients given, testing/ is not used", flush=True)
    elif os.path.isdir(os.path.join(root, "testing")):
        evaluation = index_patients(os.path.join(root, "testing"), require_labels=False)
    else:
        raise ConversionError(f"{root} has no testing/ folder: pass --val_patients to choose evaluation patients "
                              f"among training/ (e.g. --val_patients ssl4mis)")
    case_dirs = {c: d for group in (training, evaluation) for d, cases in group.values() for c in cases}
    train_cases = [c for _, cases in training.values() for c in cases]
    eval_cases = [c for _, cases in evaluation.values() for c in cases]
    for c in train_cases + eval_cases:
        patient_of(c)
    return CaseSource(train_cases=train_cases, eval_cases=eval_cases, read_case=NiftiReader(case_dirs),
                      description="ACDC cine-MRI ED/ES frames from the official release (NIfTI, original spacing); "
                                  "evaluation cases in imagesTs/labelsTs",
                      extra_json={"source_format": "acdc_official"})


def entry_point():
    parser = command_parser(
        "nnUNetv2_mona_convert_acdc",
        "Convert the official ACDC release (database/training/patientXXX/ with Info.cfg, ED/ES frames "
                    "and _gt labels; 4D cine ignored) to nnU-Net raw format with split files "
                    "splits_final_<N>labeled.json for N labeled patients.")
    parser.add_argument("-i", "--input", required=True,
                        help="the ACDC 'database' folder holding training/ (and testing/), or its parent")
    add_common_arguments(parser, default_id=28, default_name="ACDC")
    parser.add_argument("--val_patients", nargs="+", default=None, metavar="P",
                        help="evaluation patients taken out of training/ (numbers or patientXXX; 'ssl4mis' = the "
                             "10 SSL4MIS val patients); default: the testing/ patients")
    args = parser.parse_args()
    run_from_args(lambda: build_source(args.input, args.val_patients), args)


if __name__ == "__main__":
    entry_point()
