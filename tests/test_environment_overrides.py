"""The trainers' environment: nnUNet_mona_skip_validation skips the final validation nnUNetv2_train runs after
training (never a validation-only --val call; a bad value is an error). The removed overrides
nnUNet_mona_trainer_settings / nnUNet_mona_loss_weights stop every trainer before nnU-Net creates anything, naming
the variant class that replaces the value (or the subclass to write), and each such variant has exactly the values
of the override it replaces."""
import json
import os
import textwrap
from types import SimpleNamespace

import pytest

import nnunet_mona.trainers as trainers
from nnunet_mona.trainers.budget import SKIP_VALIDATION_VARIABLE, validation_skipped
from nnunet_mona.trainers.removed_overrides import (LOSS_WEIGHTS_VARIABLE, OVERRIDE_VARIANTS, REMOVED_VARIABLES,
                                                    TRAINER_SETTINGS_VARIABLE, RemovedOverrideError, canonical,
                                                    refuse_removed_overrides, set_overrides, subclass_code)


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


# ---------------------------------------------------------------- removed overrides -> variant classes
def _clear(monkeypatch):
    for variable in REMOVED_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def _construct(name: str, tmp_path, monkeypatch):
    """Constructs trainer ``name`` as nnUNetv2_train does, with results going to ``tmp_path``."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return getattr(trainers, name)({}, "2d", 0, {}, device=None)


@pytest.mark.parametrize("trainer, variable, value, variant", OVERRIDE_VARIANTS,
                         ids=[f"{t}-{json.dumps(v)}" for t, _, v, _ in OVERRIDE_VARIANTS])
def test_a_set_override_stops_the_trainer_naming_the_variant(trainer, variable, value, variant, tmp_path,
                                                             monkeypatch):
    _clear(monkeypatch)
    monkeypatch.setenv(variable, json.dumps(value))
    with pytest.raises(RemovedOverrideError) as info:
        _construct(trainer, tmp_path, monkeypatch)
    message = str(info.value)
    assert variable in message and "no longer exists" in message and "Nothing was trained" in message
    if variant == trainer:
        assert f"These are {trainer}'s defaults" in message
    else:
        assert f"-tr {variant}" in message
    assert not (tmp_path / "results").exists()  # refused before nnU-Net made a folder


def test_the_same_override_spelt_otherwise_finds_the_same_variant(monkeypatch):
    _clear(monkeypatch)
    for spelling in ('{"unsup":0}', ' {"unsup": 0.0} '):
        monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, spelling)
        with pytest.raises(RemovedOverrideError, match="-tr nnUNetTrainerMeanTeacher_noPseudoLabelCE"):
            refuse_removed_overrides("nnUNetTrainerMeanTeacher")
    assert canonical('{"b": 1, "a": true}') == canonical({"a": True, "b": 1.0})


@pytest.mark.parametrize("name", ["nnUNetTrainerBudget", "nnUNetTrainerMONA", "nnUNetTrainerMixCLPretrain"])
def test_every_trainer_refuses_and_blank_values_are_ignored(name, tmp_path, monkeypatch):
    _clear(monkeypatch)
    monkeypatch.setenv(TRAINER_SETTINGS_VARIABLE, '{"confidence_threshold": 0.5}')
    with pytest.raises(RemovedOverrideError, match=TRAINER_SETTINGS_VARIABLE):
        _construct(name, tmp_path, monkeypatch)
    monkeypatch.setenv(TRAINER_SETTINGS_VARIABLE, "  ")
    monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, "")
    refuse_removed_overrides(name)  # blank: not set


def test_an_unknown_value_gets_a_subclass_that_nnunet_finds(tmp_path, monkeypatch):
    """The error's recipe, saved where it says and added to nnUNet_extTrainer, is a trainer with those values."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_mona.cli import ext_trainer_env_value
    _clear(monkeypatch)
    monkeypatch.setenv(TRAINER_SETTINGS_VARIABLE, '{"mix_mode": "none", "confidence_threshold": 0.95}')
    monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, '{"unsup": 0}')
    with pytest.raises(RemovedOverrideError) as info:
        refuse_removed_overrides("nnUNetTrainerMeanTeacher")
    message = str(info.value)
    assert "these environment variables no longer exist" in message and "nnUNet_extTrainer" in message
    code = subclass_code("nnUNetTrainerMeanTeacher", set_overrides())
    assert textwrap.indent(code, "    ") in message + "\n"
    folder = tmp_path / "nnunet_trainers"
    folder.mkdir()
    (folder / "my_variants.py").write_text(code + "\n")
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_env_value(str(folder)))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMeanTeacher_mySetting")
    assert issubclass(cls, trainers.nnUNetTrainerMeanTeacher) and cls.__doc__
    assert cls.mix_mode == "none" and cls.confidence_threshold == 0.95
    assert cls.loss_weights == {"unsup": 0.0, "unsup_dice": 1.0}
    _clear(monkeypatch)


def test_a_weight_for_a_term_that_is_off_switches_it_on(tmp_path, monkeypatch):
    """A weight for MONA's equivariance term, which the default has off, gets a subclass that turns it on (a
    weight alone would train nothing different)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_mona.cli import ext_trainer_env_value
    _clear(monkeypatch)
    monkeypatch.setenv(LOSS_WEIGHTS_VARIABLE, '{"eqv": 0.5, "contrast": 0.1}')
    with pytest.raises(RemovedOverrideError) as info:
        refuse_removed_overrides("nnUNetTrainerMONA")
    assert "use_equivariance = True" in str(info.value) and "use_contrast" not in str(info.value)
    folder = tmp_path / "nnunet_trainers"
    folder.mkdir()
    (folder / "my_variants.py").write_text(subclass_code("nnUNetTrainerMONA", set_overrides()) + "\n")
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_env_value(str(folder)))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMONA_mySetting")
    assert cls.use_equivariance is True and cls.loss_weights["eqv"] == 0.5 and cls.loss_weights["contrast"] == 0.1
    assert "eqv" in cls.__new__(cls).loss_term_names
    _clear(monkeypatch)


def _scalar_attributes(cls) -> dict:
    found = {}
    for klass in reversed(cls.__mro__):
        found.update({k: v for k, v in vars(klass).items()
                      if not k.startswith("_") and isinstance(v, (bool, int, float, str, dict, tuple))})
    return found


@pytest.mark.parametrize("trainer, variable, value, variant", OVERRIDE_VARIANTS,
                         ids=[f"{v}-{json.dumps(o)}" for _, _, o, v in OVERRIDE_VARIANTS])
def test_each_variant_has_the_values_of_the_override_it_replaces(trainer, variable, value, variant):
    base, cls = getattr(trainers, trainer), getattr(trainers, variant)
    assert issubclass(cls, base) and variant in trainers.__all__
    assert variant == trainer or (cls.__doc__ and variant.startswith(trainer + "_"))
    expected = dict(_scalar_attributes(base))
    if variable == LOSS_WEIGHTS_VARIABLE:
        expected["loss_weights"] = {**base.loss_weights, **{k: float(v) for k, v in value.items()}}
    else:
        expected.update(value)
    got = _scalar_attributes(cls)
    assert {k: got[k] for k in expected} == expected  # the override's values, nothing else changed
    for name, v in value.items():
        if variable == TRAINER_SETTINGS_VARIABLE:
            assert type(getattr(cls, name)) is type(getattr(base, name)), name  # 1 for 1.0 would pass ==


def test_every_mapping_is_in_the_configuration_guide():
    guide = open(os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")).read()
    for trainer, variable, value, variant in OVERRIDE_VARIANTS:
        assert f"`{variant}`" in guide, variant
