"""nnUNetTrainerACTION and ACTION's hard sampling in the shared anatomical contrast.

(a) loss level: hard negatives are drawn class-first from softmax(cos(proto_c, proto_v) / tau)
    (empirical frequencies match, a far class is rarely drawn, every negative is a pixel of its
    drawn class); hard queries keep only low-confidence anchors and fall back to all candidates;
    gradient reaches the student embeddings only; MONA's default path is unchanged (values
    recorded with the code before the ACTION options existed).
(b) trainer level (conftest's Dataset988, no run loop): 0.5-weighted supervised loss, only
    ACTION's terms, contrast gradient to student and head but not to the teacher side.
(c) end to end: nnUNetv2_train 1 epoch x 2 iterations on CPU -> nnUNetv2_predict -f 0.
"""
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run_cmd
from nnunet_mona.losses.anatomical_contrast import anatomical_contrast_loss
from nnunet_mona.losses.hard_sampling import class_relation_probabilities, select_hard_queries
from nnunet_mona.modules.memory_bank import ClassMemoryBank

BIN = os.path.dirname(sys.executable)
TRAINER = "nnUNetTrainerACTION"
ACTION_TERMS = ("unsup", "unsup_dice", "contrast", "confident_fraction")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- (a) loss level
def related_classes(n_per_class=200, dim=16, noise=0.0):
    """4 classes: 1 is close to 0 (cos 0.9), 2 orthogonal to 0, 3 opposite to 0 (cos -1)."""
    e = torch.eye(dim)
    centres = 3 * torch.stack([e[0], 0.9 * e[0] + np.sqrt(1 - 0.81) * e[1], e[2], -e[0]])
    labels = torch.arange(4).repeat_interleave(n_per_class)
    emb = centres[labels] + noise * torch.randn(len(labels), dim, generator=gen(1))
    probs = torch.full((len(labels), 4), 0.1)
    probs[torch.arange(len(labels)), labels] = 0.7
    mask = torch.ones(len(labels), dtype=torch.bool)
    return centres, emb, labels, probs, mask


def test_class_relation_probabilities_rows():
    protos = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    rel = class_relation_probabilities(protos, torch.tensor([True, True, False]), temperature=0.5)
    assert rel[0].tolist() == pytest.approx([0.0, 1.0, 0.0])  # class 2 unavailable, 0 is itself
    assert rel[2].tolist() == pytest.approx([np.exp(0) / (np.exp(0) + np.exp(1.2)),
                                             np.exp(1.2) / (np.exp(0) + np.exp(1.2)), 0.0], rel=1e-5)
    only_self = class_relation_probabilities(protos, torch.tensor([True, False, False]), 0.5)
    assert torch.all(only_self[0] == 0)


def test_hard_negatives_follow_the_class_relation_softmax():
    centres, emb, labels, probs, mask = related_classes()
    diag = {}
    anatomical_contrast_loss(emb, emb, labels, probs, mask, mask, None, num_queries=64, num_negatives=128,
                             positive_threshold=0.0, generator=gen(0), diagnostics=diag,
                             class_relation_temperature=0.5)
    cos = torch.nn.functional.cosine_similarity(centres[0][None], centres[1:], dim=1)
    expected = torch.softmax(cos / 0.5, 0)  # classes 1, 2, 3 for query class 0: ~0.84, 0.14, 0.02
    assert diag["relation_probs"][0][1:].tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    counts = diag["negative_class_counts"][0].float()
    assert counts[0] == 0 and counts.sum() == 64 * 128
    freq = counts[1:] / counts.sum()
    assert torch.allclose(freq, expected, atol=0.02), (freq, expected)
    assert freq[0] > 0.8 and freq[2] < 0.03  # the confusable class dominates, the far one is rare
    # MONA's default draw over the pooled other-class pixels is ~uniform over equally large classes
    mona = {}
    anatomical_contrast_loss(emb, emb, labels, probs, mask, mask, None, num_queries=64, num_negatives=128,
                             positive_threshold=0.0, generator=gen(0), diagnostics=mona)
    assert "negative_class_counts" not in mona
    assert mona["num_negative_candidates"] == diag["num_negative_candidates"]  # same pool, split by class


def test_each_hard_negative_is_a_pixel_of_its_drawn_class():
    """With noise-free class embeddings a negative identifies its class: with one query per class,
    each class loss equals the InfoNCE computed from the reported per-class negative counts."""
    centres, emb, labels, probs, mask = related_classes()
    diag = {}
    loss, *_ = anatomical_contrast_loss(emb, emb, labels, probs, mask, mask, None, num_queries=1, num_negatives=256,
                                        positive_threshold=0.0, generator=gen(3), diagnostics=diag,
                                        class_relation_temperature=0.5)
    unit = torch.nn.functional.normalize(centres, dim=1)
    for c, loss_c in diag["class_losses"].items():
        counts = diag["negative_class_counts"][c].double()
        sims = (unit[c] @ unit.T).double() / 0.5
        expected = -sims[c] + torch.log(torch.exp(sims[c]) + (counts * torch.exp(sims)).sum())
        assert counts[c] == 0 and loss_c == pytest.approx(float(expected), rel=1e-4), c


