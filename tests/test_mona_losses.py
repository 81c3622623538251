"""Property tests of MONA's pure-PyTorch losses and projection heads (fixed seeds, CPU, small tensors)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_mona.losses.anatomical_contrast import (anatomical_contrast_loss, flatten_channel_map, flatten_pixel_map,
                                                    select_keys_to_enqueue)
from nnunet_mona.losses.entropy_split import alpha_schedule, percentile, pixel_entropy, reliability_masks
from nnunet_mona.losses.equivariance import equivariance_loss
from nnunet_mona.losses.instance_discrimination import relational_kl_loss, window_embeddings
from nnunet_mona.losses.nearest_neighbour import nearest_neighbour_loss
from nnunet_mona.losses.pseudo_label_ce import confidence_weighted_pseudo_label_ce, confident_fraction_per_image
from nnunet_mona.modules.memory_bank import ClassMemoryBank
from nnunet_mona.modules.projection_heads import MultiScaleRepresentationHead, PixelProjectionHead, ProjectionMLP


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def assert_grad_only_on_student(student, *teacher_side):
    assert student.grad is not None and student.grad.abs().sum() > 0
    for t in teacher_side:
        assert t.grad is None


# ----------------------------------------------------------------------------- pseudo-label CE
def pseudo_label_batch(seed=0, b=3, c=4, s=(6, 5)):
    g = gen(seed)
    logits = torch.randn(b, c, *s, generator=g, requires_grad=True)
    labels = torch.randint(0, c, (b, *s), generator=g)
    conf = torch.rand(b, *s, generator=g)
    return logits, labels, conf


def test_pseudo_label_ce_weights_each_image_by_its_confident_fraction():
    logits, labels, conf = pseudo_label_batch()
    labels[0, 0, :] = -1  # ignored pixels (cut-out)
    valid_mask = torch.ones_like(labels, dtype=torch.bool)
    valid_mask[1, :2] = False  # padding
    valid = (labels != -1) & valid_mask
    w = confident_fraction_per_image(conf, valid, 0.5)
    expected_w = torch.stack([((conf[b] >= 0.5) & valid[b]).sum() / valid[b].sum() for b in range(3)]).float()
    assert torch.allclose(w, expected_w)
    loss = confidence_weighted_pseudo_label_ce(logits, labels, conf, valid_mask, threshold=0.5)
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    manual = sum((ce[b] * w[b])[valid[b]].sum() for b in range(3)) / valid.sum()
    assert torch.allclose(loss, manual)


def test_pseudo_label_ce_ignores_ignore_label_and_invalid_pixels():
    logits, labels, conf = pseudo_label_batch(1)
    labels[0, :3] = -1
    valid_mask = torch.ones_like(labels, dtype=torch.bool)
    valid_mask[2, :, :2] = False
    loss = confidence_weighted_pseudo_label_ce(logits, labels, conf, valid_mask, threshold=0.3)
    changed = logits.detach().clone()
    changed[0, :, :3] += 50 * torch.randn_like(changed[0, :, :3])
    changed[2, :, :, :2] = float("nan")  # even NaNs at excluded pixels do not leak
    assert torch.allclose(confidence_weighted_pseudo_label_ce(changed, labels, conf, valid_mask, threshold=0.3), loss)
    loss.backward()
    assert logits.grad[0, :, :3].abs().sum() == 0 and logits.grad[2, :, :, :2].abs().sum() == 0
    assert logits.grad.abs().sum() > 0


def test_pseudo_label_ce_equals_plain_ce_when_all_confident_and_conf_gets_no_grad():
    logits, labels, conf = pseudo_label_batch(2)
    labels[1, 0] = -1
    conf = torch.full(labels.shape, 0.99, requires_grad=True)
    loss = confidence_weighted_pseudo_label_ce(logits, labels, conf, threshold=0.97)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=-1))
    loss.backward()
    assert_grad_only_on_student(logits, conf)
    half = confidence_weighted_pseudo_label_ce(logits.detach().half(), labels, conf.detach() * 0 + 0.5, threshold=0.97)
    assert half.dtype == torch.float32 and half == 0  # nobody confident: weight 0
    all_ignored = confidence_weighted_pseudo_label_ce(logits, torch.full_like(labels, -1), conf)
    assert all_ignored == 0 and all_ignored.requires_grad


# ----------------------------------------------------------------------------- entropy split
def test_percentile_matches_numpy_linear_interpolation():
    values = torch.randn(1001, generator=gen(0))
    for q in (0, 3.3, 20, 50, 80, 99.9, 100):
        assert abs(float(percentile(values, q)) - np.percentile(values.numpy(), q)) < 1e-5


def test_reliability_masks_split_valid_pixels_by_entropy_percentiles():
    g = gen(0)
    probs = torch.softmax(3 * torch.randn(2, 4, 20, 25, generator=g), 1)
    valid = torch.rand(2, 20, 25, generator=g) > 0.2
    reliable, unreliable = reliability_masks(probs, valid, alpha_percent=20)
    entropy = pixel_entropy(probs)
    assert not (reliable & ~valid).any() and not (unreliable & ~valid).any()
    n_valid = int(valid.sum())
    assert abs(int(reliable.sum()) - 0.2 * n_valid) <= 1 and abs(int(unreliable.sum()) - 0.2 * n_valid) <= 1
    assert entropy[reliable].max() <= entropy[valid & ~reliable].min()  # reliable = the low-entropy end
    assert entropy[unreliable].min() >= entropy[valid & ~unreliable].max()
    low = np.percentile(entropy[valid].numpy(), 20)
    assert torch.equal(reliable, (entropy <= float(low) + 1e-6) & valid)
    r50, u50 = reliability_masks(probs, valid, alpha_percent=50)
    assert (r50 | u50).sum() >= n_valid - 1  # alpha = 50 splits at the median
    r0, u0 = reliability_masks(probs, torch.zeros_like(valid), alpha_percent=20)
    assert not r0.any() and not u0.any()


def test_alpha_schedule_decays_linearly():
    assert alpha_schedule(0.0) == 20 and alpha_schedule(0.5) == 10 and alpha_schedule(1.0) == 0
    assert alpha_schedule(1.7) == 0 and alpha_schedule(0.25, alpha0=8) == 6


# ----------------------------------------------------------------------------- anatomical contrast
def contrast_batch(separated, n_per_class=(300, 300, 300), dim=16, seed=0, noise=0.05):
    g = gen(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    num_classes = len(n_per_class)
    if separated:
        centres = torch.eye(dim)[:num_classes] * 3
        emb = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    else:
        emb = torch.randn(len(labels), dim, generator=g)
    probs = torch.full((len(labels), num_classes), 0.1 / max(num_classes - 1, 1))
    probs[torch.arange(len(labels)), labels] = 0.9
    reliable = torch.ones(len(labels), dtype=torch.bool)
    unreliable = torch.ones(len(labels), dtype=torch.bool)
    return emb, labels, probs, reliable, unreliable


def run_contrast(emb, labels, probs, reliable, unreliable, bank=None, seed=0, **kw):
    student = emb.clone().requires_grad_(True)
    teacher = emb.clone().requires_grad_(True)
    probs = probs.clone().requires_grad_(True)
    diag = {}
    loss, keys, key_labels = anatomical_contrast_loss(student, teacher, labels, probs, reliable, unreliable, bank,
                                                      num_queries=kw.pop("num_queries", 64),
                                                      num_negatives=kw.pop("num_negatives", 128),
                                                      generator=gen(seed), diagnostics=diag, **kw)
    return loss, keys, key_labels, diag, student, teacher, probs


def test_contrast_gradient_reaches_student_only():
    emb, labels, probs, rel, unrel = contrast_batch(separated=False)
    bank = ClassMemoryBank(3, 16, capacity=50, background_capacity=None)
    bank.enqueue(torch.randn(60, 16, generator=gen(1)), torch.randint(0, 3, (60,), generator=gen(2)))
    loss, keys, _, _, student, teacher, probs = run_contrast(emb, labels, probs, rel, unrel, bank)
    loss.backward()
    assert_grad_only_on_student(student, teacher, probs)
    assert not keys.requires_grad


def test_contrast_is_lower_for_class_separated_embeddings():
    separated = run_contrast(*contrast_batch(separated=True))[0]
    mixed = run_contrast(*contrast_batch(separated=False))[0]
    assert separated < mixed - 1.0
    # with orthogonal class centres: positive cos 1, negatives ~0 -> log(1 + K e^{-1/tau})
    assert abs(float(separated.detach()) - np.log(1 + 128 * np.exp(-1 / 0.5))) < 0.1


@pytest.mark.parametrize("action_options", [{}, {"class_relation_temperature": 0.5}])
def test_contrast_depends_on_cosines_only(action_options):
    """Rescaling every student row and bank row by its own positive factor and the teacher map by one factor (a
    prototype is the mean of raw teacher rows) changes no logit: anchors, positives and the negatives drawn from
    batch and banks are all compared by cosine (same draws, same loss)."""
    emb, labels, probs, rel, unrel = contrast_batch(separated=False)
    bank_rows, bank_labels = torch.randn(90, 16, generator=gen(1)), torch.randint(0, 3, (90,), generator=gen(2))
    scale = lambda x, seed: x * (0.1 + 10 * torch.rand(len(x), 1, generator=gen(seed)))  # noqa: E731
    losses = []
    for rescaled in (False, True):
        bank = ClassMemoryBank(3, 16, capacity=30, background_capacity=None, store_fp16=False)
        bank.enqueue(scale(bank_rows, 3) if rescaled else bank_rows, bank_labels)
        student = (scale(emb, 4) if rescaled else emb.clone()).requires_grad_(True)
        teacher = 7 * emb if rescaled else emb
        loss = anatomical_contrast_loss(student, teacher, labels, probs, rel, unrel, bank, num_queries=64,
                                        num_negatives=128, generator=gen(0), **action_options)[0]
        losses.append(float(loss))
    assert losses[0] > 1.0 and losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_contrast_negatives_come_from_other_classes_only():
    """Bank entries of class c are never negatives for class c: filling bank 0 with copies of class-0
    embeddings leaves the class-0 loss unchanged, while the same vectors stored under class 1 raise it."""
    emb, labels, probs, rel, unrel = contrast_batch(separated=True, n_per_class=(200, 200))
    class0 = emb[labels == 0][:100]
    banks = {}
    for name, stored_as in [("empty", None), ("same_class", 0), ("other_class", 1)]:
        banks[name] = ClassMemoryBank(2, 16, capacity=100, background_capacity=None)
        if stored_as is not None:
            banks[name].enqueue(class0, torch.full((100,), stored_as))
    losses = {name: run_contrast(emb, labels, probs, rel, unrel, bank)[3]["class_losses"][0]
              for name, bank in banks.items()}
    assert losses["same_class"] == pytest.approx(losses["empty"])
    assert losses["other_class"] > losses["empty"] + 0.5


def test_every_class_gets_its_anchor_quota_even_when_rare():
    g = gen(0)
    n = 10000
    labels = torch.randint(0, 3, (n,), generator=g)
    rare = torch.randperm(n, generator=g)[:5]
    labels[rare] = 3
    emb = torch.randn(n, 8, generator=g)
    probs = torch.full((n, 4), 0.05)
    probs[torch.arange(n), labels] = 0.85
    mask = torch.ones(n, dtype=torch.bool)
    loss, _, _, diag, *_ = run_contrast(emb, labels, probs, mask, mask, num_queries=256, num_negatives=32)
    assert diag["valid_classes"] == [0, 1, 2, 3]
    assert diag["num_anchor_candidates"][3] == 5
    anchors = diag["anchor_indices"][3]
    assert anchors.shape == (256,) and set(anchors.tolist()) <= set(rare.tolist())
    for c in range(3):
        assert diag["anchor_indices"][c].shape == (256,) and torch.all(labels[diag["anchor_indices"][c]] == c)
    # class-balanced: the loss is the plain mean of the per-class losses
    assert float(loss.detach()) == pytest.approx(np.mean(list(diag["class_losses"].values())), rel=1e-5)


def test_anchors_respect_reliability_and_positive_threshold():
    emb, labels, probs, rel, unrel = contrast_batch(separated=False)
    rel = rel.clone()
    rel[::2] = False
    probs = probs.clone()
    probs[1::4, :] = torch.tensor([0.4, 0.4, 0.2])  # class-2 pixels here fall below positive_threshold 0.3
    diag = run_contrast(emb, labels, probs, rel, unrel)[3]
    allowed = rel & (probs[torch.arange(len(labels)), labels] > 0.3)
    for c, idx in diag["anchor_indices"].items():
        assert torch.all(allowed[idx]) and torch.all(labels[idx] == c)


def test_contrast_is_zero_with_fewer_than_two_classes_and_graph_stays_intact():
    emb, labels, probs, rel, unrel = contrast_batch(separated=False, n_per_class=(100, 0, 0))
    loss, keys, key_labels, diag, student, *_ = run_contrast(emb, labels, probs, rel, unrel)
    assert loss == 0 and loss.requires_grad and diag["valid_classes"] == []
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() == 0
    assert torch.all(key_labels == 0)


def test_contrast_accepts_dense_maps_and_flattening_is_consistent():
    g = gen(0)
    b, d, h, w, c = 2, 8, 6, 7, 3
    emb = torch.randn(b, d, h, w, generator=g)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    probs = torch.softmax(torch.randn(b, c, h, w, generator=g), 1)
    rel = torch.ones(b, h, w, dtype=torch.bool)
    flat = flatten_channel_map(emb)
    assert flat.shape == (b * h * w, d) and torch.equal(flat[h * w + 2 * w + 3], emb[1, :, 2, 3])
    assert torch.equal(flatten_pixel_map(labels)[h * w + 2 * w + 3], labels[1, 2, 3])
    dense = anatomical_contrast_loss(emb, emb, labels, probs, rel, rel, None, 16, 32, positive_threshold=0.0,
                                     generator=gen(1))
    flat_loss = anatomical_contrast_loss(flat, flat, flatten_pixel_map(labels), flatten_channel_map(probs),
                                         flatten_pixel_map(rel), flatten_pixel_map(rel), None, 16, 32,
                                         positive_threshold=0.0, generator=gen(1))
    assert torch.allclose(dense[0], flat_loss[0]) and torch.equal(dense[1], flat_loss[1])


@pytest.mark.parametrize("sampler", ["uniform", "stratified", "antithetic"])
def test_contrast_runs_with_every_sampler(sampler):
    loss = run_contrast(*contrast_batch(separated=True), sampler=sampler)[0]
    assert torch.isfinite(loss) and loss > 0


def test_keys_to_enqueue_are_unreliable_safe_negatives_capped_per_class():
    n = 400
    labels = torch.arange(n) % 2
    labels[:10] = -1
    probs = torch.full((n, 2), 0.5)
    probs[10:20] = torch.tensor([0.01, 0.99])  # label 0 or 1, but 'class 1' at 0.99
    unreliable = torch.ones(n, dtype=torch.bool)
    unreliable[300:] = False
    emb = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 4).requires_grad_(True)
    keys, key_labels = select_keys_to_enqueue(emb, labels, probs, unreliable, 0.97, max_keys_per_class=1000)
    chosen = keys[:, 0].long()
    assert not keys.requires_grad and torch.equal(key_labels, labels[chosen])
    # excluded: ignore label, reliable-only pixels, and label-0 pixels that the teacher calls class 1 at 0.99
    expected = [i for i in range(10, 300) if not (10 <= i < 20 and labels[i] == 0)]
    assert sorted(chosen.tolist()) == expected
    keys, key_labels = select_keys_to_enqueue(emb, labels, probs, unreliable, 0.97, max_keys_per_class=7,
                                              generator=gen(0))
    assert key_labels.bincount().tolist() == [7, 7]


# ----------------------------------------------------------------------------- nearest neighbours
def nn_setup(seed=0, dim=8):
    g = gen(seed)
    teacher = F.normalize(torch.randn(4, dim, generator=g), dim=1)
    far = torch.randn(40, dim, generator=g)
    # for every teacher row, 5 neighbours close to it
    near = teacher.repeat_interleave(5, 0) + 0.05 * torch.randn(20, dim, generator=g)
    return teacher, torch.cat([far, near], 0), near.view(4, 5, dim)


def test_nn_loss_is_zero_when_student_equals_its_neighbours():
    teacher, _, _ = nn_setup()
    bank = teacher.repeat_interleave(5, 0) * 2.0  # exact copies (scale does not matter for cosine)
    bank = torch.cat([torch.randn(30, 8, generator=gen(1)), bank])
    assert nearest_neighbour_loss(teacher.clone(), teacher, bank, k=5) < 1e-6


def test_nn_loss_gradient_reaches_student_only_and_neighbours_follow_the_teacher():
    teacher, bank, _ = nn_setup()
    student = torch.randn(4, 8, generator=gen(3), requires_grad=True)
    teacher = teacher.clone().requires_grad_(True)
    bank = bank.clone().requires_grad_(True)
    loss = nearest_neighbour_loss(student, teacher, bank, k=5)
    loss.backward()
    assert_grad_only_on_student(student, teacher, bank)
    # neighbours are chosen by the teacher: a different teacher gives a different loss for the same student
    other = nearest_neighbour_loss(student.detach(), torch.randn(4, 8, generator=gen(9)), bank.detach(), k=5)
    assert abs(float(other) - float(loss.detach())) > 1e-3


def test_nn_loss_decreases_as_the_student_moves_to_the_neighbours():
    teacher, bank, near = nn_setup()
    student = torch.randn(4, 8, generator=gen(5), requires_grad=True)
    losses = []
    for _ in range(40):  # plain gradient descent on a free student tensor
        loss = nearest_neighbour_loss(student, teacher, bank, k=5)
        (grad,) = torch.autograd.grad(loss, student)
        with torch.no_grad():
            student -= 20.0 * grad
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.1 and all(b <= a + 1e-6 for a, b in zip(losses, losses[1:]))
    cos_to_neighbour_mean = F.cosine_similarity(student.detach(), near.mean(1), dim=1)
    assert torch.all(cos_to_neighbour_mean > 0.95)


def test_nn_loss_with_empty_bank_is_zero():
    student = torch.randn(2, 8, requires_grad=True)
    loss = nearest_neighbour_loss(student, torch.randn(2, 8), torch.zeros(0, 8))
    assert loss == 0 and loss.requires_grad


# ----------------------------------------------------------------------------- relational KL (ISD)
def test_relational_kl_zero_for_matching_similarities_and_positive_otherwise():
    g = gen(0)
    x = torch.randn(6, 16, generator=g)
    queue = torch.randn(36, 16, generator=g)
    assert abs(float(relational_kl_loss(x, x * 3.0, queue, tau_s=0.1, tau_t=0.1))) < 1e-6
    assert relational_kl_loss(x, x, queue, tau_s=0.1, tau_t=0.01) > 1e-3  # sharper teacher
    assert relational_kl_loss(torch.randn(6, 16, generator=g), x, queue, tau_s=0.1, tau_t=0.1) > 1e-2


def test_relational_kl_gradient_reaches_student_only():
    g = gen(1)
    q = torch.randn(6, 16, generator=g, requires_grad=True)
    k = torch.randn(6, 16, generator=g, requires_grad=True)
    queue = torch.randn(36, 16, generator=g, requires_grad=True)
    loss = relational_kl_loss(q, k, queue)
    assert loss > 0
    loss.backward()
    assert_grad_only_on_student(q, k, queue)
    empty = relational_kl_loss(q, k, torch.zeros(0, 16))
    assert empty == 0 and empty.requires_grad


def test_window_embeddings_shape_and_one_window_per_row():
    g = gen(0)
    x = torch.randn(2, 3, 32, 40, generator=g, requires_grad=True)
    emb = window_embeddings(x, window=16, stride=8, pool=8)
    n_h, n_w = (32 - 16) // 8 + 1, (40 - 16) // 8 + 1
    assert emb.shape == (2 * n_h * n_w, 3 * 8 * 8)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (1, n_h - 1, n_w - 1)]:
        row = b * n_h * n_w + i * n_w + j
        crop = x[b:b + 1, :, 8 * i:8 * i + 16, 8 * j:8 * j + 16]
        assert torch.allclose(emb[row], F.adaptive_avg_pool2d(crop, 8).flatten())
    # the gradient of one row touches exactly one window of one sample
    row = 1 * n_h * n_w + 1 * n_w + 2
    emb[row].sum().backward()
    touched = x.grad.abs().sum(1) > 0
    expected = torch.zeros_like(touched)
    expected[1, 8:24, 16:32] = True
    assert torch.equal(touched, expected)


def test_window_embeddings_constant_windows_and_3d():
    ids = torch.arange(4.).view(1, 1, 2, 2)
    x = F.interpolate(ids, scale_factor=8, mode="nearest").repeat(1, 2, 1, 1)  # 16x16, four 8x8 blocks
    emb = window_embeddings(x, window=8, stride=8, pool=4)
    assert emb.shape == (4, 2 * 16)
    for r in range(4):
        assert torch.all(emb[r] == r)
    vol = torch.randn(1, 2, 8, 12, 12, generator=gen(0))
    assert window_embeddings(vol, window=(4, 6, 6), stride=(4, 3, 3), pool=2).shape == (2 * 3 * 3, 2 * 8)


# ----------------------------------------------------------------------------- equivariance
def test_equivariance_zero_for_identical_positive_otherwise_and_masked():
    g = gen(0)
    logits = torch.randn(2, 4, 10, 12, generator=g)
    mask = (torch.rand(2, 10, 12, generator=g) > 0.5).float()
    assert abs(float(equivariance_loss(logits, logits, mask))) < 1e-6
    student = (logits + torch.randn(2, 4, 10, 12, generator=g)).requires_grad_(True)
    reference = logits.clone().requires_grad_(True)
    loss = equivariance_loss(student, reference, mask)
    assert loss > 1e-2
    loss.backward()
    assert_grad_only_on_student(student, reference)
    assert student.grad[mask[:, None].expand_as(student) == 0].abs().sum() == 0  # masked pixels: no effect
    # per-image normalisation: mean over images of sum(m * KL) / sum(m)
    log_q, log_p = F.log_softmax(student.detach(), 1), F.log_softmax(logits, 1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    manual = torch.stack([(mask[b] * kl[b]).sum() / mask[b].sum() for b in range(2)]).mean()
    assert torch.allclose(loss, manual, atol=1e-5)
    assert equivariance_loss(student, logits, torch.zeros(2, 10, 12)) == 0


# ----------------------------------------------------------------------------- projection heads
def test_projection_mlp_shapes_and_nonlinearity_flag():
    x = torch.randn(5, 12, generator=gen(0))
    for nonlinear, batch_norm in [(True, False), (False, False), (True, True)]:
        assert ProjectionMLP(12, 16, 32, nonlinear, batch_norm)(x).shape == (5, 32)
    torch.manual_seed(0)
    linear, nonlinear = ProjectionMLP(12, 16, 8, nonlinear=False), ProjectionMLP(12, 16, 8, nonlinear=True)
    zero = torch.zeros(1, 12)
    # linear head is affine: f(2x) - f(0) = 2 (f(x) - f(0)); the ReLU head is not
    assert torch.allclose(linear(2 * x) - linear(zero), 2 * (linear(x) - linear(zero)), atol=1e-5)
    assert not torch.allclose(nonlinear(-x) - nonlinear(zero), -(nonlinear(x) - nonlinear(zero)), atol=1e-3)


def test_pixel_projection_head_shapes_2d_and_3d():
    assert PixelProjectionHead(8, 16, 4)(torch.randn(2, 8, 5, 6)).shape == (2, 4, 5, 6)
    assert PixelProjectionHead(8, 16, 4, spatial_dims=3, batch_norm=True)(torch.randn(2, 8, 3, 5, 6)).shape == \
        (2, 4, 3, 5, 6)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_multiscale_head_output_at_reference_resolution_and_gradient_to_every_level(fusion):
    g = gen(0)
    feats = [torch.randn(2, c, s, s, generator=g, requires_grad=True) for c, s in [(64, 4), (32, 8), (16, 16),
                                                                                  (8, 32)]]
    head = MultiScaleRepresentationHead([64, 32, 16, 8], proj_channels=12, out_channels=24, reference_index=2,
                                        fusion=fusion)
    out = head(feats)
    assert out.shape == (2, 24, 16, 16)
    out.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)
    assert MultiScaleRepresentationHead([64, 32, 16, 8])(feats).shape == (2, 256, 32, 32)  # default: last level


def test_multiscale_head_3d():
    feats = [torch.randn(1, 16, 2, 4, 4), torch.randn(1, 8, 4, 8, 8)]
    head = MultiScaleRepresentationHead([16, 8], proj_channels=4, out_channels=6, spatial_dims=3)
    assert head(feats).shape == (1, 6, 4, 8, 8)
