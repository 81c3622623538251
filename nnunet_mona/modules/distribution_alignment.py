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

The two means forget at different rates. The labeled share is stationary (random patches of fixed labels):
``momentum`` 0.99. The teacher's share is not: it starts near uniform (a random network) and falls to the true
background share within a few epochs, so a slow mean keeps the random start's foreground share for hundreds of
steps and suppresses the foreground that alignment should restore. ``teacher_momentum`` 0.9 follows the teacher
within ~10 steps; the default is 0.99, the setting of the results in docs/results.md, and the other value is a
trainer attribute (``alignment_teacher_momentum``, see docs/configuration.md).
"""
from typing import Dict, Iterable, Optional

import numpy as np
import torch


class ClassDistributionAlignment:
    def __init__(self, num_classes: int, momentum: float = 0.99, min_share: float = 1e-4,
                 teacher_momentum: float = 0.99, labeled_share: Optional[torch.Tensor] = None):
        """``labeled_share`` (K,): a fixed target (e.g. :func:`label_map_class_share`); the labeled patches are then
        not observed."""
        self.fixed_labeled_share = labeled_share is not None
        self.num_classes = num_classes
        self.momentum = momentum  # labeled share
        self.teacher_momentum = teacher_momentum
        self.min_share = min_share  # keeps the ratio finite for a class absent so far
        self.labeled_share: Optional[torch.Tensor] = \
            None if labeled_share is None else labeled_share.float().clone()  # (K,)
        self.teacher_share: Optional[torch.Tensor] = None  # (K,)

    @staticmethod
    def _running(old: Optional[torch.Tensor], new: torch.Tensor, momentum: float) -> torch.Tensor:
        return new.clone() if old is None else momentum * old.to(new.device) + (1 - momentum) * new

    @torch.no_grad()
    def observe_labeled(self, target: torch.Tensor) -> None:
        """``target`` (B, 1, *P) integer labels; values outside [0, K) (nnU-Net's ignore label) are not counted.
        Nothing happens with a fixed target."""
        if self.fixed_labeled_share:
            return
        labels = target.long().flatten()
        labels = labels[(labels >= 0) & (labels < self.num_classes)]
        if labels.numel():
            share = torch.bincount(labels, minlength=self.num_classes).float() / labels.numel()
            self.labeled_share = self._running(self.labeled_share, share, self.momentum)

    @torch.no_grad()
    def align(self, probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``probs`` (B, K, *P) teacher softmax, ``valid`` (B, *P) bool (not padding) -> aligned probabilities
        (B, K, *P), rows summing to 1. Updates the teacher's running share first (from ``probs``)."""
        weights = valid.unsqueeze(1).float()
        count = weights.sum()
        if count > 0:
            share = (probs * weights).sum(dim=[d for d in range(probs.ndim) if d != 1]) / count
            self.teacher_share = self._running(self.teacher_share, share, self.teacher_momentum)
        if self.labeled_share is None or self.teacher_share is None:
            return probs
        ratio = self.labeled_share.to(probs.device).clamp_min(self.min_share) / \
            self.teacher_share.to(probs.device).clamp_min(self.min_share)
        aligned = probs * ratio.view(1, -1, *([1] * (probs.ndim - 2)))
        return aligned / aligned.sum(dim=1, keepdim=True)

    def state_dict(self) -> Dict[str, Optional[torch.Tensor]]:
        return {"labeled_share": self.labeled_share, "teacher_share": self.teacher_share}

    def load_state_dict(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        if not self.fixed_labeled_share:
            self.labeled_share = state.get("labeled_share")
        self.teacher_share = state.get("teacher_share")


def label_map_class_share(segmentations: Iterable[np.ndarray], num_classes: int, slice_axis: Optional[int] = None
                          ) -> torch.Tensor:
    """(K,) class share of whole label maps, the mean over the maps: with ``slice_axis`` (2d training) each map's
    share is the mean over its slices along that axis, so every slice counts alike, as nnU-Net's 2d loader draws
    them; else the share of its voxels. Values outside [0, K) are not counted.

    Unlike the running share of the labeled training patches, this has no foreground oversampling and no spatial
    augmentation in it: the share a random slice (or volume) of the labeled cases has."""
    shares = []
    for seg in segmentations:
        seg = np.asarray(seg)
        parts = [seg] if slice_axis is None else [np.take(seg, i, axis=slice_axis) for i in range(seg.shape[slice_axis])]
        per_part = []
        for part in parts:
            values = part[(part >= 0) & (part < num_classes)].astype(np.int64).ravel()
            if values.size:
                per_part.append(np.bincount(values, minlength=num_classes) / values.size)
        if per_part:
            shares.append(np.mean(per_part, 0))
    if not shares:
        raise ValueError("no labeled voxel in the given label maps")
    return torch.tensor(np.mean(shares, 0), dtype=torch.float32)
