"""Relational instance discrimination (MONA stage-1 pre-training, method_spec A.2 steps 3-4, E.1(c), E.13).

Global and local terms share one loss: the similarity distribution of the teacher embedding over
a queue of past teacher embeddings (sharp, tau_t) is the target for the student's distribution
(tau_s): KL(softmax(cos(k, Q) / tau_t) || softmax(cos(q, Q) / tau_s)), summed over queue entries
and averaged over rows ("batchmean"). The teacher side is detached (the official code lets the
gradient reach its teacher heads; method_spec A.2 oddity (i)).

Local term, intended version: one vector per window of a dense map (`window_embeddings`), not the
code's 49-value chunks of a mis-reshaped tensor.
"""
from typing import Sequence, Union

import torch
import torch.nn.functional as F


def relational_kl_loss(student_q: torch.Tensor, teacher_k: torch.Tensor, queue: torch.Tensor,
                       tau_s: float = 0.1, tau_t: float = 0.01) -> torch.Tensor:
    """Scalar fp32 >= 0; 0 (graph intact) for an empty queue.

    Args:
        student_q: (B, D) student embeddings (after the predictor), receive the gradient.
        teacher_k: (B, D) teacher embeddings, detached.
        queue: (K, D) past teacher embeddings (e.g. ``FeatureQueue.features``), detached.
        tau_s, tau_t: student / teacher temperatures (paper 0.1 / 0.01; code default 0.1 / 0.1).
    """
    if queue.shape[0] == 0:
        return student_q.float().sum() * 0.0
    bank = F.normalize(queue.detach().float().to(student_q.device), dim=1)
    q = F.normalize(student_q.float(), dim=1)
    k = F.normalize(teacher_k.detach().float(), dim=1)
    log_p_student = F.log_softmax(q @ bank.T / tau_s, dim=1)
    log_p_teacher = F.log_softmax(k @ bank.T / tau_t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def _tuple(v: Union[int, Sequence[int]], n: int):
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * n


def window_embeddings(x: torch.Tensor, window: Union[int, Sequence[int]], stride: Union[int, Sequence[int]],
                      pool: int = 8) -> torch.Tensor:
    """One vector per sliding window: (B, C, H, W) -> (B * nW, C * pool * pool) (3D: (B, C, D, H, W), pool^3).

    Windows of size ``window`` taken every ``stride`` pixels (no padding; a remainder at the border
    is not covered), each adaptive-average-pooled to pool x pool and flattened (channel-major).
    Row r = b * nW + w, windows w in raster order. MONA: 64/32 px windows on 256^2 logits, pool 8.
    """
    nd = x.dim() - 2
    if nd not in (2, 3):
        raise ValueError(f"expected a 2D or 3D map (B, C, *S), got {tuple(x.shape)}")
    window, stride = _tuple(window, nd), _tuple(stride, nd)
    if any(w > s for w, s in zip(window, x.shape[2:])):
        raise ValueError(f"window {window} larger than the map {tuple(x.shape[2:])}")
    b, c = x.shape[:2]
    for d in range(nd):  # -> (B, C, n_1, ..., n_nd, w_1, ..., w_nd)
        x = x.unfold(2 + d, window[d], stride[d])
    order = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]  # (B, n..., C, w...)
    x = x.permute(order).reshape(-1, c, *window)
    pooled = F.adaptive_avg_pool2d(x, pool) if nd == 2 else F.adaptive_avg_pool3d(x, pool)
    return pooled.flatten(1)
