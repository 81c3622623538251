"""Copy-paste between labeled and unlabeled patches in both directions (after BCP, Bai et al., CVPR 2023): a mix
mode of the student's unlabeled view.

Why: with one or a few labeled patients the unlabeled patients look different (another heart, contrast, size),
the teacher under-segments them, and pseudo-labels alone teach the student to miss the structure there. Pasting
a box of a labeled patch, with its ground truth, into an unlabeled patch (and an unlabeled box, with its
pseudo-labels, into a labeled patch) shows the student labeled anatomy in unlabeled surroundings and unlabeled
anatomy in labeled surroundings, so both kinds of patch are learnt through the same images.

Image b of the unlabeled batch (B_u) is paired with labeled patch ``b mod N_l``. A box covering
``area_fraction`` of the patch is drawn per image; for the first ceil(B_u / 2) images the *box* comes from the
labeled patch (inward), for the others everything *outside* the box does (outward). Pixels from the labeled
patch carry its label with confidence 1 (probability one-hot); labels outside [0, K) (nnU-Net's ignore label)
become -1 / invalid.
"""
from typing import Dict, Optional

import torch

from nnunet_mona.augment.mixing import cutmix_box_masks


def copy_paste_with_labeled(image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor,
                            probs: torch.Tensor, valid: torch.Tensor, labeled_image: torch.Tensor,
                            labeled_target: torch.Tensor, area_fraction: float = 0.5,
                            generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Mix each unlabeled patch with a labeled one.

    Args:
        image: (B_u, C, *P) strong view of the unlabeled patches; pseudo_label (B_u, *P) long; confidence
            (B_u, *P); probs (B_u, K, *P) teacher probabilities; valid (B_u, *P) bool.
        labeled_image: (N_l, C, *P) the labeled patches of the step; labeled_target: (N_l, 1, *P) or (N_l, *P)
            integer labels (full resolution).
        area_fraction: box area as a fraction of the patch.
    Returns:
        {'image', 'pseudo_label' (-1 where invalid), 'confidence', 'probs', 'valid',
         'from_labeled' ((B_u, *P) bool, True = pixel of the labeled patch), 'labeled_index' ((B_u,) long)}.
    """
    b_u, k, spatial, device = image.shape[0], probs.shape[1], tuple(image.shape[2:]), image.device
    n_l = labeled_image.shape[0]
    if n_l == 0:
        raise ValueError("copy-paste needs labeled patches in the step (got none)")
    if tuple(labeled_image.shape[2:]) != spatial or labeled_image.shape[1] != image.shape[1]:
        raise ValueError(f"labeled patches {tuple(labeled_image.shape)} do not match the unlabeled "
                         f"{tuple(image.shape)} (channels and patch size must agree)")
    labels = labeled_target[:, 0] if labeled_target.ndim == image.ndim else labeled_target
    labels = labels.long()
    labeled_index = torch.arange(b_u, device=device) % n_l
    box = cutmix_box_masks(b_u, spatial, area_fraction, generator=generator, device=device)
    inward = (torch.arange(b_u, device=device) < (b_u + 1) // 2).view(-1, *([1] * len(spatial)))
    from_labeled = torch.where(inward, box, ~box)  # (B_u, *P)

    gt = labels[labeled_index]
    gt_valid = (gt >= 0) & (gt < k)
    gt = torch.where(gt_valid, gt, torch.full_like(gt, -1))
    gt_probs = torch.nn.functional.one_hot(gt.clamp_min(0), k).movedim(-1, 1).to(probs.dtype)

    per_channel = from_labeled.unsqueeze(1)
    mixed_valid = torch.where(from_labeled, gt_valid, valid)
    mixed_label = torch.where(from_labeled, gt, pseudo_label.long())
    return {"image": torch.where(per_channel, labeled_image[labeled_index].to(image.dtype), image),
            "pseudo_label": torch.where(mixed_valid, mixed_label, torch.full_like(mixed_label, -1)),
            "confidence": torch.where(from_labeled, torch.ones_like(confidence), confidence),
            "probs": torch.where(per_channel, gt_probs, probs),
            "valid": mixed_valid, "from_labeled": from_labeled, "labeled_index": labeled_index}
