"""Reliable / unreliable pixel split by entropy percentiles (MONA A.3.3(3), from U2PL).

Over all valid pixels of the batch jointly: reliable = H <= alpha-th percentile,
unreliable = H >= (100 - alpha)-th percentile (linear interpolation, as numpy.percentile).
alpha decays linearly from alpha0 = 20 to 0 over training (`alpha_schedule`).
Which probabilities to use is the caller's choice (MONA code: student on the strong view;
U2PL: teacher). For labeled images MONA sets both masks to all-ones — do that in the caller.
"""
import torch


def pixel_entropy(probs: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """H = -sum_c p_c log p_c over dim 1: (B, C, *S) probabilities -> (B, *S) fp32 in [0, log C]."""
    p = probs.detach().float()
    return -(p * torch.log(p + eps)).sum(1)


def percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """q-th percentile (q in [0, 100]) of a 1-D tensor with numpy's 'linear' interpolation.

    Uses kthvalue (no size limit, unlike torch.quantile's 16M elements).
    """
    n = values.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = min(max(float(q), 0.0), 100.0) / 100.0 * (n - 1)
    lo, hi = int(pos), min(int(pos) + 1, n - 1)
    v_lo = values.kthvalue(lo + 1).values
    v_hi = values.kthvalue(hi + 1).values if hi != lo else v_lo
    return v_lo + (v_hi - v_lo) * (pos - lo)


def reliability_masks(probs: torch.Tensor, valid: torch.Tensor, alpha_percent: float):
    """Split valid pixels by entropy.

    Args:
        probs: (B, C, *S) class probabilities (softmax output), any float dtype; no gradient.
        valid: (B, *S) bool, pixels to consider (e.g. pseudo-label != -1).
        alpha_percent: alpha in [0, 100] (percent, not fraction).
    Returns:
        (reliable, unreliable): (B, *S) bool, both subsets of ``valid``; at least alpha % of the
        valid pixels are reliable and at least alpha % unreliable (more with ties). Both empty if
        no pixel is valid.
    """
    entropy = pixel_entropy(probs)
    valid = valid.bool()
    values = entropy[valid]
    if values.numel() == 0:
        return torch.zeros_like(valid), torch.zeros_like(valid)
    low_threshold = percentile(values, alpha_percent)
    high_threshold = percentile(values, 100.0 - alpha_percent)
    return (entropy <= low_threshold) & valid, (entropy >= high_threshold) & valid


def alpha_schedule(progress: float, alpha0: float = 20.0) -> float:
    """alpha_t = alpha0 * (1 - progress), progress = iteration / total iterations clipped to [0, 1]."""
    return float(alpha0) * (1.0 - min(max(float(progress), 0.0), 1.0))
