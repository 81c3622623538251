"""FIFO memories of embeddings: one queue (`FeatureQueue`) and one queue per class (`ClassMemoryBank`).

MONA keeps several first-in-first-out memories of past *teacher* embeddings (method_spec A.2-3,
A.3.3(4)-(5)): a K = 36 queue for relational instance discrimination and the nearest-neighbour
loss, and one bank per class (30000 entries, background 50000) for the anatomical contrast.

Everything is stored in registered buffers, so ``.to(device)`` moves the memory and
``state_dict`` / ``load_state_dict`` restore contents, write pointer and fill level exactly
(needed for nnU-Net's ``--c`` resume). Stored values are detached copies; optional fp16
storage halves the memory (values are cast on the way in, returned in the storage dtype).
"""
from typing import List, Optional, Sequence, Union

import torch
from torch import nn


class FeatureQueue(nn.Module):
    """Ring buffer of at most ``capacity`` embeddings of dimension ``dim``; the oldest are dropped first.

    Args:
        dim: embedding dimension D.
        capacity: maximum number of stored rows K (>= 1).
        store_fp16: store rows as float16 instead of float32.

    Buffers (all persistent): ``storage`` (K, D), ``pointer`` () long = next row to overwrite,
    ``num_filled`` () long = number of valid rows (<= K).
    """

    def __init__(self, dim: int, capacity: int, store_fp16: bool = False):
        super().__init__()
        if dim < 1 or capacity < 1:
            raise ValueError(f"dim and capacity must be >= 1, got dim={dim}, capacity={capacity}")
        self.dim = int(dim)
        self.capacity = int(capacity)
        dtype = torch.float16 if store_fp16 else torch.float32
        self.register_buffer("storage", torch.zeros(self.capacity, self.dim, dtype=dtype))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.num_filled)

    @property
    def is_full(self) -> bool:
        return len(self) == self.capacity

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Append rows ``x`` (N, D) (any float dtype/device; detached and cast to the storage).

        If N > capacity only the last ``capacity`` rows are kept. N == 0 is a no-op.
        """
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (N, {self.dim}) embeddings, got {tuple(x.shape)}")
        n_total = x.shape[0]
        if n_total == 0:
            return
        x = x.detach()[-self.capacity:].to(device=self.storage.device, dtype=self.storage.dtype)
        n = x.shape[0]
        start = (int(self.pointer) + n_total - n) % self.capacity  # skipped rows still advance the pointer
        rows = (start + torch.arange(n, device=self.storage.device)) % self.capacity
        self.storage[rows] = x
        self.pointer.fill_((int(self.pointer) + n_total) % self.capacity)
        self.num_filled.fill_(min(self.capacity, int(self.num_filled) + n_total))

    @property
    def features(self) -> torch.Tensor:
        """Stored rows (n_filled, D) in insertion order (oldest first), storage dtype, no grad."""
        n = len(self)
        if n < self.capacity:
            return self.storage[:n]
        p = int(self.pointer)
        return torch.cat([self.storage[p:], self.storage[:p]], dim=0)

    @torch.no_grad()
    def reset(self) -> None:
        self.storage.zero_()
        self.pointer.zero_()
        self.num_filled.zero_()


class ClassMemoryBank(nn.Module):
    """One `FeatureQueue` per class; ``bank.get(c)`` holds past embeddings *of* class c.

    Args:
        num_classes: C (background = class 0 included).
        dim: embedding dimension D.
        capacity: rows per class, an int or one int per class (MONA: 30000).
        background_capacity: if ``capacity`` is an int, class 0 gets this capacity instead
            (MONA: 50000); None = same as the others. Ignored when ``capacity`` is a sequence.
        store_fp16: store as float16 (recommended on GPU for the MONA sizes).
    """

    def __init__(self, num_classes: int, dim: int, capacity: Union[int, Sequence[int]] = 30000,
                 background_capacity: Optional[int] = 50000, store_fp16: bool = False):
        super().__init__()
        if isinstance(capacity, int):
            capacities = [capacity] * num_classes
            if background_capacity is not None and num_classes > 0:
                capacities[0] = background_capacity
        else:
            capacities = [int(c) for c in capacity]
            if len(capacities) != num_classes:
                raise ValueError(f"{len(capacities)} capacities given for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.queues = nn.ModuleList([FeatureQueue(dim, k, store_fp16) for k in capacities])

    @property
    def capacities(self) -> List[int]:
        return [q.capacity for q in self.queues]

    def sizes(self) -> List[int]:
        """Number of stored rows per class."""
        return [len(q) for q in self.queues]

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``features`` (N, D) to the queues of their ``labels`` (N,) long.

        Labels < 0 (ignore) are skipped; labels >= num_classes raise ValueError.
        Within a class the row order of ``features`` is kept.
        """
        labels = labels.reshape(-1)
        if features.dim() != 2 or features.shape[0] != labels.shape[0]:
            raise ValueError(f"features (N, D) and labels (N,) expected, got {tuple(features.shape)} "
                             f"and {tuple(labels.shape)}")
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} >= num_classes {self.num_classes}")
        for c in torch.unique(labels[labels >= 0]).tolist():
            self.queues[c].enqueue(features[labels == c])

    def get(self, c: int) -> torch.Tensor:
        """Stored embeddings of class ``c``: (n_c, D), oldest first, storage dtype."""
        return self.queues[c].features

    @torch.no_grad()
    def reset(self) -> None:
        for q in self.queues:
            q.reset()
