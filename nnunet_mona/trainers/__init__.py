"""nnU-Net trainer classes of nnunet_mona (re-exported by ext_trainers/ for nnU-Net's lookup)."""
from nnunet_mona.trainers.budget import nnUNetTrainerBudget
from nnunet_mona.trainers.mean_teacher import nnUNetTrainerMeanTeacher, nnUNetTrainerMeanTeacher_MSE
from nnunet_mona.trainers.semi_supervised_base import nnUNetTrainerSemiSupervised

__all__ = ["nnUNetTrainerBudget", "nnUNetTrainerSemiSupervised", "nnUNetTrainerMeanTeacher",
           "nnUNetTrainerMeanTeacher_MSE"]
