"""ACDC in the SSL4MIS / MONA h5 format -> nnU-Net raw (``nnUNetv2_mona_convert_acdc_h5``).

Source layout (``-i``, the folder holding the lists; its parent is accepted too)::

    train.list          training volume names (patientXXX_frameYY), 140 for ACDC
    train_slices.list   their 2D slices (patientXXX_frameYY_slice_Z), optional: else found by name
    val.list            evaluation volume names, 20 for ACDC
    data/[slices/]patientXXX_frameYY_slice_Z.h5   one training slice: image [Y, X], label [Y, X]
    data/patientXXX_frameYY.h5                    one evaluation volume: image [Z, Y, X], label [Z, Y, X]

``image`` is float in [0, 1] (min-max normalised per volume), ``label`` uint8 0..3. Training slices
are stacked into volumes in numeric Z order (slice_2 before slice_10); the Z indices of a volume
must be contiguous.

Spacing: the files store none. In-plane spacing is written as 1 x 1 (native pixel grid, so the 2d
configuration never resamples in-plane). The slice axis gets ``--z_spacing`` (default 10, about the
real ACDC slice distance); it must exceed 1 so that nnU-Net treats Z as the out-of-plane axis: its
2d configuration then works on the native slices and ignores Z spacing, while 3d configurations
see strongly anisotropic data. Use the 2d configuration with this dataset.
"""
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mona.conversion.common import (ConversionError, CaseSource, add_common_arguments, check_label_values,
                                           patient_of, run_from_args)
from nnunet_mona.cli.arguments import command_parser

_SLICE_RE = re.compile(r"^(patient\d+_frame\d+)_slice_(\d+)$")
DEFAULT_Z_SPACING = 10.0


def _import_h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover
        raise ConversionError("reading the h5 format needs h5py: pip install h5py") from e
    return h5py


def _read_list(path: str) -> List[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    return [n[:-3] if n.endswith(".h5") else n for n in names]


def find_source_root(input_folder: str) -> str:
    """The folder holding train.list / val.list / data/ (``input_folder`` or ``input_folder/ACDC``)."""
    for cand in (input_folder, os.path.join(input_folder, "ACDC")):
        if all(os.path.exists(os.path.join(cand, x)) for x in ("train.list", "val.list", "data")):
            return cand
    found = sorted(os.listdir(input_folder))[:15] if os.path.isdir(input_folder) else "(folder does not exist)"
    raise ConversionError(f"{input_folder} is not an ACDC h5 folder (SSL4MIS format): expected train.list, val.list "
                          f"and data/ in it (or in its ACDC/ subfolder); found: {found}")


def index_training_slices(root: str, train_volumes: List[str]) -> Dict[str, List[Tuple[int, str]]]:
    """volume -> [(z, path)] sorted by numeric z; checks contiguity and that every volume has slices."""
    dirs = [d for d in (os.path.join(root, "data", "slices"), os.path.join(root, "data")) if os.path.isdir(d)]
    on_disk = {}
    for d in reversed(dirs):  # data/slices/ wins over data/
        on_disk.update({f[:-3]: os.path.join(d, f) for f in os.listdir(d) if f.endswith(".h5")})
    list_file = os.path.join(root, "train_slices.list")
    if os.path.isfile(list_file):
        names = _read_list(list_file)
        missing = [n for n in names if n not in on_disk]
        if missing:
            raise ConversionError(f"{len(missing)} slices of train_slices.list not found in "
                                  f"{[os.path.relpath(d, root) for d in dirs]}, e.g. {missing[:3]}")
    else:
        names = [n for n in on_disk if _SLICE_RE.match(n)]
    wanted = set(train_volumes)
    slices: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
    for n in names:
        m = _SLICE_RE.match(n)
        if m is None:
            raise ConversionError(f"slice name {n!r} is not patientXXX_frameYY_slice_Z")
        if m.group(1) not in wanted:
            if os.path.isfile(list_file):
                raise ConversionError(f"train_slices.list has slice {n} of {m.group(1)}, which is not in train.list")
            continue
        slices[m.group(1)].append((int(m.group(2)), on_disk[n]))
    without = [v for v in train_volumes if v not in slices]
    if without:
        raise ConversionError(f"{len(without)} volumes of train.list have no slice files, e.g. {without[:3]} "
                              f"(expected data/[slices/]<volume>_slice_<Z>.h5)")
    for v, lst in slices.items():
        lst.sort()
        zs = [z for z, _ in lst]
        if zs != list(range(zs[0], zs[0] + len(zs))):
            raise ConversionError(f"{v}: slice indices are not contiguous or repeat: {zs}")
    return dict(slices)


def _to_sitk(arr: np.ndarray, z_spacing: float, is_label: bool) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8 if is_label else np.float32))
    img.SetSpacing((1.0, 1.0, float(z_spacing)))
    return img


