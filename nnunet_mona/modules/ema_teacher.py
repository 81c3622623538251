"""Exponential-moving-average (EMA) teacher kept outside ``self.network``."""
import torch
from torch import nn


def unwrap_network(network: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    if hasattr(network, "module") and isinstance(network.module, nn.Module):
        network = network.module
    if hasattr(network, "_orig_mod"):
        network = network._orig_mod
    return network


class EMATeacher(nn.Module):
    """Teacher whose parameters follow the student: ``t = d * t + (1 - d) * s`` after each step.

    Buffers (e.g. BatchNorm statistics) are copied. With ``warmup=True`` the decay used at update
    ``n`` is ``min(decay, (1 + n) / (10 + n))`` so an early teacher is not stuck at its random init.
    The teacher is always in eval mode and never receives gradients.

    Args:
        model: a freshly built network with the student's architecture (not the student itself:
            the teacher must not share storage with it). It is overwritten with the student's weights.
        student: the student network (wrappers are stripped).
    """

    def __init__(self, model: nn.Module, student: nn.Module, decay: float = 0.99, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.model = model
        self.decay = decay
        self.warmup = warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self.copy_from(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):
        # the teacher stays in eval mode whatever its parent does
        super().train(False)
        return self

    @torch.no_grad()
    def copy_from(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of the student (start of training, pretrained weights)."""
        self.model.load_state_dict(unwrap_network(student).state_dict())

    def current_decay(self) -> float:
        n = int(self.num_updates.item())
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        d = self.current_decay()
        student_state = unwrap_network(student).state_dict()
        for name, t in self.model.state_dict().items():
            s = student_state[name].detach()
            if t.dtype.is_floating_point:
                t.mul_(d).add_(s.to(t.dtype), alpha=1.0 - d)
            else:
                t.copy_(s)
        self.num_updates += 1

    @torch.no_grad()
    def forward(self, x: torch.Tensor):
        return self.model(x)
