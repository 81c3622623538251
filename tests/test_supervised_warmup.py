"""Supervised warm-up inside a semi-supervised training (``supervised_warmup_fraction``): nnU-Net's step alone
for the first epochs, then the method from a teacher copied from the student with a restarted poly LR."""
import os
import sys

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from conftest import fake_batches, run_cmd, write_identical_folds
from nnunet_mona.trainers.supervised_warmup import (PhasedPolyLRScheduler, fitted_warmup_epochs,
                                                   supervised_warmup_epochs)

BIN = os.path.dirname(sys.executable)


@pytest.mark.parametrize("fraction, epochs, expected", [(0.0, 20, 0), (0.5, 20, 10), (0.5, 3, 2), (0.25, 10, 3),
                                                        (0.9, 20, 18)])
def test_warmup_epochs_round_the_share_of_the_budget(fraction, epochs, expected):
    assert supervised_warmup_epochs(epochs, fraction) == expected


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.5", True])
def test_a_fraction_outside_0_1_is_refused_with_what_to_set(fraction):
    with pytest.raises(ValueError, match="supervised_warmup_fraction must be a number in"):
        supervised_warmup_epochs(20, fraction)


def test_a_warmup_that_leaves_no_semi_supervised_epoch_is_refused_by_the_benchmark_and_shortened_in_training():
    with pytest.raises(ValueError, match="leaves no semi-supervised epoch"):
        supervised_warmup_epochs(1, 0.5)
    assert fitted_warmup_epochs(1, 0.5) == (0, True)  # a 1-epoch smoke run is semi-supervised throughout
    assert fitted_warmup_epochs(2, 0.9) == (1, True)
    assert fitted_warmup_epochs(20, 0.5) == (10, False) and fitted_warmup_epochs(3, 0.0) == (0, False)
    with pytest.raises(ValueError, match="must be a number in"):
        fitted_warmup_epochs(20, 1.0)


def test_the_default_mean_teacher_and_mona_start_with_half_supervised_and_their_named_variants_keep_each_recipe():
    from nnunet_mona import trainers as t
    for default in (t.nnUNetTrainerMeanTeacher, t.nnUNetTrainerMONA):
        name = default.__name__
        assert default.supervised_warmup_fraction == 0.5 == getattr(t, name + "_warmStart").supervised_warmup_fraction
        assert getattr(t, name + "_randomStart").supervised_warmup_fraction == 0.0
    # stages that start from another training's model, and the paper's recipe, have no warm-up of their own
    for own_start in (t.nnUNetTrainerACTION, t.nnUNetTrainerMONA_paperRecipe):
        assert own_start.supervised_warmup_fraction == 0.0


def _lrs(scheduler, epochs):
    out = []
    for e in range(epochs):
        scheduler.step(e)
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)


def test_phased_poly_lr_decays_twice_and_is_nnunets_poly_without_warmup():
    phased = _lrs(PhasedPolyLRScheduler(_optimizer(), 0.01, 10, 4), 10)
    warmup_alone = _lrs(PolyLRScheduler(_optimizer(), 0.01, 4), 4)
    rest_alone = _lrs(PolyLRScheduler(_optimizer(), 0.01, 6), 6)
    np.testing.assert_allclose(phased, warmup_alone + rest_alone)
    assert phased[0] == phased[4] == 0.01 and phased[3] < phased[0] and phased[9] < phased[4]
    np.testing.assert_allclose(_lrs(PhasedPolyLRScheduler(_optimizer(), 0.01, 10, 0), 10),
                               _lrs(PolyLRScheduler(_optimizer(), 0.01, 10), 10))


@pytest.fixture(scope="module")
def dataset(simulated_scarcity_dataset):
    write_identical_folds(simulated_scarcity_dataset, 5)
    return simulated_scarcity_dataset


