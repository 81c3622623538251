"""Class-adaptive pseudo-label thresholds (modules.class_adaptive_threshold): values, what is counted, resume, and
the wiring into Mean Teacher / MONA (an off-by-default setting)."""
import torch

from nnunet_mona.losses.consistency import confident_pseudo_label_losses
from nnunet_mona.modules.class_adaptive_threshold import ClassAdaptiveThreshold


def _observe(thresholds: ClassAdaptiveThreshold, confidence, labels, valid=None):
    confidence, labels = torch.tensor([confidence]), torch.tensor([labels])
    thresholds.observe(confidence, labels, torch.ones_like(labels, dtype=torch.bool) if valid is None
                       else torch.tensor([valid]))


def test_each_class_threshold_scales_with_the_teachers_confidence_in_it():
    thresholds = ClassAdaptiveThreshold(4, floor=0.3)
    # background 1.0-sure, class 1 at 0.6 on average, class 2 at 0.2 (floored), class 3 never predicted
    _observe(thresholds, [1.0, 1.0, 0.5, 0.7, 0.2], [0, 0, 1, 1, 2])
    tau = thresholds.thresholds(0.9)
    assert torch.allclose(tau, torch.tensor([0.9, 0.9 * 0.6, 0.3, 0.9]))
    # the map gives each pixel its pseudo-label's threshold; -1 (ignored) pixels get class 0's, never an error
    labels = torch.tensor([[1, 0, -1, 3]])
    assert torch.allclose(thresholds.threshold_map(labels, 0.9), torch.tensor([[0.54, 0.9, 0.9, 0.9]]))


def test_running_mean_counts_only_valid_labelled_pixels_and_keeps_absent_classes():
    thresholds = ClassAdaptiveThreshold(3, momentum=0.5)
    _observe(thresholds, [0.8, 0.4, 0.99], [0, 1, 2], valid=[True, True, False])  # the 0.99 is padding
    assert torch.allclose(thresholds.class_confidence[:2], torch.tensor([0.8, 0.4]))
    assert torch.isnan(thresholds.class_confidence[2])
    _observe(thresholds, [1.0, 0.3, 0.6], [0, -1, 2])  # class 1 absent (the -1 pixel is ignored)
    assert torch.allclose(thresholds.class_confidence, torch.tensor([0.9, 0.4, 0.6]))
    # a fresh instance continues from the state dict exactly
    resumed = ClassAdaptiveThreshold(3, momentum=0.5)
    resumed.load_state_dict({k: v.clone() for k, v in thresholds.state_dict().items()})
    for t in (thresholds, resumed):
        _observe(t, [0.5, 0.5], [1, 1])
    assert torch.equal(resumed.class_confidence, thresholds.class_confidence)
    assert torch.allclose(resumed.class_confidence[1], torch.tensor(0.45))


def test_an_unsure_foreground_enters_the_pseudo_label_loss_only_with_adaptive_thresholds():
    # the teacher: background 0.99-sure, a foreground strip at 0.7 (below the fixed 0.9)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, 3, :] = 1
    confidence = torch.where(labels == 1, torch.tensor(0.7), torch.tensor(0.99))
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    thresholds = ClassAdaptiveThreshold(2)
    thresholds.observe(confidence, labels, valid)
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    for threshold, foreground_counts in ((0.9, False), (thresholds.threshold_map(labels, 0.9), True)):
        terms = confident_pseudo_label_losses(logits, labels, confidence, valid, threshold)
        grad, = torch.autograd.grad(terms["unsup"] + terms["unsup_dice"], logits)
        assert bool((grad[0, :, 3].abs().sum() > 0)) is foreground_counts


def test_trainers_use_the_adaptive_thresholds_and_checkpoint_them(hidden_label_dataset, monkeypatch):
    from nnunet_mona.trainers.ready_trainer import finish_loaders, make_trainer, start_loaders
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    for name in ("nnUNetTrainerMeanTeacher_randomStart", "nnUNetTrainerMONA_randomStart"):
        trainer = make_trainer(name, hidden_label_dataset["pre"], fold=2, seed=0,
                               class_overrides={"class_adaptive_threshold": True})
        start_loaders(trainer)
        try:
            thresholds = trainer.adaptive_threshold
            seen = []
            monkeypatch.setattr(thresholds, "threshold_map", lambda labels, ceiling, f=thresholds.threshold_map:
                                seen.append(ceiling) or f(labels, ceiling))
            trainer.train_step(next(trainer.dataloader_train))
            assert thresholds.class_confidence is not None and seen, name
            ceiling = trainer.confidence_threshold if hasattr(trainer, "confidence_threshold") \
                else trainer.unsup_threshold
            assert set(seen) == {ceiling}, name
            state = trainer.extra_checkpoint_state()["adaptive_threshold"]
            assert torch.allclose(state["class_confidence"], thresholds.class_confidence, equal_nan=True)
        finally:
            finish_loaders(trainer)
    # off by default: the fixed threshold, a float
    trainer = make_trainer("nnUNetTrainerMeanTeacher_randomStart", hidden_label_dataset["pre"], fold=2, seed=0)
    assert trainer.adaptive_threshold is None
    assert trainer.pseudo_label_threshold(torch.zeros(1, 2, 2, dtype=torch.long), 0.9) == 0.9
