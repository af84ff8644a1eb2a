"""Occlusion: the drop of the class score when a sliding window is hidden."""

from __future__ import annotations

import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.explain.baselines import check_fill, make_baseline
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags
from scrutiny.validation import check_positive


def _pair(v: int | tuple[int, ...], name: str, dims: int) -> tuple[int, ...]:
    t = (v,) * dims if isinstance(v, int) and not isinstance(v, bool) else tuple(v)
    if len(t) != dims:
        raise InputError(f"{name} must be an int or a tuple of {dims} ints, got {v!r}")
    for s in t:
        check_positive(name, s, integer=True)
    return t


def _check_size(name: str, v: object) -> int | tuple[int, ...]:
    """An int or an ``(h, w)`` tuple of positive ints (a list is stored as a tuple)."""
    if isinstance(v, list):
        v = tuple(v)
    if not isinstance(v, int | tuple) or isinstance(v, bool):
        raise InputError(f"{name} must be an int or a tuple of 2 ints, got {v!r}")
    _pair(v, name, 2 if isinstance(v, tuple) else 1)
    return v


def _starts(size: int, window: int, stride: int) -> torch.Tensor:
    """Window starts ``0, stride, ...``, plus the last position so the edge is covered."""
    last = max(size - window, 0)
    s = list(range(0, last + 1, stride))
    if s[-1] != last:
        s.append(last)
    return torch.tensor(s)


@register("explainer", "occlusion", paper="Zeiler, Fergus. Visualizing and understanding "
          "convolutional networks. ECCV 2014", test_params={"window": 1})
class Occlusion(Explainer):
    """Occlusion sensitivity: ``R_i = mean_{p covers i} [f(x) - f(x with window p filled)]``.

    A window slides over the input (images: ``h x w`` pixels through all
    channels; tables ``(N, D)``: consecutive features) and is replaced by the
    baseline's values there; the attribution of an element is the drop of the
    target logit averaged over the windows that cover it. Positions are ``0,
    stride, 2 stride, ...`` plus the last one, so every element is covered.
    All occluded copies of all inputs go through the model in chunks of
    ``batch_size`` (one forward per chunk). Images give maps ``(N, H, W)``,
    tables ``(N, D)``. Only forward passes: it also explains a
    :class:`~scrutiny.models.QueryModel` (an endpoint), one query per occluded
    input plus one per input.

    Parameters
    ----------
    window : int or (int, int)
        Window size (``(h, w)`` for images, an int for tables).
    stride : int or (int, int)
        Step between window positions.
    baseline : {"mean", "zero", "blur", "uniform"}, float or Tensor
        What replaces the occluded elements: ``"mean"`` is each input's own
        mean (per channel for images; the grey square of the paper), the
        others are those of :func:`scrutiny.explain.baselines.make_baseline`.
    blur_sigma : float
        Gaussian sigma (pixels) of the ``"blur"`` baseline.
    batch_size : int
        Occluded inputs per forward pass.

    References
    ----------
    .. [1] Zeiler, Fergus. "Visualizing and understanding convolutional
       networks". ECCV 2014.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> Occlusion(window=2)(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 8, 8])
    """

    tags = Tags(white_box=False)

    window: int | tuple[int, int] = param(3, check=_check_size)
    stride: int | tuple[int, int] = param(1, check=_check_size)
    baseline: str | float | torch.Tensor = param("mean", check=check_fill)
    blur_sigma: float = param(2.0, nonneg=True)
    batch_size: int = param(512, integer=True, positive=True)

    def _fill(self, x: torch.Tensor, bounds) -> torch.Tensor:
        if isinstance(self.baseline, str) and self.baseline == "mean":
            dims = tuple(range(2, x.dim())) if x.dim() == 4 else tuple(range(1, x.dim()))
            return x.mean(dim=dims, keepdim=True).expand_as(x)
        return make_baseline(self.baseline, x, bounds, self.blur_sigma)

    def linear_oracle(self, w, x):
        """Closed form on ``f = w.x + b`` with ``window=1, stride=1``: ``sum_c w (x - fill)``."""
        if self.window not in (1, (1, 1)) or self.stride not in (1, (1, 1)):
            raise InputError("the closed form needs window=1 and stride=1")
        r = w * (x - self._fill(x, (0.0, 1.0)))
        return r.sum(dim=1) if x.dim() == 4 else r

    def _explain(self, model, x, target):
        if x.dim() == 4:
            space = x.shape[2:]
        elif x.dim() == 2:
            space = x.shape[1:]
        else:
            raise InputError(f"occlusion needs images (N, C, H, W) or tables (N, D), got shape "
                             f"{tuple(x.shape)}")
        win = _pair(self.window, "window", len(space))
        step = _pair(self.stride, "stride", len(space))
        if any(w > s for w, s in zip(win, space, strict=True)):
            raise InputError(f"window {win} is larger than the input {tuple(space)}")
        fill = self._fill(x, model.bounds)
        starts = [_starts(s, w, st).to(x.device) for s, w, st in zip(space, win, step, strict=True)]
        grid = torch.cartesian_prod(*starts).view(-1, len(space))  # (P, dims)
        coords = [torch.arange(s, device=x.device) for s in space]

        def masks(p: torch.Tensor) -> torch.Tensor:  # (k,) window indices -> (k, *space) bool
            m = None
            for d, (c, w) in enumerate(zip(coords, win, strict=True)):
                lo = grid[p, d].view(-1, *([1] * len(space)))
                cd = c.view(*([1] * (d + 1)), -1, *([1] * (len(space) - d - 1)))
                md = (cd >= lo) & (cd < lo + w)
                m = md if m is None else m & md
            return m

        n, npos = len(x), len(grid)
        with torch.no_grad():
            fx = model(x).gather(1, target[:, None])[:, 0]
            total = x.new_zeros((n, *space))
            for chunk in torch.arange(n * npos, device=x.device).split(self.batch_size):
                i, p = chunk // npos, chunk % npos
                m = masks(p)
                mc = m[:, None] if x.dim() == 4 else m
                xo = torch.where(mc, fill[i], x[i])
                drop = fx[i] - model(xo).gather(1, target[i][:, None])[:, 0]
                total.index_add_(0, i, drop.view(-1, *([1] * len(space))) * m)
        # windows covering each element: a product of per-axis counts (the grid is a product)
        count = x.new_ones(space)
        for d, (c, st, w) in enumerate(zip(coords, starts, win, strict=True)):
            cd = ((c[:, None] >= st[None]) & (c[:, None] < st[None] + w)).sum(1).to(x.dtype)
            count = count * cd.view(*([1] * d), -1, *([1] * (len(space) - d - 1)))
        return total / count, {"windows": npos}


occlusion = function_twin(Occlusion, "occlusion")
