"""Unlabeled data path: case resolution, weak/strong views, sampling, no label access, per-worker torch seeding.

Most tests write tiny blosc2 folders themselves (fast); the label-access test works on a copy of the real
preprocessed Dataset991 (simulated scarcity).
"""
import builtins
import os
import shutil

import blosc2
import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from nnunet_mona.data.paths import unlabeled_preprocessed_folder
from nnunet_mona.data.unlabeled_loader import (default_unlabeled_num_processes, make_unlabeled_augmenter,
                                               nnUNetUnlabeledDataLoader)
from nnunet_mona.data.unlabeled_pool import UnlabeledImageDataset, resolve_unlabeled_cases
from nnunet_mona.data.unlabeled_transforms import StrongIntensityConfig, build_unlabeled_transforms

ROT_2D = (-np.pi, np.pi)


def _structured_image(rng, c, z, y, x):
    """float32 (c, z, y, x) with smooth structure (sinusoids + bright discs), strictly positive."""
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing='ij')
    img = np.empty((c, z, y, x), np.float32)
    for ci in range(c):
        f = rng.uniform(0.1, 0.3, 2)
        v = 1.5 + np.sin(f[0] * yy + rng.uniform(0, 6)) * np.cos(f[1] * xx + rng.uniform(0, 6)) + 0.2 * zz
        for _ in range(3):
            cy, cx, r = rng.uniform(0, y), rng.uniform(0, x), rng.uniform(3, 8)
            v[(yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2] += 2
        img[ci] = v
    return img


def _write_case(folder, identifier, image, seg=None, properties=None):
    """nnU-Net's own writer: <id>.b2nd, <id>_seg.b2nd, <id>.pkl."""
    os.makedirs(folder, exist_ok=True)
    seg = np.zeros_like(image[:1], dtype=np.int16) if seg is None else seg
    chunks = (1, 1, *image.shape[2:])
    nnUNetDatasetBlosc2.save_case(image, seg, properties or {}, os.path.join(folder, identifier),
                                  chunks=chunks, blocks=chunks)


def _pool(tmp_path, shape, n=4, seed=0, name='pool'):
    rng = np.random.default_rng(seed)
    folder = str(tmp_path / name)
    for i in range(n):
        _write_case(folder, f'case{i}', _structured_image(rng, *shape))
    return UnlabeledImageDataset({f'case{i}': folder for i in range(n)})


def _loader(ds, batch_size, final_patch, strong_config=None, dummy_2d=False, enlarge=True, mirror=True):
    spatial, weak, strong = build_unlabeled_transforms(
        final_patch, ROT_2D if len(final_patch) == 2 or dummy_2d else (-0.5, 0.5),
        tuple(range(len(final_patch))) if mirror else None, dummy_2d, strong_config)
    initial = tuple(int(round(p * 1.4)) for p in final_patch) if enlarge else tuple(final_patch)
    if dummy_2d:
        initial = (final_patch[0], *initial[1:])
    return nnUNetUnlabeledDataLoader(ds, batch_size, initial, final_patch, spatial, weak, strong)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('stored, patch, dummy_2d', [
    ((2, 1, 40, 48), (32, 32), False),  # 2D data (Z=1), 2 channels
    ((1, 6, 40, 48), (32, 32), False),  # 2D patches = random slices of 3D-stored data
    # 3D, every patch axis longer than the blur's reflect padding (batchgeneratorsv2: kernel up to 9 voxels at the
    # strong view's sigma 1.5, padded by 4 each side; a 4-slice patch failed whenever a large z blur was drawn)
    ((1, 16, 40, 48), (12, 24, 24), False),
    ((1, 16, 40, 48), (12, 24, 24), True),  # 3D with dummy-2D augmentation
])
def test_batch_shapes_and_dtypes(tmp_path, stored, patch, dummy_2d):
    dl = _loader(_pool(tmp_path, stored), 3, patch, dummy_2d=dummy_2d)
    b = next(dl)
    assert set(b) == {'data_weak', 'data_strong', 'valid_mask', 'keys'}
    assert b['data_weak'].shape == b['data_strong'].shape == (3, stored[0], *patch)
    assert b['data_weak'].dtype == b['data_strong'].dtype == torch.float32
    assert b['valid_mask'].shape == (3, 1, *patch) and b['valid_mask'].dtype == torch.bool
    assert isinstance(b['keys'], list) and len(b['keys']) == 3 and all(isinstance(k, str) for k in b['keys'])
    assert torch.isfinite(b['data_weak']).all() and torch.isfinite(b['data_strong']).all()


def test_2d_patches_on_3d_data_are_single_slices(tmp_path):
    """Each 2D sample of 3D-stored data is one z-slice: our images carry 0.2*z, so with no augmentation the
    per-sample slice index can be read back and must vary over slices."""
    rng = np.random.default_rng(0)
    folder = str(tmp_path / 'p')
    zz = np.broadcast_to(np.arange(6, dtype=np.float32)[None, :, None, None], (1, 6, 40, 48))
    _write_case(folder, 'a', np.ascontiguousarray(zz * 10 + rng.uniform(0, 1, (1, 6, 40, 48)).astype(np.float32)))
    dl = nnUNetUnlabeledDataLoader(UnlabeledImageDataset({'a': folder}), 64, (32, 32), (32, 32), None, None, None)
    img = next(dl)['data_weak']
    z = torch.floor(img / 10)
    assert (z == z[:, :, :1, :1]).all()  # one slice per sample
    assert len(torch.unique(z)) >= 5  # random slices


# ---------------------------------------------------------------------------------------------- two views


def test_views_identical_without_intensity_transforms(tmp_path):
    dl = _loader(_pool(tmp_path, (1, 1, 40, 48)), 16, (32, 32), StrongIntensityConfig.off())
    for _ in range(3):
        b = next(dl)
        assert torch.equal(b['data_weak'], b['data_strong'])


def test_strong_view_is_pixel_aligned_monotone_function_of_weak(tmp_path):
    """Brightness/contrast/gamma (no noise/blur) are per-sample monotone non-decreasing intensity maps, so if both
    views share one geometry, sorting a sample's weak pixels must sort its strong pixels too. A second
    geometry draw (rotation/mirror/crop) would break this."""
    cfg = StrongIntensityConfig(p_noise=0, p_blur=0, p_brightness=1, p_contrast=1, p_gamma_inverted=0.5, p_gamma=1)
    dl = _loader(_pool(tmp_path, (1, 1, 40, 48)), 16, (32, 32), cfg)
    n_changed = 0
    for _ in range(2):
        b = next(dl)
        for w, s, v in zip(b['data_weak'], b['data_strong'], b['valid_mask']):
            w, s = w[v.expand_as(w)], s[v.expand_as(s)]
            order = torch.argsort(w)
            ds = torch.diff(s[order])
            assert (ds >= -1e-4 * (s.abs().max() + 1)).all()
            n_changed += int(not torch.allclose(w, s))
    assert n_changed >= 28  # the strong view really is different


def test_default_strong_view_keeps_structure(tmp_path):
    """Default strong config (incl. noise, blur): gradient magnitudes of the views stay correlated (aligned
    edges), much more than those of two different samples."""
    dl = _loader(_pool(tmp_path, (1, 1, 40, 48)), 16, (32, 32))

    def grad_mag(x):
        return (torch.diff(x, dim=-1)[..., :-1, :] ** 2 + torch.diff(x, dim=-2)[..., :-1] ** 2).sqrt().flatten()

    aligned, shuffled = [], []
    for _ in range(2):
        b = next(dl)
        gw = [grad_mag(w[0]) for w in b['data_weak']]
        gs = [grad_mag(s[0]) for s in b['data_strong']]
        for i in range(len(gw)):
            aligned.append(torch.corrcoef(torch.stack([gw[i], gs[i]]))[0, 1])
            shuffled.append(torch.corrcoef(torch.stack([gw[i], gs[(i + 1) % len(gs)]]))[0, 1])
    aligned, shuffled = torch.stack(aligned), torch.stack(shuffled)
    assert aligned.median() > 0.6
    assert aligned.median() > shuffled.median() + 0.3


def test_strong_stream_has_no_low_resolution_and_is_stronger_than_nnunet():
    spatial, weak, strong = build_unlabeled_transforms((32, 32), ROT_2D, (0, 1), False)
    assert isinstance(weak, ComposeTransforms) and len(weak.transforms) == 0
    names = [type(getattr(t, 'transform', t)).__name__ for t in strong.transforms]
    assert 'SimulateLowResolutionTransform' not in names and len(names) == 6
    assert not any(isinstance(getattr(t, 'transform', t), SimulateLowResolutionTransform) for t in strong.transforms)
    assert [type(t).__name__ for t in spatial.transforms] == ['SpatialTransform', 'MirrorTransform']
    cfg = StrongIntensityConfig()
    assert cfg.p_noise > 0.1 and cfg.p_blur > 0.2 and cfg.p_brightness > 0.15 and cfg.p_contrast > 0.15
    assert cfg.p_gamma > 0.3 and cfg.brightness_range[0] < 0.75 and cfg.gamma_range[1] > 1.5


# ---------------------------------------------------------------------------------------------- validity mask


def test_valid_mask_is_false_exactly_in_padding(tmp_path):
    """Image 20x24 < patch 32x32: the box is padded. Without resampling (mirroring only) the mask must be exactly
    'pixel comes from the image' (our image is > 0 everywhere, padding is 0)."""
    rng = np.random.default_rng(0)
    folder = str(tmp_path / 'small')
    _write_case(folder, 'small', _structured_image(rng, 1, 1, 20, 24))
    ds = UnlabeledImageDataset({'small': folder})
    spatial, _, _ = build_unlabeled_transforms((32, 32), ROT_2D, (0, 1), False)
    mirror_only = ComposeTransforms([spatial.transforms[-1]])
    dl = nnUNetUnlabeledDataLoader(ds, 8, (32, 32), (32, 32), mirror_only, None, None)
    b = next(dl)
    assert torch.equal(b['valid_mask'], b['data_weak'] > 0)
    assert (b['valid_mask'].sum(dim=(1, 2, 3)) == 20 * 24).all()

    # full nnU-Net geometry (rotation/scaling, bilinear): agreement up to the interpolated border
    dl = _loader(ds, 32, (32, 32), StrongIntensityConfig.off())
    b = next(dl)
    img_present = b['data_weak'] > 1e-3
    assert (b['valid_mask'] == img_present).float().mean() > 0.97
    assert not b['valid_mask'].all()


# ---------------------------------------------------------------------------------------------- sampling


def test_sampling_is_uniform_over_cases_without_foreground_bias(tmp_path):
    """Cases are labeled-style (real class_locations in the pkl, labels in _seg) with a small foreground blob in
    one corner. nnU-Net would centre a third of the patches on it; we must not: a random 32x32 box in a 64x64
    image contains the 8x8 corner blob with probability (8/33)^2 = 5.9 %."""
    folder = str(tmp_path / 'fg')
    n_cases, n_batches, bs = 4, 25, 32
    for i in range(n_cases):
        img = np.zeros((1, 1, 64, 64), np.float32)
        img[0, 0, :8, :8] = 1
        seg = (img > 0).astype(np.int16)
        locs = np.argwhere(seg)
        _write_case(folder, f'c{i}', img, seg, {'class_locations': {1: locs}})
    ds = UnlabeledImageDataset({f'c{i}': folder for i in range(n_cases)})
    dl = nnUNetUnlabeledDataLoader(ds, bs, (32, 32), (32, 32), None, None, None)
    counts = dict.fromkeys(ds.identifiers, 0)
    contains_fg = 0
    for _ in range(n_batches):
        b = next(dl)
        for k in b['keys']:
            counts[k] += 1
        contains_fg += int((b['data_weak'].amax(dim=(1, 2, 3)) > 0).sum())
    n = n_batches * bs
    expected = n / n_cases
    assert all(abs(c - expected) < 5 * np.sqrt(n * 0.25 * 0.75) for c in counts.values()), counts
    assert 0.02 < contains_fg / n < 0.11, contains_fg / n


# ---------------------------------------------------------------------------------------------- no label access


def _assert_loader_never_touches_labels(preprocessed_dataset_folder, split, monkeypatch):
    """DELETE _seg.b2nd and .pkl of the split's unlabeled ids, spy on blosc2.open/builtins.open, run
    resolve -> dataset -> loader -> augmenter: it works and opens only '<id>.b2nd' files."""
    labeled_folder = os.path.join(preprocessed_dataset_folder, 'nnUNetPlans_2d')
    for i in split['unlabeled']:
        # another test module may already have moved the shared dataset's label files away
        for f in (i + '_seg.b2nd', i + '.pkl'):
            if os.path.exists(os.path.join(labeled_folder, f)):
                os.remove(os.path.join(labeled_folder, f))
        assert not os.path.exists(os.path.join(labeled_folder, i + '_seg.b2nd'))

    opened = []
    real_blosc2_open, real_open = blosc2.open, builtins.open

    def spy_blosc2_open(*args, **kwargs):
        opened.append(str(kwargs.get('urlpath', args[0] if args else '')))
        return real_blosc2_open(*args, **kwargs)

    def spy_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(blosc2, 'open', spy_blosc2_open)
    monkeypatch.setattr(builtins, 'open', spy_open)
    try:
        cases = resolve_unlabeled_cases(preprocessed_dataset_folder, 'nnUNetPlans_2d', split,
                                        split['train'] + split['val'])
        assert sorted(cases) == sorted(split['unlabeled'])
        aug = make_unlabeled_augmenter(_loader(UnlabeledImageDataset(cases), 4, (32, 32)), 0)
        seen = set()
        for _ in range(5):
            b = next(aug)
            seen.update(b['keys'])
            assert b['data_weak'].shape == (4, 1, 32, 32) and torch.isfinite(b['data_strong']).all()
    finally:
        monkeypatch.undo()
    assert seen <= set(split['unlabeled'])
    assert any(p.endswith('.b2nd') for p in opened), 'the spy saw nothing: test is broken'
    assert not [p for p in opened if '_seg' in p or p.endswith('.pkl')], opened


def test_no_label_access_synthetic_labeled_folder(tmp_path, monkeypatch):
    """A labeled-style folder written with nnU-Net's writer (real labels in _seg, class_locations in the pkl);
    half of it is hidden by a split's 'unlabeled' list."""
    pre = str(tmp_path / 'Dataset456_Hidden')
    rng = np.random.default_rng(3)
    ids = [f'p{i:02d}' for i in range(6)]
    for i in ids:
        img = _structured_image(rng, 1, 2, 40, 40)
        seg = (img > 3).astype(np.int16)
        _write_case(os.path.join(pre, 'nnUNetPlans_2d'), i, img, seg, {'class_locations': {1: np.argwhere(seg)}})
    _assert_loader_never_touches_labels(pre, {'train': ids[:2], 'val': ids[2:3], 'unlabeled': ids[3:]}, monkeypatch)


def test_no_label_access_on_copy_of_real_dataset991(simulated_scarcity_dataset, tmp_path, monkeypatch):
    """Same on a copy of the real preprocessed Dataset991 (the fixture shared with other test modules)."""
    src = os.path.join(simulated_scarcity_dataset['preprocessed'], simulated_scarcity_dataset['name'])
    dst = str(tmp_path / simulated_scarcity_dataset['name'])
    shutil.copytree(os.path.join(src, 'nnUNetPlans_2d'), os.path.join(dst, 'nnUNetPlans_2d'))
    ids = sorted(nnUNetDatasetBlosc2.get_identifiers(os.path.join(dst, 'nnUNetPlans_2d')))
    _assert_loader_never_touches_labels(dst, {'train': ids[:3], 'val': ids[3:5], 'unlabeled': ids[5:]},
                                        monkeypatch)


# ---------------------------------------------------------------------------------------------- workers


class _PidLoader(nnUNetUnlabeledDataLoader):
    def generate_train_batch(self):
        b = super().generate_train_batch()
        b['pid'] = os.getpid()
        return b


def test_two_workers_draw_different_torch_decisions(tmp_path):
    """Strong = brightness with p=0.5 (RandomTransform decides with torch.rand) on constant images, no geometry:
    the pattern 'sample changed or not' is a pure torch decision stream. Without per-worker torch seeding both
    forked workers would produce the same pattern for their first batch."""
    folder = str(tmp_path / 'const')
    _write_case(folder, 'one', np.ones((1, 1, 16, 16), np.float32))
    ds = UnlabeledImageDataset({'one': folder})
    cfg = StrongIntensityConfig.off()
    cfg.p_brightness, cfg.brightness_range = 0.5, (0.5, 0.6)
    _, weak, strong = build_unlabeled_transforms((16, 16), ROT_2D, None, False, cfg)
    torch.manual_seed(1234)  # parent state, inherited by both forks
    aug = make_unlabeled_augmenter(_PidLoader(ds, 32, (16, 16), (16, 16), None, weak, strong), 2)
    first = {}
    try:
        for _ in range(40):
            b = next(aug)
            first.setdefault(b['pid'], (b['data_strong'] != b['data_weak']).flatten(1).any(1))
            if len(first) == 2:
                break
    finally:
        aug._finish()
    assert len(first) == 2, 'did not get batches from two workers'
    p1, p2 = first.values()
    assert 0 < int(p1.sum()) < 32 and 0 < int(p2.sum()) < 32
    assert not torch.equal(p1, p2)


def test_default_num_processes(monkeypatch):
    monkeypatch.setenv('nnUNet_n_proc_DA', '0')
    assert default_unlabeled_num_processes() == 0
    monkeypatch.setenv('nnUNet_n_proc_DA', '1')
    assert default_unlabeled_num_processes() == 1
    monkeypatch.setenv('nnUNet_n_proc_DA', str(min(8, os.cpu_count())))
    assert default_unlabeled_num_processes() == max(1, min(8, os.cpu_count()) // 2)


# ---------------------------------------------------------------------------------------------- resolution errors


@pytest.fixture
def layout(tmp_path):
    """Dataset123_T/nnUNetPlans_2d with a, b, c (+ _seg, pkl); sibling ..._unlabeled with u1, u2."""
    pre = tmp_path / 'Dataset123_T'
    lab = pre / 'nnUNetPlans_2d'
    lab.mkdir(parents=True)
    for i in 'abc':
        for suffix in ('.b2nd', '_seg.b2nd', '.pkl'):
            (lab / (i + suffix)).touch()
    return str(pre)


def _make_sibling(pre, ids):
    sib = unlabeled_preprocessed_folder(pre, 'nnUNetPlans_2d')
    os.makedirs(sib, exist_ok=True)
    for i in ids:
        for suffix in ('.b2nd', '_seg.b2nd', '.pkl'):
            open(os.path.join(sib, i + suffix), 'w').close()
    open(os.path.join(sib, 'mona_unlabeled_manifest.json'), 'w').close()
    return sib


def test_resolve_combines_sources(layout):
    sib = _make_sibling(layout, ['u2', 'u1'])
    cases = resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'val': ['b'], 'unlabeled': ['c']},
                                    ['a', 'b'])
    assert cases == {'c': os.path.join(layout, 'nnUNetPlans_2d'), 'u1': sib, 'u2': sib}
    assert resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', None, ['a', 'b', 'c']) == {'u1': sib, 'u2': sib}


