"""Reliability of the semi-supervised trainers: exact resume after SIGKILL, determinism with a seed,
skipping of non-finite losses.

Runs use folds 1 and 2 of a split whose folds are identical, so their outputs do not collide with
the other end-to-end tests (fold 0).
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join

from conftest import fake_batches, run_cmd, write_identical_folds

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerMeanTeacher_randomStart"


def _env(epochs):
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": str(epochs), "nnUNet_mona_iterations": "3", "nnUNet_mona_val_iterations": "1",
                "nnUNet_mona_save_every": "1", "nnUNet_mona_seed": "123", "nnUNet_n_proc_DA": "0"})
    return env


@pytest.fixture(scope="module")
def dataset(simulated_scarcity_dataset):
    write_identical_folds(simulated_scarcity_dataset, 3)
    return simulated_scarcity_dataset


def _fold_dir(ds, fold):
    return join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", f"fold_{fold}")


def _train_cmd(ds, fold, *extra):
    return [join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", str(fold), "-tr", TRAINER, "-device", "cpu", *extra]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _kill_after_epoch(cmd, env, latest, min_epoch, timeout=600):
    """Start a training, SIGKILL it once checkpoint_latest.pth holds at least ``min_epoch`` epochs."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    start = time.time()
    try:
        while time.time() - start < timeout:
            if proc.poll() is not None:
                raise AssertionError("training ended before it could be killed")
            if os.path.isfile(latest):
                try:
                    if _load(latest)["current_epoch"] >= min_epoch:
                        break
                except Exception:
                    pass  # being written right now
            time.sleep(0.2)
        else:
            raise AssertionError("no checkpoint_latest.pth in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_resume_after_sigkill_equals_uninterrupted_run(dataset):
    ds, epochs = dataset, 4
    run_cmd(_train_cmd(ds, 1), env=_env(epochs))  # the reference: uninterrupted
    reference = _load(join(_fold_dir(ds, 1), "checkpoint_final.pth"))

    _kill_after_epoch(_train_cmd(ds, 2), _env(epochs), join(_fold_dir(ds, 2), "checkpoint_latest.pth"), min_epoch=2)
    assert not os.path.isfile(join(_fold_dir(ds, 2), "checkpoint_final.pth"))
    run_cmd(_train_cmd(ds, 2, "--c"), env=_env(epochs))
    resumed = _load(join(_fold_dir(ds, 2), "checkpoint_final.pth"))

    assert resumed["current_epoch"] == reference["current_epoch"] == epochs
    # loss curves of every epoch, before the kill (determinism) and after it (resume)
    for key in ("train_losses", "train_sup", "train_unsup", "train_confident_fraction", "lrs"):
        np.testing.assert_allclose(resumed["logging"][key], reference["logging"][key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    for name, value in reference["network_weights"].items():
        torch.testing.assert_close(resumed["network_weights"][name], value, rtol=1e-4, atol=1e-6)
    ref_teacher, res_teacher = reference["semi_supervised"]["teacher"], resumed["semi_supervised"]["teacher"]
    assert int(res_teacher["num_updates"]) == int(ref_teacher["num_updates"]) == epochs * 3
    for name, value in ref_teacher.items():
        torch.testing.assert_close(res_teacher[name], value, rtol=1e-4, atol=1e-6)
    # optimizer momentum continued too
    ref_opt, res_opt = reference["optimizer_state"]["state"], resumed["optimizer_state"]["state"]
    for k in ref_opt:
        torch.testing.assert_close(res_opt[k]["momentum_buffer"], ref_opt[k]["momentum_buffer"], rtol=1e-4, atol=1e-6)


def _in_process_trainer(ds, fold=1):
    from nnunet_mona.trainers.ready_trainer import make_trainer
    return make_trainer("nnUNetTrainerMeanTeacher_randomStart", join(ds["preprocessed"], ds["name"]), fold=fold)


def test_non_finite_losses_are_skipped_counted_and_stop_training(dataset, monkeypatch):
    trainer = _in_process_trainer(dataset)
    labeled, unlabeled = fake_batches(trainer)
    monkeypatch.setattr(trainer, "next_unlabeled_batch", lambda: unlabeled)
    # a healthy step changes the weights and reports no skip
    before = [p.detach().clone() for p in trainer.network.parameters()]
    out = trainer.train_step(labeled)
    assert float(out["skipped_steps"]) == 0 and np.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))

    def nan_losses(*args, **kwargs):
        return {"unsup": torch.tensor(float("nan")), "confident_fraction": torch.tensor(0.5)}

    monkeypatch.setattr(trainer, "compute_unlabeled_losses", nan_losses)
    trainer.max_consecutive_nonfinite_steps = 3
    before = [p.detach().clone() for p in trainer.network.parameters()]
    teacher_before = int(trainer.teacher.num_updates)
    for i in range(2):
        out = trainer.train_step(labeled)
        assert float(out["skipped_steps"]) == 1
    assert trainer.num_nonfinite_steps == 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))  # nothing applied
    assert int(trainer.teacher.num_updates) == teacher_before
    with pytest.raises(RuntimeError, match="consecutive training steps had a non-finite loss"):
        trainer.train_step(labeled)
