"""Every unsupervised loss term of Mean Teacher and MONA decreases over a short training on fixed data: a term
that never moves is a bug (switched off, detached, or fighting another term).

The real trainers (Dataset988 plans, CPU) run ``train_step`` on one fixed, seeded toy batch (the collapse
toy of test_collapse: classes that differ by intensity and texture) with the unlabeled loader replaced by a
fixed weak / strong pair of the same kind of images. Thresholds are opened, the ramp-up is off and the
supervised loss has weight 0, so every unsupervised term is active from the first step and nothing but the
unsupervised gradients moves it. Compared: the mean of the first and of the last ``WINDOW`` steps.
"""
import numpy as np
import pytest
import torch

from nnunet_mona.trainers.ready_trainer import make_trainer
from test_collapse import _toy_batches

STEPS = 30
WINDOW = 6
REQUIRED_DROP = 0.2  # relative drop of the last window's mean vs the first's
TERMS = {"nnUNetTrainerMeanTeacher_randomStart": ("unsup", "unsup_dice"),
         "nnUNetTrainerMONA_equivariance": ("unsup", "unsup_dice", "eqv")}
MONA_REPRESENTATION_TERMS = ("contrast", "nn")
# MONA's representation terms are checked with weight 1 each: at the default contrast weight 0.01 the term's own
# gradient is too small to move it in 30 steps (and the nn term's targets, the drifting teacher's neighbours,
# move too). With the nn term's gradient cut (weight 0) nn rises and the test fails.
REPRESENTATION_WEIGHTS = {"contrast": 1.0, "nn": 1.0}


def _train_on_fixed_data(pre, name, loss_weights=None):
    torch.manual_seed(0)
    np.random.seed(0)
    trainer = make_trainer(name, pre, class_overrides={"supervised_warmup_fraction": 0.0})  # MONA's step from step 1
    trainer.loss_weights = {**trainer.loss_weights, **(loss_weights or {})}
    # a random teacher is never confident: open the thresholds so every term is non-trivial from step 1
    for attr in ("confidence_threshold", "unsup_threshold", "contrast_positive_threshold",
                 "eqv_confidence_threshold"):
        if hasattr(trainer, attr):
            setattr(trainer, attr, 0.0)
    trainer.unsupervised_rampup_fraction = 0
    # distribution alignment stays on, its running teacher share made to follow this toy's teacher: on one fixed
    # batch without the supervised loss the teacher changes within a few steps; a slower teacher momentum keeps
    # the random start's foreground share and suppresses every foreground pseudo-label (unsup_dice cannot fall)
    if trainer.distribution_alignment is not None:  # the default Mean Teacher has none
        trainer.distribution_alignment.teacher_momentum = 0.5
    # the supervised loss off: it alone makes student and teacher agree on this toy (with the unsupervised loss
    # detached, Mean Teacher's unsup still falls), so only a term's own gradient (and the other unsupervised
    # terms') can make it fall
    trainer.supervised_weight = 0.0
    labeled, unlabeled, _ = _toy_batches(trainer)
    trainer.next_unlabeled_batch = lambda: {k: v.clone() for k, v in unlabeled.items()}
    trainer.network.train()
    steps = [trainer.train_step({"data": labeled["data"].clone(), "target": [t.clone() for t in labeled["target"]]})
             for _ in range(STEPS)]
    return [{k: float(v) for k, v in s.items()} for s in steps]


class _Runs(dict):
    """Lazily trained and cached per trainer name (a -k selection trains only what it needs)."""

    def __init__(self, pre):
        super().__init__()
        self.pre = pre

    def __missing__(self, key):
        """key: a trainer name, or (trainer name, loss weights as a tuple of (name, weight) pairs)."""
        name, weights = key if isinstance(key, tuple) else (key, ())
        self[key] = _train_on_fixed_data(self.pre, name, dict(weights))
        return self[key]


@pytest.fixture(scope="module")
def fixed_data_runs(hidden_label_dataset):
    return _Runs(hidden_label_dataset["pre"])


def first_and_last(steps, terms):
    """{term: (mean of the first WINDOW steps, mean of the last WINDOW steps)}"""
    return {t: (float(np.mean([s[t] for s in steps[:WINDOW]])), float(np.mean([s[t] for s in steps[-WINDOW:]])))
            for t in terms}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_each_unsupervised_term_decreases(fixed_data_runs, name):
    steps = fixed_data_runs[name]
    report = first_and_last(steps, TERMS[name])
    print(f"\n{name}: term (first {WINDOW} steps, last {WINDOW}): {report}")
    assert all(s["skipped_steps"] == 0 and np.isfinite(s["loss"]) for s in steps)
    for term, (first, last) in report.items():
        assert first > 0, (term, report)
        assert last <= first * (1 - REQUIRED_DROP), (term, report)


def test_mona_representation_terms_decrease(fixed_data_runs):
    """At weight 1 the contrast and nearest-neighbour terms fall by their own gradients (see
    REPRESENTATION_WEIGHTS for why not at the default weights)."""
    steps = fixed_data_runs[("nnUNetTrainerMONA_equivariance", tuple(sorted(REPRESENTATION_WEIGHTS.items())))]
    report = first_and_last(steps, MONA_REPRESENTATION_TERMS)
    print(f"\nMONA representation terms at weight 1 (first, last): {report}")
    assert all(s["skipped_steps"] == 0 and np.isfinite(s["loss"]) for s in steps)
    for term, (first, last) in report.items():
        assert last <= first * (1 - REQUIRED_DROP), (term, report)
