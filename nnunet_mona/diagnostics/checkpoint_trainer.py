"""The trainer of a saved checkpoint, rebuilt for measuring (not for training on): its class, plans, configuration
and fold come from the checkpoint itself (nnU-Net stores them as ``init_args``), its weights and the semi-supervised
state (teacher, heads, banks) are loaded, and nothing is written next to the checkpoint (the trainer's log and
progress files go to a folder of the caller's choosing).

    trainer = trainer_from_checkpoint(".../fold_0/checkpoint_final.pth", preprocessed_root, scratch)
    # trainer.network: the checkpoint's student; a semi-supervised trainer also has its teacher and heads
"""
import os
from contextlib import contextmanager

from typing import Optional

import torch

from nnunet_mona.trainers.budget import BUDGET_VARIABLES
from nnunet_mona.trainers.ready_trainer import find_trainer_class

EPOCHS_VARIABLE = next(v for v, attribute in BUDGET_VARIABLES.items() if attribute == "num_epochs")


def read_checkpoint(path: str) -> dict:
    """The checkpoint as a dict, with a clear error for a missing file or a teacher-only export."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    missing = [k for k in ("trainer_name", "init_args", "network_weights") if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not an nnU-Net training checkpoint (missing {missing})")
    if "optimizer_state" not in checkpoint:
        raise ValueError(f"{path} is a teacher-only export (for nnUNetv2_predict -chk); give the training "
                         f"checkpoint of the same folder instead (checkpoint_final.pth or checkpoint_latest.pth)")
    return checkpoint


@contextmanager
def _training_environment(preprocessed_root: str, results_root: str, num_epochs: int):
    """nnU-Net reads nnUNet_preprocessed / nnUNet_results, and the trainers their epoch count, from the environment
    when a trainer is built: the data from ``preprocessed_root``, the trainer's log folder ``results_root``, and the
    training's ``num_epochs`` (the schedules that depend on it, such as the warm-up's length, are then the
    training's own)."""
    names = {"nnUNet_preprocessed": preprocessed_root, "nnUNet_results": results_root,
             EPOCHS_VARIABLE: str(int(num_epochs))}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def trainer_from_checkpoint(path: str, preprocessed_root: str, scratch_folder: str, num_epochs: Optional[int] = None,
                            device: torch.device = torch.device("cpu")):
    """An initialised trainer of the checkpoint's class with its weights (and semi-supervised state) loaded.

    preprocessed_root: the ``nnUNet_preprocessed`` folder holding the checkpoint's dataset (for a benchmark
    output: ``OUTPUT/labeled_N/nnUNet_preprocessed``, which has that labeled count's splits); scratch_folder:
    where the trainer may write its log; num_epochs: the training's epoch count (default: the epochs the
    checkpoint has trained, right for checkpoint_final.pth).
    """
    checkpoint = read_checkpoint(path)
    init = checkpoint["init_args"]
    dataset_name = init["plans"]["dataset_name"]
    if not os.path.isdir(os.path.join(preprocessed_root, dataset_name)):
        raise FileNotFoundError(f"{dataset_name} not found in {preprocessed_root}: pass the nnUNet_preprocessed "
                                f"folder the model was trained from (a benchmark output's "
                                f"labeled_N/nnUNet_preprocessed)")
    cls = find_trainer_class(checkpoint["trainer_name"])
    plans = dict(init["plans"], continue_training=False)
    num_epochs = int(checkpoint["current_epoch"]) if num_epochs is None else int(num_epochs)
    if num_epochs < int(checkpoint["current_epoch"]):
        raise ValueError(f"num_epochs {num_epochs} is below the {checkpoint['current_epoch']} epochs the checkpoint "
                         f"has already trained")
    with _training_environment(preprocessed_root, scratch_folder, num_epochs):
        trainer = cls(plans, init["configuration"], init["fold"], init["dataset_json"], device=device)
        trainer.initialize()
        trainer.load_checkpoint(path)  # nnU-Net 2.8.1 loads a dict argument only through a path
    return trainer
