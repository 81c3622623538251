"""nnU-Net's own lookup (used by nnUNetv2_train and nnUNetv2_predict) finds every trainer of the
package through nnUNet_extTrainer, with one class identity, picklable; without it, the user is
told how to fix it."""
import os
import pickle
import subprocess
import sys

import pytest
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_mona.trainers as trainers
from nnunet_mona.cli import ext_trainer_env_value, ext_trainer_folder

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("name", trainers.__all__)
def test_every_exported_trainer_is_found_with_one_identity(name, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is getattr(trainers, name)
    assert pickle.loads(pickle.dumps(cls)) is cls  # DA workers under spawn need this


def test_without_env_nnunet_says_what_to_set(monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match="nnUNet_extTrainer"):
        recursive_find_trainer_class_by_name("nnUNetTrainerMeanTeacher")


def test_env_command_prints_a_working_export_line(monkeypatch):
    env = dict(os.environ, nnUNet_extTrainer="/some/other/folder")
    out = subprocess.run([os.path.join(BIN, "nnUNetv2_mona_env")], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    assert out.stdout.strip() == f"export nnUNet_extTrainer='{ext_trainer_folder()}{os.pathsep}/some/other/folder'"
    # prepending twice does not duplicate our folder
    assert ext_trainer_env_value(ext_trainer_env_value("")) == ext_trainer_folder()


def test_env_check_fails_with_the_fix_when_not_set_up():
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    out = subprocess.run([os.path.join(BIN, "nnUNetv2_mona_env"), "--check"], capture_output=True, text=True, env=env)
    assert out.returncode == 1
    assert 'eval "$(nnUNetv2_mona_env)"' in out.stderr
    env["nnUNet_extTrainer"] = ext_trainer_folder()
    out = subprocess.run([os.path.join(BIN, "nnUNetv2_mona_env"), "--check"], capture_output=True, text=True, env=env)
    assert out.returncode == 0


def test_shim_folder_is_not_a_package():
    # nnU-Net must scan it as a plain folder; an __init__.py would change the module names it imports
    assert not os.path.exists(os.path.join(ext_trainer_folder(), "__init__.py"))
    assert os.listdir(ext_trainer_folder())
