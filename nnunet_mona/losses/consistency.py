"""Teacher-student consistency losses of Mean Teacher style methods (pure PyTorch)."""
from typing import Tuple

import torch
import torch.nn.functional as F


def masked_pseudo_label_ce(student_logits: torch.Tensor, pseudo_label: torch.Tensor, confidence: torch.Tensor,
                           valid: torch.Tensor, threshold: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy to the teacher's hard pseudo-labels where the teacher is confident.

    Args:
        student_logits: (B, K, *S) logits of the student on the strong view.
        pseudo_label: (B, *S) long, the teacher's argmax on the weak view.
        confidence: (B, *S) float in [0, 1], the teacher's max probability.
        valid: (B, *S) bool, pixels inside the image (padding from augmentation is False).
        threshold: confidence needed for a pixel to count.
    Returns:
        (loss, confident_fraction): loss = sum of CE over confident valid pixels / number of valid
        pixels (FixMatch normalisation: fewer confident pixels -> smaller loss), computed in fp32;
        confident_fraction = confident valid pixels / valid pixels (detached, for monitoring).
    """
    ce = F.cross_entropy(student_logits.float(), pseudo_label.long(), reduction="none")
    mask = (confidence >= threshold) & valid
    n_valid = valid.sum().clamp_min(1)
    loss = (ce * mask).sum() / n_valid
    return loss, (mask.sum() / n_valid).detach().float()


def softmax_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Classic Mean Teacher consistency: mean over valid pixels and classes of
    (softmax(student) - teacher_probs)^2. Shapes: logits/probs (B, K, *S), valid (B, *S) bool."""
    diff = (torch.softmax(student_logits.float(), dim=1) - teacher_probs.float()) ** 2
    per_pixel = diff.mean(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)
