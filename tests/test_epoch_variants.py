"""``<trainer>_<N>epochs``: made on first lookup with one identity, found by nnU-Net's own lookup, trains N epochs
through nnUNetv2_train (the results folder and checkpoint named after it) and predicts with nnUNetv2_predict."""
import os
import pickle
import sys

import pytest
import torch
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_mona.trainers as trainers
from conftest import run_cmd
from nnunet_mona.benchmark.preparation import check_trainers
from nnunet_mona.benchmark.processes import BenchmarkError
from nnunet_mona.cli import ext_trainer_folder

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("base", ["nnUNetTrainerMeanTeacher", "nnUNetTrainerMONA_noContrast", "nnUNetTrainerBudget"])
def test_a_variant_is_its_trainer_with_the_epochs_of_its_name_found_by_nnunet_with_one_identity(base, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    name = f"{base}_37epochs"
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is getattr(trainers, name) and cls.__name__ == name
    assert cls.__bases__ == (getattr(trainers, base),) and cls.epochs_from_name == 37
    assert pickle.loads(pickle.dumps(cls)) is cls  # DA workers under spawn need this


@pytest.mark.parametrize("name", ["nnUNetTrainerMeanTeacher_0epochs", "nnUNetTrainerMeanTeacher_epochs",
                                  "nnUNetTrainerUnknown_20epochs", "nnUNetTrainerSemiSupervised_20epochs",
                                  "nnUNetTrainerMeanTeacher_20epochs_20epochs", "nnUNetTrainerMeanTeacher_20Epochs"])
def test_other_names_are_not_made(name):
    assert not hasattr(trainers, name)


def test_the_benchmark_refuses_a_variant_because_it_sets_the_epochs_itself(monkeypatch):
    with pytest.raises(BenchmarkError, match="fix their epoch count by name.*without the _<N>epochs suffix"):
        check_trainers(["nnUNetTrainerBudget", "nnUNetTrainerMeanTeacher_100epochs"])


def test_a_different_epoch_count_in_the_environment_is_refused_before_anything_is_made(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_mona_epochs", "5")
    with pytest.raises(ValueError, match="trains 3 epochs by its name.*nnUNet_mona_epochs=5"):
        trainers.nnUNetTrainerMeanTeacher_3epochs({}, "2d", 0, {}, device=None)
    assert not (tmp_path / "results").exists()


def test_train_and_predict_through_the_stock_commands(hidden_label_dataset, tmp_path):
    """2 epochs by the name (the default Mean Teacher: the first supervised, the second Mean Teacher)."""
    ds, name = hidden_label_dataset, "nnUNetTrainerMeanTeacher_2epochs"
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_mona_epochs"}
    env.update({"nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1",
                "nnUNet_mona_skip_validation": "1"})
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", name, "-device", "cpu"], env=env)
    fold = os.path.join(ds["results"], ds["name"], f"{name}__nnUNetPlans__2d", "fold_0")
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == name and checkpoint["current_epoch"] == 2
    assert len(checkpoint["logging"]["train_losses"]) == 2
    log = "".join(open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log"))
    assert f"num_epochs = 2 (from the trainer name {name})" in log
    images = os.path.join(ds["raw"], ds["name"], "imagesTs")
    run_cmd([os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", str(tmp_path), "-d", str(ds["id"]),
             "-c", "2d", "-tr", name, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"], env=env)
    predicted = sorted(p for p in os.listdir(tmp_path) if p.endswith(".nii.gz"))
    assert predicted == sorted(f"{c}.nii.gz" for c in ds["roles"]["test"])