def test_hard_negatives_use_the_memory_bank_per_class():
    centres, emb, labels, probs, mask = related_classes(n_per_class=50)
    bank = ClassMemoryBank(4, 16, capacity=100, background_capacity=None)
    bank.enqueue(centres[3].repeat(100, 1), torch.full((100,), 3))  # far class: many bank rows
    diag = {}
    anatomical_contrast_loss(emb, emb, labels, probs, mask, mask, bank, num_queries=64, num_negatives=64,
                             positive_threshold=0.0, generator=gen(0), diagnostics=diag,
                             class_relation_temperature=0.5)
    assert diag["num_negative_candidates"][0] == 150 + 100
    # a bigger pool does not make the far class more likely: the class is drawn first
    assert diag["negative_class_counts"][0][3] / (64 * 64) < 0.03


def test_select_hard_queries_and_fallback():
    labels = torch.tensor([0, 0, 0, 1, 1])
    probs = torch.tensor([[0.99, 0.01], [0.5, 0.5], [0.96, 0.04], [0.01, 0.99], [0.02, 0.98]])
    kept, fell_back = select_hard_queries(torch.tensor([0, 1, 2]), labels, probs, 0.97)
    assert kept.tolist() == [1, 2] and not fell_back
    kept, fell_back = select_hard_queries(torch.tensor([3, 4]), labels, probs, 0.97)
    assert kept.tolist() == [3, 4] and fell_back  # none hard: all candidates kept


def test_hard_queries_keep_only_low_confidence_anchors():
    centres, emb, labels, probs, mask = related_classes(noise=0.1)
    query_probs = probs.clone()
    confident = torch.arange(len(labels)) % 2 == 0
    query_probs[confident] = 0.0
    query_probs[confident, labels[confident]] = 0.99  # even pixels are easy
    query_probs[labels == 2] = 0.0
    query_probs[labels == 2, 2] = 0.995  # class 2: no hard pixel at all -> fallback
    diag = {}
    anatomical_contrast_loss(emb, emb, labels, probs, mask, mask, None, num_queries=128, num_negatives=16,
                             positive_threshold=0.0, generator=gen(0), diagnostics=diag,
                             hard_query_threshold=0.97, query_probs=query_probs)
    for c in (0, 1, 3):
        idx = diag["anchor_indices"][c]
        assert not diag["hard_query_fallback"][c] and diag["num_hard_queries"][c] == 100
        assert torch.all(~confident[idx]) and torch.all(labels[idx] == c)
    assert diag["hard_query_fallback"][2] and diag["num_hard_queries"][2] == 0
    both = diag["anchor_indices"][2]
    assert torch.all(labels[both] == 2) and confident[both].any() and (~confident[both]).any()


def test_action_contrast_gradient_reaches_student_only():
    centres, emb, labels, probs, mask = related_classes(noise=0.5)
    student = emb.clone().requires_grad_(True)
    teacher = emb.clone().requires_grad_(True)
    probs = probs.clone().requires_grad_(True)
    query_probs = probs.detach().clone().requires_grad_(True)
    bank = ClassMemoryBank(4, 16, capacity=20, background_capacity=None)
    bank.enqueue(torch.randn(40, 16, generator=gen(2)), torch.randint(0, 4, (40,), generator=gen(3)))
    loss, keys, _ = anatomical_contrast_loss(student, teacher, labels, probs, mask, mask, bank, num_queries=32,
                                             num_negatives=32, positive_threshold=0.0, generator=gen(0),
                                             hard_query_threshold=0.97, query_probs=query_probs,
                                             class_relation_temperature=0.5)
    assert loss > 0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None and probs.grad is None and query_probs.grad is None
    assert not keys.requires_grad and all(not b.requires_grad for b in bank.buffers())


def _mona_reference_case():
    g = torch.Generator().manual_seed(123)
    n, d, c = 600, 16, 4
    labels = torch.randint(0, c, (n,), generator=g)
    emb_s = torch.randn(n, d, generator=g)
    emb_t = torch.randn(n, d, generator=g)
    probs = torch.softmax(2 * torch.randn(n, c, generator=g), 1)
    reliable = torch.rand(n, generator=g) < 0.6
    unreliable = torch.rand(n, generator=g) < 0.6
    bank = ClassMemoryBank(c, d, capacity=64, background_capacity=None)
    bank.enqueue(torch.randn(100, d, generator=g), torch.randint(0, c, (100,), generator=g))
    return emb_s, emb_t, labels, probs, reliable, unreliable, bank


