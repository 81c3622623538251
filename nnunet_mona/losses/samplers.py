"""Index samplers for anchors and negatives (MONA / ARCO: NS, SG, SAG; method_spec A.3.3(4)).

Every sampler draws ``n`` indices into a 1-D list of ``n_candidates`` candidates (the masked
pixels in raster order, or a memory bank in insertion order) and returns a LongTensor of shape
(n,) with values in [0, n_candidates), drawn with replacement (so n may exceed n_candidates).

* ``uniform_sample`` (NS, code ``rand``): i.i.d. uniform.
* ``stratified_sample`` (SG, code ``smc``): the index range is cut into k = min(num_strata, N)
  contiguous, (almost) equal blocks; each block gets the quota n // k, and n % k randomly
  chosen blocks get one more; inside a block indices are uniform. Strata are blocks of the
  candidate list (as coded), not spatial grid cells (as ARCO describes).
* ``antithetic_sample`` (SAG, code ``asmc``): as SG, but in each block ceil(quota / 2)
  uniform draws p plus their reflections lo + hi - 1 - p through the block centre, truncated
  to the quota (for an odd quota the last reflection is dropped).

Edge cases: n == 0 returns an empty tensor; n > 0 with n_candidates == 0 raises ValueError.
``shuffle=False`` keeps the stratified output ordered block by block (antithetic: pairs
interleaved as p, reflection(p)) — useful for inspection; the default shuffles.
"""
from typing import Callable, Optional

import torch


def _check(n_candidates: int, n: int) -> None:
    if n < 0 or n_candidates < 0:
        raise ValueError(f"n and n_candidates must be >= 0, got n={n}, n_candidates={n_candidates}")
    if n > 0 and n_candidates == 0:
        raise ValueError(f"cannot draw {n} samples from an empty candidate set")


def _gen_device(generator: Optional[torch.Generator], device) -> torch.device:
    return generator.device if generator is not None else torch.device(device or "cpu")


def uniform_sample(n_candidates: int, n: int, generator: Optional[torch.Generator] = None,
                   device=None) -> torch.Tensor:
    """n i.i.d. uniform indices in [0, n_candidates), LongTensor (n,) on ``device``."""
    _check(n_candidates, n)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    idx = torch.randint(n_candidates, (n,), generator=generator, device=_gen_device(generator, device))
    return idx.to(device) if device is not None else idx


def stratum_bounds(n_candidates: int, num_strata: int = 16):
    """(lo, hi) LongTensors of k = min(num_strata, N) contiguous blocks covering [0, N); sizes differ by <= 1."""
    k = max(1, min(int(num_strata), int(n_candidates)))
    edges = (torch.arange(k + 1, dtype=torch.long) * n_candidates) // k
    return edges[:-1], edges[1:]


def _stratum_quotas(n: int, k: int, generator, gen_device) -> torch.Tensor:
    quotas = torch.full((k,), n // k, dtype=torch.long, device=gen_device)
    extra = n % k
    if extra:
        quotas[torch.randperm(k, generator=generator, device=gen_device)[:extra]] += 1
    return quotas


def _uniform_in_blocks(lo: torch.Tensor, hi: torch.Tensor, generator, gen_device) -> torch.Tensor:
    u = torch.rand(lo.shape, generator=generator, device=gen_device, dtype=torch.float64)
    return torch.minimum(lo + (u * (hi - lo)).long(), hi - 1)


def _finish(idx: torch.Tensor, shuffle: bool, generator, gen_device, device) -> torch.Tensor:
    if shuffle:
        idx = idx[torch.randperm(idx.numel(), generator=generator, device=gen_device)]
    return idx.to(device) if device is not None else idx


def stratified_sample(n_candidates: int, n: int, generator: Optional[torch.Generator] = None, device=None,
                      num_strata: int = 16, shuffle: bool = True) -> torch.Tensor:
    """SG: n indices, quota n // k (+1 for n % k random blocks) uniform inside each of k blocks. (n,) long."""
    _check(n_candidates, n)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    gdev = _gen_device(generator, device)
    lo, hi = (t.to(gdev) for t in stratum_bounds(n_candidates, num_strata))
    quotas = _stratum_quotas(n, lo.numel(), generator, gdev)
    idx = _uniform_in_blocks(lo.repeat_interleave(quotas), hi.repeat_interleave(quotas), generator, gdev)
    return _finish(idx, shuffle, generator, gdev, device)


def antithetic_sample(n_candidates: int, n: int, generator: Optional[torch.Generator] = None, device=None,
                      num_strata: int = 16, shuffle: bool = True) -> torch.Tensor:
    """SAG: per block ceil(quota/2) uniform draws p and reflections lo + hi - 1 - p, truncated to the quota."""
    _check(n_candidates, n)
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    gdev = _gen_device(generator, device)
    lo, hi = (t.to(gdev) for t in stratum_bounds(n_candidates, num_strata))
    quotas = _stratum_quotas(n, lo.numel(), generator, gdev)
    halves = (quotas + 1) // 2
    lo_rep, hi_rep = lo.repeat_interleave(halves), hi.repeat_interleave(halves)
    draws = _uniform_in_blocks(lo_rep, hi_rep, generator, gdev)
    pairs = torch.stack([draws, lo_rep + hi_rep - 1 - draws], dim=1).reshape(-1)  # p0, r0, p1, r1, ...
    # drop the surplus reflection of each block with an odd quota (it is the last element of that block)
    keep = torch.ones_like(pairs, dtype=torch.bool)
    block_end = torch.cumsum(2 * halves, 0) - 1
    keep[block_end[quotas % 2 == 1]] = False
    return _finish(pairs[keep], shuffle, generator, gdev, device)


SAMPLERS = {"uniform": uniform_sample, "stratified": stratified_sample, "antithetic": antithetic_sample}
_ALIASES = {"rand": "uniform", "ns": "uniform", "smc": "stratified", "sg": "stratified",
            "asmc": "antithetic", "sag": "antithetic"}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """'uniform' | 'stratified' | 'antithetic' (aliases: rand/NS, smc/SG, asmc/SAG).

    All returned callables accept (n_candidates, n, generator=None, device=None).
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}")
    return SAMPLERS[key]
