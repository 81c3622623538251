"""Masked equivariance KL loss L_eqv of MONA fine-tuning (method_spec A.3.3(6)).

The caller warps a batch with a random transform T, runs the student on T(x), and warps the
reference logits (MONA code: detached student logits of the unwarped view) with the same T.
Per image: sum over classes and pixels of m * p_ref * (log p_ref - log p_student), divided by
(sum of m + eps); then the mean over images. The reference is detached: only the prediction on
the warped input gets a gradient. Computed in fp32.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def equivariance_loss(student_logits_on_warped: torch.Tensor, warped_reference_logits: torch.Tensor,
                      mask: Optional[torch.Tensor] = None, eps: float = 1e-7) -> torch.Tensor:
    """Scalar fp32 >= 0.

    Args:
        student_logits_on_warped: (B, C, *S) logits of f_s(T(x)).
        warped_reference_logits: (B, C, *S) logits T(reference), detached inside.
        mask: (B, *S) float weights in [0, 1] (MONA: foreground & conf >= 0.7, warped bilinearly);
            None = all ones. Images with an all-zero mask contribute 0.
    """
    log_q = F.log_softmax(student_logits_on_warped.float(), dim=1)
    log_p = F.log_softmax(warped_reference_logits.detach().float(), dim=1)
    kl_map = (log_p.exp() * (log_p - log_q)).sum(1)  # (B, *S), >= 0
    if mask is None:
        mask = torch.ones_like(kl_map)
    mask = mask.detach().float()
    per_image = (mask * kl_map).flatten(1).sum(1) / (mask.flatten(1).sum(1) + eps)
    return per_image.mean()
