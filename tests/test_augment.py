"""Property tests of the on-device augmentation blocks (nnunet_mona.augment). CPU, a few seconds."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_mona.augment.intensity import StrongPhotometricAugment, gaussian_blur
from nnunet_mona.augment.mixing import apply_mix, classmix_masks, cutmix_box_masks, cutout, partner_permutation
from nnunet_mona.augment.warps import (RandomWarp, affine_grid, affine_matrices, identity_grid, invert_affine,
                                       random_affine_matrices, random_smooth_displacement_grid, tps_grid,
                                       valid_mask_from_grid, warp)

SEEDS = [0, 1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------- mixing
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8])
def test_partner_permutation_is_derangement(seed, batch):
    p = partner_permutation(batch, gen(seed))
    assert sorted(p.tolist()) == list(range(batch))
    if batch == 1:
        assert p.tolist() == [0]
    else:
        assert bool((p != torch.arange(batch)).all())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape,frac", [((64, 64), 0.5), ((48, 80), 0.5), ((40, 40), 0.25), ((16, 24, 20), 0.5)])
def test_cutmix_box_is_one_box_of_right_area(seed, shape, frac):
    m = cutmix_box_masks(6, shape, frac, gen(seed))
    assert m.shape == (6,) + shape and m.dtype == torch.bool
    for b in range(6):
        area = m[b].float().mean().item()
        # rounding of each side by <= 0.5 px
        tol = sum(0.5 / n for n in shape) + 0.01
        assert abs(area - frac) <= tol, (area, frac)
        # a box: the mask equals the outer product of its projections
        idx = m[b].nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        box = torch.zeros_like(m[b])
        box[tuple(slice(int(l), int(h) + 1) for l, h in zip(lo, hi))] = True
        assert torch.equal(box, m[b])


def test_cutmix_deterministic_and_rejects_bad_dims():
    a = cutmix_box_masks(4, (32, 32), generator=gen(7))
    b = cutmix_box_masks(4, (32, 32), generator=gen(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        cutmix_box_masks(4, (32,), generator=gen(7))
    with pytest.raises(ValueError):
        cutmix_box_masks(4, (4, 4, 4, 4), generator=gen(7))


def _distinguishable(B, shape, C=2):
    """Every tensor encodes (sample, pixel) so provenance can be read back."""
    n = math.prod(shape)
    pix = torch.arange(n).reshape(shape)
    ids = torch.arange(B).view((B,) + (1,) * len(shape))
    labels = (ids * 1000 + pix).long()  # (B, *S)
    conf = labels.double() / 1e6
    images = torch.stack([labels.double() + 0.25 * c for c in range(C)], 1)  # (B, C, *S)
    valid = (labels % 3 == 0)
    return images, labels, conf, valid


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(12, 16), (6, 8, 10)])
def test_apply_mix_same_mask_for_all_tensors(seed, shape):
    B = 4
    images, labels, conf, valid = _distinguishable(B, shape)
    mask = cutmix_box_masks(B, shape, 0.5, gen(seed))
    partner = partner_permutation(B, gen(seed + 100))
    im2, lab2, conf2, val2 = apply_mix(images, labels, conf, mask, partner, extra=(valid,))
    src = torch.where(mask, partner.view((B,) + (1,) * len(shape)), torch.arange(B).view((B,) + (1,) * len(shape)))
    # provenance decoded from every tensor is the same, and the pixel position is unchanged
    assert torch.equal(lab2 // 1000, src)
    assert torch.equal(lab2 % 1000, labels % 1000)
    assert torch.equal(torch.round(conf2 * 1e6).long(), lab2)
    for c in range(images.shape[1]):
        assert torch.equal(im2[:, c], lab2.double() + 0.25 * c)
    assert torch.equal(val2, lab2 % 3 == 0)
    # inputs untouched
    assert torch.equal(labels, _distinguishable(B, shape)[1])
    # partners differ, so something really moved
    assert bool((lab2 // 1000 != torch.arange(B).view((B,) + (1,) * len(shape)))[mask].all())


@pytest.mark.parametrize("seed", SEEDS)
def test_cutout_sets_ignore(seed):
    B, shape = 3, (20, 24)
    images, labels, conf, valid = _distinguishable(B, shape)
    mask = cutmix_box_masks(B, shape, 0.5, gen(seed))
    im2, lab2, conf2, val2 = cutout(images, labels, conf, mask, extra=(valid,))
    assert bool((lab2[mask] == -1).all()) and bool((conf2[mask] == 0).all())
    assert bool((im2.permute(1, 0, 2, 3)[:, mask] == 0).all()) and not bool(val2[mask].any())
    assert torch.equal(lab2[~mask], labels[~mask]) and torch.equal(conf2[~mask], conf[~mask])
    assert torch.equal(im2.permute(1, 0, 2, 3)[:, ~mask], images.permute(1, 0, 2, 3)[:, ~mask])


@pytest.mark.parametrize("seed", SEEDS)
def test_classmix_takes_whole_classes(seed):
    g = gen(seed)
    B, shape, K = 4, (24, 24), 5
    lab = torch.randint(0, K, (B,) + shape, generator=g)
    lab[1] = lab[1].clamp(max=2)  # 3 classes present
    lab[2] = 3  # one class
    lab[3, :4] = -1  # some ignore pixels
    lab[0][lab[0] == 0] = 1  # class 0 absent in sample 0, but ignore pixels present
    lab[0, -3:] = -1
    m = classmix_masks(lab, gen(seed + 1))
    assert m.shape == lab.shape and m.dtype == torch.bool
    for b in range(B):
        present = [c for c in lab[b].unique().tolist() if c >= 0]
        kept = []
        for c in present:
            sel = m[b][lab[b] == c]
            assert bool(sel.all()) or not bool(sel.any()), "a class was split"
            if not bool(sel.any()):
                kept.append(c)
        assert len(kept) == (len(present) + 1) // 2
        assert bool(m[b][lab[b] < 0].all())
    # with explicit num_classes, same result; applied via apply_mix whole classes move
    assert torch.equal(m, classmix_masks(lab, gen(seed + 1), num_classes=K))
    # randomness: over seeds the kept subsets vary
    subsets = {tuple(classmix_masks(lab[:1], gen(s))[0].flatten()[:50].tolist()) for s in range(12)}
    assert len(subsets) > 1


# -------------------------------------------------------------------------------------- intensity
def _img(B=4, C=2, shape=(32, 32), seed=0):
    return torch.randn((B, C) + shape, generator=gen(seed)) * 2 + 0.5


def test_photometric_identity_at_p0():
    x = _img()
    aug = StrongPhotometricAugment(p_brightness=0, p_contrast=0, p_gamma=0, p_noise=0, p_blur=0)
    assert torch.equal(aug(x, gen(0)), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(24, 20), (6, 10, 12)])
def test_photometric_preserves_shape_dtype_device(dtype, shape):
    x = _img(3, 1, shape).to(dtype)
    aug = StrongPhotometricAugment(1, (0.75, 1.25), 1, (0.75, 1.25), 1, (0.7, 1.5), 1, (0.0, 0.1), 1)
    y = aug(x, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert bool(torch.isfinite(y.float()).all())


@pytest.mark.parametrize("op", ["brightness", "contrast", "gamma", "noise", "blur"])
def test_photometric_each_op_changes_image_at_p1(op):
    x = _img()
    kw = {f"p_{o}": 0.0 for o in ["brightness", "contrast", "gamma", "noise", "blur"]}
    kw[f"p_{op}"] = 1.0
    y = StrongPhotometricAugment(**kw)(x, gen(3))
    for b in range(x.shape[0]):
        assert not torch.allclose(y[b], x[b]), f"{op} left sample {b} unchanged"


def test_photometric_per_sample_independence_and_determinism():
    aug = StrongPhotometricAugment(1, p_contrast=1, p_gamma=1, p_noise=1, p_blur=1)
    x = _img(4, 1).expand(4, 1, 32, 32).clone()
    x[:] = x[:1]
    y = aug(x, gen(5))
    # identical inputs get different random parameters
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(y[i], y[j])
    # deterministic with a seeded generator
    assert torch.equal(y, aug(x, gen(5)))
    # sample 0's output does not depend on the other samples' content
    x2 = x.clone()
    x2[1:] = torch.randn_like(x2[1:]) * 10
    assert torch.allclose(aug(x2, gen(5))[0], y[0])
    # per-sample selection: with p = 0.5 some samples are left untouched, others not
    aug_half = StrongPhotometricAugment(p_brightness=0.5, p_contrast=0, p_gamma=0, p_noise=0, p_blur=0)
    z = aug_half(_img(32, 1), gen(9))
    same = [(torch.equal(z[b], _img(32, 1)[b])) for b in range(32)]
    assert 0 < sum(same) < 32


def test_photometric_rejects_bad_input():
    aug = StrongPhotometricAugment()
    with pytest.raises(ValueError):
        aug(torch.zeros(2, 1, 8))
    with pytest.raises(TypeError):
        aug(torch.zeros(2, 1, 8, 8, dtype=torch.long))


@pytest.mark.parametrize("sigma", [0.15, 0.6, 1.15])
def test_blur_reduces_high_frequency_energy(sigma):
    x = torch.randn(2, 1, 64, 64, generator=gen(0))
    y = gaussian_blur(x, sigma)
    assert y.shape == x.shape
    fx, fy = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2), torch.fft.fftshift(torch.fft.fft2(y).abs() ** 2)
    r = torch.hypot(*torch.meshgrid(torch.arange(64) - 32.0, torch.arange(64) - 32.0, indexing="ij"))
    hf = r > 16
    ratio = float(fy[..., hf].sum()) / float(fx[..., hf].sum())
    # sigma = 0.15 px is numerically almost the identity (neighbour weight ~ exp(-22)); it must not add energy
    assert ratio <= 1.0 + 1e-6 if sigma < 0.3 else ratio < 0.7, ratio
    assert abs(float(y.mean()) - float(x.mean())) < 0.05  # mass preserved (normalised kernel)
    # 3D and constant image invariance
    c = torch.full((1, 1, 6, 8, 8), 3.0)
    assert torch.allclose(gaussian_blur(c, sigma), c)


def test_blur_stronger_sigma_blurs_more():
    x = torch.randn(2, 1, 48, 48, generator=gen(1))
    y = gaussian_blur(x, torch.tensor([0.3, 1.1]), radius=4)
    lap = lambda t: (t[..., 1:, :] - t[..., :-1, :]).pow(2).mean()
    assert lap(y[1]) < lap(y[0]) < lap(x[0])


# ------------------------------------------------------------------------------------------ warps
@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (5, 6, 7)])
def test_identity_grids(shape):
    d = len(shape)
    ref = F.affine_grid(torch.eye(d, d + 1).expand(2, d, d + 1), (2, 1) + shape, align_corners=False)
    assert torch.allclose(identity_grid(2, shape), ref, atol=1e-6)
    theta = affine_matrices(shape, torch.zeros(2) if d == 2 else torch.zeros(2, 3), torch.ones(2), torch.zeros(2, d))
    assert torch.allclose(affine_grid(theta, shape), ref, atol=1e-6)
    n = 5 ** d
    assert torch.allclose(tps_grid(theta, torch.zeros(2, n, d), shape), ref, atol=1e-6)
    # identity parameters of the random generators give the identity too
    kw = dict(rotation_deg=0, zoom=(1, 1), translation=0, mirror_prob=0)
    g_aff, v_aff = RandomWarp("affine", **kw)(2, shape, generator=gen(0))
    g_tps, v_tps = RandomWarp("tps", tps_sigma=0, **kw)(2, shape, generator=gen(0))
    g_sm, _ = RandomWarp("smooth", max_displacement=0)(2, shape, generator=gen(0))
    for gr in (g_aff, g_tps, g_sm):
        assert torch.allclose(gr, ref, atol=1e-6)
    assert bool(v_aff.all()) and bool(v_tps.all())
    x = torch.randn((2, 3) + shape, generator=gen(2))
    assert torch.allclose(warp(x, g_tps), x, atol=1e-5)


@pytest.mark.parametrize("k", [1, -1, 2])
def test_rotation_matches_rot90(k):
    x = torch.randn(2, 3, 9, 9, generator=gen(0))
    lab = torch.randint(0, 4, (2, 9, 9), generator=gen(1))
    theta = affine_matrices((9, 9), torch.full((2,), 90.0 * k), torch.ones(2), torch.zeros(2, 2))
    grid = affine_grid(theta, (9, 9))
    assert torch.equal(warp(x, grid, mode="nearest"), torch.rot90(x, k, dims=(-2, -1)))
    assert torch.equal(warp(lab, grid, mode="nearest"), torch.rot90(lab, k, dims=(-2, -1)))
    assert bool(valid_mask_from_grid(grid).all())


def test_mirror_matches_flip():
    x = torch.randn(1, 1, 7, 10, generator=gen(0))
    theta = affine_matrices((7, 10), torch.zeros(1), torch.ones(1), torch.zeros(1, 2), torch.tensor([[True, False]]))
    assert torch.equal(warp(x, affine_grid(theta, (7, 10)), mode="nearest"), torch.flip(x, dims=(-1,)))


def _smooth_image(B, shape, seed):
    x = torch.randn((B, 1) + tuple(max(2, n // 8) for n in shape), generator=gen(seed))
    return F.interpolate(x, size=shape, mode="bilinear" if len(shape) == 2 else "trilinear", align_corners=False)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 64), (24, 24, 24)])
def test_affine_warp_then_inverse_is_identity_in_interior(seed, shape):
    B = 3
    x = _smooth_image(B, shape, seed)
    theta = random_affine_matrices(B, shape, rotation_deg=30, zoom=(0.9, 1.1), translation=0.05, mirror_prob=0.5,
                                   generator=gen(seed))
    y = warp(warp(x, affine_grid(theta, shape)), affine_grid(invert_affine(theta), shape))
    # interior: points whose forward image stays well inside
    inner = (identity_grid(1, shape).abs() < 0.4).all(-1).expand((B,) + shape)
    err = (y[:, 0] - x[:, 0]).abs()[inner]
    assert float(err.max()) < 0.15 * float(x.abs().max()), float(err.max())
    assert float(err.mean()) < 0.02 * float(x.abs().max())


@pytest.mark.parametrize("seed", SEEDS)
def test_valid_mask_marks_out_of_bounds(seed):
    shape = (32, 32)
    theta = affine_matrices(shape, torch.zeros(2), torch.tensor([0.5, 1.0]), torch.tensor([[0.0, 0.0], [0.6, 0.0]]))
    grid = affine_grid(theta, shape)
    vm = valid_mask_from_grid(grid)
    # zoom 0.5 -> source spans [-2, 2]: only the central half is valid
    assert torch.equal(vm[0], (identity_grid(1, shape)[0].abs() * 2 <= 1 + 1e-6).all(-1))
    # translation 0.6 to the right: the right 30 % of columns sample outside
    assert not bool(vm[1][:, -9:].any()) and bool(vm[1][:, :22].all())
    # random warps: where invalid, warping an all-ones image gives ~0 near there
    grid, vm = RandomWarp()(4, shape, generator=gen(seed))
    ones = warp(torch.ones(4, 1, *shape), grid, mode="nearest")[:, 0]
    assert torch.equal(ones > 0.5, vm)
    assert vm.dtype == torch.bool and vm.shape == (4,) + shape
    lab = warp(torch.ones(4, *shape, dtype=torch.long), grid, mode="nearest", fill_value=-1)
    assert bool((lab[~vm] == -1).all()) and bool((lab[vm] == 1).all())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["tps", "affine", "smooth"])
@pytest.mark.parametrize("shape", [(40, 32), (10, 12, 14)])
def test_nearest_keeps_label_values(seed, kind, shape):
    lab = torch.randint(1, 6, (2,) + shape, generator=gen(seed)) * 7  # values {7, ..., 35}
    grid, vm = RandomWarp(kind, integration_steps=3)(2, shape, generator=gen(seed))
    out = warp(lab, grid, mode="nearest")
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert set(out[vm].unique().tolist()) <= set(lab.unique().tolist())
    assert set(out[~vm].unique().tolist()) <= {0}
    with pytest.raises(ValueError):
        warp(lab, grid, mode="bilinear")


@pytest.mark.parametrize("seed", SEEDS)
def test_random_warps_are_random_deterministic_and_bounded(seed):
    shape = (64, 64)
    w = RandomWarp("tps")
    g1, _ = w(4, shape, generator=gen(seed))
    g2, _ = w(4, shape, generator=gen(seed))
    assert torch.equal(g1, g2)
    assert not torch.allclose(g1[0], g1[1])
    # TPS jitter only (no similarity): displacement bounded by a few times sigma
    gt, _ = RandomWarp("tps", rotation_deg=0, zoom=(1, 1), translation=0, mirror_prob=0, tps_sigma=0.01)(
        4, shape, generator=gen(seed))
    disp = (gt - identity_grid(1, shape)).abs()
    assert 0 < float(disp.max()) < 0.05
    # smooth displacement: max displacement ~ requested (pixels)
    for steps in (0, 5):
        gs = random_smooth_displacement_grid(3, shape, max_displacement=3.0, integration_steps=steps,
                                             generator=gen(seed))
        px = ((gs - identity_grid(1, shape)) * 32).norm(dim=-1).reshape(3, -1).amax(1)
        assert bool((px > 1.5).all()) and bool((px < 4.5).all()), px


def test_warps_reject_bad_dims():
    with pytest.raises(ValueError):
        identity_grid(1, (8,))
    with pytest.raises(ValueError):
        RandomWarp()(1, (4, 4, 4, 4))
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 1, 8, 8), torch.zeros(1, 8, 8, 3))


@pytest.mark.parametrize("shape", [(20, 40), (8, 12, 16)])
def test_rotation_is_rigid_in_pixels_on_anisotropic_shapes(shape):
    d = len(shape)
    theta = random_affine_matrices(2, shape, rotation_deg=(20, 70), zoom=(1, 1), translation=0, mirror_prob=0.5,
                                   generator=gen(0))
    grid = affine_grid(theta, shape)
    px = grid * torch.tensor(list(reversed(shape)), dtype=grid.dtype) / 2  # source positions in pixels
    for ax in range(d):  # neighbouring output pixels map to sources 1 px apart
        step = px.narrow(1 + ax, 1, shape[ax] - 1) - px.narrow(1 + ax, 0, shape[ax] - 1)
        assert torch.allclose(step.norm(dim=-1), torch.ones(()), atol=1e-4)
