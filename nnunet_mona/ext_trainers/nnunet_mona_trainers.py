# Shim scanned by nnU-Net's trainer lookup (nnUNet_extTrainer points at this folder).
# It only re-exports; the classes live in the installed package so that they keep one
# identity and stay picklable (see docs: never point nnUNet_extTrainer at the package itself).
from nnunet_mona.trainers import *  # noqa: F401,F403
from nnunet_mona.trainers import __getattr__  # noqa: F401  <trainer>_<N>epochs, made when nnU-Net asks
