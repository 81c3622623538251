"""A small synthetic 2D/"few-slice" segmentation dataset in nnU-Net's raw format.

It imitates what makes cardiac MRI hard with few labels: one large structure (``cavity``),
a thin structure around it (``wall``), a small rare structure present in a minority of
patients (``lesion``), textured background with look-alike distractors, noise and a smooth
bias field. Cases are grouped by patient (``synthXXX_frameYY``) like ACDC's ED/ES frames.

Used by the demo and by the tests, so it must stay fast (well under a second per case).
"""
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "cavity": 1, "wall": 2, "lesion": 3}
PATIENT_REGEX = r"^(synth\d+)_frame\d+$"


def case_id(patient: int, frame: int) -> str:
    return f"synth{patient:03d}_frame{frame:02d}"


def _smooth_noise(rng: np.random.Generator, shape, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] (bilinear upsampling of a coarse random grid)."""
    coarse = rng.uniform(-1, 1, size=(max(2, shape[0] // scale), max(2, shape[1] // scale)))
    yi = np.linspace(0, coarse.shape[0] - 1, shape[0])
    xi = np.linspace(0, coarse.shape[1] - 1, shape[1])
    y0 = np.floor(yi).astype(int).clip(0, coarse.shape[0] - 2)
    x0 = np.floor(xi).astype(int).clip(0, coarse.shape[1] - 2)
    wy = (yi - y0)[:, None]
    wx = (xi - x0)[None, :]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    return (1 - wy) * ((1 - wx) * c00 + wx * c01) + wy * ((1 - wx) * c10 + wx * c11)


def synthesize_case(rng: np.random.Generator, anatomy: Dict, frame_scale: float, n_slices: int,
                    size: Sequence[int]):
    """Returns (image float32 [Z, Y, X], label uint8 [Z, Y, X]) for one frame of one patient."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.zeros((n_slices, h, w), np.float32)
    label = np.zeros((n_slices, h, w), np.uint8)
    for z in range(n_slices):
        # structures shrink towards the apex (last slices), like a heart
        zs = 1.0 - 0.35 * z / max(1, n_slices - 1)
        cy, cx = anatomy["center"]
        ry, rx = anatomy["radii"][0] * frame_scale * zs, anatomy["radii"][1] * frame_scale * zs
        ang = anatomy["angle"]
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
        # wobbly boundary: the radius varies with the polar angle
        theta = np.arctan2(v, u)
        wobble = 1 + anatomy["wobble"] * np.sin(anatomy["lobes"] * theta + anatomy["phase"])
        r = np.sqrt(u ** 2 + v ** 2) / wobble
        cavity = r <= 1.0
        wall_outer = 1.0 + anatomy["wall_thickness"] / min(rx, ry)
        wall = (r > 1.0) & (r <= wall_outer)
        lab = np.zeros((h, w), np.uint8)
        lab[cavity] = LABELS["cavity"]
        lab[wall] = LABELS["wall"]
        if anatomy["lesion"] is not None and z < n_slices - 1:
            ly, lx, lr = anatomy["lesion"]
            lesion = (yy - ly) ** 2 + (xx - lx) ** 2 <= (lr * zs) ** 2
            lab[lesion] = LABELS["lesion"]

        img = 0.35 + 0.08 * _smooth_noise(rng, (h, w), 8)  # textured background tissue
        for (dcy, dcx, dr, val) in anatomy["distractors"]:  # look-alike blobs that are not anatomy
            img[(yy - dcy) ** 2 + (xx - dcx) ** 2 <= dr ** 2] = val
        img[lab == LABELS["cavity"]] = anatomy["intensity"]["cavity"]
        img[lab == LABELS["wall"]] = anatomy["intensity"]["wall"]
        img[lab == LABELS["lesion"]] = anatomy["intensity"]["lesion"]
        img = img * (1 + anatomy.get("bias", 0.25) * _smooth_noise(rng, (h, w), 24))  # bias field
        img = img + rng.normal(0, anatomy["noise"], size=(h, w))
        image[z] = img.astype(np.float32) * 400.0  # MRI-like arbitrary units
        label[z] = lab
    return image, label


WALL_BRIGHTNESS_RANGE = (0.5, 0.6)  # a patient's own wall brightness (uniform draw)


