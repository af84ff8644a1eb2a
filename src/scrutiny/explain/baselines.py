"""Reference inputs ("baselines") for path and perturbation methods."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from scrutiny.errors import InputError

BASELINES: tuple[str, ...] = ("zero", "blur", "uniform")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``(N, C, H, W)`` with reflect padding."""
    if sigma <= 0:
        return x.clone()
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad_h, pad_w = min(r, x.shape[2] - 1), min(r, x.shape[3] - 1)
    y = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    kh = k[r - pad_h:r + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    kw = k[r - pad_w:r + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    y = F.conv2d(y, kh, groups=c)
    return F.conv2d(y, kw, groups=c)


def check_baseline(name: str, value: object, extra: tuple[str, ...] = ()) -> None:
    """Check of a baseline hyperparameter (``param(check=...)``): a name of
    :data:`BASELINES` (or of ``extra``), a number or a tensor."""
    if isinstance(value, torch.Tensor) or (isinstance(value, int | float)
                                           and not isinstance(value, bool)):
        return
    names = extra + BASELINES
    if not isinstance(value, str) or value not in names:
        raise InputError(f"unknown {name} {value!r}; accepted: {', '.join(names)}, a number or "
                         "a tensor")


def check_fill(name: str, value: object) -> None:
    """:func:`check_baseline` that also accepts ``"mean"`` (each input's own mean)."""
    check_baseline(name, value, extra=("mean",))


def make_baseline(spec: str | float | torch.Tensor, x: torch.Tensor,
                  bounds: tuple[float, float], blur_sigma: float = 2.0) -> torch.Tensor:
    """Baseline for ``x``: ``"zero"`` (the lower bound, black), ``"blur"`` (Gaussian
    blur of ``x``), ``"uniform"`` (noise in the bounds, uses torch's RNG), a number
    (constant input) or a tensor broadcastable to ``x``."""
    lo, hi = bounds
    if isinstance(spec, torch.Tensor):
        try:
            return torch.broadcast_to(spec.to(x), x.shape).clone()
        except RuntimeError as e:
            raise InputError(f"baseline of shape {tuple(spec.shape)} does not broadcast to x "
                             f"of shape {tuple(x.shape)}") from e
    if isinstance(spec, int | float) and not isinstance(spec, bool):
        return torch.full_like(x, float(spec))
    if spec == "zero":
        return torch.full_like(x, max(lo, 0.0) if lo <= 0 <= hi else lo)
    if spec == "uniform":
        return torch.rand_like(x) * (hi - lo) + lo
    if spec == "blur":
        if x.dim() != 4:
            raise InputError("the 'blur' baseline needs images (N, C, H, W); use 'zero' or a "
                             "tensor for tabular data")
        return gaussian_blur(x, blur_sigma)
    raise InputError(f"unknown baseline {spec!r}; accepted: {', '.join(BASELINES)}, a number "
                     "or a tensor")
