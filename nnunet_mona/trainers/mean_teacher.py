"""Mean Teacher (Tarvainen & Valpola, 2017) inside nnU-Net: the classic semi-supervised baseline.

The EMA teacher predicts the weak view of an unlabeled patch; the student, on the strong view of
the same patch (same geometry), is pulled towards it: by default cross-entropy to the teacher's
confident pseudo-labels, or the original soft softmax-MSE (``nnUNetTrainerMeanTeacher_MSE``).
"""
from typing import Dict

import torch

from nnunet_mona.losses.consistency import masked_pseudo_label_ce, softmax_mse
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    consistency: str = "masked_ce"  # or "mse"
    confidence_threshold: float = 0.9
    loss_weights = {"unsup": 1.0}
    loss_term_names = ("unsup", "confident_fraction")
    diagnostic_names = ("confident_fraction",)

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        # deep supervision: the consistency uses the full-resolution output only
        logits = student_outputs_unlabeled[0] if isinstance(student_outputs_unlabeled, (list, tuple)) \
            else student_outputs_unlabeled
        valid = student_input["valid"]
        confident_fraction = ((student_input["confidence"] >= self.confidence_threshold) & valid).sum() / \
            valid.sum().clamp_min(1)
        if self.consistency == "masked_ce":
            unsup, _ = masked_pseudo_label_ce(logits, student_input["pseudo_label"], student_input["confidence"],
                                              valid, self.confidence_threshold)
        elif self.consistency == "mse":
            unsup = softmax_mse(logits, student_input["probs"], valid)
        else:
            raise ValueError(f"unknown consistency {self.consistency!r}: use 'masked_ce' or 'mse'")
        return {"unsup": unsup, "confident_fraction": confident_fraction.detach().float()}


class nnUNetTrainerMeanTeacher_MSE(nnUNetTrainerMeanTeacher):
    """The original soft consistency: MSE between student and teacher softmax."""
    consistency = "mse"
    loss_weights = {"unsup": 10.0}
