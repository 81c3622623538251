"""A trainer built outside ``nnUNetv2_train``, ready for ``train_step``: one place for what the iteration
benchmark and the tests that drive trainers step by step need (find the class, initialise it from a
preprocessed dataset folder, start its loaders, stop them).

    trainer = make_trainer("nnUNetTrainerMONA", "/path/nnUNet_preprocessed/Dataset988_X", fold="all")
    start_loaders(trainer)            # nnU-Net's loaders (+ the unlabeled one) and training mode
    trainer.train_step(next(trainer.dataloader_train))   # epoch 0: a warm-started trainer's supervised step
    finish_loaders(trainer)

``skip_supervised_warmup(trainer)`` makes the steps the method's own.
"""
import copy
import os
from typing import Optional, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json


def find_trainer_class(name: str) -> type:
    """A trainer class by name: this package's trainers first, then nnU-Net's own."""
    import nnunet_mona.trainers as ours
    if hasattr(ours, name):
        return getattr(ours, name)
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    cls = recursive_find_python_class(join(nnunetv2.__path__[0], "training", "nnUNetTrainer"), name,
                                      "nnunetv2.training.nnUNetTrainer")
    if cls is None:
        raise RuntimeError(f"trainer {name} not found in nnunet_mona.trainers or nnunetv2")
    return cls


def make_trainer(trainer: Union[str, type], preprocessed_dataset_folder: str, configuration: str = "2d",
                 fold: Union[int, str] = "all", device: torch.device = torch.device("cpu"),
                 plans: Optional[dict] = None, plans_name: str = "nnUNetPlans",
                 class_overrides: Optional[dict] = None, seed: Optional[int] = None):
    """An initialised trainer (network, optimizer, heads; no loaders yet).

    ``class_overrides``: class attributes set on a subclass made for this call (named after the class plus
    ``_overridden``), e.g. ``{"loss_weights": {...}}``; the original class is never modified.
    ``seed``: torch's global seed right before the network is built (initial weights).
    """
    cls = find_trainer_class(trainer) if isinstance(trainer, str) else trainer
    if class_overrides:
        cls = type(cls.__name__ + "_overridden", (cls,), dict(class_overrides))
    plans = copy.deepcopy(plans) if plans is not None else load_json(os.path.join(preprocessed_dataset_folder,
                                                                                   plans_name + ".json"))
    plans["continue_training"] = False
    if seed is not None:
        torch.manual_seed(seed)
    instance = cls(plans, configuration, fold, load_json(os.path.join(preprocessed_dataset_folder, "dataset.json")),
                   device=device)
    instance.initialize()
    return instance


def skip_supervised_warmup(trainer) -> None:
    """Put a trainer with a supervised warm-up at its first semi-supervised epoch, so that ``train_step`` runs the
    method's step (what an iteration benchmark must time); a trainer without one is left as it is."""
    trainer.current_epoch = max(trainer.current_epoch, getattr(trainer, "supervised_warmup_epochs", 0))


def start_loaders(trainer) -> None:
    """nnU-Net's training / validation loaders (semi-supervised trainers also build their unlabeled one),
    the network in training mode with deep supervision as the trainer wants it: what ``on_train_start``
    sets up for ``train_step``, without the logging, folders and checkpoints."""
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)


def finish_loaders(trainer) -> None:
    """Stop the background workers of every loader the trainer holds."""
    for attr in ("dataloader_train", "dataloader_val", "dataloader_unlabeled"):
        loader = getattr(trainer, attr, None)
        if loader is not None and hasattr(loader, "_finish"):
            loader._finish()