def sample_anatomy(rng: np.random.Generator, size: Sequence[int], lesion_probability: float) -> Dict:
    h, w = size
    radii = (rng.uniform(0.14, 0.24) * h, rng.uniform(0.14, 0.24) * w)
    margin = 0.35 * min(h, w)
    center = (rng.uniform(margin, h - margin), rng.uniform(margin, w - margin))
    wall_thickness = rng.uniform(2.0, 4.0)
    lesion = None
    if rng.uniform() < lesion_probability:
        a = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.5, 0.9) * min(radii)
        lesion = (center[0] + dist * np.sin(a), center[1] + dist * np.cos(a), rng.uniform(2.0, 3.5))
    distractors = []
    for _ in range(rng.integers(1, 4)):
        distractors.append((rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 8), rng.uniform(0.55, 0.85)))
    return {
        "center": center, "radii": radii, "angle": rng.uniform(0, np.pi),
        "wobble": rng.uniform(0.0, 0.15), "lobes": int(rng.integers(2, 5)), "phase": rng.uniform(0, 2 * np.pi),
        "wall_thickness": wall_thickness, "lesion": lesion, "distractors": distractors,
        "intensity": {"cavity": rng.uniform(0.8, 0.95), "wall": rng.uniform(*WALL_BRIGHTNESS_RANGE),
                      "lesion": rng.uniform(1.05, 1.25)},
        "noise": rng.uniform(0.05, 0.1),
    }


# change per unit of scanner shift (image intensities: background tissue ~0.35, wall 0.5-0.6, cavity 0.8-0.95;
# noise: its standard deviation; bias: the strength of the smooth multiplicative field). Experiments patch it.
SCANNER_EFFECT = {"wall": -0.15, "cavity": -0.10, "noise": 0.03, "bias": 0.25}
# In the multi-scanner scenario the wall's brightness is the scanner's, not the patient's: the labeled scanner
# shows it at SCANNER_WALL, each patient keeps only SCANNER_WALL_JITTER of its own draw's deviation. Otherwise
# how far plain nnU-Net generalises depends on whether the few labeled patients happened to have faint walls
# (the dataset seed), which dominated the demo's seed-to-seed spread. At the farthest scanner the wall stays
# 0.08 brighter than the tissue: faint, still there to be learnt from the unlabeled images.
SCANNER_WALL = 0.58
SCANNER_WALL_JITTER = 0.2


def seen_by_scanner(anatomy: Dict, shift: float) -> Dict:
    """The same anatomy imaged by a scanner ``shift`` (0 = the labeled patients' scanner, 1 = the farthest one)
    away: the wall (at the labeled scanner SCANNER_WALL +- 0.01 whatever the patient) darkens towards the
    surrounding tissue's brightness (at shift 1 its contrast to the tissue is 0.08 instead of 0.23), the cavity
    darkens, noise and bias field grow. nnU-Net's augmentation (brightness, contrast, gamma, noise) does not
    turn one of these appearances into another.
    """
    e = SCANNER_EFFECT
    seen = dict(anatomy)
    seen["intensity"] = dict(anatomy["intensity"])
    own_deviation = anatomy["intensity"]["wall"] - sum(WALL_BRIGHTNESS_RANGE) / 2
    own_wall = SCANNER_WALL + SCANNER_WALL_JITTER * own_deviation
    seen["intensity"]["wall"] = own_wall + e["wall"] * shift
    seen["intensity"]["cavity"] = anatomy["intensity"]["cavity"] + e["cavity"] * shift
    seen["noise"] = anatomy["noise"] + e["noise"] * shift
    seen["bias"] = 0.25 + e["bias"] * shift
    seen["scanner_shift"] = float(shift)
    return seen


SCANNERS_FILE = "scanners.json"  # {case id: scanner shift}, written with scanner_shift > 0 (nnU-Net ignores it)


