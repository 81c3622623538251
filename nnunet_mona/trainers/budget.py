"""Training budget (epochs x iterations) settable from the environment, for every trainer here.

nnU-Net fixes the budget in code (1000 epochs x 250 iterations; variants such as
``nnUNetTrainer_5epochs`` change it). Benchmarks, the demo and the tests need other budgets for
*both* the plain baseline and the semi-supervised trainers, so these variables override it:

    nnUNet_mona_epochs=50 nnUNet_mona_iterations=100 nnUNetv2_train ... -tr nnUNetTrainerMeanTeacher

``nnUNet_mona_val_iterations`` sets the validation iterations per epoch. Unset: nnU-Net's defaults.
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET_VARIABLES = {
    "nnUNet_mona_epochs": "num_epochs",
    "nnUNet_mona_iterations": "num_iterations_per_epoch",
    "nnUNet_mona_val_iterations": "num_val_iterations_per_epoch",
}


def apply_budget_from_environment(trainer: nnUNetTrainer) -> None:
    for variable, attribute in BUDGET_VARIABLES.items():
        raw = os.environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{variable} must be a positive integer, got {raw!r}") from None
        if value < 1:
            raise ValueError(f"{variable} must be a positive integer, got {value}")
        setattr(trainer, attribute, value)
        trainer.print_to_log_file(f"{attribute} = {value} (from {variable})")


class nnUNetTrainerBudget(nnUNetTrainer):
    """Plain nnU-Net (nothing changed) whose budget follows the ``nnUNet_mona_*`` variables: the
    fair supervised baseline for a semi-supervised run with the same budget."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        apply_budget_from_environment(self)
