"""A dSprites-like dataset with known generative factors, generated (no download) and seeded."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

from scrutiny.errors import InputError

from .dataset import ArrayDataset

__all__ = ["FACTOR_SHAPES", "FactorDataset", "make_factors"]

#: The shapes of :func:`make_factors`; the label of an image is its shape's index here.
FACTOR_SHAPES: tuple[str, ...] = ("square", "ellipse", "heart", "triangle")

#: Supersampling factor of the renderer (per side): edges are anti-aliased grey.
_SUPER = 4


@dataclass(frozen=True, eq=False)
class FactorDataset:
    """Images with the generative factors that made them.

    Attributes
    ----------
    data : ArrayDataset
        The images (``x`` of shape ``(N, 1, size, size)`` in ``[0, 1]``), labelled by
        shape (``y`` indexes ``classes``, the shapes used).
    factors : torch.Tensor
        ``int64`` of shape ``(N, K)``: each image's level index of every factor.
    factor_names : tuple of str
        The ``K`` factor names, in column order.
    levels : tuple of torch.Tensor
        ``levels[k][i]``: the value of level ``i`` of factor ``k`` (the shape index;
        the scale as the shape's half-width over the image side; the centre's column and
        row in pixels; the rotation in radians).
    """

    data: ArrayDataset
    factors: torch.Tensor
    factor_names: tuple[str, ...]
    levels: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.data)

    def values(self) -> torch.Tensor:
        """The factors' values (not level indices), ``float32`` of shape ``(N, K)``."""
        return torch.stack([lv[self.factors[:, k]] for k, lv in enumerate(self.levels)], 1)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points ``(u, v)`` (shape units, ``v`` pointing down) lie inside ``shape``,
    which fills about the square ``[-1, 1]^2`` with its centre of mass near the origin."""
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1.0
    if shape == "heart":  # (x^2 + y^2 - 1)^3 <= x^2 y^3, y up, spans about 2.3 x 2.2
        x, y = u * 1.15, -(v * 1.15) + 0.3
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    # an upright equilateral triangle with its centroid at the origin
    return (v <= 0.5) & (np.abs(u) <= (v + 1.0) / math.sqrt(3))


def _render(shape: str, size: int, cx: float, cy: float, scale: float, angle: float
            ) -> np.ndarray:
    """A ``size x size`` grey image of ``shape`` centred at column ``cx``, row ``cy``
    (pixels), half-width ``scale`` (pixels), rotated by ``angle`` (radians)."""
    t = (np.arange(size * _SUPER) + 0.5) / _SUPER  # pixel coordinates of the sub-samples
    rows, cols = np.meshgrid(t, t, indexing="ij")
    dx, dy = (cols - cx) / scale, (rows - cy) / scale
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    fine = _inside(shape, u, v).astype(np.float32)
    return fine.reshape(size, _SUPER, size, _SUPER).mean((1, 3))


def make_factors(*, size: int = 16, shapes: tuple[str, ...] | list[str] = FACTOR_SHAPES,
                 scales: int = 3, positions: int = 8, rotations: int = 1, n: int | None = None,
                 seed: int = 0) -> FactorDataset:
    """Generate dSprites-like images of one white shape on black, with known factors.

    Each image is one shape (``FACTOR_SHAPES``: square, ellipse, heart, triangle) drawn
    anti-aliased (``4 x 4`` sub-samples per pixel) from independent generative factors:
    ``shape``, ``scale`` (``scales`` levels of half-width from 0.12 to 0.22 of the image
    side), ``x`` and ``y`` (``positions`` levels each of the centre's column and row,
    evenly spaced so that the largest shape stays inside the image) and, with
    ``rotations > 1``, ``rotation`` (levels evenly spaced in ``[0, 2 pi)``; the column is
    absent otherwise). Like dSprites (Matthey et al. 2017), the default is the full grid of
    every combination, in lexicographic order of the factors.

    Parameters
    ----------
    size : int, optional
        Image side in pixels, 8 to 128.
    shapes : sequence of str, optional
        The shapes to draw (a subset of ``FACTOR_SHAPES``, in any order); label ``k``
        is ``shapes[k]``.
    scales, positions, rotations : int, optional
        Number of levels of the scale, of each position coordinate and of the rotation.
    n : int, optional
        Draw ``n`` images with factors sampled uniformly and independently (seeded)
        instead of the full grid.
    seed : int, optional
        Seed of :func:`numpy.random.default_rng` (used when ``n`` is given).

    Returns
    -------
    FactorDataset
        ``data`` (an :class:`ArrayDataset` named ``"factors"``, labels = shape),
        ``factors`` (level indices), ``factor_names`` and ``levels`` (level values).

    References
    ----------
    .. [1] Matthey, Higgins, Hassabis, Lerchner. "dSprites: Disentanglement testing
       Sprites dataset". https://github.com/deepmind/dsprites-dataset, 2017.

    Examples
    --------
    >>> fd = make_factors()
    >>> len(fd), fd.factor_names, tuple(fd.data.x.shape[1:])
    (768, ('shape', 'scale', 'x', 'y'), (1, 16, 16))
    >>> fd.data.classes
    ('square', 'ellipse', 'heart', 'triangle')
    >>> bool((fd.data.y == fd.factors[:, 0]).all())
    True
    >>> len(make_factors(n=50, rotations=4, seed=1).factor_names)
    5
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 128:
        raise InputError(f"size must be an int in [8, 128], got {size!r}")
    shapes = tuple(shapes) if isinstance(shapes, list | tuple) else shapes
    if not isinstance(shapes, tuple) or not shapes or any(s not in FACTOR_SHAPES for s in shapes) \
            or len(set(shapes)) != len(shapes):
        raise InputError(f"shapes must be distinct names among {', '.join(FACTOR_SHAPES)}, "
                         f"got {shapes!r}")
    for name, value in (("scales", scales), ("positions", positions), ("rotations", rotations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be an int >= 1, got {value!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InputError(f"n must be None or an int >= 1, got {n!r}")
    half = np.linspace(0.12, 0.22, scales) if scales > 1 else np.array([0.17])
    half = half * size
    margin = half.max() * (1.15 if rotations > 1 else 1.0)  # the largest shape fits
    centres = (np.linspace(margin, size - margin, positions) if positions > 1
               else np.array([size / 2]))
    angles = np.arange(rotations) * (2 * math.pi / rotations)
    levels = [np.arange(len(shapes)), half / size, centres, centres]
    names = ["shape", "scale", "x", "y"]
    if rotations > 1:
        levels.append(angles)
        names.append("rotation")
    counts = [len(lv) for lv in levels]
    if n is None:
        idx = np.array(list(itertools.product(*(range(c) for c in counts))), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        idx = np.stack([rng.integers(0, c, n) for c in counts], 1).astype(np.int64)
    x = np.zeros((len(idx), 1, size, size), dtype=np.float32)
    for i, row in enumerate(idx):
        angle = angles[row[4]] if rotations > 1 else 0.0
        x[i, 0] = _render(shapes[row[0]], size, centres[row[2]], centres[row[3]], half[row[1]],
                          angle)
    data = ArrayDataset(x=torch.from_numpy(x), y=torch.from_numpy(idx[:, 0].copy()),
                        classes=shapes, name="factors")
    return FactorDataset(data=data, factors=torch.from_numpy(idx), factor_names=tuple(names),
                         levels=tuple(torch.tensor(lv, dtype=torch.float32) for lv in levels))
