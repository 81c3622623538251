"""MixCL pre-training: loss properties, trainer wiring, and the pretrain -> fine-tune -> predict recipe
with the stock nnU-Net commands (CPU, 1 epoch x 2 iterations each)."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cmd
from nnunet_mona.losses.identity_contrast import identity_info_nce, same_case_matrix
from nnunet_mona.losses.reconstruction import random_patch_mask, reconstruction_loss
from nnunet_mona.trainers.mixcl import label_consistency_loss

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerMixCLPretrain"


# ---------------------------------------------------------------------------- losses
def test_identity_lower_for_matching_views_than_shuffled_pairs():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(8, 32, generator=g)
    query = base + 0.1 * torch.randn(8, 32, generator=g)
    key = base + 0.1 * torch.randn(8, 32, generator=g)
    queue = torch.randn(16, 32, generator=g)
    matching = identity_info_nce(query, key, queue, temperature=0.2)
    shuffled = identity_info_nce(query, key[torch.roll(torch.arange(8), 1)], queue, temperature=0.2)
    assert matching < 0.5 * shuffled
    # a queue adds negatives: the loss cannot decrease
    assert identity_info_nce(query, key, queue) >= identity_info_nce(query, key, None) - 1e-6


def test_identity_exclusion_and_degenerate_cases():
    q, k = torch.randn(4, 8), torch.randn(4, 8)
    everything_excluded = torch.ones(4, 4, dtype=torch.bool)
    assert identity_info_nce(q, k, None, exclude=everything_excluded).item() == pytest.approx(0.0, abs=1e-6)
    assert same_case_matrix(["a", "b", "a"]).tolist() == [[True, False, True], [False, True, False],
                                                          [True, False, True]]


def test_identity_gradient_reaches_student_and_head_not_teacher():
    torch.manual_seed(0)
    student, head, teacher = nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)
    x = torch.randn(6, 16)
    loss = identity_info_nce(head(student(x)), teacher(x + 0.01), torch.randn(5, 8))
    loss.backward()
    assert student.weight.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


def test_reconstruction_loss_zero_for_perfect_and_mask_respected():
    target = torch.randn(2, 1, 16, 16)
    assert reconstruction_loss(target.clone(), target).item() == 0.0
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, :8] = True
    prediction = target.clone()
    prediction[:, :, 8:] += 5.0  # wrong only outside the mask
    assert reconstruction_loss(prediction, target, mask).item() == 0.0
    assert reconstruction_loss(prediction, target, ~mask, kind="l1").item() == pytest.approx(5.0)
    assert reconstruction_loss(prediction, target, ~mask, kind="l2").item() == pytest.approx(25.0)
    prediction.requires_grad_(True)
    empty = reconstruction_loss(prediction, target, torch.zeros_like(mask))
    empty.backward()
    assert empty.item() == 0.0 and prediction.grad is not None


def test_random_patch_mask_exact_fraction_in_blocks():
    mask = random_patch_mask(3, (16, 16), 4, 0.25, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 16, 16) and mask.dtype == torch.bool
    assert torch.all(mask.float().mean((1, 2)) == 0.25)
    blocks = mask.view(3, 4, 4, 4, 4).float().mean((2, 4))  # constant inside every 4x4 cell
    assert torch.all((blocks == 0) | (blocks == 1))
    assert random_patch_mask(1, (8, 8, 8), 4, 0.0).sum() == 0


def test_label_contrast_lower_for_class_separated_embeddings():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (2, 12, 12), generator=g)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1) * 5
    separated = centres[labels].movedim(-1, 1) + 0.1 * torch.randn(2, 16, 12, 12, generator=g)
    mixed = torch.randn(2, 16, 12, 12, generator=g)
    kw = dict(num_classes=3, num_queries=32, num_negatives=64, temperature=0.1,
              generator=torch.Generator().manual_seed(1))
    loss_separated, keys, key_labels = label_consistency_loss(separated, labels, **kw)
    loss_mixed, _, _ = label_consistency_loss(mixed, labels, **kw)
    assert loss_separated < 0.1 * loss_mixed
    assert keys.shape[1] == 16 and not keys.requires_grad and set(key_labels.tolist()) == {0, 1, 2}
    labels[0] = -1  # ignored pixels are neither anchors nor keys
    _, keys, key_labels = label_consistency_loss(separated, labels, **kw)
    assert 0 < len(key_labels) <= int((labels >= 0).sum())
    image_1 = separated[1].reshape(16, -1).T
    assert all(torch.isclose(image_1, k).all(1).any() for k in keys[:20])


# ---------------------------------------------------------------------------- dataset + runs
def _env(**extra):
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": "1", "nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1"})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mixcl_dataset(hidden_label_dataset, tmp_path_factory):
    """conftest's Dataset988 (fold 0) plus "another dataset" preprocessed with its plans: renamed
    copies of two unlabeled images in a folder of their own (the shared dataset is not changed)."""
    ds = hidden_label_dataset
    extra = tmp_path_factory.mktemp("mixcl_extra_unlabeled")
    for case in ds["roles"]["unlabeled"][:2]:
        shutil.copy(os.path.join(ds["pre"], "nnUNetPlans_2d", f"{case}.b2nd"), extra / f"other_{case}.b2nd")
    return {**ds, "extra": str(extra)}


@pytest.fixture(scope="module")
def pretrained(mixcl_dataset):
    ds = mixcl_dataset
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
            env=_env(nnUNet_mona_extra_unlabeled=ds["extra"]))
    fold = os.path.join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    return {"ds": ds, "fold": fold, "checkpoint": os.path.join(fold, "checkpoint_final.pth")}


def _trainer(ds, cls):
    from nnunet_mona.trainers.ready_trainer import make_trainer
    return make_trainer(cls, ds["pre"], fold=0)


def test_trainer_step_gradients_reach_student_and_heads_not_teacher(mixcl_dataset):
    from nnunet_mona.trainers.mixcl import nnUNetTrainerMixCLPretrain

    trainer = _trainer(mixcl_dataset, nnUNetTrainerMixCLPretrain)
    patch = tuple(trainer.configuration_manager.patch_size)
    g = torch.Generator().manual_seed(0)
    seg = torch.zeros(2, 1, *patch)
    seg[:, :, 16:40, 16:40] = 1
    seg[:, :, 24:32, 24:32] = 2
    scales = trainer._get_deep_supervision_scales()
    target = [torch.nn.functional.interpolate(seg, scale_factor=tuple(s), mode="nearest") for s in scales]
    weak = torch.randn(3, 1, *patch, generator=g)
    unlabeled = {"data_weak": weak, "data_strong": weak + 0.1 * torch.randn(3, 1, *patch, generator=g),
                 "valid_mask": torch.ones(3, 1, *patch, dtype=torch.bool), "keys": ["a", "b", "a"]}
    trainer.next_unlabeled_batch = lambda: unlabeled
    out = trainer.train_step({"data": torch.randn(2, 1, *patch, generator=g), "target": target})
    for name in ("identity", "label", "reconstruction", "sup"):
        assert np.isfinite(out[name]) and out[name] > 0, (name, out)
    for module in (trainer.network, *trainer.auxiliary_modules.values()):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert all(p.grad is None for p in trainer.mixcl_state.parameters())
    # memories filled after the step; the network state dict is a plain nnU-Net one (no head inside)
    assert len(trainer.mixcl_state["identity_queue"]) == 3
    assert sum(trainer.mixcl_state["label_bank"].sizes()) > 0
    assert not any(k.startswith(("identity", "label", "reconstruction")) for k in trainer.network.state_dict())


def test_pretraining_logs_terms_and_uses_extra_folders(pretrained):
    ckpt = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == TRAINER
    for key in ("train_sup", "train_identity", "train_label", "train_reconstruction"):
        assert len(ckpt["logging"][key]) == 1 and np.isfinite(ckpt["logging"][key][0]), key
    state = ckpt["semi_supervised"]
    assert {"identity_projector.net.0.weight", "reconstruction_head.0.weight"} <= set(state["auxiliary_modules"])
    assert int(state["mixcl_state"]["identity_queue.num_filled"]) > 0
    fold = pretrained["fold"]
    log = open(os.path.join(fold, sorted(f for f in os.listdir(fold) if f.startswith("training_log"))[-1])).read()
    n_own = len(pretrained["ds"]["roles"]["unlabeled"])
    assert f"Unlabeled pool: {n_own + 2} cases" in log and "Extra unlabeled folders: 2 cases" in log


def test_checkpoint_loads_into_plain_nnunet_with_pretrained_weights_loader(pretrained):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunet_mona.trainers.budget import nnUNetTrainerBudget

    trainer = _trainer(pretrained["ds"], nnUNetTrainerBudget)
    load_pretrained_weights(trainer.network, pretrained["checkpoint"])
    weights = torch.load(pretrained["checkpoint"], map_location="cpu", weights_only=False)["network_weights"]
    loaded = trainer.network.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        if ".seg_layers." not in key:
            assert torch.equal(loaded[key], value), key


def test_finetune_with_pretrained_weights_then_predict(pretrained, tmp_path):
    ds = pretrained["ds"]
    out = run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", "nnUNetTrainerBudget",
                   "-device", "cpu", "-pretrained_weights", pretrained["checkpoint"]], env=_env())
    assert "Loading pretrained weights from file" in out
    predictions = tmp_path / "pred"
    run_cmd([os.path.join(BIN, "nnUNetv2_predict"), "-i", os.path.join(ds["raw"], ds["name"], "imagesTs"),
             "-o", str(predictions), "-d", str(ds["id"]), "-c", "2d", "-tr", "nnUNetTrainerBudget", "-f", "0",
             "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"])
    assert sorted(p for p in os.listdir(predictions) if p.endswith(".nii.gz")) == \
        sorted(f"{c}.nii.gz" for c in ds["roles"]["test"])