def read_scanner_shifts(dataset_folder: str) -> Optional[Dict[str, float]]:
    """{case id: the shift of the scanner that imaged it} of a dataset written with scanner_shift > 0, else None."""
    path = os.path.join(dataset_folder, SCANNERS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(array_zyx: np.ndarray, path: str, spacing_xyz, is_label: bool) -> None:
    img = sitk.GetImageFromArray(array_zyx.astype(np.uint8 if is_label else np.float32))
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    sitk.WriteImage(img, path, True)


def write_synthetic_dataset(raw_root: str, dataset_id: int = 990, dataset_name: str = "MonaSynthetic",
                            n_labeled_patients: int = 3, n_unlabeled_patients: int = 12,
                            n_test_patients: int = 4, frames_per_patient: int = 2, n_slices: int = 3,
                            size: Sequence[int] = (96, 96), lesion_probability: float = 0.35,
                            unlabeled_as_training_cases: bool = False, scanner_shift: float = 0.0,
                            seed: int = 0) -> Dict[str, List[str]]:
    """Write ``DatasetXXX_Name`` under ``raw_root``.

    Labeled patients go to imagesTr/labelsTr, test patients to imagesTs/labelsTs. Unlabeled
    patients go to ``imagesUnlabeled`` (no label file is written), or, with
    ``unlabeled_as_training_cases=True``, to imagesTr/labelsTr so that scarcity can be
    simulated with a split (their labels exist on disk but must never be read).

    ``scanner_shift`` > 0 simulates a multi-scanner population: labeled patients all come from one scanner
    (shift 0), every unlabeled and test patient from a scanner drawn uniformly in [0, scanner_shift]
    (``seen_by_scanner``). With 0 (default) every patient looks the same way (and the random stream of a seed does
    not depend on the option).

    With ``scanner_shift`` > 0 the scanner shift of every case is written to ``scanners.json`` in the dataset
    folder (``read_scanner_shifts``). Returns the case ids per role: ``{'labeled', 'unlabeled', 'test'}``.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(raw_root, f"Dataset{dataset_id:03d}_{dataset_name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    if n_unlabeled_patients and not unlabeled_as_training_cases:
        os.makedirs(os.path.join(folder, "imagesUnlabeled"), exist_ok=True)
    spacing = (1.0, 1.0, 5.0)
    roles = {"labeled": [], "unlabeled": [], "test": []}
    shifts: Dict[str, float] = {}
    patient = 0
    plan = [("labeled", n_labeled_patients), ("unlabeled", n_unlabeled_patients), ("test", n_test_patients)]
    for role, count in plan:
        for index in range(count):
            patient += 1
            # the rare class must be annotated somewhere: the first labeled patient always shows it
            forced = role == "labeled" and index == 0 and lesion_probability > 0
            anatomy = sample_anatomy(rng, size, 1.0 if forced else lesion_probability)
            if scanner_shift > 0:  # labeled patients: the labeled scanner (shift 0); draws no random number
                anatomy = seen_by_scanner(anatomy, 0.0 if role == "labeled" else rng.uniform(0.0, scanner_shift))
            for frame in range(1, frames_per_patient + 1):
                cid = case_id(patient, frame)
                image, label = synthesize_case(rng, anatomy, 1.0 - 0.12 * (frame - 1), n_slices, size)
                if role == "test":
                    img_dir, lab_dir = "imagesTs", "labelsTs"
                elif role == "unlabeled" and not unlabeled_as_training_cases:
                    img_dir, lab_dir = "imagesUnlabeled", None
                else:
                    img_dir, lab_dir = "imagesTr", "labelsTr"
                _write(image, os.path.join(folder, img_dir, f"{cid}_0000.nii.gz"), spacing, False)
                if lab_dir is not None:
                    _write(label, os.path.join(folder, lab_dir, f"{cid}.nii.gz"), spacing, True)
                roles[role].append(cid)
                shifts[cid] = round(anatomy.get("scanner_shift", 0.0), 4)
    if scanner_shift > 0:  # which scanner imaged each case: the demo reports Dice by scanner distance
        with open(os.path.join(folder, SCANNERS_FILE), "w") as f:
            json.dump(shifts, f, indent=1)
    num_training = len(roles["labeled"]) + (len(roles["unlabeled"]) if unlabeled_as_training_cases else 0)
    # without lesions the class is left out of the dataset (nnU-Net would otherwise learn an empty class)
    labels = LABELS if lesion_probability > 0 else {k: v for k, v in LABELS.items() if k != "lesion"}
    dataset_json = {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": dataset_name,
        "description": "Synthetic long-tailed 'cardiac-like' phantom made by nnunet_mona.demo.synthetic_dataset",
    }
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(dataset_json, f, indent=2)
    return roles
