"""Training budget (epochs x iterations) settable from the environment, for every trainer here.

nnU-Net fixes the budget in code (1000 epochs x 250 iterations; variants such as
``nnUNetTrainer_5epochs`` change it). Benchmarks, the demo and the tests need other budgets for
*both* the plain baseline and the semi-supervised trainers, so these variables override it:

    nnUNet_mona_epochs=50 nnUNet_mona_iterations=100 nnUNetv2_train ... -tr nnUNetTrainerMeanTeacher

``nnUNet_mona_val_iterations`` sets the validation iterations per epoch, ``nnUNet_mona_save_every``
how often (epochs) ``checkpoint_latest.pth`` is written, ``nnUNet_mona_seed`` seeds python, numpy
and torch (with ``nnUNet_n_proc_DA=0`` a CPU run of plain nnU-Net or Mean Teacher is then repeatable; MONA drifts at
float precision, docs/results.md). Unset: nnU-Net's defaults.
``nnUNet_mona_skip_validation=1`` skips the validation ``nnUNetv2_train`` runs after training
(``nnUNetv2_train ... --val`` still runs it): with fold ``all`` it predicts the training cases, which
tells nothing, and on a small CPU it costs minutes (export worker processes that import nnU-Net).
Everything else a trainer does is set by its class (variants: docs/configuration.md).
"""
import os
import random

import numpy as np

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mona.trainers.removed_overrides import refuse_removed_overrides

BUDGET_VARIABLES = {
    "nnUNet_mona_epochs": "num_epochs",
    "nnUNet_mona_iterations": "num_iterations_per_epoch",
    "nnUNet_mona_val_iterations": "num_val_iterations_per_epoch",
    "nnUNet_mona_save_every": "save_every",
}
SEED_VARIABLE = "nnUNet_mona_seed"
SKIP_VALIDATION_VARIABLE = "nnUNet_mona_skip_validation"


def _positive_int(variable: str, raw: str, minimum: int = 1) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{variable} must be an integer >= {minimum}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{variable} must be an integer >= {minimum}, got {value}")
    return value


def seed_from_environment():
    """The seed in ``nnUNet_mona_seed`` (None when unset)."""
    raw = os.environ.get(SEED_VARIABLE, "")
    return _positive_int(SEED_VARIABLE, raw, minimum=0) if raw != "" else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def apply_budget_from_environment(trainer: nnUNetTrainer) -> None:
    for variable, attribute in BUDGET_VARIABLES.items():
        raw = os.environ.get(variable)
        if raw is None or raw == "":
            continue
        value = _positive_int(variable, raw)
        setattr(trainer, attribute, value)
        trainer.print_to_log_file(f"{attribute} = {value} (from {variable})")
    seed = seed_from_environment()
    if seed is not None:
        # each DDP rank gets its own stream; the network init is broadcast from rank 0 anyway
        seed_everything(seed + trainer.local_rank)
        trainer.print_to_log_file(f"random seed = {seed} (from {SEED_VARIABLE})")


def validation_skipped(trainer: nnUNetTrainer) -> bool:
    """True (and a line in the training log) when ``nnUNet_mona_skip_validation`` asks to skip the final
    validation of a run that has just trained. ``nnUNetv2_train --val`` (validation only) is never skipped."""
    raw = os.environ.get(SKIP_VALIDATION_VARIABLE, "")
    if raw not in ("", "0", "1"):
        raise ValueError(f"{SKIP_VALIDATION_VARIABLE} must be 0 or 1, got {raw!r}")
    if raw != "1" or getattr(trainer, "_validation_only", True):
        return False
    trainer.print_to_log_file(f"final validation skipped ({SKIP_VALIDATION_VARIABLE}=1); run nnUNetv2_train ... "
                              f"--val to validate this model")
    return True


class TrainedThisRun:
    """Mixin: remembers whether ``run_training`` ran in this process (else the call is ``--val``)."""

    def run_training(self):
        self._validation_only = False
        return super().run_training()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if validation_skipped(self):
            return
        return super().perform_actual_validation(save_probabilities)


class nnUNetTrainerBudget(TrainedThisRun, nnUNetTrainer):
    """Plain nnU-Net (nothing changed) whose budget follows the ``nnUNet_mona_*`` variables: the
    fair supervised baseline for a semi-supervised run with the same budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        refuse_removed_overrides(type(self).__name__)  # before nnU-Net creates anything
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_from_environment(self)
