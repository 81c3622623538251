"""On-device geometric warps: affine (similarity + mirror), thin-plate splines (MONA's RandTPS,
spec A.3.3(6)) and a small smooth random displacement (AdvMorph-like, spec A.3.2 step 4).

Every warp is represented as a ``torch.nn.functional.grid_sample`` sampling grid
``grid`` of shape (B, *S, d) (S = (H, W), d = 2; or S = (D, H, W), d = 3) in normalised
coordinates with ``align_corners=False``: ``out[b, :, p] = in[b, :, grid[b, p]]``, i.e. the grid
maps each *output* (target) pixel to its *source* location. The last grid axis is in
grid_sample order (x, y[, z]) = (W, H[, D]) axis, i.e. the last tensor axis first. The input
occupies [-1, 1] along each axis (pixel edges), pixel centres are at (2 i + 1) / n - 1.

Angles are in degrees; rotations act in pixel space (a rotation of a non-square image stays
rigid); translations are in normalised units (0.1 = 5 % of the extent); ``zoom`` > 1 enlarges
the image content (source = target / zoom).
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from nnunet_mona.augment._random import as_range, check_spatial_dims, device_generator, uniform
from nnunet_mona.augment.intensity import gaussian_blur

__all__ = ["identity_grid", "affine_matrices", "random_affine_matrices", "invert_affine", "affine_grid",
           "tps_control_points", "tps_grid", "random_smooth_displacement_grid", "valid_mask_from_grid",
           "warp", "RandomWarp"]


def _shape(spatial_shape: Sequence[int]) -> Tuple[int, ...]:
    s = tuple(int(v) for v in spatial_shape)
    check_spatial_dims(len(s), "spatial_shape")
    return s


def identity_grid(batch_size: int, spatial_shape: Sequence[int], device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Identity sampling grid (B, *S, d); equals ``F.affine_grid(identity, align_corners=False)``."""
    s = _shape(spatial_shape)
    d = len(s)
    theta = torch.eye(d, d + 1, device=device, dtype=dtype).expand(batch_size, d, d + 1)
    return F.affine_grid(theta, (batch_size, 1) + s, align_corners=False)


def _rotation(angles_deg: torch.Tensor, d: int) -> torch.Tensor:
    """(B,) angles (2D) or (B, 3) angles about the x, y, z axes (3D) -> (B, d, d) rotations."""
    a = torch.deg2rad(angles_deg)
    if d == 2:
        a = a.reshape(-1)
        c, s = torch.cos(a), torch.sin(a)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    a = a.reshape(-1, 3)
    B = a.shape[0]
    c, s = torch.cos(a), torch.sin(a)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1).view(B, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1).view(B, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1).view(B, 3, 3)
    return rz @ ry @ rx


