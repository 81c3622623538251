"""Pseudo-label soft Dice and the shared unlabeled mixing: values, masking, gradients."""
import torch

from nnunet_mona.augment.unlabeled_mixing import mix_unlabeled_batch
from nnunet_mona.losses.consistency import masked_pseudo_label_dice


def _logits_for(labels, k, scale=20.0):
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float() * scale


def test_dice_is_zero_for_a_perfect_student_and_high_for_a_wrong_one():
    labels = torch.randint(0, 3, (2, 16, 16))
    labels[:, :4, :4] = 1
    labels[:, -4:, -4:] = 2
    mask = torch.ones_like(labels, dtype=torch.bool)
    assert masked_pseudo_label_dice(_logits_for(labels, 3), labels, mask) < 1e-3
    wrong = (labels + 1) % 3
    assert masked_pseudo_label_dice(_logits_for(wrong, 3), labels, mask) > 0.95


def test_masked_and_ignored_pixels_do_not_count():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4] = 1
    logits = _logits_for(labels, 2)
    logits[0, :, 4:] = _logits_for(torch.ones(1, 4, 8, dtype=torch.long), 2)[0]  # wrong in the lower half
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[0, :4] = True
    assert masked_pseudo_label_dice(logits, labels, mask) < 1e-3
    ignored = labels.clone()
    ignored[0, 4:] = -1
    assert masked_pseudo_label_dice(logits, ignored, torch.ones_like(mask)) < 1e-3


def test_gradient_raises_the_pseudo_labelled_foreground_and_empty_mask_is_zero():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    loss = masked_pseudo_label_dice(logits, labels, torch.ones_like(labels, dtype=torch.bool))
    loss.backward()
    assert logits.grad[0, 1, 3, 3] < 0 and logits.grad[0, 1, 0, 0] > 0  # descent raises fg inside, lowers outside
    empty = masked_pseudo_label_dice(logits, labels, torch.zeros_like(labels, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_mixing_moves_images_and_targets_together():
    torch.manual_seed(0)
    b, k = 4, 3
    image = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 16, 16).clone()
    labels = torch.arange(b).view(b, 1, 1).expand(b, 16, 16).clone() % k
    conf = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 16, 16) / 10
    probs = torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()
    valid = torch.ones(b, 16, 16, dtype=torch.bool)
    out = mix_unlabeled_batch("cutmix", image, labels, conf, probs, valid, 0.5)
    src = out["image"][:, 0].long()  # the source sample of every pixel
    assert out["mix_mask"].float().mean() > 0.3
    assert torch.equal(out["pseudo_label"], src % k)
    assert torch.allclose(out["confidence"], src.float() / 10)
    assert torch.equal(out["probs"].argmax(1), src % k)
    none = mix_unlabeled_batch("none", image, labels, conf, probs, valid)
    assert none["mix_mask"] is None and torch.equal(none["image"], image)
