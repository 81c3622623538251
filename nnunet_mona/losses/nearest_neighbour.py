"""Nearest-neighbour consistency loss L_nn of MONA fine-tuning, paper-intended version.

Method_spec A.3.3(5), E.1(b), E.12: the k nearest neighbours (cosine) of each *teacher*
embedding are retrieved from a FIFO bank of past teacher embeddings, and the *student* embedding
is pulled towards them: loss = mean over images and neighbours of 2 - 2 cos(student, neighbour)
(= squared distance of L2-normalised vectors, in [0, 4]). The official code's version has no
gradient at all; here the gradient reaches the student only (teacher and bank are detached,
neighbour selection is non-differentiable).

Use per-image embeddings (e.g. global average pool of the projected representation), and
enqueue the current teacher embeddings after computing the loss (otherwise each teacher
embedding is its own nearest neighbour).
"""
import torch
import torch.nn.functional as F


def nearest_neighbour_indices(teacher_emb: torch.Tensor, bank_features: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(B, D), (K, D) -> (B, min(k, K)) long: bank rows with the highest cosine to each teacher row."""
    t = F.normalize(teacher_emb.detach().float(), dim=1)
    bank = F.normalize(bank_features.detach().float().to(t.device), dim=1)
    return (t @ bank.T).topk(min(k, bank.shape[0]), dim=1).indices


def nearest_neighbour_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, bank_features: torch.Tensor,
                           k: int = 5) -> torch.Tensor:
    """Scalar fp32 in [0, 4]; 0 (graph intact) when the bank is empty.

    Args:
        student_emb: (B, D) student embeddings (receive the gradient).
        teacher_emb: (B, D) teacher embeddings (only select neighbours; detached).
        bank_features: (K, D) past teacher embeddings (detached), e.g. ``FeatureQueue.features``.
        k: number of neighbours (MONA 5; min(k, K) used).
    """
    if student_emb.dim() != 2 or teacher_emb.shape != student_emb.shape:
        raise ValueError(f"student and teacher embeddings must both be (B, D), got {tuple(student_emb.shape)} "
                         f"and {tuple(teacher_emb.shape)}")
    if bank_features.shape[0] == 0:
        return student_emb.float().sum() * 0.0
    idx = nearest_neighbour_indices(teacher_emb, bank_features, k)
    neighbours = F.normalize(bank_features.detach().float().to(student_emb.device), dim=1)[idx]  # (B, k, D)
    student = F.normalize(student_emb.float(), dim=1)
    cosine = (student[:, None, :] * neighbours).sum(-1)
    return (2.0 - 2.0 * cosine).mean()
