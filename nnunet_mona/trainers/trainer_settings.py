"""``nnUNet_mona_trainer_settings``: one run's scalar trainer settings, as JSON, without a new class.

    nnUNet_mona_trainer_settings='{"confidence_threshold": 0.7, "ema_decay": 0.999}' \\
        nnUNetv2_train 27 2d 0 -tr nnUNetTrainerMeanTeacher

Each key must be a scalar class attribute the trainer already has (bool, int, float or str); the value must
have its type (an int is accepted for a float). The override is set on the instance, so the class keeps its
defaults, and is written to the training log. Anything else is an error raised before any training that
names the settable attributes. Ablations of issue #11 use it (one change at a time, each a command).
"""
from typing import Dict

from nnunet_mona.trainers.budget import json_object_from_environment

TRAINER_SETTINGS_VARIABLE = "nnUNet_mona_trainer_settings"


def settable_attributes(trainer_class: type) -> Dict[str, object]:
    """{name: default} of the public scalar (bool / int / float / str) class attributes of ``trainer_class``
    and its bases (nnU-Net's own included)."""
    found = {}
    for klass in reversed(trainer_class.__mro__):
        for name, value in vars(klass).items():
            if not name.startswith("_") and isinstance(value, (bool, int, float, str)):
                found[name] = value
    return found


def _converted(name: str, value, default):
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{TRAINER_SETTINGS_VARIABLE}: {name!r} must be a {type(default).__name__} like its "
                         f"default {default!r}, got {value!r}")
    return value


def apply_trainer_settings_from_environment(trainer) -> Dict[str, object]:
    """Sets the attributes named in ``nnUNet_mona_trainer_settings`` on ``trainer``; returns what was set."""
    override = json_object_from_environment(TRAINER_SETTINGS_VARIABLE, '{"confidence_threshold": 0.7}')
    if override is None:
        return {}
    settable = settable_attributes(type(trainer))
    unknown = sorted(set(override) - set(settable))
    if unknown:
        raise ValueError(f"{TRAINER_SETTINGS_VARIABLE}: {unknown} are not settable attributes of "
                         f"{type(trainer).__name__}; settable: {sorted(settable)}")
    applied = {name: _converted(name, value, settable[name]) for name, value in override.items()}
    for name, value in applied.items():
        setattr(trainer, name, value)
    trainer.print_to_log_file(f"trainer settings {applied} (from {TRAINER_SETTINGS_VARIABLE})")
    return applied
