"""Random-number helpers shared by the augmentation blocks (private).

All augmentation functions take an optional ``torch.Generator``. Random draws are made on the
device of the data so that nothing has to be copied between host and accelerator per pixel:
if the caller's generator lives on another device (typically a CPU generator with CUDA data),
one 63-bit seed is drawn from it and used to seed a fresh generator on the data device. The
result is deterministic for a seeded generator, but CPU and CUDA streams differ (as always in
PyTorch), so a seeded CPU run and a seeded CUDA run are not bit-identical.
"""
from typing import Optional, Sequence, Union

import torch


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    ia = a.index if a.index is not None else torch.cuda.current_device() if a.type == "cuda" else 0
    ib = b.index if b.index is not None else torch.cuda.current_device() if b.type == "cuda" else 0
    return ia == ib


def device_generator(generator: Optional[torch.Generator],
                     device: Union[str, torch.device, None]) -> Optional[torch.Generator]:
    """Return a generator usable for draws on ``device`` (``None`` -> global RNG)."""
    if generator is None:
        return None
    device = torch.device(device) if device is not None else torch.device("cpu")
    if _same_device(generator.device, device):
        return generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def uniform(shape: Sequence[int], low, high, generator: Optional[torch.Generator], device,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(low, high) of the given shape on ``device`` (``generator`` must already suit ``device``)."""
    r = torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
    return low + (high - low) * r


def as_range(value, name: str, symmetric: bool = True):
    """``x`` -> ``(-x, x)`` (or ``(x, x)`` if not symmetric); a pair is returned unchanged."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a (low, high) pair, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
    else:
        lo, hi = (-float(value), float(value)) if symmetric else (float(value), float(value))
    if lo > hi:
        raise ValueError(f"{name}: low > high in {value!r}")
    return lo, hi


def check_spatial_dims(n: int, what: str = "input") -> None:
    if n not in (2, 3):
        raise ValueError(f"{what}: only 2D (spatial shape (H, W)) and 3D (spatial shape (D, H, W)) data "
                         f"are supported, got {n} spatial dimension(s)")
