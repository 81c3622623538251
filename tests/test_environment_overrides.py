"""Environment overrides of the trainers: nnUNet_mona_skip_validation skips the final validation nnUNetv2_train
runs after training (never a validation-only --val call; a bad value is an error), nnUNet_mona_loss_weights
overrides loss-term weights for one run (unknown terms and bad weights are errors before any training)."""
from types import SimpleNamespace

import pytest

from nnunet_mona.trainers.budget import SKIP_VALIDATION_VARIABLE, validation_skipped


def _trainer(trained_this_run: bool):
    lines = []
    trainer = SimpleNamespace(print_to_log_file=lambda *a: lines.append(" ".join(map(str, a))))
    if trained_this_run:
        trainer._validation_only = False  # what TrainedThisRun.run_training sets
    return trainer, lines


@pytest.mark.parametrize("value, trained, skipped", [
    (None, True, False), ("", True, False), ("0", True, False), ("1", True, True),
    ("1", False, False),  # nnUNetv2_train --val: run_training never ran, the user asked for the validation
])
def test_skip_only_after_training_and_only_when_asked(monkeypatch, value, trained, skipped):
    if value is None:
        monkeypatch.delenv(SKIP_VALIDATION_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(SKIP_VALIDATION_VARIABLE, value)
    trainer, lines = _trainer(trained)
    assert validation_skipped(trainer) is skipped
    assert any("final validation skipped" in line and "--val" in line for line in lines) is skipped


@pytest.mark.parametrize("bad", ["yes", "2", "true"])
def test_bad_value_is_an_error_naming_the_variable(monkeypatch, bad):
    monkeypatch.setenv(SKIP_VALIDATION_VARIABLE, bad)
    with pytest.raises(ValueError, match=SKIP_VALIDATION_VARIABLE):
        validation_skipped(_trainer(True)[0])


# ---------------------------------------------------------------- nnUNet_mona_loss_weights
from nnunet_mona.trainers.budget import LOSS_WEIGHTS_VARIABLE, apply_loss_weights_from_environment  # noqa: E402


class _Weighted:
    loss_weights = {"unsup": 1.0, "unsup_dice": 1.0}

    def __init__(self):
        self.lines = []

    def print_to_log_file(self, *args):
        self.lines.append(" ".join(map(str, args)))


def test_loss_weights_override_the_instance_not_the_class(monkeypatch):
    monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, '{"unsup": 0, "unsup_dice": 0.5}')
    trainer = _Weighted()
    apply_loss_weights_from_environment(trainer)
    assert trainer.loss_weights == {"unsup": 0.0, "unsup_dice": 0.5}
    assert _Weighted.loss_weights == {"unsup": 1.0, "unsup_dice": 1.0}
    assert any(LOSS_WEIGHTS_VARIABLE in line for line in trainer.lines)
    monkeypatch.delenv(LOSS_WEIGHTS_VARIABLE)
    other = _Weighted()
    apply_loss_weights_from_environment(other)
    assert other.loss_weights == {"unsup": 1.0, "unsup_dice": 1.0} and other.lines == []


@pytest.mark.parametrize("raw, message", [
    ('{"contrast": 0}', "not loss terms"), ('{"unsup": -1}', ">= 0"), ('{"unsup": "x"}', ">= 0"),
    ('{"unsup": true}', ">= 0"), ("unsup=0", "JSON object"), ("[0]", "JSON object"),
])
def test_bad_loss_weights_are_errors_naming_the_variable(monkeypatch, raw, message):
    monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, raw)
    with pytest.raises(ValueError, match=message) as info:
        apply_loss_weights_from_environment(_Weighted())
    assert LOSS_WEIGHTS_VARIABLE in str(info.value)


# ---------------------------------------------------------------- nnUNet_mona_trainer_settings
from nnunet_mona.trainers.mean_teacher import nnUNetTrainerMeanTeacher  # noqa: E402
from nnunet_mona.trainers.trainer_settings import (TRAINER_SETTINGS_VARIABLE,  # noqa: E402
                                                   apply_trainer_settings_from_environment, settable_attributes)


class _MeanTeacherLike(nnUNetTrainerMeanTeacher):
    """The real class's attributes without nnU-Net's set-up (no plans, no dataset)."""

    def __init__(self):
        self.lines = []

    def print_to_log_file(self, *args):
        self.lines.append(" ".join(map(str, args)))


def test_settable_attributes_are_the_scalar_class_attributes():
    settable = settable_attributes(nnUNetTrainerMeanTeacher)
    assert settable["confidence_threshold"] == 0.9 and settable["mix_mode"] == "cutmix"
    assert settable["ema_decay"] == 0.99 and settable["use_pseudo_label_dice"] is True
    assert "loss_weights" not in settable  # a dict: nnUNet_mona_loss_weights sets it


def test_trainer_settings_override_the_instance_not_the_class(monkeypatch):
    monkeypatch.setenv(TRAINER_SETTINGS_VARIABLE, '{"confidence_threshold": 0.7, "ema_decay": 1, '
                                                  '"mix_mode": "none", "use_pseudo_label_dice": false}')
    trainer = _MeanTeacherLike()
    applied = apply_trainer_settings_from_environment(trainer)
    assert applied == {"confidence_threshold": 0.7, "ema_decay": 1.0, "mix_mode": "none",
                       "use_pseudo_label_dice": False}
    assert trainer.confidence_threshold == 0.7 and isinstance(trainer.ema_decay, float)
    assert trainer.mix_mode == "none" and trainer.use_pseudo_label_dice is False
    assert nnUNetTrainerMeanTeacher.confidence_threshold == 0.9 and nnUNetTrainerMeanTeacher.mix_mode == "cutmix"
    assert any(TRAINER_SETTINGS_VARIABLE in line for line in trainer.lines)
    monkeypatch.delenv(TRAINER_SETTINGS_VARIABLE)
    other = _MeanTeacherLike()
    assert apply_trainer_settings_from_environment(other) == {} and other.confidence_threshold == 0.9


@pytest.mark.parametrize("raw, message", [
    ('{"confidence_treshold": 0.7}', "not settable"), ('{"confidence_threshold": "0.7"}', "must be a float"),
    ('{"use_pseudo_label_dice": 1}', "must be a bool"), ('{"mix_mode": 0}', "must be a str"),
    ('{"loss_weights": {}}', "not settable"), ("threshold=0.7", "JSON object"), ("[0.7]", "JSON object"),
])
def test_bad_trainer_settings_are_errors_naming_the_variable(monkeypatch, raw, message):
    monkeypatch.setenv(TRAINER_SETTINGS_VARIABLE, raw)
    trainer = _MeanTeacherLike()
    with pytest.raises(ValueError, match=message) as info:
        apply_trainer_settings_from_environment(trainer)
    assert TRAINER_SETTINGS_VARIABLE in str(info.value)
    assert trainer.confidence_threshold == 0.9  # nothing half-applied
