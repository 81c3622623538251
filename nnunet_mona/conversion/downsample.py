"""In-plane downsampling of converted cases (``--downsample F``): the CPU-scale ACDC protocol.

Images are block-averaged over F x F pixels, labels take the majority label of each block with
ties going to the higher label (so the thin myocardium, label 2, survives against background).
The volume is edge-padded to a multiple of F first, so no pixel is dropped. The in-plane spacing
grows by F; the slice axis (Z, first numpy axis) is untouched.
"""
from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk


def check_factor(factor) -> int:
    """``factor`` as a positive int, or ValueError with what to pass instead."""
    try:
        f = int(factor)
        ok = f == float(factor) and f >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"--downsample must be a positive integer (1 = native resolution, 2 = half), got {factor!r}")
    return f


def _pad_to_multiple(arr: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) -> (Z, ceil(Y/F) F, ceil(X/F) F), edge-padded."""
    pad = [(0, 0)] + [(0, (-s) % factor) for s in arr.shape[1:]]
    return np.pad(arr, pad, mode="edge") if any(p[1] for p in pad) else arr


def _blocks(arr: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) -> (Z, Y/F, X/F, F*F): the pixels of each F x F block on the last axis."""
    z, y, x = arr.shape
    return arr.reshape(z, y // factor, factor, x // factor, factor).transpose(0, 1, 3, 2, 4).reshape(
        z, y // factor, x // factor, factor * factor)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """(Z, Y, X) float -> (Z, ceil(Y/F), ceil(X/F)) float32: mean of each F x F block."""
    if factor == 1:
        return image.astype(np.float32)
    return _blocks(_pad_to_multiple(image.astype(np.float32), factor), factor).mean(-1)


def block_majority(label: np.ndarray, factor: int, num_labels: Optional[int] = None) -> np.ndarray:
    """(Z, Y, X) int -> (Z, ceil(Y/F), ceil(X/F)) uint8: most frequent label of each F x F block,
    ties to the higher label."""
    if factor == 1:
        return label.astype(np.uint8)
    blocks = _blocks(_pad_to_multiple(label.astype(np.int64), factor), factor)
    k = int(num_labels if num_labels is not None else blocks.max() + 1)
    counts = np.stack([(blocks == c).sum(-1) for c in range(k)], -1)  # (Z, Y', X', K)
    # argmax of the reversed counts picks the highest label among the tied maxima
    return (k - 1 - np.argmax(counts[..., ::-1], axis=-1)).astype(np.uint8)


def downsample_sitk(image: sitk.Image, label: Optional[sitk.Image], factor: int
                    ) -> Tuple[sitk.Image, Optional[sitk.Image]]:
    """Both images downsampled in-plane by ``factor``; spacing (x, y) multiplied by it, origin and
    direction kept."""
    if factor == 1:
        return image, label

    def rebuild(arr: np.ndarray, like: sitk.Image) -> sitk.Image:
        out = sitk.GetImageFromArray(arr)
        sx, sy, sz = like.GetSpacing()
        out.SetSpacing((sx * factor, sy * factor, sz))
        out.SetOrigin(like.GetOrigin())
        out.SetDirection(like.GetDirection())
        return out

    img = rebuild(block_mean(sitk.GetArrayFromImage(image), factor), image)
    lab = None if label is None else rebuild(block_majority(sitk.GetArrayFromImage(label), factor), label)
    return img, lab


def downsampling_reader(read_case: Callable, factor: int) -> Callable:
    """Wrap a ``read_case(case, with_label)`` so that it returns downsampled images."""
    if factor == 1:
        return read_case

    def read(case: str, with_label: bool):
        image, label = read_case(case, with_label)
        return downsample_sitk(image, label, factor)

    return read
