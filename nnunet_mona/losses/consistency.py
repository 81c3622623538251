"""Teacher-student consistency losses of Mean Teacher style methods (pure PyTorch)."""
from typing import Tuple, Union

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
        threshold: confidence needed for a pixel to count: a float or a (B, *S) per-pixel map.
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


def class_balanced_pseudo_label_ce(student_logits: torch.Tensor, pseudo_label: torch.Tensor,
                                   confidence: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cross-entropy to the confident pseudo-labels, each pseudo-class weighing the same.

    The mean CE over the confident pixels of each class present among them, averaged over those classes, times
    the confident fraction (FixMatch scaling, as ``masked_pseudo_label_ce``). Why: the unlabeled stream is
    mostly background, and where the teacher misses a small or rare structure it labels it background with
    high confidence; pixel-averaged, those background targets outweigh every foreground one and teach the
    student to miss the structure too. Here the background's share is 1 / (classes present).

    Shapes as in :func:`masked_pseudo_label_ce`. Returns a scalar (fp32), 0 with the graph kept when no pixel
    is confident.
    """
    ce = F.cross_entropy(student_logits.float(), pseudo_label.long(), reduction="none")
    mask = (confidence >= threshold) & valid
    if not mask.any():
        return student_logits.float().sum() * 0.0
    k = student_logits.shape[1]
    labels = pseudo_label.long()[mask]
    per_class_sum = torch.zeros(k, device=ce.device).index_add_(0, labels, ce[mask])
    counts = torch.bincount(labels, minlength=k).float()
    present = counts > 0
    per_class_mean = per_class_sum[present] / counts[present]
    confident_fraction = mask.sum() / valid.sum().clamp_min(1)
    return per_class_mean.mean() * confident_fraction


def softmax_mse(student_logits: torch.Tensor, teacher_probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Classic Mean Teacher consistency: mean over valid pixels and classes of
    (softmax(student) - teacher_probs)^2. Shapes: logits/probs (B, K, *S), valid (B, *S) bool."""
    diff = (torch.softmax(student_logits.float(), dim=1) - teacher_probs.float()) ** 2
    per_pixel = diff.mean(dim=1)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1)


def masked_pseudo_label_dice(student_logits: torch.Tensor, pseudo_label: torch.Tensor, mask: torch.Tensor,
                             include_background: bool = False, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice loss (1 - mean class Dice) of the student against hard pseudo-labels on ``mask``.

    The Dice is computed over the whole batch per class (nnU-Net's batch Dice), so a small
    foreground structure weighs as much as the background: it counters the unlabeled stream's
    background majority, which dominates a per-pixel cross-entropy.

    Args:
        student_logits: (B, K, *S) logits (computed in fp32).
        pseudo_label: (B, *S) long in [0, K) or -1 (ignored).
        mask: (B, *S) bool, the pixels that count (confident and valid).
        include_background: whether class 0 enters the mean (nnU-Net: no).
    Returns:
        scalar in [0, 1]; 0 (connected to the graph) when no pixel counts. Classes with no target
        and no predicted mass on the mask contribute Dice 1 (smooth / smooth).
    """
    probs = torch.softmax(student_logits.float(), dim=1)
    k = probs.shape[1]
    m = (mask & (pseudo_label >= 0)).unsqueeze(1).float()  # (B, 1, *S)
    if m.sum() == 0:
        return student_logits.float().sum() * 0.0
    onehot = torch.zeros_like(probs).scatter_(1, pseudo_label.clamp_min(0).long().unsqueeze(1), 1.0)
    reduce_dims = [0] + list(range(2, probs.ndim))
    intersection = (probs * onehot * m).sum(reduce_dims)
    denominator = (probs * m).sum(reduce_dims) + (onehot * m).sum(reduce_dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)  # (K,)
    dice = dice if include_background or k == 1 else dice[1:]
    return 1.0 - dice.mean()


def confident_pseudo_label_losses(student_logits: torch.Tensor, pseudo_label: torch.Tensor,
                                  confidence: torch.Tensor, valid: torch.Tensor,
                                  threshold: Union[float, torch.Tensor], with_dice: bool = True,
                                  class_balanced: bool = False) -> dict:
    """The weak-to-strong pseudo-label loss of Mean Teacher and MONA: {'unsup': masked CE (FixMatch
    normalisation; with ``class_balanced`` every pseudo-class weighs the same,
    :func:`class_balanced_pseudo_label_ce`), 'unsup_dice': batch soft Dice on the confident pixels (if
    ``with_dice``)}.

    Shapes as in :func:`masked_pseudo_label_ce`; ``pseudo_label`` may hold -1 (ignored: cut out or
    outside the image), such pixels count neither as valid nor as confident. ``threshold``: a float, or a
    (B, *S) map of per-pixel thresholds (class-adaptive thresholds).
    """
    valid = valid & (pseudo_label >= 0)
    if class_balanced:
        ce = class_balanced_pseudo_label_ce(student_logits, pseudo_label.clamp_min(0), confidence, valid, threshold)
    else:
        ce, _ = masked_pseudo_label_ce(student_logits, pseudo_label.clamp_min(0), confidence, valid, threshold)
    terms = {"unsup": ce}
    if with_dice:
        terms["unsup_dice"] = masked_pseudo_label_dice(student_logits, pseudo_label, (confidence >= threshold) & valid)
    return terms