def test_warmup_steps_are_supervised_then_the_teacher_starts_from_the_student(dataset, monkeypatch):
    from nnunet_mona.trainers.ready_trainer import make_trainer
    monkeypatch.setenv("nnUNet_mona_epochs", "4")
    trainer = make_trainer("nnUNetTrainerMeanTeacher", join(dataset["preprocessed"], dataset["name"]), fold=3,
                           class_overrides={"supervised_warmup_fraction": 0.5})
    assert trainer.supervised_warmup_epochs == 2
    labeled, unlabeled = fake_batches(trainer)
    reads = []
    monkeypatch.setattr(trainer, "next_unlabeled_batch", lambda: reads.append(1) or unlabeled)
    teacher_before = [p.detach().clone() for p in trainer.teacher.model.parameters()]

    # warm-up epoch: nnU-Net's step on the labeled batch only; no unlabeled read, no teacher update
    trainer.current_epoch = 1
    trainer.on_train_epoch_start()
    assert trainer.unsupervised_weight_factor() == 0.0
    out = trainer.train_step(labeled)
    assert np.isfinite(out["sup"]) and float(out["loss"]) == float(out["sup"]) and "unsup" not in out
    assert reads == [] and int(trainer.teacher.num_updates) == 0
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, trainer.teacher.model.parameters()))
    student = dict(trainer.network.state_dict())
    assert any(not torch.equal(student[k], v) for k, v in trainer.teacher.model.state_dict().items())
    assert len(trainer.optimizer.state) > 0  # SGD momentum of the warm-up

    # first semi-supervised epoch: teacher = student, fresh EMA warm-up, no momentum, LR back at its start
    trainer.current_epoch = 2
    trainer.on_train_epoch_start()
    for k, v in trainer.teacher.model.state_dict().items():
        assert torch.equal(v, trainer.network.state_dict()[k]), k
    assert int(trainer.teacher.num_updates) == 0 and len(trainer.optimizer.state) == 0
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.initial_lr
    assert trainer.unsupervised_weight_factor() < 1.0  # the ramp-up starts with the semi-supervised phase
    out = trainer.train_step(labeled)
    assert reads == [1] and int(trainer.teacher.num_updates) == 1 and "unsup" in out
    trainer.current_epoch = 3
    assert trainer.unsupervised_weight_factor() == 1.0


def test_nnunetv2_train_with_the_default_mean_teacher_trains_the_method_only_after_the_warmup(dataset):
    """The design's command ``nnUNetv2_train ... -tr nnUNetTrainerMeanTeacher``: half the epochs supervised."""
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": "2", "nnUNet_mona_iterations": "3", "nnUNet_mona_val_iterations": "1",
                "nnUNet_mona_skip_validation": "1"})
    trainer = "nnUNetTrainerMeanTeacher"
    run_cmd([join(BIN, "nnUNetv2_train"), str(dataset["id"]), "2d", "4", "-tr", trainer, "-device", "cpu"], env=env)
    fold = join(dataset["results"], dataset["name"], f"{trainer}__nnUNetPlans__2d", "fold_4")
    ckpt = torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    assert np.isnan(logging["train_unsup"][0]) and np.isfinite(logging["train_unsup"][1])
    assert np.all(np.isfinite(logging["train_sup"]))
    assert logging["lrs"][0] == logging["lrs"][1] == 0.01  # the poly decay started again
    assert ckpt["semi_supervised"]["teacher"]["num_updates"].item() == 3  # the semi-supervised epoch's steps only
    log = open(join(fold, sorted(f for f in os.listdir(fold) if f.startswith("training_log"))[-1])).read()
    assert "Supervised warm-up: epochs 0-0" in log and "Supervised warm-up done (1 epochs)" in log


def test_monas_entropy_split_schedule_starts_at_the_switch(dataset, monkeypatch):
    """MONA's reliability alpha decays over the semi-supervised epochs only, as in a second training."""
    import nnunet_mona.trainers.mona as mona_module
    from nnunet_mona.trainers.ready_trainer import make_trainer
    monkeypatch.setenv("nnUNet_mona_epochs", "4")
    trainer = make_trainer("nnUNetTrainerMONA", join(dataset["preprocessed"], dataset["name"]), fold=3,
                           class_overrides={"supervised_warmup_fraction": 0.5})
    labeled, unlabeled = fake_batches(trainer)
    monkeypatch.setattr(trainer, "next_unlabeled_batch", lambda: unlabeled)
    progress = []
    schedule = mona_module.alpha_schedule
    monkeypatch.setattr(mona_module, "alpha_schedule", lambda p, a0: progress.append(p) or schedule(p, a0))
    for epoch in (2, 3):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        trainer.train_step(labeled)
    assert progress == [0.0, 0.5]


def test_skip_supervised_warmup_gives_a_step_driven_trainer_the_methods_step(dataset, monkeypatch):
    """What the iteration benchmark times: the default (warm-started) Mean Teacher's semi-supervised step."""
    from nnunet_mona.trainers.ready_trainer import make_trainer, skip_supervised_warmup
    monkeypatch.setenv("nnUNet_mona_epochs", "4")
    trainer = make_trainer("nnUNetTrainerMeanTeacher", join(dataset["preprocessed"], dataset["name"]), fold=3)
    assert trainer.in_supervised_warmup()
    skip_supervised_warmup(trainer)
    assert not trainer.in_supervised_warmup() and trainer.current_epoch == 2
    labeled, unlabeled = fake_batches(trainer)
    monkeypatch.setattr(trainer, "next_unlabeled_batch", lambda: unlabeled)
    assert "unsup" in trainer.train_step(labeled)
    plain = make_trainer("nnUNetTrainerBudget", join(dataset["preprocessed"], dataset["name"]), fold=3)
    skip_supervised_warmup(plain)
    assert plain.current_epoch == 0
