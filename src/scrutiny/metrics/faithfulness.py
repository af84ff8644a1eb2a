"""Faithfulness: deletion / insertion AUC (Petsiuk et al., RISE) and infidelity /
max-sensitivity (Yeh et al.)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from scrutiny.explain.baselines import check_baseline, make_baseline
from scrutiny.metrics.base import (
    Metric,
    MetricResult,
    metric_twin,
    nanmean,
    to_units,
    unit_map,
)
from scrutiny.params import param
from scrutiny.registry import register

OUTPUTS: tuple[str, ...] = ("probability", "logit")


def _target_output(model, x: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    with torch.no_grad():
        z = model(x)
    if output == "probability":
        z = z.softmax(dim=1)
    return z.gather(1, target[:, None])[:, 0]


def _order(units: torch.Tensor) -> torch.Tensor:
    """Position of every unit in decreasing-relevance order ``(N, P)``; ties in random
    order (torch's RNG, seeded by the base class)."""
    n, p = units.shape
    shuffle = torch.rand(n, p, device=units.device).argsort(dim=1)
    vals = units.gather(1, shuffle)
    ranked = shuffle.gather(1, vals.argsort(dim=1, descending=True, stable=True))
    pos = torch.empty_like(ranked)
    pos.scatter_(1, ranked, torch.arange(p, device=units.device).expand(n, p).contiguous())
    return pos


@dataclass(kw_only=True)
class CurveResult(MetricResult):
    """Deletion or insertion: ``scores`` are the per-sample areas under the curve.

    Attributes
    ----------
    curves : Tensor
        (N, S + 1) output of the target class after each step (step 0: the
        input, for deletion; the baseline, for insertion).
    fractions : Tensor
        (S + 1,) fraction of the units removed / inserted at each step.
    """

    curves: torch.Tensor
    fractions: torch.Tensor


class _CausalMetric(Metric):
    """Shared code of deletion and insertion (``mode`` set by the subclass)."""

    mode: ClassVar[str] = ""

    steps: int | None = param(None, integer=True, positive=True)
    baseline: str | float | torch.Tensor = param("zero", check=check_baseline)
    blur_sigma: float | None = param(None, positive=True)
    output: str = param("probability", choices=OUTPUTS)
    batch_size: int = param(256, integer=True, positive=True)

    def _evaluate(self, model, x, target, explainer, attributions, seed):
        attr = self._explain(explainer, attributions, model, x, target, seed)
        units = unit_map(attr, x).flatten(1)
        n, p = units.shape
        steps = self.steps or (x.shape[-2] if x.dim() == 4 else p)
        steps = min(steps, p)
        per_step = math.ceil(p / steps)
        ushape = x.shape[2:] if x.dim() == 4 else x.shape[1:]
        sigma = self.blur_sigma or max(1.0, 5.0 * x.shape[-1] / 224)
        base = make_baseline(self.baseline, x, model.bounds, blur_sigma=sigma)
        pos = _order(units)
        counts = torch.clamp(torch.arange(steps + 1, device=x.device) * per_step, max=p)
        start, end = (x, base) if self.mode == "deletion" else (base, x)
        # every (sample, step) image, built and scored chunk by chunk
        total = n * (steps + 1)
        vals = []
        for lo in range(0, max(total, 1), self.batch_size):  # an empty batch: one empty chunk
            j = torch.arange(lo, min(lo + self.batch_size, total), device=x.device)
            i, k = j // (steps + 1), j % (steps + 1)
            changed = to_units((pos[i] < counts[k][:, None]).reshape(len(j), *ushape), x[i])
            xs = torch.where(changed, end[i], start[i])
            vals.append(_target_output(model, xs, target[i], self.output))
        curves = torch.cat(vals).reshape(n, steps + 1)
        fractions = counts.to(curves.dtype) / p
        auc = torch.trapezoid(curves, fractions, dim=1)
        return CurveResult(scores=auc.cpu(), aggregate=nanmean(auc), target=target.cpu(),
                           curves=curves.cpu(), fractions=fractions.cpu(),
                           meta={"steps": steps, "output": self.output})


_RISE = ("Petsiuk, Das, Saenko. RISE: randomized input sampling for explanation of black-box "
         "models. BMVC 2018")


@register("metric", "deletion", paper=_RISE, test_params={"steps": 4})
class Deletion(_CausalMetric):
    """Deletion metric: remove the most relevant pixels first; a sharp drop is good.

    Pixels are ranked by decreasing attribution (image attributions summed
    over channels, ties in seeded random order) and replaced, ``ceil(P /
    steps)`` at a time, by the baseline (default ``"zero"``, black, as in the
    paper) in every channel. After each step the probability of the target
    class is recorded; the score is the area under this curve over the
    fraction of pixels removed (trapezoid rule). **Lower is better.** All
    steps of all samples are scored in large batches.

    Parameters
    ----------
    steps : int, optional
        Number of steps; each changes ``ceil(P / steps)`` units (pixels of an
        image, elements otherwise). Default: the image height, i.e. one row
        of pixels per step (the paper's 224 pixels per step at 224x224), or
        ``P`` for non-image inputs.
    baseline : {"zero", "blur", "uniform"}, float or Tensor, optional
        What removed pixels become / the canvas pixels are inserted into
        (see :func:`scrutiny.explain.baselines.make_baseline`).
    blur_sigma : float, optional
        Sigma of the ``"blur"`` baseline; default the paper's 5 pixels at 224
        pixels scaled to the image width, at least 1.
    output : {"probability", "logit"}
        The curve follows the softmax probability of the target (the paper)
        or its logit.
    batch_size : int
        Images (all steps of all samples) per forward pass.

    References
    ----------
    .. [1] Petsiuk, Das, Saenko. "RISE: randomized input sampling for
       explanation of black-box models". BMVC 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:8]
    >>> res = Deletion()(pretrained("digits-cnn", progress=False), x,
    ...                  explainer="integrated_gradients")
    >>> res.curves.shape, res.aggregate < 0.5
    (torch.Size([8, 9]), True)
    """

    mode = "deletion"


@register("metric", "insertion", paper=_RISE, test_params={"steps": 4})
class Insertion(_CausalMetric):
    """Insertion metric: insert the most relevant pixels first; a sharp rise is good.

    Starting from the baseline (default ``"blur"``, a blurred copy of the
    image, as in the paper), pixels of the input are inserted in decreasing
    order of attribution, ``ceil(P / steps)`` at a time; the score is the
    area under the curve of the target probability over the fraction of
    pixels inserted (trapezoid rule). **Higher is better.**

    Parameters
    ----------
    steps : int, optional
        Number of steps; each changes ``ceil(P / steps)`` units (pixels of an
        image, elements otherwise). Default: the image height, i.e. one row
        of pixels per step (the paper's 224 pixels per step at 224x224), or
        ``P`` for non-image inputs.
    baseline : {"zero", "blur", "uniform"}, float or Tensor, optional
        What removed pixels become / the canvas pixels are inserted into
        (see :func:`scrutiny.explain.baselines.make_baseline`).
    blur_sigma : float, optional
        Sigma of the ``"blur"`` baseline; default the paper's 5 pixels at 224
        pixels scaled to the image width, at least 1.
    output : {"probability", "logit"}
        The curve follows the softmax probability of the target (the paper)
        or its logit.
    batch_size : int
        Images (all steps of all samples) per forward pass.

    References
    ----------
    .. [1] Petsiuk, Das, Saenko. "RISE: randomized input sampling for
       explanation of black-box models". BMVC 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:8]
    >>> res = Insertion()(pretrained("digits-cnn", progress=False), x,
    ...                   explainer="integrated_gradients")
    >>> res.fractions[[0, -1]].tolist()
    [0.0, 1.0]
    """

    mode = "insertion"
    baseline: str | float | torch.Tensor = param("blur", check=check_baseline)


deletion = metric_twin(Deletion, "deletion")
insertion = metric_twin(Insertion, "insertion")
