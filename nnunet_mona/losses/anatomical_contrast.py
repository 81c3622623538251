"""Tail-aware anatomical (pixel) contrastive loss of MONA fine-tuning, paper-intended version.

Method_spec A.3.3(4), A.7, E.1(a), E.11. For every class c present with reliable pixels:

* anchors (queries): ``num_queries`` student embeddings drawn (with replacement) from the
  reliable pixels labelled c whose teacher probability for c exceeds ``positive_threshold``.
  The number is fixed per class, so a class with 5 pixels weighs as much as the background
  ("tail-aware", class-balanced);
* positive: the prototype of c = mean *teacher* embedding of the reliable pixels labelled c;
* negatives: ``num_negatives`` per anchor, embeddings of OTHER classes: the memory banks of all
  classes c' != c, plus current-batch teacher embeddings of unreliable pixels labelled c' != c
  whose teacher probability for c is < ``negative_threshold`` (U2PL intent; the official code
  instead uses same-class pixels — method_spec A.5.7 — which is not reproduced here);
* InfoNCE over [positive, negatives] with cosine similarity / ``temperature``.

The loss is the mean over classes that have anchors and at least one negative. With fewer than
two classes having anchors it is ``student_emb.sum() * 0`` (zero, graph intact). Gradient flows
only into ``student_emb``; teacher embeddings, probabilities, banks are detached.

The function returns what to enqueue (it never modifies the bank): detached teacher embeddings of
the unreliable valid pixels whose probability for every class other than their label is
< ``negative_threshold`` (so they are safe negatives for every other class), at most
``max_keys_per_class`` per class chosen at random. The trainer enqueues them after the step.
Labeled pixels: pass reliable = unreliable = all valid pixels (as MONA does), so every step
stores ground-truth-labelled keys of every class present.

ACTION options (method_spec B.3; helpers in `hard_sampling`), both off by default so MONA's path
(and its random draws) is unchanged:

* ``hard_query_threshold``: anchors only among candidates whose ``query_probs`` (default: the
  teacher probabilities; ACTION passes the student's) for their label is below the threshold
  (theta_s 0.97); a class with no hard candidate keeps all its candidates (fallback, reported in
  ``diagnostics['hard_query_fallback']``);
* ``class_relation_temperature``: hard negatives. The negative pool of class c (the same pixels
  and bank rows as MONA's) is split by class v; each of the ``num_negatives`` slots first draws
  v ~ softmax_v(cos(proto_c, proto_v) / temperature) over the classes v != c with a non-empty pool,
  then a negative of class v with ``sampler``. proto_v = the positive prototype of v (mean teacher
  embedding of its reliable pixels) or, for a class without anchors, the mean of its pool.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from nnunet_mona.losses.hard_sampling import (class_relation_probabilities, draw_within_classes,
                                              sample_negative_classes, select_hard_queries)
from nnunet_mona.losses.samplers import get_sampler


def flatten_channel_map(x: torch.Tensor) -> torch.Tensor:
    """(B, K, *S) -> (N, K) with N = B * prod(S); pixel order = batch, then raster."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def flatten_pixel_map(x: torch.Tensor) -> torch.Tensor:
    """(B, *S) -> (N,) in the same pixel order as `flatten_channel_map`."""
    return x.reshape(-1)


def _as_flat(student_emb, teacher_emb, labels, teacher_probs, reliable_mask, unreliable_mask):
    if student_emb.dim() > 2:  # dense maps
        return (flatten_channel_map(student_emb), flatten_channel_map(teacher_emb), flatten_pixel_map(labels),
                flatten_channel_map(teacher_probs), flatten_pixel_map(reliable_mask),
                flatten_pixel_map(unreliable_mask))
    return student_emb, teacher_emb, labels.reshape(-1), teacher_probs, reliable_mask.reshape(-1), \
        unreliable_mask.reshape(-1)


