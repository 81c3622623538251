"""Per-class pseudo-label thresholds that follow how sure the teacher is of each class (after FreeMatch's
self-adaptive class thresholds; the trainer's fixed threshold is the ceiling).

Why: with very few labeled patients the teacher is 0.99-sure of the background and never 0.9-sure of a thin
structure on the unlabeled images, so a fixed threshold of 0.9 passes background pseudo-labels only (no confident
foreground pixel for a large part of a short training, with or without distribution alignment) and the student
is taught to miss the structure. Here each
class gets the threshold

    tau_c = max(floor, ceiling * conf_c / max_k conf_k)

where ``conf_c`` is a running mean of the teacher's confidence on the valid pixels it labels ``c``: a class the
teacher is as sure of as the surest class keeps the ceiling, a class it is half as sure of needs half of it.
A class not seen yet keeps the ceiling. Checkpointed, so a resumed run thresholds as an uninterrupted one.
"""
from typing import Dict, Optional

import torch


class ClassAdaptiveThreshold:
    def __init__(self, num_classes: int, momentum: float = 0.9, floor: float = 0.5):
        self.num_classes = num_classes
        self.momentum = momentum
        self.floor = floor  # below 1/2 a pixel's label may not even be its majority class (K > 2)
        self.class_confidence: Optional[torch.Tensor] = None  # (K,), NaN: class not seen yet

    @torch.no_grad()
    def observe(self, confidence: torch.Tensor, pseudo_label: torch.Tensor, valid: torch.Tensor) -> None:
        """``confidence`` (B, *P) float, ``pseudo_label`` (B, *P) long, ``valid`` (B, *P) bool: the teacher's
        (aligned) output on the unlabeled patches; updates each class seen in it."""
        labels = pseudo_label[valid].long()
        conf = confidence[valid].float()
        keep = (labels >= 0) & (labels < self.num_classes)
        labels, conf = labels[keep], conf[keep]
        count = torch.bincount(labels, minlength=self.num_classes).float()
        total = torch.bincount(labels, weights=conf, minlength=self.num_classes)
        batch_mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
        if self.class_confidence is None:
            self.class_confidence = batch_mean
            return
        old = self.class_confidence.to(batch_mean.device)
        updated = torch.where(torch.isnan(old), batch_mean, self.momentum * old + (1 - self.momentum) * batch_mean)
        self.class_confidence = torch.where(torch.isnan(batch_mean), old, updated)

    def thresholds(self, ceiling: float) -> torch.Tensor:
        """(K,) thresholds for the fixed threshold ``ceiling``."""
        if self.class_confidence is None or torch.isnan(self.class_confidence).all():
            return torch.full((self.num_classes,), float(ceiling))
        conf = self.class_confidence
        relative = conf / conf[~torch.isnan(conf)].max()
        tau = (ceiling * relative).clamp(min=min(self.floor, ceiling), max=ceiling)
        return torch.where(torch.isnan(tau), torch.full_like(tau, float(ceiling)), tau)

    def threshold_map(self, pseudo_label: torch.Tensor, ceiling: float) -> torch.Tensor:
        """(B, *P) pseudo-labels (-1: ignore) -> (B, *P) float threshold of each pixel's class."""
        tau = self.thresholds(ceiling).to(pseudo_label.device)
        return tau[pseudo_label.long().clamp(0, self.num_classes - 1)]

    def state_dict(self) -> Dict[str, Optional[torch.Tensor]]:
        return {"class_confidence": self.class_confidence}

    def load_state_dict(self, state: Dict[str, Optional[torch.Tensor]]) -> None:
        self.class_confidence = state.get("class_confidence")