def _read_h5(path: str, with_label: bool, ndim: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    h5py = _import_h5py()
    with h5py.File(path, "r") as f:
        keys = list(f.keys())
        if "image" not in keys or (with_label and "label" not in keys):
            raise ConversionError(f"{path}: expected keys 'image' and 'label', found {keys}")
        image = f["image"][()]
        label = f["label"][()] if with_label else None
    if image.ndim != ndim or (label is not None and label.shape != image.shape):
        raise ConversionError(f"{path}: expected {ndim}D image and label of equal shape, found image "
                              f"{image.shape}, label {None if label is None else label.shape}")
    return image, label


class H5Reader:
    """Reads one ACDC h5 case (training: stacked slices; evaluation: volume file) as SimpleITK images."""

    def __init__(self, root: str, slices: Dict[str, List[Tuple[int, str]]], z_spacing: float):
        self.root, self.slices, self.z_spacing = root, slices, z_spacing

    def __call__(self, case: str, with_label: bool):
        if case in self.slices:
            parts = [_read_h5(p, with_label, 2) for _, p in self.slices[case]]
            shapes = {p[0].shape for p in parts}
            if len(shapes) != 1:
                raise ConversionError(f"{case}: slices have different shapes {sorted(shapes)}")
            image = np.stack([p[0] for p in parts])
            label = np.stack([p[1] for p in parts]) if with_label else None
        else:
            image, label = _read_h5(os.path.join(self.root, "data", case + ".h5"), with_label, 3)
        if label is not None:
            check_label_values(label, case)
        return _to_sitk(image, self.z_spacing, False), (_to_sitk(label, self.z_spacing, True) if with_label else None)


def build_source(input_folder: str, z_spacing: float = DEFAULT_Z_SPACING) -> CaseSource:
    """Index the h5 source (all format checks that need no pixel data happen here)."""
    if not z_spacing > 1.0:
        raise ConversionError(f"--z_spacing must be > 1 (the in-plane spacing), got {z_spacing}")
    _import_h5py()
    root = find_source_root(input_folder)
    train = _read_list(os.path.join(root, "train.list"))
    val = _read_list(os.path.join(root, "val.list"))
    for name in train + val:
        patient_of(name)  # raises on names that are not patientXXX_frameYY
    if len(set(train)) != len(train) or len(set(val)) != len(val):
        raise ConversionError("train.list or val.list contains duplicates")
    missing = [v for v in val if not os.path.isfile(os.path.join(root, "data", v + ".h5"))]
    if missing:
        raise ConversionError(f"{len(missing)} volumes of val.list missing, e.g. data/{missing[0]}.h5")
    slices = index_training_slices(root, train)
    patient_order = list(dict.fromkeys(patient_of(v) for v in train))
    return CaseSource(train_cases=train, eval_cases=val, read_case=H5Reader(root, slices, z_spacing),
                      description="ACDC cine-MRI ED/ES volumes from the SSL4MIS h5 format (train.list -> training, "
                                  "val.list -> imagesTs); intensities min-max normalised to [0, 1]; no spacing in "
                                  f"the source: written as (1, 1, {z_spacing}) (x, y, z), use the 2d configuration",
                      patient_order=patient_order,
                      extra_json={"source_format": "ssl4mis_h5", "written_spacing_xyz": [1.0, 1.0, z_spacing]})


def entry_point():
    parser = command_parser(
        "nnUNetv2_mona_convert_acdc_h5",
        "Convert ACDC in the SSL4MIS/MONA h5 format (train.list, val.list, data/*.h5) to nnU-Net raw "
                    "format: training volumes reassembled from slices (Z order), val.list volumes as "
                    "imagesTs/labelsTs, split files splits_final_<N>labeled.json for N labeled patients.")
    parser.add_argument("-i", "--input", required=True,
                        help="the ACDC h5 folder holding train.list, val.list and data/ (or its parent)")
    add_common_arguments(parser, default_id=27, default_name="ACDC_SSL")
    parser.add_argument("--z_spacing", type=float, default=DEFAULT_Z_SPACING,
                        help=f"slice distance written into the files (default {DEFAULT_Z_SPACING}; must be > 1 so "
                             f"that nnU-Net's 2d configuration slices along Z); in-plane spacing is 1")
    args = parser.parse_args()
    run_from_args(lambda: build_source(args.input, args.z_spacing), args)


if __name__ == "__main__":
    entry_point()
