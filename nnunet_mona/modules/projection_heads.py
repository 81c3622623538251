"""Projection heads for MONA: global MLP, per-pixel 1x1-conv MLP, multi-scale decoder representation head.

Paper vs code (method_spec A.5.2, E.13): the paper describes *non-linear* two-layer projectors;
the official code has no activation or normalisation anywhere in its heads. The default here is
the paper's (``nonlinear=True``: Linear/Conv -> [BatchNorm] -> ReLU -> Linear/Conv);
``nonlinear=False`` gives the code's purely linear two-layer map.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BATCHNORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _two_layer(first: nn.Module, second: nn.Module, hidden: int, nonlinear: bool, batch_norm: bool,
               norm_dims: int) -> nn.Sequential:
    layers = [first]
    if batch_norm:
        layers.append(_BATCHNORM[norm_dims](hidden))
    if nonlinear:
        layers.append(nn.ReLU(inplace=True))
    layers.append(second)
    return nn.Sequential(*layers)


class ProjectionMLP(nn.Module):
    """Global projector / predictor: (B, in_dim) -> (B, out_dim), in -> hidden -> out.

    MONA sizes: latent head 256 -> 256 -> 512, predictor 512 -> 512 -> 512.
    ``batch_norm=True`` needs B > 1 in training mode (BatchNorm1d).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, nonlinear: bool = True,
                 batch_norm: bool = False):
        super().__init__()
        self.net = _two_layer(nn.Linear(in_dim, hidden_dim, bias=not batch_norm), nn.Linear(hidden_dim, out_dim),
                              hidden_dim, nonlinear, batch_norm, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelProjectionHead(nn.Module):
    """Per-pixel projector: (B, Cin, *S) -> (B, out, *S) with two 1x1(x1) convolutions.

    ``spatial_dims`` = 2 for (B, C, H, W) maps, 3 for (B, C, D, H, W).
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, nonlinear: bool = True,
                 batch_norm: bool = False, spatial_dims: int = 2):
        super().__init__()
        conv = _CONV[spatial_dims]
        self.net = _two_layer(conv(in_channels, hidden_channels, 1, bias=not batch_norm),
                              conv(hidden_channels, out_channels, 1), hidden_channels, nonlinear, batch_norm,
                              spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScaleRepresentationHead(nn.Module):
    """Dense representation from several decoder maps of different resolutions (method_spec E.4).

    Each input map i, (B, C_i, *S_i), is projected by a 1x1 conv to ``proj_channels``, resized to the
    spatial size of ``features[reference_index]`` (bilinear / trilinear, align_corners=False, for maps
    smaller than the reference in some dimension; adaptive average pooling for maps at least as
    large in every dimension), then fused by ``fusion='sum'`` (proj_channels) or ``'concat'``
    (L * proj_channels), and mapped by a `PixelProjectionHead` to ``out_channels`` (default 256).

    Output: (B, out_channels, *S_ref), unnormalised float embeddings (L2-normalise in the loss).
    Cheaper than MONA's full-resolution 496-channel FPN concat; choose a coarse reference level
    (e.g. 1/2 or 1/4 of the patch) to bound memory.
    """

    def __init__(self, in_channels: Sequence[int], proj_channels: int = 64, out_channels: int = 256,
                 reference_index: int = -1, fusion: str = "sum", nonlinear: bool = True,
                 batch_norm: bool = False, spatial_dims: int = 2, standardize_output: bool = False):
        super().__init__()
        if fusion not in ("sum", "concat"):
            raise ValueError(f"fusion must be 'sum' or 'concat', got {fusion!r}")
        if len(in_channels) == 0:
            raise ValueError("at least one input feature map is needed")
        conv = _CONV[spatial_dims]
        self.spatial_dims = spatial_dims
        self.reference_index = reference_index
        self.fusion = fusion
        self.num_levels = len(in_channels)
        self.level_projections = nn.ModuleList([conv(c, proj_channels, 1) for c in in_channels])
        fused = proj_channels if fusion == "sum" else proj_channels * len(in_channels)
        self.output_head = PixelProjectionHead(fused, out_channels, out_channels, nonlinear, batch_norm,
                                               spatial_dims)
        self.standardize_output = standardize_output

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        if all(s_in >= s_out for s_in, s_out in zip(x.shape[2:], size)):
            return F.adaptive_avg_pool2d(x, size) if self.spatial_dims == 2 else F.adaptive_avg_pool3d(x, size)
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(features)}")
        size = features[self.reference_index].shape[2:]
        projected = [self._resize(proj(f), size) for proj, f in zip(self.level_projections, features)]
        fused = torch.stack(projected, 0).sum(0) if self.fusion == "sum" else torch.cat(projected, 1)
        out = self.output_head(fused)
        if self.standardize_output:
            out = standardize_over_batch(out)
        return out


def standardize_over_batch(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, *S) -> same shape, each channel at zero mean and unit variance over the batch's pixels.

    Always the current batch's statistics (no running estimates, no parameters), in train and eval mode
    alike, so an EMA teacher head standardises its own batch just as the student does. Why: pixel
    embeddings of a ReLU network share a large common component (class-mean cosines ~0.99 at init); after
    L2 normalisation every key of a contrastive loss then points the same way and the InfoNCE sits at its
    chance value whatever the anchors do. Removing the per-channel mean leaves only what differs.
    """
    return F.batch_norm(x, None, None, training=True, eps=eps)
