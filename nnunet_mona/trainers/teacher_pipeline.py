"""From the weak view to the student's targets: the EMA teacher's prediction, its distribution alignment, the
confidence a pseudo-label needs, and the student's unlabeled input (which mixing methods override)."""
from typing import Dict, Union

import torch


class TeacherPipelineMixin:
    """Needs ``teacher``, ``autocast_context()``, ``distribution_alignment`` and ``adaptive_threshold`` (None when
    unused)."""

    @torch.no_grad()
    def teacher_predict(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Teacher on ``images`` (B, C, *P): fp32 'probs' (B, K, *P), 'confidence' (B, *P),
        'pseudo_label' (B, *P) long."""
        with self.autocast_context():
            logits = self.teacher(images)
        probs = torch.softmax(logits.float(), dim=1)
        confidence, pseudo_label = probs.max(dim=1)
        return {"logits": logits.float(), "probs": probs, "confidence": confidence, "pseudo_label": pseudo_label}

    def _aligned_teacher_output(self, teacher_out: Dict[str, torch.Tensor], target, valid: torch.Tensor
                                ) -> Dict[str, torch.Tensor]:
        """``teacher_out`` with distribution-aligned 'probs' (B, K, *P) and the 'confidence' / 'pseudo_label'
        (B, *P) that follow from them; ``target``: the labeled batch's target (deep supervision: full res first)."""
        self.distribution_alignment.observe_labeled(target[0] if isinstance(target, (list, tuple)) else target)
        probs = self.distribution_alignment.align(teacher_out["probs"], valid)
        confidence, pseudo_label = probs.max(dim=1)
        return {**teacher_out, "probs": probs, "confidence": confidence, "pseudo_label": pseudo_label}

    def pseudo_label_threshold(self, pseudo_label: torch.Tensor, ceiling: float) -> Union[float, torch.Tensor]:
        """The confidence a pixel's pseudo-label needs: ``ceiling`` (the trainer's fixed threshold), or with
        ``class_adaptive_threshold`` a (B, *P) map of each pixel's class threshold for ``pseudo_label`` (B, *P)."""
        if self.adaptive_threshold is None:
            return ceiling
        return self.adaptive_threshold.threshold_map(pseudo_label, ceiling)

    def make_student_unlabeled_input(self, unlabeled: Dict[str, torch.Tensor],
                                     teacher_out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The student's unlabeled input and its per-pixel targets. Default: the strong view with
        the teacher's predictions on the weak view (same geometry). Mixing methods (cutmix...)
        override this and must transform images, pseudo-labels, confidences and masks alike.

        Returns a dict with 'image' (B, C, *P), 'probs' (B, K, *P), 'confidence' (B, *P),
        'pseudo_label' (B, *P), 'valid' (B, *P) bool."""
        return {"image": unlabeled["data_strong"], "probs": teacher_out["probs"],
                "confidence": teacher_out["confidence"], "pseudo_label": teacher_out["pseudo_label"],
                "valid": unlabeled["valid_mask"][:, 0]}
