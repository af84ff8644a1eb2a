"""Differentiable random image transformations shared by EOT, stickers and patches.

Every transformation is a batched :func:`torch.nn.functional.affine_grid` /
:func:`~torch.nn.functional.grid_sample` warp (rotation, scaling,
translation) followed by an additive brightness change, drawn independently
per image from torch's RNG (seeded by :class:`~scrutiny.attacks.base.Attack`),
so gradients flow through the transformation to the input, as Expectation
over Transformation needs (Athalye et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from scrutiny.errors import InputError


def check_scale(name: str, value: Sequence[float]) -> tuple[float, float]:
    """A scale range ``(low, high)`` with ``0 < low <= high``, as a tuple (a ``param`` check)."""
    if (not isinstance(value, tuple | list) or len(value) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            or not 0 < value[0] <= value[1]):
        raise InputError(f"{name} must be a pair (low, high) with 0 < low <= high, got {value!r}")
    return (value[0], value[1])


def sample_affine(n: int, *, rotation: float, scale: Sequence[float], translate: float,
                  device: torch.device | None = None, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """``n`` random forward affine maps ``(n, 2, 3)`` in normalised image coordinates.

    Each maps a point ``p`` of the source image to ``s R(a) p + t`` with angle
    ``a ~ U(-rotation, rotation)`` degrees, scale ``s ~ U(scale)`` and shift
    ``t ~ U(-2 translate, 2 translate)`` per axis (normalised coordinates span
    ``[-1, 1]``, so ``translate`` is a fraction of the image side).
    """
    u = torch.rand(n, 4, device=device, dtype=dtype)
    ang = (2 * u[:, 0] - 1) * math.radians(rotation)
    lo, hi = float(scale[0]), float(scale[1])
    s = lo + (hi - lo) * u[:, 1]
    t = (2 * u[:, 2:] - 1) * 2 * translate
    cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
    row0 = torch.stack([cos, -sin, t[:, 0]], dim=1)
    row1 = torch.stack([sin, cos, t[:, 1]], dim=1)
    return torch.stack([row0, row1], dim=1)


def invert_affine(forward: torch.Tensor) -> torch.Tensor:
    """The inverse maps ``(n, 2, 3)`` (what :func:`affine_grid` expects: output to source)."""
    a, t = forward[:, :, :2], forward[:, :, 2:]
    a_inv = torch.linalg.inv(a)
    return torch.cat([a_inv, -a_inv @ t], dim=2)


def warp(x: torch.Tensor, forward: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Move the content of ``x`` (N, C, H, W) by the forward maps ``(N, 2, 3)``.

    Bilinear sampling; pixels that come from outside the image take ``fill``.
    """
    theta = invert_affine(forward).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False) + fill


def random_transform(x: torch.Tensor, *, rotation: float, scale: Sequence[float], translate: float,
                     brightness: float, bounds: tuple[float, float]) -> torch.Tensor:
    """One fresh random transformation per image of ``x``, differentiable in ``x``.

    Rotation, scaling and translation (:func:`sample_affine`, background filled
    with the lower bound), then a brightness shift ``b ~ U(-brightness,
    brightness)`` times the input range per image, then clipping to ``bounds``.

    Examples
    --------
    >>> x = torch.rand(4, 1, 8, 8)
    >>> random_transform(x, rotation=10, scale=(0.9, 1.1), translate=0.1, brightness=0.1,
    ...                  bounds=(0.0, 1.0)).shape
    torch.Size([4, 1, 8, 8])
    """
    lo, hi = bounds
    out = x
    if rotation or translate or tuple(scale) != (1, 1):
        fwd = sample_affine(len(x), rotation=rotation, scale=scale, translate=translate,
                            device=x.device, dtype=x.dtype)
        out = warp(out, fwd, fill=lo)
    if brightness:
        b = (2 * torch.rand(len(x), device=x.device, dtype=x.dtype) - 1) * brightness * (hi - lo)
        out = out + b.view(-1, *([1] * (x.dim() - 1)))
    return out.clamp(lo, hi)
