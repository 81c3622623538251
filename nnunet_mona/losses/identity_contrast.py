"""Identity consistency of MixCL (method_spec C, design hypothesis (a)): instance InfoNCE.

Two views of the same image share an identity. For query i (student embedding of view 1 of image
i) the positive is key i (teacher embedding of view 2 of the same image); the negatives are the
keys of the OTHER images of the batch plus a queue of past keys (MoCo-style ``FeatureQueue``).

    L = mean_i  -log  exp(q_i.k_i / tau) / (sum_j exp(q_i.k_j / tau) + sum_m exp(q_i.Q_m / tau))

with L2-normalised q, k, Q (cosine similarity). Choices (MixCL's formula is not public):

* keys come from the teacher side and are detached here: only the query (student + its heads)
  receives gradient;
* ``exclude`` removes batch keys that must not act as negatives (e.g. another patch or slice of
  the same case: a false negative); the diagonal (positive) is never excluded;
* an empty queue and B = 1 give a zero loss (only the positive is left), graph intact;
* default tau = 0.2 (MoCo v2).
"""
from typing import Optional

import torch
import torch.nn.functional as F


def identity_info_nce(query: torch.Tensor, key: torch.Tensor, queue: Optional[torch.Tensor] = None,
                      temperature: float = 0.2, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scalar fp32 >= 0.

    Args:
        query: (B, D) student embeddings of one view (gradient flows here).
        key: (B, D) embeddings of the other view, row i = same image as query row i (detached).
        queue: (K, D) past keys used as extra negatives (detached), or None / empty.
        temperature: tau.
        exclude: (B, B) bool, True where key j is NOT a negative for query i (diagonal ignored).
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"query and key must both be (B, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.detach().float().to(q.device), dim=1)
    logits = q @ k.T / temperature  # (B, B), positives on the diagonal
    if exclude is not None:
        off_diagonal = exclude.to(q.device).bool() & ~torch.eye(len(q), dtype=torch.bool, device=q.device)
        logits = logits.masked_fill(off_diagonal, float("-inf"))
    if queue is not None and queue.shape[0] > 0:
        bank = F.normalize(queue.detach().float().to(q.device), dim=1)
        logits = torch.cat((logits, q @ bank.T / temperature), dim=1)  # (B, B + K)
    target = torch.arange(len(q), device=q.device)
    return F.cross_entropy(logits, target)


def same_case_matrix(case_ids) -> torch.Tensor:
    """(B, B) bool, True where two batch entries come from the same case id (for ``exclude``)."""
    ids = list(case_ids)
    return torch.tensor([[a == b for b in ids] for a in ids], dtype=torch.bool)
