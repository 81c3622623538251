"""The environment variables ``nnUNet_mona_trainer_settings`` and ``nnUNet_mona_loss_weights`` no longer exist.

They changed a trainer's attributes (its settings, its loss-term weights) without the change appearing in the
output folder name or the checkpoint's trainer name, so two different trainings could share one name. A
configuration is now a named variant class, as in nnU-Net (``nnUNetTrainer_250epochs``): a small subclass that sets
the attributes (docs/configuration.md). A trainer constructed while either variable is set (non-blank) stops with
an error that names the variant class to train instead (``VARIANT_FOR_OVERRIDE``, the configurations that were run
through these variables) or, for any other value, shows the subclass to write and where nnU-Net finds it. The
benchmark uses the same mapping to refuse an old output folder recorded with such overrides.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

TRAINER_SETTINGS_VARIABLE = "nnUNet_mona_trainer_settings"
LOSS_WEIGHTS_VARIABLE = "nnUNet_mona_loss_weights"
REMOVED_VARIABLES = (LOSS_WEIGHTS_VARIABLE, TRAINER_SETTINGS_VARIABLE)

_MT, _MONA, _ACTION = "nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA", "nnUNetTrainerACTION"
_S, _W = TRAINER_SETTINGS_VARIABLE, LOSS_WEIGHTS_VARIABLE

# (trainer the override was set on, variable, its value) -> the class with exactly those attribute values.
# A value that is now the trainer's default maps to the trainer itself.
OVERRIDE_VARIANTS: Tuple[Tuple[str, str, dict, str], ...] = (
    (_MT, _S, {"supervised_warmup_fraction": 0.5}, _MT),
    (_MT, _S, {"supervised_warmup_fraction": 0.5, "align_class_distribution": True},
     "nnUNetTrainerMeanTeacher_warmStart"),
    (_MT, _S, {"supervised_warmup_fraction": 0.25}, "nnUNetTrainerMeanTeacher_warmStart25"),
    (_MT, _S, {"supervised_warmup_fraction": 0.0, "align_class_distribution": True},
     "nnUNetTrainerMeanTeacher_randomStart"),
    (_MT, _S, {"mix_mode": "copy_paste"}, "nnUNetTrainerMeanTeacher_copyPaste"),
    (_MT, _S, {"mix_mode": "none"}, "nnUNetTrainerMeanTeacher_noMix"),
    (_MT, _S, {"mix_mode": "none", "align_class_distribution": False}, "nnUNetTrainerMeanTeacher_noMix"),
    (_MT, _S, {"align_class_distribution": False}, _MT),
    (_MT, _S, {"align_class_distribution": True}, "nnUNetTrainerMeanTeacher_warmStart"),
    (_MT, _S, {"alignment_teacher_momentum": 0.9, "align_class_distribution": True},
     "nnUNetTrainerMeanTeacher_alignmentMomentum09"),
    (_MT, _S, {"class_adaptive_threshold": True}, "nnUNetTrainerMeanTeacher_classAdaptiveThreshold"),
    (_MT, _S, {"unlabeled_batch_fraction": 1.0}, "nnUNetTrainerMeanTeacher_fullUnlabeledBatch"),
    (_MT, _S, {"unsupervised_rampup_fraction": 0.4}, "nnUNetTrainerMeanTeacher_rampUp40"),
    (_MT, _S, {"confidence_threshold": 0.97}, "nnUNetTrainerMeanTeacher_threshold097"),
    (_MT, _S, {"ema_decay": 0.999}, "nnUNetTrainerMeanTeacher_emaDecay0999"),
    (_MT, _S, {"use_pseudo_label_dice": False}, "nnUNetTrainerMeanTeacher_noPseudoLabelDice"),
    (_MT, _W, {"unsup": 0.0}, "nnUNetTrainerMeanTeacher_noPseudoLabelCE"),
    (_MT, _W, {"unsup": 0.0, "unsup_dice": 0.0}, "nnUNetTrainerMeanTeacher_noUnsup"),
    (_MONA, _S, {"supervised_warmup_fraction": 0.5}, "nnUNetTrainerMONA_warmStart"),
    (_MONA, _S, {"supervised_warmup_fraction": 0.0}, "nnUNetTrainerMONA_randomStart"),
    (_MONA, _S, {"mixed_precision": False}, "nnUNetTrainerMONA_fp32"),
    (_MONA, _W, {"contrast": 0.1}, "nnUNetTrainerMONA_contrast01"),
    (_MONA, _W, {"contrast": 0.01}, _MONA),
    (_ACTION, _S, {"log_gradient_norms": True}, "nnUNetTrainerACTION_logGradientNorms"),
)


class RemovedOverrideError(RuntimeError):
    """A removed override variable is set: nothing was trained or written."""


def _canonical_value(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def canonical(value) -> str:
    """One spelling for equal overrides: ``{"unsup":0}`` and ``{"unsup": 0.0}`` give the same string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value.strip()
    if isinstance(value, dict):
        value = {k: _canonical_value(v) for k, v in value.items()}
    return json.dumps(value, sort_keys=True)


