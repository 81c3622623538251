"""Mean Teacher (Tarvainen & Valpola, 2017) inside nnU-Net, with today's weak-to-strong recipe.

The EMA teacher predicts the weak view of an unlabeled patch; the student sees the strong view of
the same patch (same geometry), CutMix-ed with another unlabeled patch, and is pulled towards the
teacher's confident pseudo-labels (mixed alike): cross-entropy plus a batch soft Dice on the
confident pixels. The Dice weighs each structure like the background, which the plain
cross-entropy does not: random unlabeled patches are mostly background. The labeled part keeps
the plans' full batch (nnU-Net's own supervised signal per step is unchanged); the unlabeled
patches come on top (half the plans' batch).

A supervised start makes the teacher's pseudo-labels carry anatomy from the first semi-supervised epoch instead of
mostly background (docs/results.md). The default builds it into one training: the first half of the epochs is
nnU-Net's supervised step alone (``supervised_warmup_fraction``). A chain does the same in two trainings:
``nnUNetTrainerMeanTeacher_randomStart -pretrained_weights <plain fold>/checkpoint_final.pth``.

The default does not rescale the teacher's probabilities (no distribution alignment): after a supervised start
the teacher does not under-segment, and the labeled patches' class share that alignment matches is inflated by
nnU-Net's foreground oversampling, so alignment made every structure too large (docs/results.md).
``_warmStart`` is the same warm-up with alignment; ``_randomStart`` keeps alignment too, for the random teacher
that it was made for.

``nnUNetTrainerMeanTeacher_MSE`` is the original soft consistency (softmax MSE, no mixing, no
Dice, half + half batch).
"""
from typing import Dict

import torch

from nnunet_mona.augment.labeled_copy_paste import copy_paste_with_labeled
from nnunet_mona.augment.unlabeled_mixing import MIX_MODES, mix_unlabeled_batch
from nnunet_mona.losses.consistency import confident_pseudo_label_losses, masked_pseudo_label_dice, softmax_mse
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised

MEAN_TEACHER_MIX_MODES = MIX_MODES + ("copy_paste",)


