"""Binary segmentation metrics with medpy's definitions, written with scipy.ndimage (medpy is not a dependency).

All functions take boolean arrays of equal shape (any dimensionality) and an optional ``spacing`` (one value per
array axis, same order as the array axes; ``None`` = 1 per axis, i.e. distances in voxels).

Definitions (``medpy.metric.binary``, connectivity 1):

* surface of a mask = the mask minus its binary erosion with the cross-shaped structuring element (the image
  border counts as background, so a mask touching the border has a surface there);
* ``surface_distances(a, b)`` = for every surface voxel of ``a`` the Euclidean distance (in the units of
  ``spacing``) to the nearest surface voxel of ``b``;
* ``hd95(pred, gt)`` = 95th percentile of the distances in *both* directions pooled together;
* ``asd(pred, gt)`` = mean of ``surface_distances(pred, gt)`` (one direction: prediction -> reference, as medpy's
  ``asd``; the symmetric version is medpy's ``assd``).

Surface distances are undefined when either mask is empty; these functions then raise ``ValueError`` (the
protocols in :mod:`nnunet_mona.benchmark.evaluate` decide what to report instead).
"""
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2 |P & G| / (|P| + |G|); NaN when both are empty (the caller decides the convention)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    denominator = int(pred.sum()) + int(gt.sum())
    if denominator == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(pred, gt).sum()) / denominator


def surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask (mask minus its erosion with connectivity 1)."""
    mask = mask.astype(bool)
    structure = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=structure, iterations=1)


def _check_spacing(spacing: Optional[Sequence[float]], ndim: int) -> Optional[np.ndarray]:
    if spacing is None:
        return None
    spacing = np.asarray(spacing, dtype=np.float64)
    if spacing.shape != (ndim,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must hold {ndim} positive values (one per array axis), got {spacing.tolist()}")
    return spacing


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Distances from each surface voxel of ``a`` to the nearest surface voxel of ``b`` (1D array)."""
    a, b = a.astype(bool), b.astype(bool)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise ValueError("surface distances are undefined for an empty mask")
    sampling = _check_spacing(spacing, a.ndim)
    # distance of every voxel to the nearest surface voxel of b (EDT measures distance to the nearest zero)
    distance_to_b = distance_transform_edt(~surface(b), sampling=sampling)
    return distance_to_b[surface(a)]


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """95th percentile of the pooled surface distances pred -> gt and gt -> pred (medpy ``hd95``)."""
    pooled = np.concatenate([surface_distances(pred, gt, spacing), surface_distances(gt, pred, spacing)])
    return float(np.percentile(pooled, 95))


def asd(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Average surface distance from the prediction to the reference (medpy ``asd``, one direction)."""
    return float(surface_distances(pred, gt, spacing).mean())