VARIANT_FOR_OVERRIDE: Dict[Tuple[str, str, str], str] = {
    (trainer, variable, canonical(value)): variant for trainer, variable, value, variant in OVERRIDE_VARIANTS}


def set_overrides(environ=None) -> Dict[str, str]:
    """{variable: value} of the removed variables that are set (non-blank) in ``environ`` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    found = {v: environ.get(v, "").strip() for v in REMOVED_VARIABLES}
    return {v: value for v, value in found.items() if value}


def variants_for(overrides: Dict[str, str], trainers: Optional[List[str]] = None) -> Dict[str, str]:
    """{trainer: variant class} for every override in ``overrides`` ({variable: value}) that one class replaces,
    restricted to ``trainers`` when given. Two variables set together have no single class."""
    if len(overrides) != 1:
        return {}
    (variable, value), = overrides.items()
    found = {trainer: variant for (trainer, var, val), variant in VARIANT_FOR_OVERRIDE.items()
             if var == variable and val == canonical(value)}
    return {t: v for t, v in found.items() if trainers is None or t in trainers}


def _python_literal(value) -> str:
    return repr(_canonical_value(value))


# a loss term a trainer can switch off; a weight for it does nothing while it is off
TERM_SWITCHES = {"contrast": "use_contrast", "nn": "use_nn", "eqv": "use_equivariance"}


def _switched_off(trainer: str, weights: dict) -> List[Tuple[str, str]]:
    """(term, switch attribute) of each term in ``weights`` given a positive weight that ``trainer`` has off."""
    import nnunet_mona.trainers as trainers  # every trainer: only when an error message is written
    cls = getattr(trainers, trainer, None)
    found = []
    for term, weight in weights.items():
        switch = TERM_SWITCHES.get(term)
        if switch and getattr(cls, switch, True) is False and isinstance(weight, (int, float)) and weight > 0:
            found.append((term, switch))
    return found


def subclass_code(trainer: str, overrides: Dict[str, str]) -> str:
    """Python source of a variant of ``trainer`` that sets what ``overrides`` ({variable: JSON}) set."""
    lines = [f"from nnunet_mona.trainers import {trainer}", "", "",
             f"class {trainer}_mySetting({trainer}):",
             '    """<what this variant changes, and why>"""']
    for variable in (TRAINER_SETTINGS_VARIABLE, LOSS_WEIGHTS_VARIABLE):
        raw = overrides.get(variable, "")
        if not raw:
            continue
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            lines.append("    # <attribute> = <value>  (docs/configuration.md lists each trainer's attributes)")
        elif variable == LOSS_WEIGHTS_VARIABLE:
            items = ", ".join(f"{k!r}: {_python_literal(v)}" for k, v in parsed.items())
            lines.append(f"    loss_weights = {{**{trainer}.loss_weights, {items}}}")
            lines += [f"    {switch} = True  # {trainer} has the {term!r} term off"
                      for term, switch in _switched_off(trainer, parsed)]
        else:
            lines += [f"    {k} = {_python_literal(v)}" for k, v in parsed.items()]
    return "\n".join(lines) + "\n"


def subclass_recipe(trainer: str, overrides: Dict[str, str]) -> str:
    """The variant class to write for ``overrides`` on ``trainer``, and where to put it so that nnU-Net finds it."""
    code = "\n".join("    " + line if line else "" for line in subclass_code(trainer, overrides).splitlines())
    return (f"Write a variant class instead, in a folder of your own, e.g. ~/nnunet_trainers/my_variants.py:\n\n"
            f"{code}\n\n"
            f"and let nnU-Net find it next to this package's trainers:\n"
            f"    export nnUNet_extTrainer=\"$HOME/nnunet_trainers\"; eval \"$(nnUNetv2_mona_env)\"\n"
            f"then train it by name: nnUNetv2_train ... -tr {trainer}_mySetting (the name appears in the output "
            f"folder). docs/configuration.md lists the attributes a variant may set.")


def replacement_message(trainer: str, overrides: Dict[str, str]) -> str:
    """What to do instead of ``overrides`` ({variable: value}) on ``trainer``."""
    variant = variants_for(overrides, [trainer]).get(trainer)
    if variant == trainer:
        return f"These are {trainer}'s defaults: unset the variable and train {trainer} itself."
    if variant is not None:
        return f"Train the variant class {variant} instead: nnUNetv2_train ... -tr {variant}"
    return subclass_recipe(trainer, overrides)


def refuse_removed_overrides(trainer_class_name: str, environ=None) -> None:
    """Raises :class:`RemovedOverrideError` if a removed variable is set; called first in every trainer's
    ``__init__``, before nnU-Net creates anything."""
    overrides = set_overrides(environ)
    if not overrides:
        return
    listed = ", ".join(f"{v}='{value}'" for v, value in overrides.items())
    gone = "this environment variable no longer exists" if len(overrides) == 1 else \
        "these environment variables no longer exist"
    raise RemovedOverrideError(
        f"{listed}: {gone}. A trainer's configuration is its class name now, so that it appears in the output "
        f"folder and the checkpoint. Nothing was trained. {replacement_message(trainer_class_name, overrides)}\n"
        f"Then unset it: unset {' '.join(overrides)}")
