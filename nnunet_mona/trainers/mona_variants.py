"""Ablations and options of nnUNetTrainerMONA (ARCO Tables 1, 2, 8): one switch per class."""
from nnunet_mona.trainers.mona import nnUNetTrainerMONA


class nnUNetTrainerMONA_noContrast(nnUNetTrainerMONA):
    """Without the anatomical contrastive loss."""
    use_contrast = False


class nnUNetTrainerMONA_noNN(nnUNetTrainerMONA):
    """Without the nearest-neighbour loss."""
    use_nn = False


class nnUNetTrainerMONA_noEquivariance(nnUNetTrainerMONA):
    """Without the TPS equivariance loss (and without the warped student forward): the default's terms, under a
    name that stays if the default changes."""
    use_equivariance = False


class nnUNetTrainerMONA_equivariance(nnUNetTrainerMONA):
    """With MONA's TPS equivariance loss (weight 0.1): the student's prediction of a warped copy of half the
    unlabeled batch must match the warped prediction of the original on the teacher-confident pixels."""
    use_equivariance = True


class nnUNetTrainerMONA_stratified(nnUNetTrainerMONA):
    """Stratified group sampling (SG, code 'smc') of anchors and negatives."""
    contrast_sampler = "stratified"


class nnUNetTrainerMONA_antithetic(nnUNetTrainerMONA):
    """Stratified-antithetic group sampling (SAG, code 'asmc')."""
    contrast_sampler = "antithetic"


class nnUNetTrainerMONA_cutout(nnUNetTrainerMONA):
    """CutOut instead of CutMix for the unlabeled view."""
    mix_mode = "cutout"


class nnUNetTrainerMONA_classmix(nnUNetTrainerMONA):
    """ClassMix (half of the pseudo-labelled classes pasted from the partner) instead of CutMix."""
    mix_mode = "classmix"


class nnUNetTrainerMONA_paperRecipe(nnUNetTrainerMONA):
    """The paper/code-faithful recipe, kept for ablations: ReCo-style
    image-weighted pseudo-label CE (threshold 0.97), a second photometric pass, B/2 + B/2 batch,
    nn gradient into the network, from random weights (no supervised warm-up)."""
    supervised_warmup_fraction = 0.0
    unsup_mode = "image_weighted"
    unsup_threshold = 0.97
    extra_photometric = True
    labeled_batch_fraction = 0.5
    unlabeled_batch_fraction = 0.5
    nn_gradient_to_network = True
    use_equivariance = True
    loss_weights = {"unsup": 1.0, "contrast": 0.01, "nn": 1.0, "eqv": 1.0}


class nnUNetTrainerMONA_contrast01(nnUNetTrainerMONA):
    """Anatomical contrast at weight 0.1 instead of 0.01: a stronger pull of the contrast on the representation."""
    loss_weights = {**nnUNetTrainerMONA.loss_weights, "contrast": 0.1}


class nnUNetTrainerMONA_contrast01_noEquivariance(nnUNetTrainerMONA_contrast01):
    """Contrast weight 0.1 and no equivariance term (as the default, which has none): at weight 0.01 the contrast's
    gradient on the decoder is about a hundredth of the supervised loss's (``nnUNetv2_mona_gradient_shares``); this
    variant gives it a real share."""
    use_equivariance = False


class nnUNetTrainerMONA_warmStart(nnUNetTrainerMONA):
    """Plain nnU-Net, then MONA from its weights, in one ``nnUNetv2_train``: the first half of the epochs is
    nnU-Net's supervised step alone, then the teacher is copied from the student, the poly LR starts again and
    MONA's schedules (entropy split, ramp-up) count from the switch (``supervised_warmup_fraction``). The default's
    recipe under a name that stays if the default changes."""
    supervised_warmup_fraction = 0.5


class nnUNetTrainerMONA_randomStart(nnUNetTrainerMONA):
    """MONA without a supervised warm-up: every epoch semi-supervised. From random weights, or as the second
    training of a chain (``-pretrained_weights`` from a supervised model, which already is the warm-up)."""
    supervised_warmup_fraction = 0.0


class nnUNetTrainerMONA_fp32(nnUNetTrainerMONA):
    """MONA in fp32 on CUDA (no fp16 autocast / gradient scaler): tells a precision problem from a method problem."""
    mixed_precision = False


class nnUNetTrainerMONA_linearHead_contrast01(nnUNetTrainerMONA_contrast01):
    """Contrast weight 0.1 with a linear representation head and predictor (MONA's code; the paper's projectors
    are non-linear). With the non-linear head the contrast separates the classes in its own embedding while the
    decoder's features hardly change (``nnUNetv2_mona_class_separation``); through a linear head the embedding is a
    linear map of the decoder's multi-scale features, so the separation the contrast asks for must be in them."""
    head_nonlinear = False


class nnUNetTrainerMONA_noAlignment(nnUNetTrainerMONA):
    """Without distribution alignment of the teacher's probabilities (as nnUNetTrainerMeanTeacher_noAlignment):
    the labeled patches' class share that alignment matches is inflated by foreground oversampling."""
    align_class_distribution = False