def test_resolve_errors(layout):
    with pytest.raises(RuntimeError, match=r'No unlabeled case.*nnUNetv2_mona_preprocess_unlabeled -d 123 -c 2d'):
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a', 'b'], 'val': ['c']}, ['a', 'b', 'c'])
    with pytest.raises(RuntimeError, match=r"\['b'\].*unlabeled AND used with labels.*nnUNetv2_mona_make_splits"):
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'val': ['b'], 'unlabeled': ['b']},
                                ['a', 'b'])
    with pytest.raises(RuntimeError, match=r"no image.*'zzz'"):
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'val': ['b'], 'unlabeled': ['zzz']},
                                ['a', 'b'])
    with pytest.raises(RuntimeError, match=r'more than once'):
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'unlabeled': ['c', 'c']}, ['a'])
    _make_sibling(layout, ['c', 'u1'])
    with pytest.raises(RuntimeError, match=r"\['c'\].*both in the split's 'unlabeled' list"):
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'unlabeled': ['c']}, ['a'])
    with pytest.raises(RuntimeError, match=r"\['c'\].*unlabeled AND used with labels"):  # sibling case in val
        resolve_unlabeled_cases(layout, 'nnUNetPlans_2d', {'train': ['a'], 'val': ['c']}, ['a', 'c'])


def test_dataset_requires_image_files(tmp_path):
    with pytest.raises(RuntimeError, match='missing'):
        UnlabeledImageDataset({'nope': str(tmp_path)})
