"""Decoder feature maps of an nnU-Net U-Net, collected by forward hooks during the normal forward.

MONA's representation head reads the bottleneck and the decoder-stage outputs (method_spec A.3.1,
E.4). nnU-Net's ``PlainConvUNet`` / ``ResidualEncoderUNet`` return only logits, so the maps are
taken with ``register_forward_hook`` on ``encoder.stages[-1]`` and ``decoder.stages[s]``
(nnunet_integration.md 2.7). Hooks go on the *unwrapped* module (DDP ``.module``, compile
``._orig_mod`` stripped); they still fire when the wrapper is called, so the features come out
of the one (possibly compiled / DDP) forward that also produces the logits.

The collector is gated: when ``enabled`` is False (the default: validation, inference, the
teacher outside its training use) the hooks return immediately and keep nothing.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from nnunet_mona.modules.ema_teacher import unwrap_network


def decoder_level_strides(network: nn.Module, pool_op_kernel_sizes: Sequence[Sequence[int]]) -> List[List[int]]:
    """Per-axis stride (w.r.t. the input) of each map the collector returns, in its order:
    [bottleneck, decoder.stages[0], ..., decoder.stages[-1]] (low -> high resolution).

    ``pool_op_kernel_sizes``: the plan's per-stage strides (first entry [1, 1] / [1, 1, 1]).
    """
    cumulative = []
    current = [1] * len(pool_op_kernel_sizes[0])
    for k in pool_op_kernel_sizes:
        current = [c * int(s) for c, s in zip(current, k)]
        cumulative.append(list(current))
    n_dec = len(unwrap_network(network).decoder.stages)
    # decoder stage s has the resolution of encoder stage -(s + 2)
    return [cumulative[-1]] + [cumulative[-(s + 2)] for s in range(n_dec)]


def decoder_level_channels(network: nn.Module) -> List[int]:
    """Channels of [bottleneck, decoder.stages[0], ..., decoder.stages[-1]]."""
    out = list(unwrap_network(network).encoder.output_channels)
    n_dec = len(unwrap_network(network).decoder.stages)
    return [out[-1]] + [out[-(s + 2)] for s in range(n_dec)]


class DecoderFeatureCollector:
    """Forward hooks that keep the bottleneck and decoder-stage outputs of the last forward.

    Args:
        network: the U-Net (wrappers allowed; hooks go on the unwrapped module).
        decoder_stages: indices into ``decoder.stages`` to keep (None = all), low -> high resolution.
        include_bottleneck: also keep ``encoder.stages[-1]``'s output (first in the list).

    Use::

        with collector.collecting():
            logits = network(x)
            maps = collector.pop()   # [(B, C_0, *S_0), (B, C_1, *S_1), ...]

    ``pop`` returns the maps of the most recent forward in the order [bottleneck, decoder stages
    ascending] and forgets them. Outside ``collecting()`` (or with ``enabled = False``) nothing
    is kept. The maps are the graph-connected outputs (gradients flow through them).
    """

    def __init__(self, network: nn.Module, decoder_stages: Optional[Sequence[int]] = None,
                 include_bottleneck: bool = True):
        net = unwrap_network(network)
        n_dec = len(net.decoder.stages)
        stages = list(range(n_dec)) if decoder_stages is None else [int(s) % n_dec for s in decoder_stages]
        modules = ([net.encoder.stages[-1]] if include_bottleneck else []) + [net.decoder.stages[s] for s in stages]
        self.enabled = False
        self._maps: Dict[int, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._make_hook(i)) for i, m in enumerate(modules)]
        self.num_levels = len(modules)

    def _make_hook(self, index: int):
        def hook(module, inputs, output):
            if self.enabled:  # gated: validation / inference keep nothing
                self._maps[index] = output
        return hook

    @contextmanager
    def collecting(self):
        """Enable the hooks for the block; maps not popped are dropped on exit."""
        previous = self.enabled
        self.enabled = True
        try:
            yield self
        finally:
            self.enabled = previous
            if not previous:
                self._maps.clear()

    def pop(self) -> List[torch.Tensor]:
        """Maps of the last forward, [bottleneck, decoder stages...]; raises if a level is missing."""
        if len(self._maps) != self.num_levels:
            raise RuntimeError(f"{len(self._maps)} of {self.num_levels} feature maps were collected: was the "
                               f"network called inside collecting()?")
        maps = [self._maps[i] for i in range(self.num_levels)]
        self._maps.clear()
        return maps

    def clear(self) -> None:
        self._maps.clear()

    def remove(self) -> None:
        """Unregister the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._maps.clear()
