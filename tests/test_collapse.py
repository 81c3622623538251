"""No representation collapse in MONA, and a training-log warning when it happens.

(a) unit tests of nnunet_mona/trainers/term_monitor.py (chance value ln(1 + N), warning at the chance
    value and none away from it, nn at 0 warns, NaN / missing terms skipped) and of its wiring into
    the trainer's on_epoch_end;
(b) a property test with the real nnUNetTrainerMONA (Dataset988 plans, conftest, CPU): a fixed, seeded
    toy batch whose classes differ by intensity and texture, ~40 real ``train_step`` calls on it
    (unlabeled loader monkeypatched), then: the contrast term is below its chance value, the nn term
    is away from 0 and the class-mean student embeddings of different classes do not converge.
"""
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_mona.trainers.term_monitor import chance_value, degenerate_term_warnings

from test_mona_trainer import _make_trainer


# ---------------------------------------------------------------- (a) term monitor
def test_chance_value_is_log_one_plus_negatives():
    assert chance_value(512) == pytest.approx(math.log(513))
    assert chance_value(512) == pytest.approx(6.2403, abs=1e-4)
    assert chance_value(0) == 0.0
    assert chance_value(1) == pytest.approx(math.log(2))
    # InfoNCE with every similarity equal: -log(e^s / ((1 + N) e^s)) = ln(1 + N)
    logits = torch.zeros(3, 1 + 64)
    ce = F.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    assert ce.item() == pytest.approx(chance_value(64), rel=1e-6)


def test_warning_at_chance_value_and_none_away_from_it():
    chance = {"contrast": chance_value(512)}
    at = degenerate_term_warnings({"contrast": 6.2397}, chance)  # just below chance, as a collapsed run logs it
    assert len(at) == 1 and "'contrast'" in at[0] and "chance value" in at[0] and "6.2397" in at[0]
    # within the relative tolerance (2e-3 of 6.24 = 0.0125) on either side
    assert len(degenerate_term_warnings({"contrast": chance["contrast"] * (1 - 1.5e-3)}, chance)) == 1
    assert len(degenerate_term_warnings({"contrast": chance["contrast"] * (1 + 1.5e-3)}, chance)) == 1
    # away from it: a learning contrast (below) or a noisy one (above) is silent
    for value in (chance["contrast"] * (1 - 3e-3), 5.5, 2.3, chance["contrast"] * (1 + 3e-3), 7.0):
        assert degenerate_term_warnings({"contrast": value}, chance) == [], value
    assert degenerate_term_warnings({"contrast": 4.0}, chance, rel_tol=0.5) != []  # tolerance is a parameter


def test_nn_at_zero_warns_only_for_zero_terms():
    assert len(degenerate_term_warnings({"nn": 0.0}, {}, zero_terms=("nn",))) == 1
    msg = degenerate_term_warnings({"nn": 5e-5}, {}, zero_terms=("nn",))
    assert len(msg) == 1 and "'nn'" in msg[0] and "collapse" in msg[0]
    assert degenerate_term_warnings({"nn": 0.05}, {}, zero_terms=("nn",)) == []
    assert degenerate_term_warnings({"nn": 0.0}, {}) == []  # not declared a collapse term
    assert degenerate_term_warnings({"eqv": 0.0, "nn": 0.3}, {}, zero_terms=("nn",)) == []
    # both at once: two messages
    both = degenerate_term_warnings({"contrast": math.log(513), "nn": 0.0}, {"contrast": math.log(513)}, ("nn",))
    assert len(both) == 2


def test_nan_and_missing_terms_are_skipped():
    chance = {"contrast": chance_value(512)}
    for value in (float("nan"), float("inf"), -float("inf")):
        assert degenerate_term_warnings({"contrast": value, "nn": value}, chance, ("nn",)) == []
    assert degenerate_term_warnings({}, chance, ("nn",)) == []
    assert degenerate_term_warnings({"sup": 0.0}, chance, ("nn",)) == []


# ---------------------------------------------------------------- (b) the real trainer on a toy problem
NUM_STEPS = 40
LAST = 10  # steps averaged at the end


