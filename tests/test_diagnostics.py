"""Diagnostics of trained models: class separation (properties of the measure on constructed features) and, end to
end on a MONA model trained with nnUNetv2_train on tiny synthetic data, the gradient-share and class-separation
commands (the weights stay the checkpoint's; nothing is written next to it)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run_cmd
from nnunet_mona.diagnostics.class_separation import (class_separation, cosine_margin, nearest_centroid_accuracy,
                                                      sample_pixels_per_class)

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerMONA_equivariance"  # the default's warm-up (epoch 0 supervised, epoch 1 MONA), every term


# ---------------------------------------------------------------- the measure
def _clustered(num_classes=3, per_class=50, dim=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    directions = torch.eye(dim)[:num_classes]
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return directions[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_separated_classes_score_high_and_class_blind_features_score_chance():
    features, labels = _clustered()
    separated = class_separation([features[0::2], features[1::2]], [labels[0::2], labels[1::2]], 3)
    assert separated["margin"] > 0.9 and separated["nearest_centroid_accuracy"] == 1.0
    g = torch.Generator().manual_seed(1)
    blind = torch.randn(3000, 16, generator=g)
    blind_labels = torch.randint(0, 3, (3000,), generator=g)
    chance = class_separation([blind[:1500], blind[1500:]], [blind_labels[:1500], blind_labels[1500:]], 3)
    assert abs(chance["margin"]) < 0.02 and abs(chance["nearest_centroid_accuracy"] - 1 / 3) < 0.06


def test_within_class_cosine_is_the_mean_over_distinct_pairs():
    features, labels = _clustered(num_classes=2, per_class=7, noise=0.5)
    unit = torch.nn.functional.normalize(features, dim=1)
    brute_within = []
    for k in range(2):
        u = unit[labels == k]
        pairs = u @ u.T
        brute_within.append(float((pairs.sum() - pairs.diagonal().sum()) / (len(u) * (len(u) - 1))))
    brute_between = float((unit[labels == 0] @ unit[labels == 1].T).mean())
    measured = cosine_margin(features, labels, 2)
    assert measured["within"] == pytest.approx(np.mean(brute_within), abs=1e-5)
    assert measured["between"] == pytest.approx(brute_between, abs=1e-5)


def test_separation_ignores_feature_scale_and_pixel_order():
    features, labels = _clustered(noise=0.7)
    volumes = [features[0::2], features[1::2]], [labels[0::2], labels[1::2]]
    reference = class_separation(*volumes, 3)
    scales = torch.rand(len(features), 1, generator=torch.Generator().manual_seed(2)) * 10 + 0.1
    scaled = class_separation([(features * scales)[0::2], (features * scales)[1::2]], volumes[1], 3)
    order = torch.randperm(len(volumes[0][0]), generator=torch.Generator().manual_seed(3))
    shuffled = class_separation([v[order] for v in volumes[0]], [v[order] for v in volumes[1]], 3)
    for other in (scaled, shuffled):
        for key in ("within", "between", "margin", "nearest_centroid_accuracy"):
            assert other[key] == pytest.approx(reference[key], abs=1e-5), key


def test_nearest_centroid_never_predicts_a_class_it_was_not_fitted_on():
    features, labels = _clustered(num_classes=3, noise=2.0)
    fit = labels != 2
    accuracy = nearest_centroid_accuracy(features[fit], labels[fit], features, labels, 3)
    assert accuracy <= 2 / 3 + 1e-6  # class 2's pixels are all wrong


def test_pixel_sampling_caps_each_class_and_skips_ignored_pixels():
    labels = torch.full((2, 8, 8), -1, dtype=torch.long)
    labels[0, :4], labels[1, :1] = 0, 1
    features = torch.arange(2 * 8 * 8, dtype=torch.float).reshape(2, 1, 8, 8).repeat(1, 3, 1, 1)
    picked, picked_labels = sample_pixels_per_class(features, labels, 3, per_class=10,
                                                    generator=torch.Generator().manual_seed(0))
    assert (picked_labels == 0).sum() == 10 and (picked_labels == 1).sum() == 8 and (picked_labels == 2).sum() == 0
    flat_labels = labels.reshape(-1)
    assert torch.equal(flat_labels[picked[:, 0].long()], picked_labels)  # each feature kept its own label


def test_bad_inputs_are_refused_with_the_reason():
    features, labels = _clustered()
    with pytest.raises(ValueError, match="two volumes"):
        class_separation([features], [labels], 3)
    with pytest.raises(ValueError, match="two classes"):
        cosine_margin(features[labels == 0], labels[labels == 0], 3)


# ---------------------------------------------------------------- end to end on a trained MONA
@pytest.fixture(scope="module")
def trained(hidden_label_dataset, tmp_path_factory):
    ds = hidden_label_dataset
    results = str(tmp_path_factory.mktemp("diagnostics_results"))
    env = dict(os.environ, nnUNet_results=results, nnUNet_mona_epochs="2", nnUNet_mona_iterations="2",
               nnUNet_mona_val_iterations="1", nnUNet_mona_skip_validation="1")
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
            env=env)
    fold = os.path.join(results, ds["name"], f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    return {"ds": ds, "fold": fold, "checkpoint": os.path.join(fold, "checkpoint_final.pth")}


def _folder_state(folder):
    return {f: os.path.getmtime(os.path.join(folder, f)) for f in sorted(os.listdir(folder))}


def test_gradient_shares_leave_the_weights_as_they_were(trained, tmp_path):
    from nnunet_mona.diagnostics.checkpoint_trainer import trainer_from_checkpoint
    from nnunet_mona.diagnostics.gradient_shares import ema_teachers, measure_gradient_shares
    from nnunet_mona.trainers.ready_trainer import finish_loaders, start_loaders
    before_files = _folder_state(trained["fold"])
    trainer = trainer_from_checkpoint(trained["checkpoint"], trained["ds"]["preprocessed"], str(tmp_path))
    assert trainer.current_epoch == 2 and trainer.supervised_warmup_epochs == 1  # the training's own schedule
    modules = [trainer.network, trainer.auxiliary_modules] + ema_teachers(trainer)
    assert len(modules) == 4  # the network's teacher and MONA's teacher head
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in modules]
    start_loaders(trainer)
    try:
        shares = measure_gradient_shares(trainer, steps=2)
    finally:
        finish_loaders(trainer)
    for module, state in zip(modules, before):
        for key, value in module.state_dict().items():
            if "num_updates" not in key:
                assert torch.equal(value, state[key]), key
    assert _folder_state(trained["fold"]) == before_files
    for term in ("unsup", "unsup_dice", "contrast", "eqv"):
        assert np.isfinite(shares[term]["mean"]) and shares[term]["mean"] > 0, (term, shares)
    assert shares["nn"]["mean"] == 0.0  # by design the nn pull trains only its own predictor
    assert shares["|sup|"]["mean"] > 0


def test_commands_write_their_reports(trained, tmp_path):
    ds = trained["ds"]
    shares_file, separation_file = tmp_path / "shares.json", tmp_path / "separation.json"
    out = run_cmd([os.path.join(BIN, "nnUNetv2_mona_gradient_shares"), trained["checkpoint"], "--preprocessed",
                   ds["preprocessed"], "--steps", "1", "-o", str(shares_file)])
    assert f"| {TRAINER} | 2 |" in out
    report = json.loads(shares_file.read_text())[0]
    assert report["steps"] == 1 and set(report["shares"]) >= {"|sup|", "contrast", "nn", "eqv", "unsup"}
    out = run_cmd([os.path.join(BIN, "nnUNetv2_mona_class_separation"), trained["checkpoint"],
                   "--images", os.path.join(ds["raw"], ds["name"], "imagesTs"),
                   "--labels", os.path.join(ds["raw"], ds["name"], "labelsTs"),
                   "--preprocessed", ds["preprocessed"], "--pixels_per_class", "20", "-o", str(separation_file)])
    assert f"| {TRAINER} | embedding |" in out
    separation = json.loads(separation_file.read_text())[0]["separation"]
    assert set(separation) == {"decoder", "embedding"}
    for measures in separation.values():
        assert -2 <= measures["margin"] <= 2 and 0 <= measures["nearest_centroid_accuracy"] <= 1
        assert measures["pixels"] > 0


def test_a_teacher_only_export_is_refused(trained, tmp_path):
    from nnunet_mona.diagnostics.checkpoint_trainer import trainer_from_checkpoint
    teacher = os.path.join(trained["fold"], "checkpoint_final_teacher.pth")
    with pytest.raises(ValueError, match="teacher-only export"):
        trainer_from_checkpoint(teacher, trained["ds"]["preprocessed"], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found in"):
        trainer_from_checkpoint(trained["checkpoint"], str(tmp_path), str(tmp_path))
