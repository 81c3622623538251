"""nnU-Net trainer classes of nnunet_mona (re-exported by ext_trainers/ for nnU-Net's lookup), and their
``<trainer>_<N>epochs`` variants, made on first use (epoch_variants)."""
from nnunet_mona.trainers.budget import nnUNetTrainerBudget
from nnunet_mona.trainers.epoch_variants import epochs_variant
from nnunet_mona.trainers.mean_teacher import (nnUNetTrainerMeanTeacher, nnUNetTrainerMeanTeacher_MSE,
                                             nnUNetTrainerMeanTeacher_classBalanced,
                                             nnUNetTrainerMeanTeacher_warmStart,
                                             nnUNetTrainerMeanTeacher_randomStart)
from nnunet_mona.trainers.mean_teacher_variants import (nnUNetTrainerMeanTeacher_alignmentMomentum09,
                                                        nnUNetTrainerMeanTeacher_alignToLabelMaps,
                                                        nnUNetTrainerMeanTeacher_classAdaptiveThreshold,
                                                        nnUNetTrainerMeanTeacher_copyPaste,
                                                        nnUNetTrainerMeanTeacher_emaDecay0999,
                                                        nnUNetTrainerMeanTeacher_fullUnlabeledBatch,
                                                        nnUNetTrainerMeanTeacher_noAlignment,
                                                        nnUNetTrainerMeanTeacher_noMix,
                                                        nnUNetTrainerMeanTeacher_noPseudoLabelCE,
                                                        nnUNetTrainerMeanTeacher_noPseudoLabelDice,
                                                        nnUNetTrainerMeanTeacher_noUnsup,
                                                        nnUNetTrainerMeanTeacher_rampUp40,
                                                        nnUNetTrainerMeanTeacher_threshold097,
                                                        nnUNetTrainerMeanTeacher_warmStart25)
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised
from nnunet_mona.trainers.mona import nnUNetTrainerMONA
from nnunet_mona.trainers.mona_variants import (nnUNetTrainerMONA_antithetic, nnUNetTrainerMONA_classmix,
                                               nnUNetTrainerMONA_contrast01,
                                               nnUNetTrainerMONA_contrast01_noEquivariance,
                                               nnUNetTrainerMONA_linearHead_contrast01, nnUNetTrainerMONA_noAlignment,
                                               nnUNetTrainerMONA_cutout, nnUNetTrainerMONA_equivariance,
                                               nnUNetTrainerMONA_fp32,
                                               nnUNetTrainerMONA_noContrast,
                                               nnUNetTrainerMONA_noEquivariance, nnUNetTrainerMONA_noNN,
                                               nnUNetTrainerMONA_paperRecipe,
                                               nnUNetTrainerMONA_stratified, nnUNetTrainerMONA_warmStart,
                                               nnUNetTrainerMONA_randomStart)
from nnunet_mona.trainers.mixcl import nnUNetTrainerMixCLPretrain
from nnunet_mona.trainers.relational_pretrain import (nnUNetTrainerACTIONPretrain, nnUNetTrainerACTIONPretrainEncoder,
                                                      nnUNetTrainerMONAPretrain)
from nnunet_mona.trainers.action import (nnUNetTrainerACTION, nnUNetTrainerACTION_logGradientNorms,
                                        nnUNetTrainerACTION_noHardNegatives, nnUNetTrainerACTION_noHardQueries)

__all__ = ["nnUNetTrainerBudget", "nnUNetTrainerSemiSupervised", "nnUNetTrainerMeanTeacher",
           "nnUNetTrainerMeanTeacher_MSE", "nnUNetTrainerMeanTeacher_classBalanced",
           "nnUNetTrainerMeanTeacher_warmStart", "nnUNetTrainerMeanTeacher_randomStart",
           "nnUNetTrainerMeanTeacher_warmStart25", "nnUNetTrainerMeanTeacher_copyPaste",
           "nnUNetTrainerMeanTeacher_noMix", "nnUNetTrainerMeanTeacher_noAlignment",
           "nnUNetTrainerMeanTeacher_alignmentMomentum09", "nnUNetTrainerMeanTeacher_alignToLabelMaps",
           "nnUNetTrainerMeanTeacher_classAdaptiveThreshold",
           "nnUNetTrainerMeanTeacher_fullUnlabeledBatch", "nnUNetTrainerMeanTeacher_rampUp40",
           "nnUNetTrainerMeanTeacher_threshold097", "nnUNetTrainerMeanTeacher_emaDecay0999",
           "nnUNetTrainerMeanTeacher_noPseudoLabelDice", "nnUNetTrainerMeanTeacher_noPseudoLabelCE",
           "nnUNetTrainerMeanTeacher_noUnsup", "nnUNetTrainerMONA",
           "nnUNetTrainerMONA_warmStart", "nnUNetTrainerMONA_randomStart",
           "nnUNetTrainerMONA_noContrast",
           "nnUNetTrainerMONA_noNN", "nnUNetTrainerMONA_noEquivariance", "nnUNetTrainerMONA_equivariance",
           "nnUNetTrainerMONA_stratified",
           "nnUNetTrainerMONA_antithetic", "nnUNetTrainerMONA_cutout", "nnUNetTrainerMONA_classmix",
           "nnUNetTrainerMONA_paperRecipe", "nnUNetTrainerMONA_contrast01",
           "nnUNetTrainerMONA_contrast01_noEquivariance", "nnUNetTrainerMONA_linearHead_contrast01", "nnUNetTrainerMONA_noAlignment",
           "nnUNetTrainerMONA_fp32",
           "nnUNetTrainerMixCLPretrain",
           "nnUNetTrainerMONAPretrain", "nnUNetTrainerACTIONPretrainEncoder", "nnUNetTrainerACTIONPretrain",
           "nnUNetTrainerACTION", "nnUNetTrainerACTION_noHardNegatives", "nnUNetTrainerACTION_noHardQueries",
           "nnUNetTrainerACTION_logGradientNorms"]


def __getattr__(name: str) -> type:
    """``<trainer>_<N>epochs`` for a trainer of ``__all__`` (trainers.epoch_variants); nnU-Net's lookup and
    pickling reach it by name like any class here."""
    trainers = {n: globals()[n] for n in __all__ if n != "nnUNetTrainerSemiSupervised"}
    cls = epochs_variant(name, trainers)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
