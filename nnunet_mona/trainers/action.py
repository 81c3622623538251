"""ACTION anatomical-aware contrastive distillation, fine-tuning stage (AnCo; method_spec B.1 (iii), B.3).

nnUNetTrainerACTION is nnUNetTrainerMONA with ACTION's loss:

    L = 0.5 * (Dice + CE) + L_unsup + 0.01 * L_anco

* supervised: nnU-Net's deep-supervision Dice+CE, weighted by the base trainer's
  ``supervised_weight`` = 0.5 in its train_step (the logged 'sup' and the validation loss stay unweighted);
* L_unsup: MONA's confidence-weighted pseudo-label CE on the mixed (cutmix) strong view (identical
  in ACTION's code, threshold 0.97);
* L_anco: the shared `anatomical_contrast_loss` with ACTION's two options:
  hard queries (student probability for the (pseudo-)label < 0.97, fallback to all candidates of a
  class when none is hard) and hard negatives (negative class drawn from softmax_v(cos(proto_c,
  proto_v) / 0.5), then a pixel of that class); 256 queries, 512 negatives, tau 0.5.

What differs from MONA (switched by class attributes, nothing else is copied):
  no nearest-neighbour term, no equivariance term (and no warped student forward);
  contrast pixels = ACTION's valid mask (every labeled pixel, unlabeled pixels with teacher
  confidence >= 0.7) used for anchors and negatives alike, instead of MONA's entropy split;
  no delta_p / delta_n filters (ACTION has none); negatives from the current batch only (ACTION's
  code keeps no memory bank; ``contrast_use_memory_bank = True`` re-enables MONA's class banks).
Kept from MONA (and different from ACTION's code): the positive key and the class prototypes are
mean *teacher* embeddings (ACTION: mean student embeddings under no_grad); the representation
head is MONA's multi-scale head + predictor at 1/4 resolution (ACTION: full resolution, 512-d);
the unsupervised ramp-up of the base trainer; no extra ISD call / double EMA update (B.3 quirk).
ACTION's pre-training stages are separate trainers (relational_pretrain.py); start this one from
their checkpoint with ``-pretrained_weights``.
"""
from typing import Dict, Optional

import torch

from nnunet_mona.losses.anatomical_contrast import anatomical_contrast_loss
from nnunet_mona.trainers.mona import nnUNetTrainerMONA, resize_nearest


class nnUNetTrainerACTION(nnUNetTrainerMONA):
    """ACTION fine-tuning: 0.5 (Dice + CE) + unsup + 0.01 anatomical contrast with hard queries/negatives."""

    supervised_weight = 0.5  # base trainer: total = supervised_weight * sup + ...
    # a fine-tuning stage: it starts from its pretraining stages' model (-pretrained_weights), not MONA's warm-up
    supervised_warmup_fraction = 0.0
    use_nn = False
    use_equivariance = False
    # ---- anatomical contrast, ACTION code values (method_spec B.3)
    contrast_hard_query_threshold: Optional[float] = 0.97  # theta_s; None: no hard-query selection
    hard_query_source: str = "student"  # 'student' (ACTION code) | 'teacher' probabilities
    contrast_relation_temperature: Optional[float] = 0.5  # None: MONA's uniform negatives
    contrast_valid_confidence: float = 0.7  # unlabeled pixels enter the contrast at teacher confidence >= 0.7
    contrast_positive_threshold = 0.0  # no delta_p
    contrast_negative_threshold = float("inf")  # no delta_n
    contrast_use_memory_bank: bool = False
    loss_weights = {"unsup": 1.0, "unsup_dice": 1.0, "contrast": 0.01}
    loss_term_names = ("unsup", "unsup_dice", "contrast", "confident_fraction")
    _student_labeled_logits: Optional[torch.Tensor] = None  # (N_l, K, *P), set during a step

    def compute_unlabeled_losses(self, student_outputs_unlabeled, student_input, unlabeled, labeled_outputs,
                                 labeled_target) -> Dict[str, torch.Tensor]:
        # the hard-query test needs the student's labeled prediction too (full resolution output)
        self._student_labeled_logits = labeled_outputs[0] if isinstance(labeled_outputs, (list, tuple)) \
            else labeled_outputs
        try:
            return super().compute_unlabeled_losses(student_outputs_unlabeled, student_input, unlabeled,
                                                    labeled_outputs, labeled_target)
        finally:
            self._student_labeled_logits = None

    def _contrast_loss(self, embedding, teacher_embedding, logits_u, student_input, labeled_target, n_l):
        """embedding / teacher_embedding: (N_l + B_u, D, *S_r); logits_u: (B_u, K, *P). Returns the scalar loss."""
        size = embedding.shape[2:]
        gt, pseudo, teacher_probs = self._contrast_targets(size, student_input, labeled_target)
        confident_u = resize_nearest(student_input["confidence"], size) >= self.contrast_valid_confidence
        labels = torch.cat((gt, torch.where(confident_u, pseudo, torch.full_like(pseudo, -1))), 0)
        valid = labels >= 0
        if self.hard_query_source == "student":
            student_logits = torch.cat((self._student_labeled_logits, logits_u), 0).detach().float()
            query_probs = resize_nearest(torch.softmax(student_logits, 1), size)
        elif self.hard_query_source == "teacher":
            query_probs = teacher_probs
        else:
            raise ValueError(f"hard_query_source must be 'student' or 'teacher', got {self.hard_query_source!r}")
        bank = self.mona_state["class_bank"] if self.contrast_use_memory_bank else None
        loss, keys, key_labels = anatomical_contrast_loss(
            embedding, teacher_embedding, labels, teacher_probs, valid, valid, memory_bank=bank,
            num_queries=self.contrast_num_queries, num_negatives=self.contrast_num_negatives,
            temperature=self.contrast_temperature, positive_threshold=self.contrast_positive_threshold,
            negative_threshold=self.contrast_negative_threshold, sampler=self.contrast_sampler,
            max_keys_per_class=self.contrast_keys_per_class,
            hard_query_threshold=self.contrast_hard_query_threshold, query_probs=query_probs,
            class_relation_temperature=self.contrast_relation_temperature)
        if bank is not None:
            self._pending["class_keys"] = (keys, key_labels)
        return loss


class nnUNetTrainerACTION_noHardNegatives(nnUNetTrainerACTION):
    """ACTION without hard negatives: negatives uniform over the other classes' pixels (MONA's draw)."""
    contrast_relation_temperature = None


class nnUNetTrainerACTION_noHardQueries(nnUNetTrainerACTION):
    """ACTION without hard queries: anchors drawn from every valid pixel of the class."""
    contrast_hard_query_threshold = None


class nnUNetTrainerACTION_logGradientNorms(nnUNetTrainerACTION):
    """Logs each term's decoder-gradient norm relative to the supervised loss once per epoch (a diagnostic)."""
    log_gradient_norms = True
