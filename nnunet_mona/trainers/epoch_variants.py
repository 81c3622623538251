"""``<trainer>_<N>epochs``: any trainer of this package, trained for N epochs, named as nnU-Net names its own
(``nnUNetTrainer_250epochs``).

nnU-Net trains 1000 epochs; a shorter training is a variant class whose name says its epoch count, so that the
results folder and the checkpoint name it, and ``nnUNetv2_predict -tr`` finds it again. nnU-Net ships a few such
classes for plain nnU-Net only; here every trainer gets them for any N, made when nnU-Net's lookup first asks for
the name (``nnunet_mona.trainers.__getattr__``), e.g.

    nnUNetv2_train XXX 2d 0 -tr nnUNetTrainerMeanTeacher_250epochs
    nnUNetv2_predict ... -tr nnUNetTrainerMeanTeacher_250epochs

The variant is the trainer with ``num_epochs = N`` and nothing else changed: a supervised warm-up stays its
fraction of the N epochs. Iterations per epoch stay nnU-Net's 250.
"""
import os
import re
from typing import Dict, Optional

import torch

from nnunet_mona.trainers.budget import BUDGET_VARIABLES

EPOCHS_SUFFIX = re.compile(r"^(?P<base>nnUNetTrainer\w*?)_(?P<epochs>[1-9][0-9]*)epochs$")
EPOCHS_VARIABLE = next(v for v, attribute in BUDGET_VARIABLES.items() if attribute == "num_epochs")
_MADE: Dict[str, type] = {}  # one class per name: nnU-Net's lookup and pickling find the same object


def epochs_variant(name: str, trainers: Dict[str, type]) -> Optional[type]:
    """The class ``name`` = ``<base>_<N>epochs`` for a ``base`` in ``trainers`` ({name: class}), made once; None
    when ``name`` is not of that form or its base is not one of ``trainers``."""
    if name in _MADE:
        return _MADE[name]
    match = EPOCHS_SUFFIX.match(name)
    if match is None or match["base"] not in trainers:
        return None
    base, epochs = trainers[match["base"]], int(match["epochs"])

    # nnU-Net records __init__'s named arguments (my_init_kwargs) from its signature: spelled out, not *args
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        set_epochs = os.environ.get(EPOCHS_VARIABLE, "").strip()
        if set_epochs and set_epochs != str(epochs):  # before nnU-Net creates anything
            raise ValueError(f"{name} trains {epochs} epochs by its name, but {EPOCHS_VARIABLE}={set_epochs} asks "
                             f"for another count; unset {EPOCHS_VARIABLE} or train {match['base']}")
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = epochs
        self.print_to_log_file(f"num_epochs = {epochs} (from the trainer name {name})")

    cls = type(name, (base,), {
        "__init__": __init__, "__module__": "nnunet_mona.trainers", "__qualname__": name,
        "epochs_from_name": epochs,
        "__doc__": f"{match['base']} trained for {epochs} epochs (nnunet_mona.trainers.epoch_variants)."})
    _MADE[name] = cls
    return cls
