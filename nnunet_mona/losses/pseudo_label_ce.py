"""Confidence-weighted pseudo-label cross-entropy (MONA fine-tuning L_unsup, method_spec A.3.3(2)).

Every valid pseudo-labelled pixel contributes; the CE of image b is scaled by w_b, the fraction
of its valid pixels whose teacher confidence is >= ``threshold`` (ReCo style: no per-pixel mask).
Difference from the official code: the code averages over pixels with CE > 0; here the mean is
over all valid pixels (identical unless a pixel's CE is exactly 0).
"""
from typing import Optional

import torch
import torch.nn.functional as F


def _valid_pixels(pseudo_labels: torch.Tensor, valid_mask: Optional[torch.Tensor], ignore_index: int) -> torch.Tensor:
    valid = pseudo_labels != ignore_index
    if valid_mask is not None:
        valid = valid & valid_mask.bool()
    return valid


def confident_fraction_per_image(confidences: torch.Tensor, valid: torch.Tensor, threshold: float = 0.97
                                 ) -> torch.Tensor:
    """w_b = #(valid & conf >= threshold) / #valid per image; (B,) float32 in [0, 1] (0 if no valid pixel).

    confidences: (B, *S) in [0, 1]; valid: (B, *S) bool.
    """
    valid = valid.flatten(1)
    confident = (confidences.detach().float().flatten(1) >= threshold) & valid
    return confident.sum(1).float() / valid.sum(1).clamp(min=1).float()


def confidence_weighted_pseudo_label_ce(student_logits: torch.Tensor, pseudo_labels: torch.Tensor,
                                        confidences: torch.Tensor, valid_mask: Optional[torch.Tensor] = None,
                                        threshold: float = 0.97, ignore_index: int = -1) -> torch.Tensor:
    """Mean over valid pixels of w_b * CE(student_logits, pseudo_labels); scalar fp32 >= 0.

    Args:
        student_logits: (B, C, *S) raw logits (any float dtype; computed in fp32).
        pseudo_labels: (B, *S) long in [0, C) or ``ignore_index`` (-1, e.g. cut-out pixels).
        confidences: (B, *S) teacher max-probability in [0, 1]; gets no gradient.
        valid_mask: (B, *S) bool, False = excluded (e.g. padding); None = all pixels.
        threshold: confidence at which a pixel counts as confident (MONA: 0.97).
    Returns 0 (connected to the graph) when no pixel is valid.
    """
    valid = _valid_pixels(pseudo_labels, valid_mask, ignore_index)
    weights = confident_fraction_per_image(confidences, valid, threshold)
    ce = F.cross_entropy(student_logits.float(), pseudo_labels.long().clamp(min=0), reduction="none")
    weighted = ce * weights.view(-1, *([1] * (ce.dim() - 1)))
    n_valid = valid.sum()
    if n_valid == 0:
        return student_logits.float().sum() * 0.0
    return torch.where(valid, weighted, torch.zeros_like(weighted)).sum() / n_valid