def _pool_rows(sources: List[Tuple[torch.Tensor, Optional[torch.Tensor]]], device) -> torch.Tensor:
    """(P, D) fp32: the rows of ``sources`` (each (table (n, D), row index or None = all rows)) concatenated in
    order, i.e. the pool that a flat index in [0, P) refers to."""
    parts = [(table if rows is None else table[rows.to(table.device)]).to(device=device, dtype=torch.float32)
             for table, rows in sources]
    return torch.cat(parts, 0)


def _pool_size(sources) -> int:
    return sum(len(t) if r is None else len(r) for t, r in sources)


def _negative_pools_by_class(c, bank_rows, t_emb, labels, probs, unreliable, negative_threshold, num_classes):
    """{v: sources} for v != c with a non-empty pool; together they are MONA's negative pool of c."""
    batch_ok = unreliable & (probs[:, c] < negative_threshold)
    pools = {}
    for v in range(num_classes):
        if v == c:
            continue
        sources = [(bank_rows[v], None)] if v in bank_rows else []
        batch_v = torch.nonzero(batch_ok & (labels == v)).flatten()
        if batch_v.numel():
            sources.append((t_emb, batch_v))
        if sources:
            pools[v] = sources
    return pools


def _hard_negatives(c, pools, anchor_candidates, num_classes, temperature, n, draw, generator, dim, device):
    """(n, D) unit negatives for query class c drawn class-first from the class-relation distribution.

    Returns (negatives (n, D) fp32 unit rows, relation (C,) probabilities, counts (C,) long drawn per class)."""
    prototypes = torch.zeros(num_classes, dim, device=device)
    available = torch.zeros(num_classes, dtype=torch.bool, device=device)
    rows = {v: _pool_rows(pools[v], device) for v in sorted(pools)}
    for v in range(num_classes):
        if v in anchor_candidates:
            prototypes[v] = anchor_candidates[v][1]
        elif v in rows:
            prototypes[v] = rows[v].mean(0)
        available[v] = v in rows
    relation = class_relation_probabilities(prototypes, available, temperature)[c]
    classes = sample_negative_classes(relation, n, generator).to(device)
    local = draw_within_classes(classes, {v: len(r) for v, r in rows.items()}, draw, generator)
    # one normalised pool of all classes; a class's draws are offset to its block
    offsets = torch.zeros(num_classes, dtype=torch.long, device=device)
    start = 0
    for v, r in rows.items():
        offsets[v] = start
        start += len(r)
    pool = F.normalize(torch.cat(list(rows.values()), 0), dim=1)
    negatives = pool.index_select(0, local.to(device) + offsets[classes])
    return negatives, relation, torch.bincount(classes, minlength=num_classes)


