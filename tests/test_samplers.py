"""Index samplers (NS / SG / SAG): exact counts, range, per-stratum quotas, antithetic reflections."""
import pytest
import torch

from nnunet_mona.losses.samplers import (antithetic_sample, get_sampler, stratified_sample, stratum_bounds,
                                         uniform_sample)

ALL = [uniform_sample, stratified_sample, antithetic_sample]


@pytest.mark.parametrize("sampler", ALL)
@pytest.mark.parametrize("n_candidates,n", [(50000, 256), (1000, 250), (10, 256), (1, 7), (5, 1), (17, 33),
                                            (3, 0)])
def test_exactly_n_long_indices_in_range(sampler, n_candidates, n):
    idx = sampler(n_candidates, n, generator=torch.Generator().manual_seed(1))
    assert idx.dtype == torch.long and idx.shape == (n,)
    if n:
        assert int(idx.min()) >= 0 and int(idx.max()) < n_candidates


@pytest.mark.parametrize("sampler", ALL)
def test_empty_candidate_set(sampler):
    assert sampler(0, 0).numel() == 0
    with pytest.raises(ValueError):
        sampler(0, 5)


@pytest.mark.parametrize("sampler", ALL)
def test_generator_makes_draws_reproducible(sampler):
    a = sampler(1000, 64, generator=torch.Generator().manual_seed(3))
    b = sampler(1000, 64, generator=torch.Generator().manual_seed(3))
    c = sampler(1000, 64, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def stratum_counts(idx, n_candidates, num_strata=16):
    lo, hi = stratum_bounds(n_candidates, num_strata)
    return torch.bucketize(idx, hi, right=True).bincount(minlength=lo.numel())


def test_stratum_bounds_cover_the_range_in_equal_blocks():
    lo, hi = stratum_bounds(1003, 16)
    assert lo[0] == 0 and hi[-1] == 1003 and torch.equal(lo[1:], hi[:-1])
    assert int((hi - lo).max() - (hi - lo).min()) <= 1
    lo, hi = stratum_bounds(5, 16)  # fewer candidates than strata: one candidate per stratum
    assert lo.tolist() == [0, 1, 2, 3, 4] and hi.tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("sampler", [stratified_sample, antithetic_sample])
def test_each_stratum_gets_its_quota(sampler):
    idx = sampler(50000, 256, generator=torch.Generator().manual_seed(0))
    assert stratum_counts(idx, 50000).tolist() == [16] * 16  # as in method_spec A.8
    idx = sampler(1000, 250, generator=torch.Generator().manual_seed(0))  # 250 = 16 * 15 + 10
    counts = stratum_counts(idx, 1000)
    assert counts.sum() == 250 and set(counts.tolist()) == {15, 16} and int((counts == 16).sum()) == 10


def test_uniform_sampler_does_not_stratify():
    """Sanity check that the stratum test can fail: uniform draws rarely hit every quota exactly."""
    idx = uniform_sample(50000, 256, generator=torch.Generator().manual_seed(0))
    assert stratum_counts(idx, 50000).tolist() != [16] * 16


@pytest.mark.parametrize("n_candidates,n", [(1000, 256), (1003, 250), (40, 23)])
def test_antithetic_pairs_reflect_through_the_stratum_centre(n_candidates, n):
    idx = antithetic_sample(n_candidates, n, generator=torch.Generator().manual_seed(2), shuffle=False)
    lo, hi = stratum_bounds(n_candidates)
    stratum = torch.bucketize(idx, hi, right=True)
    assert torch.all(stratum[1:] >= stratum[:-1])  # unshuffled: block by block
    for s in range(lo.numel()):
        block = idx[stratum == s]
        pairs = block[: 2 * (block.numel() // 2)].view(-1, 2)
        # point + reflection = lo + hi - 1, i.e. symmetric about the block centre (lo + hi - 1) / 2
        assert torch.all(pairs.sum(1) == lo[s] + hi[s] - 1)


def test_get_sampler_names():
    assert get_sampler("uniform") is uniform_sample
    assert get_sampler("stratified") is stratified_sample and get_sampler("SG") is stratified_sample
    assert get_sampler("antithetic") is antithetic_sample and get_sampler("asmc") is antithetic_sample
    with pytest.raises(ValueError):
        get_sampler("importance")
