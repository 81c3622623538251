"""How hard each loss term pulls on the shared network, relative to nnU-Net's supervised loss.

When a method's supervised loss lags behind another's with the same labeled share, which term fights it is
visible directly in the gradients. ``relative_gradient_norms`` returns, for every weighted
term, ||d term / d theta|| / ||d sup / d theta|| over the given parameters (the decoder by default in
the trainer): 0 for a term whose graph does not reach them (e.g. MONA's nn pull on its own predictor),
~1 for a term as strong as the supervised loss. The trainer computes it on the first step of an epoch
when ``log_gradient_norms`` is on (a few extra backward passes per epoch) and writes it to the log.
"""
from typing import Dict, Iterable

import torch


def gradient_norm(value: torch.Tensor, parameters) -> float:
    """L2 norm of d value / d parameters (parameters the graph does not reach count as 0); graph kept."""
    if not value.requires_grad:
        return 0.0
    grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
    squares = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return float(torch.stack(squares).sum().sqrt()) if squares else 0.0


def relative_gradient_norms(weighted_terms: Dict[str, torch.Tensor], reference: torch.Tensor,
                            parameters: Iterable[torch.nn.Parameter]) -> Dict[str, float]:
    """{name: ||grad term|| / ||grad reference||} over ``parameters``; 'reference' itself is reported as its
    absolute norm under the key '|sup|'. Terms are scalars already multiplied by their weights."""
    parameters = [p for p in parameters if p.requires_grad]
    reference_norm = gradient_norm(reference, parameters)
    out = {"|sup|": reference_norm}
    for name, value in weighted_terms.items():
        out[name] = gradient_norm(value, parameters) / reference_norm if reference_norm > 0 else float("nan")
    return out