# values printed by the code before the ACTION options were added (same machine, torch CPU)
MONA_REFERENCE = {"uniform": 4.239954948425293, "stratified": 4.317972183227539}
MONA_REFERENCE_KEYS = (362, -88.0956802368164)


@pytest.mark.parametrize("sampler", ["uniform", "stratified"])
def test_mona_default_path_is_unchanged(sampler):
    args = _mona_reference_case()
    kw = dict(num_queries=32, num_negatives=64, positive_threshold=0.2, sampler=sampler)
    loss, keys, _ = anatomical_contrast_loss(*args, generator=gen(7), **kw)
    assert float(loss) == pytest.approx(MONA_REFERENCE[sampler], rel=1e-6)
    assert keys.shape[0] == MONA_REFERENCE_KEYS[0] and float(keys.sum()) == pytest.approx(MONA_REFERENCE_KEYS[1],
                                                                                         rel=1e-6)
    explicit, _, _ = anatomical_contrast_loss(*args, generator=gen(7), hard_query_threshold=None, query_probs=None,
                                              class_relation_temperature=None, **kw)
    assert torch.equal(explicit, loss)


# ---------------------------------------------------------------- trainer (dataset: conftest, fold 0)
def test_trainer_weights_supervision_and_trains_student_only(hidden_label_dataset):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from test_mona_trainer import _fake_step, _make_trainer
    torch.manual_seed(0)
    tr = _make_trainer(hidden_label_dataset["pre"], TRAINER)
    assert not tr.use_nn and not tr.use_equivariance and tr.loss_weights == {"unsup": 1.0, "unsup_dice": 1.0, "contrast": 0.01}
    out = [torch.randn(2, 4, 64 // 2 ** i, 64 // 2 ** i) for i in range(len(tr._get_deep_supervision_scales()))]
    target = [torch.randint(0, 4, (2, 1) + o.shape[2:]).float() for o in out]
    # the base train_step multiplies the unchanged nnU-Net loss by supervised_weight
    assert tr.supervised_weight == 0.5
    assert float(tr.loss(out, target)) == pytest.approx(float(nnUNetTrainer._build_loss(tr)(out, target)))
    tr.contrast_valid_confidence = 0.0  # a random teacher is never confident
    terms = _fake_step(tr)
    assert set(terms) == set(ACTION_TERMS) and all(torch.isfinite(v) for v in terms.values())
    assert terms["contrast"] > 0
    student, head = list(tr.network.parameters()), list(tr.auxiliary_modules.parameters())
    frozen = list(tr.teacher.parameters()) + list(tr.mona_state["teacher_head"].parameters())
    terms["contrast"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert all(p.grad is None for p in frozen)
    tr.after_optimizer_step({})
    assert sum(tr.mona_state["class_bank"].sizes()) == 0  # ACTION code: current batch only, no bank


# ---------------------------------------------------------------- end to end
def test_train_one_epoch_and_predict(hidden_label_dataset, tmp_path):
    ds = hidden_label_dataset
    env = os.environ.copy()
    env.update({"nnUNet_mona_epochs": "1", "nnUNet_mona_iterations": "2", "nnUNet_mona_val_iterations": "1"})
    run_cmd([os.path.join(BIN, "nnUNetv2_train"), str(ds["id"]), "2d", "0", "-tr", TRAINER, "-device", "cpu"],
            env=env)
    fold = os.path.join(ds["results"], ds["name"], f"{TRAINER}__nnUNetPlans__2d", "fold_0")
    checkpoint = torch.load(os.path.join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    for name in ("sup",) + ACTION_TERMS:
        assert np.all(np.isfinite(checkpoint["logging"][f"train_{name}"])), name
    text = "".join(open(os.path.join(fold, f)).read() for f in os.listdir(fold) if f.startswith("training_log"))
    for name in ACTION_TERMS:
        assert f"'{name}'" in text, name
    assert "'nn'" not in text and "'eqv'" not in text
    images = os.path.join(ds["raw"], ds["name"], "imagesTs")
    run_cmd([os.path.join(BIN, "nnUNetv2_predict"), "-i", images, "-o", str(tmp_path), "-d", str(ds["id"]),
             "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
             "--disable_progress_bar"])
    predicted = sorted(p for p in os.listdir(tmp_path) if p.endswith(".nii.gz"))
    assert predicted == sorted(f"{c}.nii.gz" for c in ds["roles"]["test"])
