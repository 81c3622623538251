"""Distributed pieces on CPU with the gloo backend and 2 processes.

nnU-Net's own DDP launcher needs CUDA (it calls torch.cuda.set_device), so this tests what our
trainers add under DDP: teachers identical across ranks, heads kept in sync, memory-bank keys
gathered from all ranks, and the unlabeled pool split across ranks.
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_mona.modules.distributed import (all_gather_concat, average_gradients_, broadcast_module_,
                                             is_distributed, rank_share)
from nnunet_mona.modules.ema_teacher import EMATeacher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_file):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # ranks start from different weights, as before DDP's broadcast
    student = DDP(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv2d(4, 3, 1)))
    head = nn.Conv2d(3, 8, 1)
    broadcast_module_(head)
    teacher = EMATeacher(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(), nn.Conv2d(4, 3, 1)),
                         student, decay=0.9)
    opt = torch.optim.SGD(list(student.parameters()) + list(head.parameters()), lr=0.1)
    for step in range(3):
        x = torch.randn(2, 1, 8, 8) * (rank + 1)  # different data on every rank
        loss = head(student(x)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        average_gradients_(head)
        opt.step()
        teacher.update(student)
    keys = all_gather_concat(torch.full((rank + 1, 2), float(rank)))
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    torch.save({"teacher": flat(teacher.model), "head": flat(head), "keys": keys,
                "distributed": is_distributed()}, f"{result_file}.{rank}")
    # teardown: both ranks done with every collective, and DDP's reducer gone, before the group is destroyed
    # (a fresh-clone suite once aborted here: "terminate called without an active exception", SIGABRT in rank 0)
    dist.barrier()
    del student
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_teacher_heads_and_banks_stay_identical_across_ranks(tmp_path):
    world = 2
    result = str(tmp_path / "rank")
    mp.spawn(_worker, args=(world, _free_port(), result), nprocs=world, join=True)
    r0, r1 = (torch.load(f"{result}.{r}") for r in range(world))
    assert r0["distributed"] and r1["distributed"]
    assert torch.equal(r0["teacher"], r1["teacher"])
    assert torch.equal(r0["head"], r1["head"])
    # keys of both ranks, in rank order, on every rank (rank 0 gave 1 row, rank 1 gave 2 rows)
    expected = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(r0["keys"], expected) and torch.equal(r1["keys"], expected)


def test_rank_share_partitions_the_pool():
    ids = [f"case{i:02d}" for i in range(11)]
    parts = [rank_share(ids, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert rank_share(ids[:2], 1, 4) == ids[:2]  # tiny pool: shared whole rather than empty
    assert rank_share(ids, 0, 1) == sorted(ids)


def test_collectives_are_identities_without_distributed():
    x = torch.randn(3, 2)
    assert torch.equal(all_gather_concat(x), x)
    m = nn.Linear(2, 2)
    before = [p.clone() for p in m.parameters()]
    broadcast_module_(m)
    m(x).sum().backward()
    grads = [p.grad.clone() for p in m.parameters()]
    average_gradients_(m)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, m.parameters()))
