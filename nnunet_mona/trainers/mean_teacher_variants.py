"""Variants of nnUNetTrainerMeanTeacher, one setting each, named after it: each configuration gets its own output
folder and checkpoint name (``nnUNetv2_train ... -tr <name>``). Ablations and options; the defaults stay."""
from nnunet_mona.trainers.mean_teacher import nnUNetTrainerMeanTeacher


class nnUNetTrainerMeanTeacher_warmStart25(nnUNetTrainerMeanTeacher):
    """First quarter of the epochs supervised only, then Mean Teacher: a shorter warm-up than warmStart's half."""
    supervised_warmup_fraction = 0.25


class nnUNetTrainerMeanTeacher_copyPaste(nnUNetTrainerMeanTeacher):
    """Labeled copy-paste (BCP) instead of CutMix: labeled anatomy with its ground truth inside unlabeled patches."""
    mix_mode = "copy_paste"


class nnUNetTrainerMeanTeacher_noMix(nnUNetTrainerMeanTeacher):
    """No mixing of the student's unlabeled view (strong view alone): tells CutMix's share in a result."""
    mix_mode = "none"


class nnUNetTrainerMeanTeacher_noAlignment(nnUNetTrainerMeanTeacher):
    """Without distribution alignment: the teacher's probabilities as predicted, not rescaled to the labeled shares.
    The default's recipe under a name that stays if the default changes."""
    align_class_distribution = False


class nnUNetTrainerMeanTeacher_alignToLabelMaps(nnUNetTrainerMeanTeacher):
    """Distribution alignment to the labeled cases' whole label maps (every slice alike) instead of the running share
    of the labeled training patches, which nnU-Net's foreground oversampling and zooming inflate."""
    align_class_distribution = True
    alignment_target = "label_maps"


class nnUNetTrainerMeanTeacher_alignmentMomentum09(nnUNetTrainerMeanTeacher):
    """Alignment's running teacher share with momentum 0.9 (not 0.99): follows the teacher within ~10 steps."""
    align_class_distribution = True
    alignment_teacher_momentum = 0.9


class nnUNetTrainerMeanTeacher_classAdaptiveThreshold(nnUNetTrainerMeanTeacher):
    """Per-class thresholds from the teacher's running confidence: admits classes the teacher is rarely sure of."""
    class_adaptive_threshold = True


class nnUNetTrainerMeanTeacher_fullUnlabeledBatch(nnUNetTrainerMeanTeacher):
    """B labeled + B unlabeled patches per step (not B + B/2): more unlabeled signal, ~1.5x the time per step."""
    unlabeled_batch_fraction = 1.0


class nnUNetTrainerMeanTeacher_rampUp40(nnUNetTrainerMeanTeacher):
    """Unsupervised terms ramped up over 40 % of the epochs (not 10 %): a gentler start while the teacher is poor."""
    unsupervised_rampup_fraction = 0.4


class nnUNetTrainerMeanTeacher_threshold097(nnUNetTrainerMeanTeacher):
    """Pseudo-labels only at teacher confidence >= 0.97 (not 0.9): fewer, cleaner targets."""
    confidence_threshold = 0.97


class nnUNetTrainerMeanTeacher_emaDecay0999(nnUNetTrainerMeanTeacher):
    """A slower teacher (EMA decay 0.999, not 0.99): smoother pseudo-labels that lag the student more."""
    ema_decay = 0.999


class nnUNetTrainerMeanTeacher_noPseudoLabelDice(nnUNetTrainerMeanTeacher):
    """Without the soft Dice on the confident pseudo-labels (CE alone): tells the Dice term's share."""
    use_pseudo_label_dice = False


class nnUNetTrainerMeanTeacher_noPseudoLabelCE(nnUNetTrainerMeanTeacher):
    """Pseudo-label CE weighted 0 (the pseudo-label Dice alone): tells the CE term's share."""
    loss_weights = {**nnUNetTrainerMeanTeacher.loss_weights, "unsup": 0.0}


class nnUNetTrainerMeanTeacher_noUnsup(nnUNetTrainerMeanTeacher):
    """Both unsupervised terms weighted 0: the control showing that a gain comes from the unlabeled images."""
    loss_weights = {**nnUNetTrainerMeanTeacher.loss_weights, "unsup": 0.0, "unsup_dice": 0.0}
