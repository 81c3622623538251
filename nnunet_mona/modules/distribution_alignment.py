"""Class-distribution alignment of the teacher's probabilities (ReMixMatch's distribution alignment, per pixel).

Why: pseudo-labelling confirms the teacher's bias. A teacher that under-segments a structure on the unlabeled
images (a thin wall with less contrast on another scanner, a small lesion, the myocardium with one labeled
patient) labels those pixels background with high confidence, and the student learns to miss them too. The
labeled data say how much of an image each class covers; alignment rescales the teacher's class probabilities
so that their running average over the unlabeled pixels matches that share:

    p'(k | x) ∝ p(k | x) · labeled_share[k] / teacher_share[k]

``labeled_share`` is a running mean of the labeled targets' class fractions, ``teacher_share`` one of the
teacher's (unaligned) mean probabilities on the valid unlabeled pixels. Both start at the first batch and are
checkpointed, so a resumed run aligns exactly as an uninterrupted one.
"""
from typing import Dict, Optional

import torch


class ClassDistributionAlignment:
    def __init__(self, num_classes: int, momentum: float = 0.99, min_share: float = 1e-4):
        self.num_classes = num_classes
        self.momentum = momentum
        self.min_share = min_share  # keeps the ratio finite for a class absent so far
        self.labeled_share: Optional[torch.Tensor] = None  # (K,)
        self.teacher_share: Optional[torch.Tensor] = None  # (K,)

    def _running(self, old: Optional[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
        return new.clone() if old is None else self.momentum * old.to(new.device) + (1 - self.momentum) * new

    @torch.no_grad()
    def observe_labeled(self, target: torch.Tensor) -> None:
        """``target`` (B, 1, *P) integer labels; values outside [0, K) (nnU-Net's ignore label) are not counted."""
        labels = target.long().flatten()
        labels = labels[(labels >= 0) & (labels < self.num_classes)]
        if labels.numel():
            share = torch.bincount(labels, minlength=self.num_classes).float() / labels.numel()
            self.labeled_share = self._running(self.labeled_share, share)

    @torch.no_grad()
    def align(self, probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``probs`` (B, K, *P) teacher softmax, ``valid`` (B, *P) bool (not padding) -> aligned probabilities
        (B, K, *P), rows summing to 1. Updates the teacher's running share first (from ``probs``)."""
        weights = valid.unsqueeze(1).float()
        count = weights.sum()
        if count > 0:
            share = (probs * weights).sum(dim=[d for d in range(probs.ndim) if d != 1]) / count
            self.teacher_share = self._running(self.teacher_share, share)
        if self.labeled_share is None or self.teacher_share is None:
            return probs
        ratio = self.labeled_share.to(probs.device).clamp_min(self.min_share) / \
            self.teacher_share.to(probs.device).clamp_min(self.min_share)
        aligned = probs * ratio.view(1, -1, *([1] * (probs.ndim - 2)))
        return aligned / aligned.sum(dim=1, keepdim=True)

    def state_dict(self) -> Dict[str, Optional[torch.Tensor]]:
        return {"labeled_share": self.labeled_share, "teacher_share": self.teacher_share}

    def load_state_dict(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        self.labeled_share = state.get("labeled_share")
        self.teacher_share = state.get("teacher_share")
