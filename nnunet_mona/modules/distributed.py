"""The few collective operations the semi-supervised trainers need under nnU-Net's DDP.

All functions are no-ops (or identities) when torch.distributed is not initialised, so the
single-process path stays the same code.
"""
from typing import List, Sequence

import torch
from torch import distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_share(case_ids: Sequence[str], rank: int, world_size: int) -> List[str]:
    """This rank's part of the unlabeled pool: every ``world_size``-th case of the sorted ids.
    Parts are disjoint and cover the pool; a pool smaller than the world is shared whole."""
    ids = sorted(case_ids)
    if world_size <= 1 or len(ids) < world_size:
        return ids
    return ids[rank::world_size]


@torch.no_grad()
def broadcast_module_(module: nn.Module, src: int = 0) -> None:
    """Make parameters and buffers of ``module`` equal to rank ``src``'s (in place)."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=src)


def average_gradients_(module: nn.Module) -> None:
    """All-reduce (mean) the gradients of a module that DDP does not wrap (projection heads)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


@torch.no_grad()
def all_gather_concat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate (along dim 0) tensors of possibly different lengths from all ranks, in rank order.

    Used for memory-bank keys: every rank enqueues the same keys, so banks stay identical.
    Shapes: x (N_r, *F) on each rank -> (sum_r N_r, *F) on every rank.
    """
    if not is_distributed():
        return x
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    max_n = max(sizes)
    padded = x.new_zeros((max_n, *x.shape[1:]))
    padded[:x.shape[0]] = x
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:s] for g, s in zip(gathered, sizes)], dim=0)
