"""Inputs that real datasets produce and that must not break training: a single foreground class,
a batch in which a class is absent, a batch without any valid unlabeled pixel."""
import pytest
import torch

from nnunet_mona.losses.anatomical_contrast import anatomical_contrast_loss
from nnunet_mona.losses.consistency import masked_pseudo_label_ce, softmax_mse
from nnunet_mona.losses.entropy_split import reliability_masks
from nnunet_mona.losses.pseudo_label_ce import confidence_weighted_pseudo_label_ce
from nnunet_mona.modules.memory_bank import ClassMemoryBank


def _pixels(labels, num_classes, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_classes] * 2
    emb = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    probs = torch.full((len(labels), num_classes), 0.1 / (num_classes - 1))
    probs[torch.arange(len(labels)), labels] = 0.9
    return emb, probs


def _contrast(labels, num_classes, bank=None):
    emb, probs = _pixels(labels, num_classes)
    student = emb.clone().requires_grad_(True)
    ones = torch.ones(len(labels), dtype=torch.bool)
    diag = {}
    loss, _, _ = anatomical_contrast_loss(student, emb, labels, probs, ones, ones, bank, num_queries=32,
                                          num_negatives=64, generator=torch.Generator().manual_seed(0),
                                          diagnostics=diag)
    loss.backward()
    return loss, student.grad, diag


def test_single_foreground_class_dataset_still_contrasts_foreground_against_background():
    labels = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    loss, grad, diag = _contrast(labels, num_classes=2)
    assert torch.isfinite(loss) and loss > 0
    assert diag["valid_classes"] == [0, 1]
    assert grad.abs().sum() > 0


def test_class_absent_from_the_batch_is_skipped_not_nan():
    # 4 classes in the dataset, class 2 absent from this batch
    labels = torch.cat([torch.full((200,), 0), torch.full((50,), 1), torch.full((30,), 3)]).long()
    loss, grad, diag = _contrast(labels, num_classes=4)
    assert torch.isfinite(loss) and loss > 0
    assert diag["valid_classes"] == [0, 1, 3]
    assert torch.isfinite(grad).all()
    # with negatives of the absent class waiting in its memory bank, it still gets no anchors
    bank = ClassMemoryBank(4, 8, capacity=64, background_capacity=None)
    bank.enqueue(torch.randn(20, 8), torch.full((20,), 2))
    loss_b, _, diag_b = _contrast(labels, num_classes=4, bank=bank)
    assert diag_b["valid_classes"] == [0, 1, 3] and torch.isfinite(loss_b)


def test_batch_without_valid_unlabeled_pixels_gives_zero_not_nan():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    pseudo = torch.randint(0, 3, (2, 8, 8))
    conf = torch.rand(2, 8, 8)
    invalid = torch.zeros(2, 8, 8, dtype=torch.bool)
    terms = [masked_pseudo_label_ce(logits, pseudo, conf, invalid, 0.9)[0],
             softmax_mse(logits, torch.softmax(torch.randn(2, 3, 8, 8), 1), invalid),
             confidence_weighted_pseudo_label_ce(logits, pseudo, conf, invalid)]
    for t in terms:
        assert torch.isfinite(t) and float(t) == 0.0
    sum(terms).backward()
    assert torch.isfinite(logits.grad).all()
    reliable, unreliable = reliability_masks(torch.softmax(logits.detach(), 1), invalid, 20.0)
    assert not reliable.any() and not unreliable.any()


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_mean_teacher_consistency_counts_confident_pixels_only(threshold):
    logits = torch.randn(1, 2, 4, 4)
    pseudo = torch.zeros(1, 4, 4, dtype=torch.long)
    conf = torch.linspace(0, 1, 16).reshape(1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    loss, fraction = masked_pseudo_label_ce(logits, pseudo, conf, valid, threshold)
    mask = conf >= threshold
    ce = torch.nn.functional.cross_entropy(logits, pseudo, reduction="none")
    assert float(fraction) == pytest.approx(float(mask.float().mean()))
    assert float(loss) == pytest.approx(float((ce * mask).sum() / 16))
