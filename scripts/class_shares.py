"""Class shares behind distribution alignment: what a semi-supervised checkpoint aligned its teacher to, and the
class shares of label folders.

Distribution alignment (``align_class_distribution``) rescales the teacher's probabilities on unlabeled images so
that their running class share matches the running share of the labeled training patches. This prints both running
shares stored in a checkpoint and, for comparison, each label folder's share per slice (every slice of every volume
weighted alike, as nnU-Net's 2d loader draws them without foreground oversampling):

    python scripts/class_shares.py --checkpoint .../fold_0/checkpoint_final.pth \\
        --labels labeled:raw/labelsTr_labeled unlabeled:raw/labelsTr_unlabeled

A labeled share above the unlabeled images' share makes alignment push the teacher, and so the student, towards
over-segmenting (``nnUNetv2_mona_evaluate`` reports each class's predicted / reference volume).
"""
import argparse
import glob
import os
import re
from typing import List, Optional

import numpy as np


def checkpoint_shares(path: str) -> Optional[dict]:
    """{'labeled_share': [K], 'teacher_share': [K]} of a semi-supervised checkpoint (None without alignment)."""
    import torch
    state = torch.load(path, map_location="cpu", weights_only=False).get("semi_supervised") or {}
    alignment = state.get("distribution_alignment")
    if not alignment or alignment.get("labeled_share") is None:
        return None
    return {k: [float(x) for x in v] for k, v in alignment.items() if v is not None}


def slice_shares(files: List[str], num_classes: int) -> np.ndarray:
    """(K,) class share per 2d slice (axis 0 of each volume), averaged over the volumes' mean slice shares."""
    import SimpleITK as sitk
    from nnunet_mona.modules.distribution_alignment import label_map_class_share
    maps = (sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in files)
    return label_map_class_share(maps, num_classes, slice_axis=0).numpy()


def largest_label(path: str) -> int:
    import SimpleITK as sitk
    return int(np.max(sitk.GetArrayFromImage(sitk.ReadImage(path))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", nargs="*", default=[], help="semi-supervised checkpoint(s)")
    parser.add_argument("--labels", nargs="*", default=[],
                        help="NAME:FOLDER of label files (.nii.gz), or NAME:FOLDER:REGEX to keep the files whose "
                             "name matches REGEX")
    parser.add_argument("--num_classes", type=int, default=None, help="classes incl. background (default: from "
                        "the checkpoint, else the largest label found + 1)")
    args = parser.parse_args(argv)
    if not args.checkpoint and not args.labels:
        parser.error("give --checkpoint and / or --labels")
    num_classes = args.num_classes
    for path in args.checkpoint:
        if not os.path.isfile(path):
            raise SystemExit(f"no such checkpoint: {path}")
        shares = checkpoint_shares(path)
        if shares is None:
            print(f"{path}: no distribution-alignment state (trained without align_class_distribution?)")
            continue
        num_classes = num_classes or len(shares["labeled_share"])
        for name, values in shares.items():
            print(f"{path}: {name:14s} " + " ".join(f"{v:.4f}" for v in values))
    for spec in args.labels:
        name, folder, *pattern = spec.split(":", 2)
        files = sorted(glob.glob(os.path.join(folder, "*.nii.gz")))
        if pattern:
            files = [f for f in files if re.search(pattern[0], os.path.basename(f))]
        if not files:
            raise SystemExit(f"{spec}: no .nii.gz label files")
        k = num_classes or 1 + max(largest_label(f) for f in files)
        print(f"{name} ({len(files)} volumes): slice share " + " ".join(f"{v:.4f}" for v in slice_shares(files, k)))


if __name__ == "__main__":
    main()