class nnUNetTrainerMeanTeacher(nnUNetTrainerSemiSupervised):
    """Mean Teacher with confident pseudo-labels (CE + Dice) on CutMix-ed strong views. By default the first half
    of the epochs trains nnU-Net's supervised step alone (a supervised start for the teacher) and the teacher's
    probabilities are used as predicted: the recipe that scored best at the largest budget measured
    (docs/results.md); ``_randomStart`` is the variant without warm-up, ``_warmStart`` the one with alignment."""
    # the first half supervised, then Mean Teacher from a teacher copied from the student (trainers.supervised_warmup)
    supervised_warmup_fraction = 0.5
    # no distribution alignment: after the warm-up it over-segments (module docstring)
    align_class_distribution = False
    consistency: str = "masked_ce"  # or "mse"
    confidence_threshold: float = 0.9
    # student view: the loader's strong view, mixed with a partner ('cutmix' | 'cutout' | 'classmix' | 'none'),
    # or 'copy_paste': with a box of a labeled patch and its ground truth, both ways (augment.labeled_copy_paste;
    # nnUNetTrainerMeanTeacher_copyPaste). cutmix stays the default: copy_paste was no gain over it (docs/results.md)
    mix_mode: str = "cutmix"
    mix_area_fraction: float = 0.5
    use_pseudo_label_dice: bool = True
    # pseudo-label CE with every pseudo-class weighing the same (losses.consistency.class_balanced_pseudo_label_ce)
    class_balanced_pseudo_labels: bool = False
    # B labeled (as plain nnU-Net) + B/2 unlabeled patches per step
    labeled_batch_fraction = 1.0
    unlabeled_batch_fraction = 0.5
    loss_weights = {"unsup": 1.0, "unsup_dice": 1.0}
    loss_term_names = ("unsup", "unsup_dice", "confident_fraction")
    diagnostic_names = ("confident_fraction",)

    def initialize(self):
        # a misspelt mode would otherwise stop the run only at its first step, after the loaders started
        if self.mix_mode not in MEAN_TEACHER_MIX_MODES:
            raise ValueError(f"{self.__class__.__name__}: unknown mix_mode {self.mix_mode!r}; use one of "
                             f"{', '.join(MEAN_TEACHER_MIX_MODES)} (a class attribute of the variant)")
        super().initialize()

    def make_student_unlabeled_input(self, unlabeled, teacher_out) -> Dict[str, torch.Tensor]:
        if self.mix_mode == "copy_paste":  # boxes of this step's labeled patches, with their ground truth
            return copy_paste_with_labeled(unlabeled["data_strong"], teacher_out["pseudo_label"],
                                           teacher_out["confidence"], teacher_out["probs"],
                                           unlabeled["valid_mask"][:, 0], self.labeled_patches["data"],
                                           self.labeled_patches["target"], self.mix_area_fraction)
        mixed = mix_unlabeled_batch(self.mix_mode, unlabeled["data_strong"], teacher_out["pseudo_label"],
                                    teacher_out["confidence"], teacher_out["probs"], unlabeled["valid_mask"][:, 0],
                                    self.mix_area_fraction)
        return mixed

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        # deep supervision: the consistency uses the full-resolution output only
        logits = student_outputs_unlabeled[0] if isinstance(student_outputs_unlabeled, (list, tuple)) \
            else student_outputs_unlabeled
        labels, confidence = student_input["pseudo_label"], student_input["confidence"]
        valid = student_input["valid"] & (labels >= 0)
        threshold = self.pseudo_label_threshold(labels, self.confidence_threshold)  # float or (B, *P)
        confident_fraction = ((confidence >= threshold) & valid).sum() / valid.sum().clamp_min(1)
        terms = {"confident_fraction": confident_fraction.detach().float()}
        if self.consistency == "masked_ce":
            terms.update(confident_pseudo_label_losses(logits, labels, confidence, valid, threshold,
                                                       with_dice=self.use_pseudo_label_dice,
                                                       class_balanced=self.class_balanced_pseudo_labels))
        elif self.consistency == "mse":
            terms["unsup"] = softmax_mse(logits, student_input["probs"], valid)
            if self.use_pseudo_label_dice:
                terms["unsup_dice"] = masked_pseudo_label_dice(logits, labels, (confidence >= threshold)
                                                               & valid)
        else:
            raise ValueError(f"unknown consistency {self.consistency!r}: use 'masked_ce' or 'mse'")
        return terms


class nnUNetTrainerMeanTeacher_MSE(nnUNetTrainerMeanTeacher):
    """The original soft consistency: MSE between student and teacher softmax (no mixing, no Dice, B/2 + B/2)."""
    consistency = "mse"
    mix_mode = "none"
    use_pseudo_label_dice = False
    labeled_batch_fraction = 0.5
    unlabeled_batch_fraction = 0.5
    loss_weights = {"unsup": 10.0}
    loss_term_names = ("unsup", "confident_fraction")


class nnUNetTrainerMeanTeacher_classBalanced(nnUNetTrainerMeanTeacher):
    """Pseudo-label CE with every pseudo-class weighing the same instead of every pixel: a rare class (a lesion) the
    pixel-averaged CE drowns in background keeps its share of the pseudo-label loss."""
    class_balanced_pseudo_labels = True


class nnUNetTrainerMeanTeacher_warmStart(nnUNetTrainerMeanTeacher):
    """Plain nnU-Net, then Mean Teacher from its weights, in one ``nnUNetv2_train``: the first half of the epochs is
    nnU-Net's supervised step alone, then the teacher is copied from the student and the poly LR starts again
    (``supervised_warmup_fraction``), with distribution alignment of the teacher's probabilities: the default's
    warm-up with alignment on (``nnUNetTrainerMeanTeacher_noAlignment`` is the default's recipe by name)."""
    supervised_warmup_fraction = 0.5
    align_class_distribution = True


class nnUNetTrainerMeanTeacher_randomStart(nnUNetTrainerMeanTeacher):
    """Mean Teacher without a supervised warm-up: every epoch semi-supervised, the teacher an EMA of the student from
    the first step. From random weights, or as the second training of a chain (``-pretrained_weights`` from a
    supervised model, which already is the warm-up). With distribution alignment: from random weights the teacher
    under-segments, most with one labeled case (docs/results.md)."""
    supervised_warmup_fraction = 0.0
    align_class_distribution = True
