"""Batch mixing of unlabeled data: CutMix, CutOut and ClassMix (MONA fine-tuning, spec A.3.2 step 3).

Convention used everywhere in this file: a *mix mask* is a bool tensor of shape (B, *S)
(S = (H, W) or (D, H, W)); ``True`` means "this pixel of sample b is taken from its partner
``partner_index[b]``" (CutMix/ClassMix) or "this pixel is cut out" (CutOut). The same mask is
applied alike to the image, the pseudo-labels, the confidences and any extra per-pixel tensor,
so that image content and its (pseudo-)supervision never disagree.

Everything is vectorised over the batch (no Python loop over samples, no host round trip) and
works on any device; randomness comes from the optional ``generator`` argument.
"""
from typing import Optional, Sequence, Tuple

import torch

from nnunet_mona.augment._random import check_spatial_dims, device_generator, uniform

__all__ = ["partner_permutation", "cutmix_box_masks", "apply_mix", "cutout", "classmix_masks"]


def partner_permutation(batch_size: int, generator: Optional[torch.Generator] = None,
                        device=None) -> torch.Tensor:
    """Random partner index for every sample, with ``partner[b] != b`` whenever ``batch_size >= 2``.

    The permutation is a uniformly random single cycle (a random ordering of the batch in which
    every sample's partner is the next one), hence a derangement. MONA's fixed rule
    ``partner = (b + 1) mod B`` is one such cycle. For ``batch_size == 1`` there is nobody else
    and the result is ``[0]``: mixing then degenerates to the identity (the caller may want to
    skip mixing in that case).

    Returns:
        long tensor (B,) on ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    g = device_generator(generator, device)
    order = torch.randperm(batch_size, generator=g, device=device)
    partner = torch.empty_like(order)
    partner[order] = torch.roll(order, shifts=-1)
    return partner


def cutmix_box_masks(batch_size: int, spatial_shape: Sequence[int], area_fraction: float = 0.5,
                     generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """One random axis-aligned box per sample covering ``area_fraction`` of the patch.

    2D, as MONA: the box width w is drawn uniformly in [f*W, W], its height is
    h = round(f*H*W / w) (so h lies in [f*H, H]), and the box is placed uniformly inside the
    patch. With f = 0.5 this is MONA's "rectangle of half the patch area". 3D: side fractions
    are drawn the same way axis by axis (last axis first) so that their product is f.
    The realised area differs from f only by the rounding of the side lengths.

    Args:
        batch_size: B.
        spatial_shape: S = (H, W) or (D, H, W).
        area_fraction: f in (0, 1].
    Returns:
        bool tensor (B, *S), True inside the box.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    check_spatial_dims(len(spatial_shape), "cutmix_box_masks")
    if not 0.0 < area_fraction <= 1.0:
        raise ValueError(f"area_fraction must be in (0, 1], got {area_fraction}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    g = device_generator(generator, device)
    nd = len(spatial_shape)
    remaining = torch.full((batch_size,), float(area_fraction), device=device, dtype=torch.float32)
    fractions = [None] * nd
    for ax in range(nd - 1, -1, -1):  # last axis first (W in 2D, as MONA draws the width first)
        if ax == 0:
            f = remaining
        else:
            f = uniform((batch_size,), remaining, torch.ones_like(remaining), g, device, torch.float32)
        fractions[ax] = f
        remaining = remaining / f
    mask = torch.ones((batch_size,) + spatial_shape, dtype=torch.bool, device=device)
    for ax, n in enumerate(spatial_shape):
        size = torch.clamp(torch.round(fractions[ax] * n), 1, n).long()  # (B,)
        start = torch.floor(torch.rand(batch_size, generator=g, device=device) * (n - size + 1)).long()
        start = torch.minimum(start, n - size)
        coords = torch.arange(n, device=device)
        inside = (coords[None, :] >= start[:, None]) & (coords[None, :] < (start + size)[:, None])  # (B, n)
        view = [batch_size] + [1] * nd
        view[1 + ax] = n
        mask = mask & inside.view(view)
    return mask


def _expand_mask(mask: torch.Tensor, t: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcast a (B, *S) mask to ``t`` of shape (B, *S) or (B, C, *S)."""
    if t.shape[0] != mask.shape[0] or tuple(t.shape[-(mask.ndim - 1):]) != tuple(mask.shape[1:]):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, incompatible with mask {tuple(mask.shape)}")
    if t.ndim == mask.ndim:
        return mask
    if t.ndim == mask.ndim + 1:
        return mask.unsqueeze(1)
    raise ValueError(f"{name} must have shape (B, *S) or (B, C, *S), got {tuple(t.shape)}")


def apply_mix(images: torch.Tensor, pseudo_labels: Optional[torch.Tensor], confidences: Optional[torch.Tensor],
              mask: torch.Tensor, partner_index: torch.Tensor,
              extra: Sequence[Optional[torch.Tensor]] = ()) -> Tuple[Optional[torch.Tensor], ...]:
    """Mix every tensor with its partner's copy inside ``mask`` (CutMix / ClassMix paste).

    ``out[b] = where(mask[b], x[partner_index[b]], x[b])`` for images, pseudo-labels,
    confidences and each tensor of ``extra`` alike. Inputs are not modified.

    Args:
        images: (B, C, *S) any dtype.
        pseudo_labels: (B, *S) long, or None.
        confidences: (B, *S) float, or None.
        mask: (B, *S) bool, True = take the partner's pixel.
        partner_index: (B,) long.
        extra: further per-pixel tensors, each (B, *S) or (B, C', *S) (e.g. a valid mask).
    Returns:
        tuple ``(images, pseudo_labels, confidences, *extra)`` of mixed copies (None stays None).
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    check_spatial_dims(mask.ndim - 1, "apply_mix mask")
    partner_index = partner_index.to(device=mask.device, dtype=torch.long)
    if partner_index.shape != (mask.shape[0],):
        raise ValueError(f"partner_index must have shape ({mask.shape[0]},), got {tuple(partner_index.shape)}")
    out = []
    for name, t in [("images", images), ("pseudo_labels", pseudo_labels), ("confidences", confidences)] + \
            [(f"extra[{i}]", e) for i, e in enumerate(extra)]:
        if t is None:
            out.append(None)
            continue
        m = _expand_mask(mask, t, name)
        out.append(torch.where(m, t[partner_index], t))
    return tuple(out)


def cutout(images: torch.Tensor, pseudo_labels: Optional[torch.Tensor], confidences: Optional[torch.Tensor],
           mask: torch.Tensor, ignore_label: int = -1, fill_value: float = 0.0,
           extra: Sequence[Optional[torch.Tensor]] = ()) -> Tuple[Optional[torch.Tensor], ...]:
    """CutOut: inside ``mask`` set the image to ``fill_value``, the label to ``ignore_label`` and
    the confidence to 0 (extra tensors are set to 0/False there).

    Note: on nnU-Net z-scored data ``fill_value = 0`` is the image mean intensity, not black.

    Args:
        images: (B, C, *S); pseudo_labels: (B, *S) long or None; confidences: (B, *S) or None;
        mask: (B, *S) bool, True = cut out (e.g. from :func:`cutmix_box_masks`);
        extra: further per-pixel tensors (B, *S) or (B, C', *S).
    Returns:
        tuple ``(images, pseudo_labels, confidences, *extra)`` of new tensors.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    check_spatial_dims(mask.ndim - 1, "cutout mask")
    img = images.masked_fill(_expand_mask(mask, images, "images"), fill_value)
    lab = None if pseudo_labels is None else pseudo_labels.masked_fill(
        _expand_mask(mask, pseudo_labels, "pseudo_labels"), ignore_label)
    conf = None if confidences is None else confidences.masked_fill(
        _expand_mask(mask, confidences, "confidences"), 0)
    ext = tuple(None if e is None else e.masked_fill(_expand_mask(mask, e, f"extra[{i}]"), 0)
                for i, e in enumerate(extra))
    return (img, lab, conf) + ext


def classmix_masks(pseudo_labels: torch.Tensor, generator: Optional[torch.Generator] = None,
                   num_classes: Optional[int] = None) -> torch.Tensor:
    """ClassMix masks: for each sample keep a random half of its present classes, take the rest
    of the pixels from the partner.

    For sample b with n_b distinct labels present, ceil(n_b / 2) of them are chosen uniformly at
    random (the ClassMix convention; with a single class it is kept, i.e. no mixing). Pixels
    whose label is chosen stay from sample b (mask False); all other pixels, including ignore
    labels (< 0) and labels >= ``num_classes``, come from the partner (mask True). Whole classes are always kept or replaced.

    Args:
        pseudo_labels: (B, *S) integer labels (negative = ignore).
        num_classes: number of classes K (labels in [0, K)); if None it is computed from the
            data (one device-to-host synchronisation).
    Returns:
        bool tensor (B, *S), True = take the partner's pixel (feed to :func:`apply_mix`).
    """
    if pseudo_labels.dtype.is_floating_point or pseudo_labels.dtype == torch.bool:
        raise TypeError(f"pseudo_labels must be an integer tensor, got {pseudo_labels.dtype}")
    check_spatial_dims(pseudo_labels.ndim - 1, "classmix_masks")
    device = pseudo_labels.device
    B = pseudo_labels.shape[0]
    if num_classes is None:
        num_classes = int(pseudo_labels.max().item()) + 1 if pseudo_labels.numel() else 1
    K = max(int(num_classes), 1)
    flat = pseudo_labels.reshape(B, -1).long()
    valid = (flat >= 0) & (flat < K)
    idx = torch.where(valid, flat, torch.full_like(flat, K))  # invalid pixels -> dummy class K
    present = torch.zeros(B, K + 1, dtype=torch.bool, device=device)
    present.scatter_(1, idx, True)  # "unique" without a host round trip
    present = present[:, :K]
    g = device_generator(generator, device)
    scores = torch.rand(B, K, generator=g, device=device)
    scores = torch.where(present, scores, torch.full_like(scores, 2.0))  # absent classes sort last
    ranks = torch.argsort(torch.argsort(scores, dim=1), dim=1)  # rank of each class, 0 = first
    n_keep = (present.sum(1) + 1) // 2  # ceil(n_b / 2)
    keep_class = present & (ranks < n_keep[:, None])  # (B, K)
    keep_class = torch.cat([keep_class, keep_class.new_zeros(B, 1)], dim=1)  # dummy class never kept
    keep_pixel = torch.gather(keep_class, 1, idx)
    return (~keep_pixel).reshape(pseudo_labels.shape)
