"""class_balanced_pseudo_label_ce: every pseudo-class present among the confident pixels weighs the same, so a
background majority cannot drown a small class; FixMatch scaling by the confident fraction; unconfident and
invalid pixels get no gradient; zero (graph kept) when nothing is confident."""
import torch
import torch.nn.functional as F

from nnunet_mona.losses.consistency import (class_balanced_pseudo_label_ce, confident_pseudo_label_losses,
                                            masked_pseudo_label_ce)


def _batch(seed=0, k=4, size=16):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, size, size, generator=g, requires_grad=True)
    labels = torch.zeros(2, size, size, dtype=torch.long)
    labels[:, 2:6, 2:6] = 1          # 16 px per image
    labels[0, 10, 10] = 3            # one rare pixel
    confidence = torch.rand(2, size, size, generator=g) * 0.5 + 0.5
    valid = torch.ones(2, size, size, dtype=torch.bool)
    return logits, labels, confidence, valid


def test_value_is_the_mean_of_per_class_means_times_confident_fraction():
    logits, labels, confidence, valid = _batch()
    threshold = 0.6
    loss = class_balanced_pseudo_label_ce(logits, labels, confidence, valid, threshold)
    ce = F.cross_entropy(logits, labels, reduction="none")
    mask = (confidence >= threshold) & valid
    means = [ce[mask & (labels == c)].mean() for c in range(4) if (mask & (labels == c)).any()]
    expected = torch.stack(means).mean() * mask.float().mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_rare_class_gets_the_same_gradient_share_as_the_background():
    logits, labels, _, valid = _batch()
    confidence = torch.ones(2, 16, 16)
    loss = class_balanced_pseudo_label_ce(logits, labels, confidence, valid, 0.5)
    loss.backward()
    grad = logits.grad.abs().sum(1)  # (B, H, W)
    rare = grad[0, 10, 10]
    background_total = grad[labels == 0].sum()
    # one rare pixel carries as much gradient as the ~480 background pixels together (within CE's spread)
    assert 0.2 < (rare / background_total).item() < 5.0
    # pixel-averaged CE: the rare pixel is one of 512
    logits.grad = None
    plain, _ = masked_pseudo_label_ce(logits, labels, confidence, valid, 0.5)
    plain.backward()
    grad = logits.grad.abs().sum(1)
    assert (grad[0, 10, 10] / grad[labels == 0].sum()).item() < 0.02


def test_unconfident_and_invalid_pixels_get_no_gradient_and_empty_mask_is_zero():
    logits, labels, confidence, valid = _batch()
    valid[1] = False
    loss = class_balanced_pseudo_label_ce(logits, labels, confidence, valid, 0.75)
    loss.backward()
    grad = logits.grad.abs().sum(1)
    assert torch.all(grad[(confidence < 0.75) | ~valid] == 0)
    assert grad[(confidence >= 0.75) & valid].gt(0).all()
    logits.grad = None
    zero = class_balanced_pseudo_label_ce(logits, labels, confidence, valid, 2.0)
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.all(logits.grad == 0)


def test_switch_in_confident_pseudo_label_losses():
    logits, labels, confidence, valid = _batch()
    balanced = confident_pseudo_label_losses(logits, labels, confidence, valid, 0.6, class_balanced=True)["unsup"]
    plain = confident_pseudo_label_losses(logits, labels, confidence, valid, 0.6)["unsup"]
    assert torch.allclose(balanced, class_balanced_pseudo_label_ce(logits, labels, confidence, valid, 0.6))
    assert torch.allclose(plain, masked_pseudo_label_ce(logits, labels, confidence, valid, 0.6)[0])
    assert not torch.allclose(balanced, plain)