def _toy_images(g, n, shift=0):
    """(n, 1, 64, 64) images and (n, 1, 64, 64) labels: background (noise around 0), class 1 a bright
    square, class 2 a dark horizontally striped square inside it, class 3 a mid-bright checkerboard
    square; positions jittered per image by up to ``shift`` pixels."""
    images, labels = torch.zeros(n, 1, 64, 64), torch.zeros(n, 1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    stripes = ((yy // 2) % 2).float() * 2 - 1
    checker = (((yy // 2) + (xx // 2)) % 2).float() * 2 - 1
    for i in range(n):
        dy, dx = (torch.randint(-shift, shift + 1, (2,), generator=g).tolist() if shift else (0, 0))
        lab = torch.zeros(64, 64)
        lab[8 + dy:40 + dy, 8 + dx:40 + dx] = 1
        lab[16 + dy:30 + dy, 16 + dx:30 + dx] = 2
        lab[44 - dy:60 - dy, 44 - dx:60 - dx] = 3
        img = 0.3 * torch.randn(64, 64, generator=g)
        img = torch.where(lab == 1, img + 1.5, img)
        img = torch.where(lab == 2, img - 1.5 + 0.5 * stripes, img)
        img = torch.where(lab == 3, img + 0.7 + 0.8 * checker, img)
        images[i, 0], labels[i, 0] = img, lab
    return images, labels


def _toy_batches(trainer, seed=0):
    g = torch.Generator().manual_seed(seed)
    data, seg = _toy_images(g, 2)
    scales = trainer._get_deep_supervision_scales()
    target = [F.interpolate(seg, size=[int(round(64 * s)) for s in sc], mode="nearest") for sc in scales]
    weak, _ = _toy_images(g, 2, shift=4)
    strong = 1.2 * weak + 0.2 + 0.2 * torch.randn(weak.shape, generator=g)
    unlabeled = {"data_weak": weak + 0.05 * torch.randn(weak.shape, generator=g), "data_strong": strong,
                 "valid_mask": torch.ones(2, 1, 64, 64, dtype=torch.bool)}
    return {"data": data, "target": target}, unlabeled, seg


@torch.no_grad()
def class_mean_embeddings(trainer, images, seg):
    """(C, D) L2-normalised class means of the student embedding (head + predictor on the decoder
    features, as compute_unlabeled_losses computes it) over the pixels of each class at 1/4 resolution."""
    with trainer.student_features.collecting():
        trainer.network(images)
        maps = trainer.student_features.pop()
    emb = trainer._predict(trainer.auxiliary_modules["head"](maps)).float()
    lab = F.interpolate(seg, size=emb.shape[2:], mode="nearest")[:, 0].long()
    flat, lab = emb.movedim(1, -1).reshape(-1, emb.shape[1]), lab.reshape(-1)
    means = torch.stack([F.normalize(flat[lab == c], dim=1).mean(0) for c in range(int(lab.max()) + 1)])
    return F.normalize(means, dim=1)


def max_offdiag_cosine(means):
    cos = means @ means.T
    return cos[~torch.eye(len(cos), dtype=torch.bool)].max().item()


def _train_toy(pre, monkeypatch, breaker=None):
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = _make_trainer(pre)
    # a random teacher is never confident: open the thresholds (as test_mona_trainer's unit_trainer)
    trainer.unsup_threshold = 0.0
    trainer.contrast_positive_threshold = 0.0
    trainer.eqv_confidence_threshold = 0.0
    trainer.unsupervised_rampup_fraction = 0  # ramp-up factor 1 from the first step
    if breaker is not None:
        breaker(trainer, monkeypatch)
    labeled, unlabeled, seg = _toy_batches(trainer)
    monkeypatch.setattr(trainer, "next_unlabeled_batch", lambda: {k: v.clone() for k, v in unlabeled.items()})
    trainer.network.train()
    init_cos = max_offdiag_cosine(class_mean_embeddings(trainer, labeled["data"], seg))
    steps = []
    for _ in range(NUM_STEPS):
        out = trainer.train_step({"data": labeled["data"].clone(), "target": [t.clone() for t in labeled["target"]]})
        steps.append({k: float(v) for k, v in out.items()})
    means = class_mean_embeddings(trainer, labeled["data"], seg)
    return trainer, steps, means, init_cos


def _report(steps, means, init_cos):
    last = steps[-LAST:]
    contrast = float(np.mean([s["contrast"] for s in last]))
    nn = float(np.mean([s["nn"] for s in last]))
    cos = means @ means.T
    print(f"\ncontrast first {steps[0]['contrast']:.4f} last-{LAST} mean {contrast:.4f} (chance "
          f"{chance_value(512):.4f}); nn last mean {nn:.4f}; sup {steps[0]['sup']:.3f} -> {last[-1]['sup']:.3f}; "
          f"max off-diagonal cosine init {init_cos:.3f} end {max_offdiag_cosine(means):.3f}\n{cos.numpy().round(3)}")
    return contrast, nn


def test_no_representation_collapse_on_a_toy_problem(hidden_label_dataset, monkeypatch):
    start = time.time()
    trainer, steps, means, init_cos = _train_toy(hidden_label_dataset["pre"], monkeypatch)
    contrast, nn = _report(steps, means, init_cos)
    print(f"{NUM_STEPS} steps in {time.time() - start:.1f} s")
    chance = chance_value(trainer.contrast_num_negatives)
    assert all(np.isfinite(s["loss"]) and s["skipped_steps"] == 0 for s in steps)
    # MONA's weight 0.01 moves the contrast little in 40 steps; what matters is that it moves down, the
    # nn pull stays away from 0 and the classes are not pulled together. With the nn pull sharing the contrast's
    # pixel predictor the contrast stays near chance and the class means converge: this test fails
    assert contrast < chance - 0.25, (contrast, chance)
    assert nn > 0.1, nn
    assert max_offdiag_cosine(means) < init_cos
    assert degenerate_term_warnings({"contrast": contrast, "nn": nn}, trainer.chance_values(),
                                    trainer.collapse_zero_terms) == []
