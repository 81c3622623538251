"""GPU strong photometric view for nnU-Net-normalised (z-scored / clipped-z-scored) images.

Re-implements MONA's strong view (spec A.3.2 step 4, E.3) as tensor ops instead of 8-bit PIL:
brightness, contrast, Gaussian blur, plus optional gamma and Gaussian noise. There is no 8-bit
quantisation and no clipping to [0, 1]: the data are z-scored, so every operation is defined
for arbitrary real intensities.

Shapes: images (B, C, H, W) or (B, C, D, H, W), any floating dtype, any device. Parameters are
drawn per sample (the same value for all channels of one sample), each operation is applied
to a sample with its own probability, independently of the other samples.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from nnunet_mona.augment._random import as_range, check_spatial_dims, device_generator, uniform

__all__ = ["gaussian_kernel1d", "gaussian_blur", "StrongPhotometricAugment"]


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels.

    Args:
        sigma: (N,) standard deviations in pixels (> 0).
        radius: kernel half-width; kernel length is 2 * radius + 1.
    Returns:
        (N, 2 * radius + 1) tensor, rows sum to 1, same dtype/device as ``sigma``.
    """
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None].clamp_min(1e-6)) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: Union[float, torch.Tensor], radius: Optional[int] = None,
                  padding_mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (same sigma along every spatial axis).

    Args:
        images: (B, C, *S), S = (H, W) or (D, H, W), floating dtype.
        sigma: float or (B,) tensor, in pixels.
        radius: kernel half-width, default ceil(3 * max sigma) (computed on the host only when
            ``sigma`` is a float; for tensors pass it explicitly to avoid a synchronisation).
        padding_mode: 'reflect' (falls back to 'replicate' for axes too short) or 'replicate'.
    Returns:
        blurred tensor, same shape/dtype/device.
    """
    nd = images.ndim - 2
    check_spatial_dims(nd, "gaussian_blur")
    B, C = images.shape[:2]
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    if not torch.is_tensor(sigma):
        if radius is None:
            radius = max(1, int(math.ceil(3.0 * float(sigma))))
        sigma = torch.full((B,), float(sigma), device=images.device, dtype=work.dtype)
    elif radius is None:
        radius = max(1, int(math.ceil(3.0 * float(sigma.max()))))
    sigma = sigma.to(device=images.device, dtype=work.dtype).reshape(-1).expand(B)
    k = gaussian_kernel1d(sigma, radius)  # (B, L)
    weight = k.repeat_interleave(C, dim=0)  # (B*C, L), channel b*C+c uses sample b's kernel
    x = work.reshape((1, B * C) + tuple(images.shape[2:]))
    conv = F.conv2d if nd == 2 else F.conv3d
    for ax in range(nd):
        size = x.shape[2 + ax]
        pad = [0, 0] * nd
        # F.pad lists the last axis first
        pad[2 * (nd - 1 - ax)] = radius
        pad[2 * (nd - 1 - ax) + 1] = radius
        mode = padding_mode if (padding_mode != "reflect" or size > radius) else "replicate"
        xp = F.pad(x, pad, mode=mode)
        wshape = [B * C, 1] + [1] * nd
        wshape[2 + ax] = 2 * radius + 1
        x = conv(xp, weight.reshape(wshape), groups=B * C)
    return x.reshape(images.shape).to(images.dtype)


class StrongPhotometricAugment:
    """Random strong photometric view, applied on-device per sample.

    Order: brightness -> contrast -> gamma -> Gaussian noise -> Gaussian blur. Each step is
    applied to each sample independently with its own probability; a step with probability 0
    is skipped entirely, so ``all p = 0`` is the exact identity.

    * brightness: ``x * b``, b ~ U(brightness) (MONA/ColorJitter: U(0.75, 1.25)).
    * contrast: ``m + c * (x - m)``, m = per-sample, per-channel spatial mean, c ~ U(contrast).
    * gamma: per sample and channel, rescale to [0, 1] with its min/max, raise to
      g ~ U(gamma), map back to the original min/max.
    * noise: ``x + N(0, s^2)``, s ~ U(noise_std).
    * blur: separable Gaussian, sigma ~ U(blur_sigma) pixels (MONA: U(0.15, 1.15)).

    Defaults follow MONA's strong view (brightness, contrast and blur with p = 0.5 each; MONA
    draws brightness and contrast together in one ColorJitter with p = 0.5) with gamma and
    noise off.

    Call: ``aug(images, generator=None)`` with images (B, C, H, W) or (B, C, D, H, W), floating
    dtype; returns a new tensor of the same shape, dtype and device. Computation is in fp32
    (fp64 stays fp64) and cast back. Pass a generator on the data device to avoid the one-off
    re-seeding described in ``_random.device_generator``.
    """

    def __init__(self, p_brightness: float = 0.5, brightness: Tuple[float, float] = (0.75, 1.25),
                 p_contrast: float = 0.5, contrast: Tuple[float, float] = (0.75, 1.25),
                 p_gamma: float = 0.0, gamma: Tuple[float, float] = (0.7, 1.5),
                 p_noise: float = 0.0, noise_std: Tuple[float, float] = (0.0, 0.1),
                 p_blur: float = 0.5, blur_sigma: Tuple[float, float] = (0.15, 1.15)):
        for name, p in [("p_brightness", p_brightness), ("p_contrast", p_contrast), ("p_gamma", p_gamma),
                        ("p_noise", p_noise), ("p_blur", p_blur)]:
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.p_brightness, self.brightness = float(p_brightness), as_range(brightness, "brightness", False)
        self.p_contrast, self.contrast = float(p_contrast), as_range(contrast, "contrast", False)
        self.p_gamma, self.gamma = float(p_gamma), as_range(gamma, "gamma", False)
        self.p_noise, self.noise_std = float(p_noise), as_range(noise_std, "noise_std", False)
        self.p_blur, self.blur_sigma = float(p_blur), as_range(blur_sigma, "blur_sigma", False)
        if self.gamma[0] <= 0:
            raise ValueError("gamma must be > 0")
        if self.blur_sigma[0] <= 0:
            raise ValueError("blur_sigma must be > 0")
        self.blur_radius = max(1, int(math.ceil(3.0 * self.blur_sigma[1])))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p_brightness={self.p_brightness}, brightness={self.brightness}, "
                f"p_contrast={self.p_contrast}, contrast={self.contrast}, p_gamma={self.p_gamma}, "
                f"gamma={self.gamma}, p_noise={self.p_noise}, noise_std={self.noise_std}, "
                f"p_blur={self.p_blur}, blur_sigma={self.blur_sigma})")

    def __call__(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not torch.is_tensor(images) or not images.dtype.is_floating_point:
            raise TypeError("images must be a floating-point tensor")
        nd = images.ndim - 2
        check_spatial_dims(nd, "StrongPhotometricAugment")
        device, B = images.device, images.shape[0]
        wdt = torch.float64 if images.dtype == torch.float64 else torch.float32
        x = images.to(wdt)
        g = device_generator(generator, device)
        bshape = (B,) + (1,) * (images.ndim - 1)
        spatial = tuple(range(2, images.ndim))

        def chosen(p):
            return (torch.rand(B, generator=g, device=device) < p).view(bshape)

        if self.p_brightness > 0:
            sel = chosen(self.p_brightness)
            f = uniform((B,), *self.brightness, g, device, wdt).view(bshape)
            x = torch.where(sel, x * f, x)
        if self.p_contrast > 0:
            sel = chosen(self.p_contrast)
            f = uniform((B,), *self.contrast, g, device, wdt).view(bshape)
            m = x.mean(dim=spatial, keepdim=True)
            x = torch.where(sel, m + f * (x - m), x)
        if self.p_gamma > 0:
            sel = chosen(self.p_gamma)
            gam = uniform((B,), *self.gamma, g, device, wdt).view(bshape)
            mn = x.amin(dim=spatial, keepdim=True)
            rng = x.amax(dim=spatial, keepdim=True) - mn
            r = ((x - mn) / rng.clamp_min(1e-8)).clamp(0, 1)
            x = torch.where(sel, r.pow(gam) * rng + mn, x)
        if self.p_noise > 0:
            sel = chosen(self.p_noise)
            s = uniform((B,), *self.noise_std, g, device, wdt).view(bshape)
            noise = torch.randn(x.shape, generator=g, device=device, dtype=wdt)
            x = torch.where(sel, x + s * noise, x)
        if self.p_blur > 0:
            sel = chosen(self.p_blur)
            s = uniform((B,), *self.blur_sigma, g, device, wdt)
            x = torch.where(sel, gaussian_blur(x, s, radius=self.blur_radius), x)
        return x.to(images.dtype)
