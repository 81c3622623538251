"""Ablations and options of nnUNetTrainerMONA (ARCO Tables 1, 2, 8): one switch per class."""
from nnunet_mona.trainers.mona import nnUNetTrainerMONA


class nnUNetTrainerMONA_noContrast(nnUNetTrainerMONA):
    """Without the anatomical contrastive loss."""
    use_contrast = False
    loss_term_names = ("unsup", "nn", "eqv", "confident_fraction")


class nnUNetTrainerMONA_noNN(nnUNetTrainerMONA):
    """Without the nearest-neighbour loss."""
    use_nn = False
    loss_term_names = ("unsup", "contrast", "eqv", "confident_fraction")


class nnUNetTrainerMONA_noEquivariance(nnUNetTrainerMONA):
    """Without the TPS equivariance loss (and without the warped student forward)."""
    use_equivariance = False
    loss_term_names = ("unsup", "contrast", "nn", "confident_fraction")


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
