"""Localisation: the pointing game (Zhang et al.)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scrutiny.errors import InputError
from scrutiny.metrics.base import Metric, MetricResult, degenerate, metric_twin, nanmean, unit_map
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags


def check_masks(masks: object, x: torch.Tensor) -> torch.Tensor:
    """Ground-truth regions as a bool tensor ``(N, H, W)`` (from ``(N, 1, H, W)`` too)."""
    if masks is None:
        raise InputError("the pointing game needs masks= (the ground-truth regions, e.g. "
                         "make_synthetic(...).masks)")
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if tuple(masks.shape) != (n, h, w):
        raise InputError(f"masks must have shape ({n}, 1, {h}, {w}) or ({n}, {h}, {w}), "
                         f"got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        if masks.is_floating_point() and not torch.all((masks == 0) | (masks == 1)):
            raise InputError("masks must be boolean (or contain only 0 and 1)")
        masks = masks != 0
    return masks


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean distance ``radius`` of a mask pixel (``(N, H, W)`` bool)."""
    r = int(radius)
    if r < 1:
        return masks
    t = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disc = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).float()[None, None]
    out = F.conv2d(masks[:, None].float(), disc, padding=r)[:, 0]
    return out > 0.5


@dataclass(kw_only=True)
class PointingResult(MetricResult):
    """``scores``: 1 for a hit, 0 for a miss, NaN for a sample without a region or
    with a constant map (no maximum to point with; ``undefined`` says which);
    ``aggregate``: the hit rate over the samples scored.

    Attributes
    ----------
    points : Tensor
        (N, 2) row and column of each map's maximum.
    class_accuracy : dict of int to float
        Hit rate per target class (the paper's per-category accuracy).
    mean_class_accuracy : float
        Their mean, the number the paper reports.
    chance : float
        Expected hit rate of a uniformly random point: the mean fraction of
        the image within ``tolerance`` of the region, over the samples scored.
    """

    points: torch.Tensor
    class_accuracy: dict[int, float]
    mean_class_accuracy: float
    chance: float
    tolerance: float


@register("metric", "pointing_game", paper="Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. "
          "Top-down neural attention by excitation backprop. ECCV 2016")
class PointingGame(Metric):
    """Pointing game: does the map's maximum fall on the object of the target class?

    For each sample the location of the map's maximum (image attributions
    summed over channels; the first maximum in raster order on ties) is a
    *hit* when it lies within ``tolerance`` pixels (Euclidean) of the
    ground-truth region, a *miss* otherwise (Zhang et al., Section 5.1: the
    accuracy ``hits / (hits + misses)``, computed per category and
    averaged). Samples whose region is empty are skipped (NaN score), as the
    paper only scores categories present in the image, and so are constant
    maps (all zero, say), which point nowhere; ``undefined`` counts both.

    Parameters
    ----------
    tolerance : float, optional
        Radius in pixels; default the paper's 15 pixels at 224x224 scaled to
        the image's smaller side (2.1 pixels at 32x32).

    References
    ----------
    .. [1] Zhang, Bargal, Lin, Brandt, Shen, Sclaroff. "Top-down neural
       attention by excitation backprop". ECCV 2016 (IJCV 2018).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import make_synthetic
    >>> data = make_synthetic(split="test")
    >>> res = PointingGame()(pretrained("synthetic-cnn", progress=False), data.x[:16],
    ...                      data.y[:16], explainer="saliency", masks=data.masks[:16])
    >>> res.aggregate > 0.8, round(res.chance, 2)  # measured: 15 of 16 hits (16 on seed 1)
    (True, 0.12)
    """

    tags = Tags(image_only=True)
    call_data = ("masks",)

    tolerance: float | None = param(None, nonneg=True)

    def _evaluate(self, model, x, target, explainer, attributions, seed, masks=None):
        masks = check_masks(masks, x).to(x.device)
        attr = self._explain(explainer, attributions, model, x, target, seed)
        maps = unit_map(attr, x)
        n, h, w = maps.shape
        tol = self.tolerance if self.tolerance is not None else 15.0 * min(h, w) / 224.0
        flat = maps.flatten(1).argmax(dim=1)
        rows, cols = flat // w, flat % w
        near = dilate(masks, tol)
        hit = near[torch.arange(n, device=x.device), rows, cols]
        present = masks.flatten(1).any(dim=1)
        flat_map = torch.stack(list(degenerate(maps).values())).any(dim=0)
        scored = present & ~flat_map
        scores = torch.where(scored, hit.double(),
                             torch.full_like(hit, float("nan"), dtype=torch.float64))
        why = [f"{int(m.sum())} of {n} samples {what}" for m, what in (
            (~present, "have no ground-truth region"),
            (present & flat_map, "have a constant map, which points nowhere")) if bool(m.any())]
        per_class = {int(c): nanmean(scores[target == c]) for c in target[scored].unique()}
        mean_cls = sum(per_class.values()) / len(per_class) if per_class else float("nan")
        chance = nanmean(torch.where(scored, near.flatten(1).double().mean(dim=1),
                                     torch.tensor(float("nan"), dtype=torch.float64,
                                                  device=x.device)))
        return PointingResult(scores=scores.cpu(), aggregate=nanmean(scores), target=target.cpu(),
                              points=torch.stack([rows, cols], dim=1).cpu(),
                              class_accuracy=per_class, mean_class_accuracy=mean_cls,
                              chance=chance, tolerance=tol, meta={"tolerance": tol},
                              undefined="; ".join(why) or None)


pointing_game = metric_twin(PointingGame, "pointing_game")
