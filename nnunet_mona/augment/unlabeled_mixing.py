"""One call that mixes an unlabeled batch and its teacher targets alike (CutMix / CutOut / ClassMix).

Used by every trainer whose student sees a mixed strong view (Mean Teacher, MONA): the strong
images, the teacher's pseudo-labels, confidences, probabilities and the valid mask all go through
the same mask and partner, so an image pixel and its target never disagree.
"""
from typing import Dict, Optional

import torch

from nnunet_mona.augment.mixing import apply_mix, classmix_masks, cutmix_box_masks, cutout, partner_permutation

MIX_MODES = ("cutmix", "cutout", "classmix", "none")


def mix_unlabeled_batch(mode: str, image: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor,
                        probs: torch.Tensor, valid: torch.Tensor, area_fraction: float = 0.5,
                        generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
    """Mix a batch with ``mode`` ('cutmix' | 'cutout' | 'classmix' | 'none').

    Args:
        image: (B, C, *P) strong view; pseudo_label: (B, *P) long; confidence: (B, *P) float;
        probs: (B, K, *P) teacher probabilities; valid: (B, *P) bool.
        area_fraction: box area of cutmix / cutout as a fraction of the patch.
    Returns:
        {'image', 'pseudo_label' (-1 where invalid or cut out), 'confidence', 'probs', 'valid',
        'mix_mask' ((B, *P) bool, True = from the partner / cut out; None for 'none' or B < 2 mixing),
        'partner' ((B,) long; identity when nothing was mixed)}.
    """
    if mode not in MIX_MODES:
        raise ValueError(f"unknown mix mode {mode!r}: use one of {MIX_MODES}")
    b, spatial, device = image.shape[0], tuple(image.shape[2:]), image.device
    mix_mask, partner = None, torch.arange(b, device=device)
    if mode == "cutout":
        mix_mask = cutmix_box_masks(b, spatial, area_fraction, generator=generator, device=device)
        image, pseudo_label, confidence, probs, valid = cutout(image, pseudo_label, confidence, mix_mask,
                                                               extra=(probs, valid))
    elif mode in ("cutmix", "classmix") and b >= 2:
        partner = partner_permutation(b, generator=generator, device=device)
        mix_mask = cutmix_box_masks(b, spatial, area_fraction, generator=generator, device=device) \
            if mode == "cutmix" else classmix_masks(pseudo_label, generator=generator, num_classes=probs.shape[1])
        image, pseudo_label, confidence, probs, valid = apply_mix(image, pseudo_label, confidence, mix_mask,
                                                                  partner, extra=(probs, valid))
    pseudo_label = torch.where(valid, pseudo_label, torch.full_like(pseudo_label, -1))
    return {"image": image, "pseudo_label": pseudo_label, "confidence": confidence, "probs": probs,
            "valid": valid, "mix_mask": mix_mask, "partner": partner}
