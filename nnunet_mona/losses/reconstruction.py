"""Reconstruction consistency of MixCL (method_spec C, design hypothesis (c)).

An auxiliary head decodes the clean (weak, intensity-unaugmented) image from the student's
features of the corrupted (strong, optionally patch-masked) view; the loss is the L1 or L2
distance, averaged over the pixels of ``mask`` and all channels.

* ``reconstruction_loss``: plain (mask = None: every pixel) or masked (e.g. valid pixels only,
  or only the masked-out patches as in masked image modelling). An empty mask gives a zero
  loss with the graph intact. The target is detached.
* ``random_patch_mask``: SimMIM/MAE-style block mask: the patch is cut into cells of
  ``patch_size`` pixels per axis, ``round(ratio * n_cells)`` cells per image are masked
  (exact count, chosen at random). 2D and 3D.
"""
import math
from typing import Optional, Sequence, Union

import torch


def reconstruction_loss(prediction: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                        kind: str = "l1") -> torch.Tensor:
    """Scalar fp32 >= 0.

    Args:
        prediction: (B, C, *S) reconstruction (gradient flows here).
        target: (B, C, *S) image to reconstruct (detached).
        mask: (B, *S) or (B, 1, *S) bool/float weights, or None (all pixels).
        kind: 'l1' (mean absolute error) or 'l2' (mean squared error).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    diff = prediction.float() - target.detach().float()
    if kind == "l1":
        err = diff.abs()
    elif kind == "l2":
        err = diff.pow(2)
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}: use 'l1' or 'l2'")
    if mask is None:
        return err.mean()
    weight = mask.float()
    if weight.dim() == prediction.dim() - 1:
        weight = weight[:, None]
    weight = weight.expand_as(err)
    denominator = weight.sum()
    if denominator <= 0:
        return (prediction.float() * 0.0).sum()
    return (err * weight).sum() / denominator


def random_patch_mask(batch_size: int, spatial_shape: Sequence[int], patch_size: Union[int, Sequence[int]],
                      ratio: float, device=None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, *S) bool, True = masked. Cells of ``patch_size`` (the last ones may be cut at the border)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    spatial_shape = [int(s) for s in spatial_shape]
    patch = [int(patch_size)] * len(spatial_shape) if isinstance(patch_size, int) else [int(p) for p in patch_size]
    grid = [math.ceil(s / p) for s, p in zip(spatial_shape, patch)]
    n_cells = int(math.prod(grid))
    n_masked = int(round(ratio * n_cells))
    scores = torch.rand(batch_size, n_cells, generator=generator,
                        device=generator.device if generator is not None else "cpu")
    cells = torch.zeros(batch_size, n_cells, dtype=torch.bool, device=scores.device)
    if n_masked > 0:
        cells.scatter_(1, scores.argsort(dim=1)[:, :n_masked], True)
    mask = cells.view(batch_size, *grid)
    for axis, p in enumerate(patch):
        mask = mask.repeat_interleave(p, dim=axis + 1)
    crop = (slice(None),) + tuple(slice(0, s) for s in spatial_shape)
    return mask[crop].to(device if device is not None else scores.device)
