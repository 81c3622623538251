"""Per-term decoder-gradient norms relative to the supervised loss (trainers/gradient_monitor.py)."""
import math

import pytest
import torch
from torch import nn

from nnunet_mona.trainers.gradient_monitor import gradient_norm, relative_gradient_norms


def test_norms_are_exact_ratios_and_zero_where_the_graph_does_not_reach():
    torch.manual_seed(0)
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    sup = model(x).pow(2).sum()
    terms = {"double": 2 * sup, "half": 0.5 * sup, "elsewhere": other(x).sum(), "constant": torch.tensor(1.0),
             "detached": sup.detach()}
    norms = relative_gradient_norms(terms, sup, model.parameters())
    by_hand = torch.cat([g.flatten() for g in torch.autograd.grad(sup, list(model.parameters()),
                                                                  retain_graph=True)]).norm()
    assert norms["|sup|"] == pytest.approx(float(by_hand), rel=1e-5)
    assert norms["double"] == pytest.approx(2.0, rel=1e-5) and norms["half"] == pytest.approx(0.5, rel=1e-5)
    assert norms["elsewhere"] == 0.0 and norms["constant"] == 0.0 and norms["detached"] == 0.0
    # the graph survives: the training step can still backward through it
    sup.backward()
    assert model.weight.grad is not None
    assert gradient_norm(torch.tensor(3.0), model.parameters()) == 0.0


def test_zero_reference_gives_nan_not_a_crash():
    model = nn.Linear(2, 1)
    zero = model(torch.zeros(1, 2)).sum() * 0
    norms = relative_gradient_norms({"t": model(torch.ones(1, 2)).sum()}, zero, model.parameters())
    assert norms["|sup|"] == 0.0 and math.isnan(norms["t"])


def test_mona_logs_the_norms_once_per_epoch_and_nn_never_reaches_the_decoder(hidden_label_dataset, monkeypatch):
    from nnunet_mona.trainers.ready_trainer import make_trainer, start_loaders
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    trainer = make_trainer("nnUNetTrainerMONA_equivariance", hidden_label_dataset["pre"], fold=2, seed=0,
                           class_overrides={"log_gradient_norms": True, "unsup_threshold": 0.0,
                                            "supervised_warmup_fraction": 0.0,
                                            "contrast_positive_threshold": 0.0})
    trainer.unsupervised_rampup_fraction = 0  # full weights from the first step
    trainer.mona_state["nn_queue"].enqueue(torch.randn(10, trainer.head_out_channels))
    start_loaders(trainer)
    logged = []
    monkeypatch.setattr(trainer, "print_to_log_file", lambda *a, **k: logged.append(" ".join(map(str, a))))
    calls = []
    original = relative_gradient_norms

    def spy(weighted, reference, parameters):
        calls.append(original(weighted, reference, parameters))
        return calls[-1]
    monkeypatch.setattr("nnunet_mona.trainers.semi_supervised_base.relative_gradient_norms", spy)
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    assert len(calls) == 1  # first step of the epoch only
    norms = calls[0]
    assert {"unsup", "unsup_dice", "contrast", "nn", "eqv", "|sup|"} <= set(norms)
    assert "confident_fraction" not in norms  # a diagnostic, not a loss term
    assert norms["|sup|"] > 0 and norms["unsup"] > 0 and norms["contrast"] > 0
    assert norms["nn"] == 0.0  # own predictor on detached head outputs
    trainer._print_gradient_norms()  # what on_epoch_end writes
    assert any("decoder gradient norm relative to the supervised loss" in line for line in logged)
    trainer.current_epoch += 1
    trainer.train_step(next(trainer.dataloader_train))
    assert len(calls) == 2