def affine_matrices(spatial_shape: Sequence[int], angles_deg: torch.Tensor, zoom: torch.Tensor,
                    translation: torch.Tensor, mirror: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deterministic similarity(+mirror) transforms as ``F.affine_grid`` matrices.

    source = Dn^-1 R Dn (Fm x) / zoom + t, with Dn = diag(n_x/2, n_y/2[, n_z/2]) converting
    normalised to pixel units (so the rotation is rigid in pixels) and Fm = diag(+-1).

    Args:
        spatial_shape: S = (H, W) or (D, H, W).
        angles_deg: (B,) for 2D (positive = counter-clockwise in (x, y); +90 deg reproduces
            ``torch.rot90(x, 1, dims=(-2, -1))`` on square images), (B, 3) rotations about the
            x, y, z axes for 3D.
        zoom: (B,) content zoom factors (> 0).
        translation: (B, d) in normalised units, grid order (x, y[, z]).
        mirror: optional (B, d) bool, grid order (x, y[, z]); True flips that axis.
    Returns:
        theta (B, d, d + 1), dtype/device of ``zoom``.
    """
    s = _shape(spatial_shape)
    d = len(s)
    zoom = zoom.reshape(-1)
    B, dev, dt = zoom.shape[0], zoom.device, zoom.dtype
    n = torch.tensor(list(reversed(s)), device=dev, dtype=dt) / 2.0  # (x, y[, z]) half extents
    R = _rotation(angles_deg.to(device=dev, dtype=dt), d)  # (B, d, d)
    M = R * n[None, None, :] / n[None, :, None]  # Dn^-1 R Dn
    M = M / zoom[:, None, None]
    if mirror is not None:
        sign = 1.0 - 2.0 * mirror.to(device=dev, dtype=dt).reshape(B, d)
        M = M * sign[:, None, :]
    t = translation.to(device=dev, dtype=dt).reshape(B, d, 1)
    return torch.cat([M, t], dim=2)


def random_affine_matrices(batch_size: int, spatial_shape: Sequence[int],
                           rotation_deg: Union[float, Tuple[float, float]] = 60.0,
                           zoom: Tuple[float, float] = (0.8, 1.2),
                           translation: Union[float, Tuple[float, float]] = 0.1,
                           mirror_prob: float = 0.5, mirror_axes: Sequence[int] = (-1,),
                           generator: Optional[torch.Generator] = None, device=None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random similarity transforms, independent per sample (MONA RandTPS defaults).

    Angles ~ U(rotation_deg) (about every axis in 3D), zoom ~ U(zoom), translation per axis
    ~ U(translation) in normalised units, each axis in ``mirror_axes`` (tensor spatial axes,
    e.g. -1 = W, MONA: horizontal only) flipped with probability ``mirror_prob`` per sample
    (MONA draws one flip for the whole batch).

    Returns:
        theta (B, d, d + 1) for :func:`affine_grid`.
    """
    s = _shape(spatial_shape)
    d = len(s)
    device = torch.device(device) if device is not None else torch.device("cpu")
    g = device_generator(generator, device)
    rot, tr = as_range(rotation_deg, "rotation_deg"), as_range(translation, "translation")
    zr = as_range(zoom, "zoom", symmetric=False)
    if zr[0] <= 0:
        raise ValueError("zoom must be > 0")
    angles = uniform((batch_size,) if d == 2 else (batch_size, 3), *rot, g, device, dtype)
    z = uniform((batch_size,), *zr, g, device, dtype)
    t = uniform((batch_size, d), *tr, g, device, dtype)
    flip = torch.rand(batch_size, d, generator=g, device=device) < mirror_prob
    allowed = torch.zeros(d, dtype=torch.bool, device=device)
    for ax in mirror_axes:
        ax = ax % d  # tensor spatial axis -> grid component d - 1 - ax
        allowed[d - 1 - ax] = True
    return affine_matrices(s, angles, z, t, flip & allowed[None, :])


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """Inverse of (B, d, d + 1) affine matrices: x = M^-1 (y - t)."""
    M, t = theta[..., :-1], theta[..., -1:]
    Mi = torch.linalg.inv(M)
    return torch.cat([Mi, -Mi @ t], dim=-1)


def affine_grid(theta: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Sampling grid (B, *S, d) of affine matrices theta (B, d, d + 1), align_corners=False."""
    s = _shape(spatial_shape)
    if theta.shape[-2:] != (len(s), len(s) + 1):
        raise ValueError(f"theta must be (B, {len(s)}, {len(s) + 1}) for spatial shape {s}")
    return F.affine_grid(theta, (theta.shape[0], 1) + s, align_corners=False)


def tps_control_points(n_points: int, d: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Regular n_points^d lattice on [-1, 1]^d, (N, d) in grid order (x, y[, z])."""
    check_spatial_dims(d, "tps_control_points")
    if n_points < 2:
        raise ValueError("n_points must be >= 2")
    lin = torch.linspace(-1, 1, n_points, device=device, dtype=dtype)
    mesh = torch.meshgrid(*([lin] * d), indexing="ij")  # mesh[k] varies along axis k
    return torch.stack([m.reshape(-1) for m in reversed(mesh)], dim=-1)


def _tps_kernel(r2: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:  # U(r) = r^2 log r^2, U(0) = 0
        return torch.where(r2 > 0, r2 * torch.log(r2.clamp_min(1e-30)), torch.zeros_like(r2))
    return torch.sqrt(r2)  # 3D biharmonic kernel |r| (sign absorbed into the weights)


def _tps_displacement(points: torch.Tensor, control: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Interpolating TPS of control-point displacements, evaluated at points.

    points (M, d), control (N, d), values (B, N, d) -> (B, M, d). Zero values give exact zeros.
    """
    N, d = control.shape
    c64 = control.double()
    K = _tps_kernel(torch.cdist(c64, c64) ** 2, d)
    P = torch.cat([torch.ones(N, 1, dtype=c64.dtype, device=c64.device), c64], dim=1)  # (N, d+1)
    L = torch.zeros(N + d + 1, N + d + 1, dtype=c64.dtype, device=c64.device)
    L[:N, :N], L[:N, N:], L[N:, :N] = K, P, P.T
    rhs = torch.cat([values.double(), values.new_zeros(values.shape[0], d + 1, d).double()], dim=1)
    coef = torch.linalg.solve(L, rhs).to(points.dtype)  # (B, N+d+1, d)
    U = _tps_kernel(torch.cdist(points, control.to(points.dtype)) ** 2, d)  # (M, N)
    A = torch.cat([U, torch.ones_like(points[:, :1]), points], dim=1)  # (M, N+d+1)
    return torch.einsum("mk,bkd->bmd", A, coef)


def tps_grid(theta: torch.Tensor, control_displacement: torch.Tensor, spatial_shape: Sequence[int],
             n_points: int = 5, max_eval_elements: int = 2 ** 24) -> torch.Tensor:
    """Thin-plate-spline warp composed with an affine transform.

    source(x) = M (x + u(x)) + t, where u is the TPS interpolating ``control_displacement`` at
    the n_points^d lattice :func:`tps_control_points`. Zero displacements and identity theta give
    the identity grid exactly. If prod(S) * N exceeds ``max_eval_elements`` (large 3D patches) u
    is evaluated on a coarser lattice and interpolated (it is smooth).

    Args:
        theta: (B, d, d + 1) affine matrices.
        control_displacement: (B, n_points^d, d) in normalised units, grid order.
        spatial_shape: S.
    Returns:
        grid (B, *S, d), dtype/device of theta.
    """
    s = _shape(spatial_shape)
    d, B = len(s), theta.shape[0]
    control = tps_control_points(n_points, d, theta.device, theta.dtype)
    if control_displacement.shape != (B, control.shape[0], d):
        raise ValueError(f"control_displacement must be ({B}, {control.shape[0]}, {d}), "
                         f"got {tuple(control_displacement.shape)}")
    n_pix = math.prod(s)
    if n_pix * control.shape[0] <= max_eval_elements:
        base = identity_grid(1, s, theta.device, theta.dtype)
        u = _tps_displacement(base.reshape(-1, d), control, control_displacement.to(theta.dtype))
        u = u.reshape((B,) + s + (d,))
    else:
        f = (n_pix * control.shape[0] / max_eval_elements) ** (1.0 / d)
        coarse = tuple(max(2, int(math.ceil(n / f))) for n in s)
        cbase = identity_grid(1, coarse, theta.device, theta.dtype)
        u = _tps_displacement(cbase.reshape(-1, d), control, control_displacement.to(theta.dtype))
        u = u.reshape((B,) + coarse + (d,)).movedim(-1, 1)
        u = F.interpolate(u, size=s, mode="bilinear" if d == 2 else "trilinear", align_corners=False)
        u = u.movedim(1, -1)
    pts = identity_grid(1, s, theta.device, theta.dtype) + u  # (B, *S, d)
    M, t = theta[:, :, :d], theta[:, :, d]
    flat = pts.reshape(B, -1, d)
    src = torch.einsum("bij,bmj->bmi", M, flat) + t[:, None, :]
    return src.reshape((B,) + s + (d,))


def random_smooth_displacement_grid(batch_size: int, spatial_shape: Sequence[int], max_displacement: float = 3.0,
                                    grid_spacing: int = 8, smoothing_sigma: float = 1.0,
                                    integration_steps: int = 0, generator: Optional[torch.Generator] = None,
                                    device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Small smooth random deformation (AdvMorph-like, without adversarial optimisation).

    A coarse velocity field (one vector per ``grid_spacing`` pixels, MONA/E.2: patch / 8) with
    components ~ U(-1, 1) is Gaussian-smoothed (``smoothing_sigma`` in coarse cells), upsampled
    to S, and scaled per sample so that its largest vector is ``max_displacement`` pixels. With
    ``integration_steps`` = n > 0 it is treated as a stationary velocity field and integrated by
    n scaling-and-squaring steps (diffeomorphic; the realised maximum then differs a little from
    ``max_displacement``). MONA's measured displacement at 256^2: mean ~1.3 px, max ~4-5 px.

    Returns:
        grid (B, *S, d), normalised coordinates, align_corners=False.
    """
    s = _shape(spatial_shape)
    d = len(s)
    device = torch.device(device) if device is not None else torch.device("cpu")
    g = device_generator(generator, device)
    coarse = tuple(max(2, int(math.ceil(n / float(grid_spacing)))) for n in s)
    v = uniform((batch_size, d) + coarse, -1.0, 1.0, g, device, torch.float32)  # channels = (x, y[, z])
    if smoothing_sigma > 0:
        v = gaussian_blur(v, float(smoothing_sigma), padding_mode="replicate")
    v = F.interpolate(v, size=s, mode="bilinear" if d == 2 else "trilinear", align_corners=False)
    norm = v.pow(2).sum(1, keepdim=True).sqrt()  # pixels (arbitrary units so far)
    vmax = norm.reshape(batch_size, -1).amax(1).clamp_min(1e-12)
    v = v * (float(max_displacement) / vmax).view((batch_size,) + (1,) * (d + 1))
    px_to_norm = 2.0 / torch.tensor(list(reversed(s)), device=device, dtype=torch.float32)
    v = v * px_to_norm.view((1, d) + (1,) * d)  # normalised units
    base = identity_grid(1, s, device, torch.float32)
    if integration_steps > 0:
        v = v / (2 ** integration_steps)
        for _ in range(integration_steps):
            v = v + F.grid_sample(v, base + v.movedim(1, -1), mode="bilinear", padding_mode="border",
                                  align_corners=False)
    return (base + v.movedim(1, -1)).to(dtype)


def valid_mask_from_grid(grid: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, *S) bool: True where the source location lies inside the input ([-1, 1]^d)."""
    return (grid.abs() <= 1.0 + eps).all(dim=-1)


def warp(tensor: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros",
         fill_value: Optional[float] = None) -> torch.Tensor:
    """Resample ``tensor`` with a sampling grid.

    Args:
        tensor: (B, C, *S_in) or (B, *S_in) (e.g. labels); floating, integer or bool.
        grid: (B, *S, d) or (1, *S, d) normalised grid (align_corners=False).
        mode: 'bilinear' or 'nearest' (integer/bool tensors require 'nearest'; values are then
            preserved exactly, so labels keep their set of values, plus 0 out of bounds with
            zero padding).
        padding_mode: grid_sample padding: 'zeros', 'border' or 'reflection'.
        fill_value: if given, output pixels whose source is outside the input are set to it
            (e.g. -1 = ignore for labels, 0 for confidences).
    Returns:
        (B, C, *S) or (B, *S), dtype and device of ``tensor``.
    """
    d = grid.ndim - 2
    check_spatial_dims(d, "warp grid")
    if grid.shape[-1] != d:
        raise ValueError(f"grid last axis must be {d}, got {tuple(grid.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if tensor.ndim == d + 1:
        x, squeeze = tensor.unsqueeze(1), True
    elif tensor.ndim == d + 2:
        x, squeeze = tensor, False
    else:
        raise ValueError(f"tensor must be (B, C, *S) or (B, *S) with {d} spatial dims, got {tuple(tensor.shape)}")
    B = x.shape[0]
    if grid.shape[0] not in (1, B):
        raise ValueError(f"grid batch {grid.shape[0]} does not match tensor batch {B}")
    grid = grid.expand((B,) + tuple(grid.shape[1:]))
    is_float = tensor.dtype.is_floating_point
    if not is_float and mode != "nearest":
        raise ValueError("integer/bool tensors can only be warped with mode='nearest'")
    if is_float and tensor.dtype in (torch.float32, torch.float64):
        work = x
    else:
        work = x.float()  # integer labels: exact up to 2^24
    out = F.grid_sample(work, grid.to(work.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)
    if fill_value is not None:
        inside = valid_mask_from_grid(grid).unsqueeze(1)
        out = out.masked_fill(~inside, fill_value)
    if not is_float:
        out = torch.round(out) if tensor.dtype != torch.bool else out > 0.5
    out = out.to(tensor.dtype)
    return out.squeeze(1) if squeeze else out


class RandomWarp:
    """Random spatial warp generator returning ``(grid, valid_mask)``.

    kind:
        'tps' (default, MONA's RandTPS): similarity (rotation ~ U(rotation_deg), zoom ~ U(zoom),
            translation ~ U(translation), mirror) composed with a TPS whose
            ``tps_points``^d control points are jittered by U(-tps_sigma, tps_sigma).
        'affine': the similarity only.
        'smooth': :func:`random_smooth_displacement_grid` (AdvMorph-like), using
            ``max_displacement``, ``grid_spacing``, ``smoothing_sigma``, ``integration_steps``.

    Defaults are MONA's equivariance warp (A.3.3(6)): 5x5 points, sigma 0.01, rotation +-60 deg,
    zoom [0.8, 1.2], translation +-0.1, horizontal mirror p = 0.5 (drawn per sample here).

    Call: ``warp_gen(batch_size, spatial_shape, device=None, dtype=torch.float32, generator=None)``
    -> grid (B, *S, d) and valid_mask (B, *S) bool (source inside the input). Apply the same grid
    to images, logits, labels (mode='nearest') and masks with :func:`warp`.
    """

    def __init__(self, kind: str = "tps", rotation_deg: Union[float, Tuple[float, float]] = 60.0,
                 zoom: Tuple[float, float] = (0.8, 1.2), translation: Union[float, Tuple[float, float]] = 0.1,
                 mirror_prob: float = 0.5, mirror_axes: Sequence[int] = (-1,), tps_points: int = 5,
                 tps_sigma: float = 0.01, max_displacement: float = 3.0, grid_spacing: int = 8,
                 smoothing_sigma: float = 1.0, integration_steps: int = 0):
        if kind not in ("tps", "affine", "smooth"):
            raise ValueError(f"kind must be 'tps', 'affine' or 'smooth', got {kind!r}")
        self.kind = kind
        self.rotation_deg, self.zoom, self.translation = rotation_deg, zoom, translation
        self.mirror_prob, self.mirror_axes = float(mirror_prob), tuple(mirror_axes)
        self.tps_points, self.tps_sigma = int(tps_points), float(tps_sigma)
        self.max_displacement, self.grid_spacing = float(max_displacement), int(grid_spacing)
        self.smoothing_sigma, self.integration_steps = float(smoothing_sigma), int(integration_steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def __call__(self, batch_size: int, spatial_shape: Sequence[int], device=None, dtype: torch.dtype = torch.float32,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        s = _shape(spatial_shape)
        d = len(s)
        device = torch.device(device) if device is not None else torch.device("cpu")
        g = device_generator(generator, device)
        if self.kind == "smooth":
            grid = random_smooth_displacement_grid(batch_size, s, self.max_displacement, self.grid_spacing,
                                                   self.smoothing_sigma, self.integration_steps, g, device, dtype)
        else:
            theta = random_affine_matrices(batch_size, s, self.rotation_deg, self.zoom, self.translation,
                                           self.mirror_prob, self.mirror_axes, g, device, dtype)
            if self.kind == "affine":
                grid = affine_grid(theta, s)
            else:
                n = self.tps_points ** d
                jitter = uniform((batch_size, n, d), -self.tps_sigma, self.tps_sigma, g, device, dtype)
                grid = tps_grid(theta, jitter, s, self.tps_points)
        return grid, valid_mask_from_grid(grid)
