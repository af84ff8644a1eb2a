"""Regularisers of feature visualisation: penalties and random transforms, each a small piece.

Unregularised activation maximisation finds high-frequency patterns that excite a unit
but look like noise (Olah et al. 2017, "Feature Visualization", section "The enemy of
feature visualization"). Three families of remedies, each selectable on its own:

- penalties added to the loss: :func:`l2_penalty` (Simonyan et al. 2014's L2 decay, the
  mean squared deviation from a centre, by default the middle of the input bounds) and
  :func:`total_variation` (the mean absolute difference of neighbouring pixels; Mahendran
  and Vedaldi 2015);
- transformation robustness: the objective is read at a randomly transformed copy of the
  image at each step, so the image must work under small shifts (:class:`Jitter`), zooms
  (:class:`Scale`) and rotations (:class:`Rotate`). The pieces are affine maps, composed by
  :func:`apply_transforms` into one resampling (one interpolation, not one per piece);
  their random draws come from torch's RNG, seeded by the method's ``seed``;
- the parametrisation of the image (pixels or decorrelated Fourier space):
  :mod:`scrutiny.explain.features.param`.

References
----------
.. [1] Olah, Mordvintsev, Schubert. "Feature Visualization". Distill 2017.
.. [2] Simonyan, Vedaldi, Zisserman. "Deep inside convolutional networks". ICLR workshop 2014.
.. [3] Mahendran, Vedaldi. "Understanding deep image representations by inverting them".
   CVPR 2015.

Examples
--------
>>> x = torch.zeros(2, 1, 8, 8)
>>> x[:, :, :, 4:] = 1.0                     # one vertical edge per image
>>> total_variation(x), l2_penalty(x, 0.5)
(tensor([0.1429, 0.1429]), tensor([0.2500, 0.2500]))
>>> y = apply_transforms(x, (Jitter(2), Rotate(10.0)))
>>> tuple(y.shape), bool(((y >= 0) & (y <= 1)).all())
((2, 1, 8, 8), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scrutiny.errors import InputError

__all__ = ["Jitter", "Rotate", "Scale", "apply_transforms", "l2_penalty", "total_variation"]


def l2_penalty(x: torch.Tensor, center: float | torch.Tensor = 0.0) -> torch.Tensor:
    """``mean((x - center)^2)`` per input (N,)."""
    return (x - center).flatten(1).pow(2).mean(1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image (N,): the mean absolute difference of vertical
    neighbours plus that of horizontal neighbours."""
    if x.dim() != 4:
        raise InputError(f"total variation needs images (N, C, H, W), got shape {tuple(x.shape)}")
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1)
    zero = x.new_zeros(len(x))
    return (dy.mean(1) if dy.shape[1] else zero) + (dx.mean(1) if dx.shape[1] else zero)


def _uniform(n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, dtype=torch.float64)


@dataclass(frozen=True)
class Jitter:
    """A random shift of up to ``pixels`` pixels along each axis (whole pixels)."""

    pixels: int

    def __post_init__(self) -> None:
        if isinstance(self.pixels, bool) or not isinstance(self.pixels, int) or self.pixels < 0:
            raise InputError(f"jitter must be an integer >= 0, got {self.pixels!r}")

    def matrix(self, n: int) -> torch.Tensor:
        """``n`` random maps (n, 3, 3) in pixel units, centred on the image's centre."""
        m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        m[:, :2, 2] = torch.randint(-self.pixels, self.pixels + 1, (n, 2)).double()
        return m


@dataclass(frozen=True)
class Scale:
    """A random zoom by a factor drawn uniformly from ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise InputError(f"scale needs 0 < low <= high, got ({self.low!r}, {self.high!r})")

    def matrix(self, n: int) -> torch.Tensor:
        s = _uniform(n, self.low, self.high)
        m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        m[:, 0, 0] = m[:, 1, 1] = s
        return m


@dataclass(frozen=True)
class Rotate:
    """A random rotation by an angle drawn uniformly from ``[-degrees, degrees]``."""

    degrees: float

    def __post_init__(self) -> None:
        if not self.degrees >= 0:
            raise InputError(f"rotate must be >= 0 degrees, got {self.degrees!r}")

    def matrix(self, n: int) -> torch.Tensor:
        a = _uniform(n, -self.degrees, self.degrees) * math.pi / 180
        m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
        return m


def apply_transforms(x: torch.Tensor, transforms: Sequence[Jitter | Scale | Rotate]
                     ) -> torch.Tensor:
    """``x`` (N, C, H, W) under one random draw of each transform per image, composed into
    one affine map and resampled once (bilinear, reflected at the borders)."""
    if not transforms:
        return x
    if x.dim() != 4:
        raise InputError(f"transforms need images (N, C, H, W), got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    m = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    for t in transforms:
        m = t.matrix(n) @ m  # the map of the output image (pixel units, centred)
    # affine_grid wants the inverse map (output -> input) in normalised units
    to_norm = torch.diag(torch.tensor([2 / w, 2 / h, 1.0], dtype=torch.float64))
    theta = to_norm @ torch.linalg.inv(m) @ torch.linalg.inv(to_norm)
    grid = F.affine_grid(theta[:, :2].to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
