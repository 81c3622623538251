"""ACTION's active hard sampling for the anatomical contrast (method_spec B.1 (iii), B.3).

Two options of `anatomical_contrast_loss` (which calls these helpers; MONA's default path uses
neither):

* hard queries: among a class's anchor candidates keep only the pixels whose probability for
  their own (pseudo-)label is below ``threshold`` (ACTION theta_s = 0.97; the official code uses
  the *student* probability). If no candidate is hard, all candidates are kept (fallback,
  reported) so that a class the model already segments confidently still gets its anchors;
* hard negatives: for query class c the class v != c of each negative is drawn from the
  class-relation distribution softmax_v(cos(proto_c, proto_v) / temperature) over the classes
  that have negatives, then one negative embedding of class v is drawn inside v's pool (memory
  bank rows of v and/or current-batch pixels of v). Confusable classes are drawn more often.
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F


def select_hard_queries(candidates: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                        threshold: float) -> Tuple[torch.Tensor, bool]:
    """Hard anchors among ``candidates``.

    Args:
        candidates: (n,) long flat pixel indices (anchor candidates of one class).
        labels: (N,) long (pseudo-)labels of all pixels; probs: (N, C) probabilities (detached).
        threshold: keep candidates i with probs[i, labels[i]] < threshold.
    Returns (kept (m,) long, fell_back): ``fell_back`` is True when no candidate was hard and all
    ``candidates`` are returned unchanged.
    """
    if candidates.numel() == 0:
        return candidates, False
    own = probs[candidates, labels[candidates].long()]
    hard = candidates[own < threshold]
    if hard.numel() == 0:
        return candidates, True
    return hard, False


def class_relation_probabilities(prototypes: torch.Tensor, available: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """Class-relation distributions (ACTION's graph G[p, q] = cos(proto_p, proto_q), row-softmaxed).

    Args:
        prototypes: (C, D) one prototype (mean embedding) per class; rows of unavailable classes are ignored.
        available: (C,) bool, classes that can be drawn as negatives.
        temperature: tau_rel of the softmax (ACTION code: 0.5).
    Returns (C, C) float32: row c = softmax over available v != c of cos(p_c, p_v) / temperature,
    zero elsewhere; a row with no available v is all zero.
    """
    p = F.normalize(prototypes.detach().float(), dim=1)
    logits = p @ p.T / temperature
    c = prototypes.shape[0]
    allowed = available.bool().to(p.device)[None, :] & ~torch.eye(c, dtype=torch.bool, device=p.device)
    logits = logits.masked_fill(~allowed, float("-inf"))
    rows = torch.softmax(logits, dim=1)
    return torch.where(allowed.any(1, keepdim=True), rows, torch.zeros_like(rows))


def sample_negative_classes(class_probs: torch.Tensor, n: int,
                            generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(C,) probabilities (sum 1) -> (n,) long class ids drawn i.i.d. with replacement."""
    gdev = generator.device if generator is not None else class_probs.device
    return torch.multinomial(class_probs.float().to(gdev), n, replacement=True, generator=generator)


def draw_within_classes(classes: torch.Tensor, pool_sizes: dict, draw: Callable[..., torch.Tensor],
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """For every slot i, an index in [0, pool_sizes[classes[i]]) drawn with ``draw`` (a sampler of
    `nnunet_mona.losses.samplers`), one call per class. classes: (n,) long -> (n,) long."""
    local = torch.empty_like(classes)
    for v in torch.unique(classes).tolist():
        slots = classes == v
        local[slots] = draw(int(pool_sizes[v]), int(slots.sum()), generator=generator).to(classes.device)
    return local
