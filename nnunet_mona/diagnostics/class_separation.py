"""How well pixel features separate the classes: the number behind "does the contrastive term shape the
representation?".

On L2-normalised features, with m_k the mean feature of class k (n_k pixels):

    within_k       mean cosine between two different pixels of class k  = (n_k^2 |m_k|^2 - n_k) / (n_k (n_k - 1))
    between_jk     mean cosine between a pixel of class j and one of k  = <m_j, m_k>
    margin         mean_k within_k - mean_{j<k} between_jk   (in [-2, 2]; 0 for features that ignore the class)

and the balanced accuracy of a nearest-centroid classifier (cosine) whose centroids are fitted on one group of
volumes and tested on the other, both ways: a class-blind representation scores 1 / K, a perfectly separated one 1.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F


def sample_pixels_per_class(features: torch.Tensor, labels: torch.Tensor, num_classes: int, per_class: int,
                            generator: torch.Generator = None):
    """Up to ``per_class`` random pixels of every class.

    features: (B, C, *S) float; labels: (B, *S) long (negative = ignore). Returns (N, C) float, (N,) long.
    """
    channels = features.shape[1]
    flat = features.movedim(1, -1).reshape(-1, channels)
    flat_labels = labels.reshape(-1)
    picked_features, picked_labels = [], []
    for k in range(num_classes):
        index = torch.nonzero(flat_labels == k).flatten()
        if index.numel() > per_class:
            order = torch.randperm(index.numel(), generator=generator)[:per_class]
            index = index[order]
        picked_features.append(flat[index])
        picked_labels.append(flat_labels[index])
    return torch.cat(picked_features).float(), torch.cat(picked_labels)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """(K, C) mean of the L2-normalised features per class (zeros for an absent class) and (K,) counts."""
    unit = F.normalize(features.float(), dim=1)
    counts = torch.bincount(labels, minlength=num_classes).float()
    sums = torch.zeros(num_classes, unit.shape[1]).index_add_(0, labels, unit)
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def cosine_margin(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Dict[str, float]:
    """{'within', 'between', 'margin'} of (N, C) features with (N,) labels in [0, K); classes with fewer than 2
    pixels are left out."""
    means, counts = class_means(features, labels, num_classes)
    present = [k for k in range(num_classes) if counts[k] >= 2]
    if len(present) < 2:
        raise ValueError(f"class separation needs at least two classes with 2 or more pixels; counts per class: "
                         f"{counts.long().tolist()}")
    within = [float((counts[k] ** 2 * means[k].dot(means[k]) - counts[k]) / (counts[k] * (counts[k] - 1)))
              for k in present]
    between = [float(means[j].dot(means[k])) for a, j in enumerate(present) for k in present[a + 1:]]
    w, b = sum(within) / len(within), sum(between) / len(between)
    return {"within": w, "between": b, "margin": w - b}


def nearest_centroid_accuracy(fit_features: torch.Tensor, fit_labels: torch.Tensor, test_features: torch.Tensor,
                              test_labels: torch.Tensor, num_classes: int) -> float:
    """Balanced accuracy (mean over the classes present in the test set) of the cosine nearest-centroid rule."""
    means, counts = class_means(fit_features, fit_labels, num_classes)
    centroids = F.normalize(means, dim=1)
    scores = F.normalize(test_features.float(), dim=1) @ centroids.T
    scores[:, counts == 0] = -float("inf")  # a class unseen when fitting is never predicted
    predicted = scores.argmax(1)
    recalls = [float((predicted[test_labels == k] == k).float().mean()) for k in range(num_classes)
               if (test_labels == k).any()]
    return sum(recalls) / len(recalls)


def class_separation(features_per_volume: Sequence[torch.Tensor], labels_per_volume: Sequence[torch.Tensor],
                     num_classes: int) -> Dict[str, float]:
    """The margin over all volumes' pixels and the cross-fitted nearest-centroid accuracy (centroids from the
    even-numbered volumes tested on the odd ones and back; mean of both).

    features_per_volume: [(N_v, C)]; labels_per_volume: [(N_v,)]; at least two volumes.
    """
    if len(features_per_volume) < 2:
        raise ValueError("class separation needs at least two volumes (centroids are fitted on one group of "
                         "volumes and tested on the other)")
    features, labels = torch.cat(list(features_per_volume)), torch.cat(list(labels_per_volume))
    out = cosine_margin(features, labels, num_classes)
    groups = [(torch.cat(list(features_per_volume[g::2])), torch.cat(list(labels_per_volume[g::2])))
              for g in (0, 1)]
    accuracies = [nearest_centroid_accuracy(*groups[a], *groups[1 - a], num_classes) for a in (0, 1)]
    out["nearest_centroid_accuracy"] = sum(accuracies) / 2
    out["pixels"] = int(labels.numel())
    return out