def select_keys_to_enqueue(teacher_emb: torch.Tensor, labels: torch.Tensor, teacher_probs: torch.Tensor,
                           unreliable_mask: torch.Tensor, negative_threshold: float = 0.97,
                           max_keys_per_class: Optional[int] = 1024,
                           generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Flattened inputs (N, D), (N,), (N, C), (N,) -> (keys (M, D) detached, labels (M,) long)."""
    probs = teacher_probs.detach().float()
    valid = (labels >= 0) & unreliable_mask.bool()
    others = probs.clone()
    others.scatter_(1, labels.clamp(min=0).long()[:, None], -1.0)
    candidates = torch.nonzero(valid & (others.max(1).values < negative_threshold)).flatten()
    if max_keys_per_class is not None:
        kept = []
        for c in torch.unique(labels[candidates]).tolist():
            idx = candidates[labels[candidates] == c]
            if idx.numel() > max_keys_per_class:
                perm = torch.randperm(idx.numel(), generator=generator,
                                      device=generator.device if generator is not None else "cpu")
                idx = idx[perm[:max_keys_per_class].to(idx.device)]
            kept.append(idx)
        candidates = torch.cat(kept) if kept else candidates
    return teacher_emb.detach()[candidates], labels[candidates].long()


def anatomical_contrast_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, labels: torch.Tensor,
                             teacher_probs: torch.Tensor, reliable_mask: torch.Tensor,
                             unreliable_mask: torch.Tensor, memory_bank=None, num_queries: int = 256,
                             num_negatives: int = 512, temperature: float = 0.5, positive_threshold: float = 0.3,
                             negative_threshold: float = 0.97, sampler: str = "uniform",
                             generator: Optional[torch.Generator] = None,
                             max_keys_per_class: Optional[int] = 1024,
                             diagnostics: Optional[Dict] = None,
                             hard_query_threshold: Optional[float] = None,
                             query_probs: Optional[torch.Tensor] = None,
                             class_relation_temperature: Optional[float] = None):
    """Class-balanced pixel InfoNCE. Returns (loss scalar fp32, new_keys (M, D), new_key_labels (M,)).

    Args (flattened or dense; dense maps are flattened with `flatten_channel_map`/`flatten_pixel_map`):
        student_emb: (N, D) or (B, D, *S) student embeddings (gradient flows here).
        teacher_emb: same shape, teacher embeddings (detached inside).
        labels: (N,) or (B, *S) long in [0, C) (ground truth or pseudo-label), -1 = ignore.
        teacher_probs: (N, C) or (B, C, *S) teacher softmax probabilities in [0, 1].
        reliable_mask, unreliable_mask: (N,) or (B, *S) bool (see `reliability_masks`).
        memory_bank: `ClassMemoryBank` with ``get(c)`` -> (n_c, D) past teacher embeddings of class c,
            or None (current-batch negatives only).
        num_queries: anchors per class (MONA 256); num_negatives: negatives per anchor (512).
        temperature: tau of the InfoNCE (0.5); positive_threshold: delta_p (0.3);
        negative_threshold: delta_n (0.97); sampler: 'uniform' | 'stratified' | 'antithetic'
            (used for anchors and negatives); generator: torch.Generator for reproducible draws.
        max_keys_per_class: cap on returned keys per class (None = all candidates).
        diagnostics: optional dict, filled with ``valid_classes`` (list), ``anchor_indices``
            {c: (num_queries,) flat pixel indices}, ``num_anchor_candidates`` {c: int},
            ``num_negative_candidates`` {c: int}, ``class_losses`` {c: float}; with the ACTION
            options also ``num_hard_queries`` / ``hard_query_fallback`` {c: int / bool} and
            ``relation_probs`` {c: (C,)} / ``negative_class_counts`` {c: (C,) long}.
        hard_query_threshold: ACTION theta_s (0.97); None = MONA (no hard-query selection).
        query_probs: (N, C) or (B, C, *S) probabilities used for the hard-query test (detached);
            None = ``teacher_probs``.
        class_relation_temperature: tau_rel of the hard-negative class draw (ACTION 0.5); None =
            MONA (negatives uniform over the pooled candidates of all other classes).
    """
    s_emb, t_emb, labels, probs, reliable, unreliable = _as_flat(student_emb, teacher_emb, labels, teacher_probs,
                                                                 reliable_mask, unreliable_mask)
    device, dim = s_emb.device, s_emb.shape[1]
    s_emb = s_emb.float()
    t_emb = t_emb.detach().float()
    probs = probs.detach().float()
    if query_probs is not None:
        query_probs = (flatten_channel_map(query_probs) if query_probs.dim() > 2 else query_probs).detach().float()
    else:
        query_probs = probs
    labels = labels.long()
    reliable, unreliable = reliable.bool() & (labels >= 0), unreliable.bool() & (labels >= 0)
    num_classes = probs.shape[1]
    draw = get_sampler(sampler)
    diag = diagnostics if diagnostics is not None else {}
    diag.update(valid_classes=[], anchor_indices={}, num_anchor_candidates={}, num_negative_candidates={},
                class_losses={})

    new_keys, new_key_labels = select_keys_to_enqueue(t_emb, labels, probs, unreliable, negative_threshold,
                                                      max_keys_per_class, generator)
    anchor_candidates = {}
    for c in range(num_classes):
        reliable_c = reliable & (labels == c)
        cand = torch.nonzero(reliable_c & (probs[:, c] > positive_threshold)).flatten()
        diag["num_anchor_candidates"][c] = int(cand.numel())
        if cand.numel() > 0:
            anchor_candidates[c] = (cand, t_emb[reliable_c].mean(0))
    zero = student_emb.sum() * 0.0
    if len(anchor_candidates) < 2:
        return zero.float(), new_keys, new_key_labels

    bank_rows = {}
    if memory_bank is not None:
        bank_rows = {o: memory_bank.get(o) for o in range(num_classes)}
        bank_rows = {o: rows for o, rows in bank_rows.items() if len(rows)}
    if hard_query_threshold is not None:
        diag.update(num_hard_queries={}, hard_query_fallback={})
    if class_relation_temperature is not None:
        diag.update(relation_probs={}, negative_class_counts={})
    class_losses = []
    for c, (cand, prototype) in anchor_candidates.items():
        if class_relation_temperature is None:  # MONA: one pool of all other classes
            sources = [(bank_rows[o], None) for o in range(num_classes) if o != c and o in bank_rows]
            batch_neg = torch.nonzero(unreliable & (labels != c) & (probs[:, c] < negative_threshold)).flatten()
            if batch_neg.numel():
                sources.append((t_emb, batch_neg))
            n_neg_total = _pool_size(sources)
        else:  # ACTION: the same candidates, one pool per class v
            pools = _negative_pools_by_class(c, bank_rows, t_emb, labels, probs, unreliable, negative_threshold,
                                             num_classes)
            n_neg_total = sum(_pool_size(p) for p in pools.values())
        diag["num_negative_candidates"][c] = int(n_neg_total)
        if n_neg_total == 0:
            continue
        if hard_query_threshold is not None:
            cand, fell_back = select_hard_queries(cand, labels, query_probs, hard_query_threshold)
            diag["num_hard_queries"][c] = 0 if fell_back else int(cand.numel())
            diag["hard_query_fallback"][c] = fell_back
        anchor_idx = cand[draw(cand.numel(), num_queries, generator=generator).to(cand.device)]
        if class_relation_temperature is None:
            neg_idx = draw(n_neg_total, num_queries * num_negatives, generator=generator).to(device)
            # normalise the pool (P rows) once, then pick: the drawn negatives (num_queries * num_negatives,
            # 131 072 at MONA's sizes) outnumber the pool's rows several times (ACDC CPU protocol: P ~ 20 000)
            negatives = F.normalize(_pool_rows(sources, device), dim=1).index_select(0, neg_idx)
        else:
            negatives, relation, counts = _hard_negatives(c, pools, anchor_candidates, num_classes,
                                                          class_relation_temperature,
                                                          num_queries * num_negatives, draw, generator, dim, device)
            diag["relation_probs"][c], diag["negative_class_counts"][c] = relation, counts
        anchors = F.normalize(s_emb[anchor_idx], dim=1)
        negatives = negatives.view(num_queries, num_negatives, dim)
        positive = F.normalize(prototype, dim=0)
        logits = torch.cat([(anchors @ positive)[:, None], torch.einsum("qd,qkd->qk", anchors, negatives)], 1)
        loss_c = F.cross_entropy(logits / temperature, torch.zeros(num_queries, dtype=torch.long, device=device))
        class_losses.append(loss_c)
        diag["valid_classes"].append(c)
        diag["anchor_indices"][c] = anchor_idx
        diag["class_losses"][c] = float(loss_c.detach())
    if not class_losses:
        return zero.float(), new_keys, new_key_labels
    return torch.stack(class_losses).mean(), new_keys, new_key_labels
