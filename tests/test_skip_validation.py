"""nnUNet_mona_skip_validation: the final validation nnUNetv2_train runs after training is skipped when asked,
never when the call is a validation-only one (``--val``), and a bad value is an error, not a silent default."""
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
