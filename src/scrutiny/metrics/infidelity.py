"""Infidelity and max-sensitivity of explanations (Yeh et al., NeurIPS 2019)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scrutiny.errors import InputError
from scrutiny.explain.baselines import check_baseline, make_baseline
from scrutiny.metrics.base import (
    Metric,
    MetricResult,
    check_attributions,
    metric_twin,
    nanmean,
)
from scrutiny.metrics.faithfulness import OUTPUTS, _target_output
from scrutiny.params import param
from scrutiny.registry import register

PERTURBATIONS: tuple[str, ...] = ("gaussian", "noisy_baseline", "square")
NORMS: tuple[str, ...] = ("l2", "linf")
_YEH = ("Yeh, Hsieh, Suggala, Inouye, Ravikumar. On the (in)fidelity and sensitivity of "
        "explanations. NeurIPS 2019")


def _check_square_sizes(name: str, sizes: tuple) -> None:
    if not (len(sizes) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                    for s in sizes) and sizes[0] <= sizes[1]):
        raise InputError(f"{name} must be (smallest, largest) sides >= 1, got {sizes!r}")


def _broadcast_attr(attr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel maps ``(N, H, W)`` shared by the channels of ``x``; else as is."""
    return attr[:, None].expand_as(x) if attr.dim() == x.dim() - 1 else attr


@dataclass(kw_only=True)
class InfidelityResult(MetricResult):
    """``scores``: the infidelity per sample (lower is better).

    Attributes
    ----------
    beta : Tensor
        (N,) the scale applied to the attributions (1 without optimal scaling).
    """

    beta: torch.Tensor


@register("metric", "infidelity", paper=_YEH, test_params={"n_samples": 4})
class Infidelity(Metric):
    """Infidelity: how well ``I . Phi`` predicts the output change ``f(x) - f(x - I)``.

    ``INFD(Phi, f, x) = E_I[(I^T Phi(x) - (f(x) - f(x - I)))^2]`` (Yeh et al.,
    Definition 2.1), estimated with ``n_samples`` draws of the
    perturbation ``I`` per sample, all scored in batches. The perturbations
    of the paper (Section 3; their code's settings):

    * ``"noisy_baseline"``: ``I = x - x0`` with ``x0 = baseline + eps``,
      ``eps ~ N(0, sigma^2)``, clipped to the input bounds;
    * ``"square"``: *square removal*: a square of random side (uniform in
      ``square_sizes``) at a random position is set to ``baseline`` in every
      channel; ``I = x - x0``;
    * ``"gaussian"``: ``x0 = x - eps``, ``eps ~ N(0, sigma^2)``, a Gaussian
      neighbourhood of ``x`` (clipped to the bounds, ``I = x - x0``).

    With ``multiply_by_inputs=True`` (for attributions that already carry
    the factor ``x - baseline``: Integrated Gradients, input x gradient,
    occlusion, SHAP) the dot product uses the fraction of each element
    removed, ``(x - x0) / (x - baseline)`` (0 where ``x = baseline``), which
    is the paper's binary indicator of the removed pixels for square removal.
    With ``optimal_scaling=True`` the attributions are first multiplied by the
    ``beta`` minimising the estimate,
    ``beta = E[I.Phi (f(x) - f(x0))] / E[(I.Phi)^2]`` (the authors' code does
    so before reporting infidelity), which makes the score invariant to the
    scale of the map.

    The expectation is a Monte-Carlo estimate over ``n_samples``
    draws; for square removal ``n_samples=None`` averages over every
    square of every allowed side at every position instead, as the authors
    do.

    Parameters
    ----------
    perturbation : {"gaussian", "noisy_baseline", "square"}
        The distribution of the perturbation ``I`` (see above).
    n_samples : int or None
        Draws of ``I`` per sample; None (square removal only): every square.
    sigma : float
        Noise standard deviation (0.2 in the authors' code).
    square_sizes : (int, int), optional
        Smallest and largest side of the removed square; default 1 to a third
        of the smaller image side (the authors use 1 to 10 on 28x28 MNIST).
    baseline : {"zero", "blur", "uniform"}, float or Tensor
        Reference of the noisy baseline, the square removal and
        ``multiply_by_inputs``.
    multiply_by_inputs : bool
        See above.
    optimal_scaling : bool
        Scale the attributions optimally first.
    output : {"logit", "probability"}
        ``f``: the target's logit (what the explainers differentiate) or its
        softmax probability.
    batch_size : int
        Perturbed inputs per forward pass.

    References
    ----------
    .. [1] Yeh, Hsieh, Suggala, Inouye, Ravikumar. "On the (in)fidelity and
       sensitivity of explanations". NeurIPS 2019.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.testing.models import tiny_linear, tiny_images
    >>> model, x = tiny_linear(0), tiny_images(4)
    >>> res = Infidelity(optimal_scaling=False)(model, x, explainer="gradient")
    >>> bool(res.scores.abs().max() < 1e-6)
    True
    """

    perturbation: str = param("gaussian", choices=PERTURBATIONS)
    n_samples: int | None = param(100, integer=True, positive=True, optional=True)
    sigma: float = param(0.2, positive=True)
    square_sizes: tuple[int, int] | None = param(None, kind=tuple, check=_check_square_sizes)
    baseline: str | float | torch.Tensor = param("zero", check=check_baseline)
    multiply_by_inputs: bool = param(False, kind=bool)
    optimal_scaling: bool = param(True, kind=bool)
    output: str = param("logit", choices=OUTPUTS)
    batch_size: int = param(1024, integer=True, positive=True)

    def _post_init(self) -> None:
        if self.n_samples is None and self.perturbation != "square":
            raise InputError("n_samples=None (every square) needs perturbation='square'")

    def _sides(self, h: int, w: int) -> tuple[int, int]:
        smin, smax = self.square_sizes or (1, max(1, min(h, w) // 3))
        smax = min(smax, h, w)
        return min(smin, smax), smax

    def _squares(self, x: torch.Tensor) -> torch.Tensor:
        """Every square ``(side, top, left)`` of every allowed side, ``(Q, 3)``."""
        h, w = x.shape[-2:]
        smin, smax = self._sides(h, w)
        out = [torch.cartesian_prod(torch.tensor([s]), torch.arange(h - s + 1),
                                    torch.arange(w - s + 1)) for s in range(smin, smax + 1)]
        return torch.cat(out).to(x.device)

    def _perturbed(self, x: torch.Tensor, base: torch.Tensor, bounds,
                   squares: torch.Tensor | None) -> torch.Tensor:
        """Perturbed inputs ``x0``; ``squares`` (len(x), 3) fixes the removed squares."""
        lo, hi = bounds
        if self.perturbation == "gaussian":
            return (x - torch.randn_like(x) * self.sigma).clamp(lo, hi)
        if self.perturbation == "noisy_baseline":
            return (base + torch.randn_like(x) * self.sigma).clamp(lo, hi)
        h, w = x.shape[-2:]
        if squares is None:
            smin, smax = self._sides(h, w)
            n = len(x)
            side = torch.randint(smin, smax + 1, (n,), device=x.device)
            top = (torch.rand(n, device=x.device) * (h - side + 1)).floor().long()
            left = (torch.rand(n, device=x.device) * (w - side + 1)).floor().long()
        else:
            side, top, left = squares.unbind(dim=1)
        r = torch.arange(h, device=x.device)[None, :, None]
        c = torch.arange(w, device=x.device)[None, None, :]
        sq = ((r >= top[:, None, None]) & (r < (top + side)[:, None, None])
              & (c >= left[:, None, None]) & (c < (left + side)[:, None, None]))
        return torch.where(sq[:, None].expand_as(x), base, x)

    def _evaluate(self, model, x, target, explainer, attributions, seed):
        if self.perturbation == "square" and x.dim() != 4:
            raise InputError("square removal needs images (N, C, H, W); use 'gaussian' or "
                             "'noisy_baseline' for other inputs")
        attr = self._explain(explainer, attributions, model, x, target, seed)
        phi = _broadcast_attr(attr, x).to(x.dtype)
        base = make_baseline(self.baseline, x, model.bounds)
        fx = _target_output(model, x, target, self.output)
        squares = self._squares(x) if self.n_samples is None else None
        n = len(x)
        m = len(squares) if squares is not None else self.n_samples
        dots, diffs = [], []
        for lo in range(0, max(n * m, 1), self.batch_size):  # an empty batch: one empty chunk
            j = torch.arange(lo, min(lo + self.batch_size, n * m), device=x.device)
            i = j // m
            xi, bi = x[i], base[i]
            x0 = self._perturbed(xi, bi, model.bounds, None if squares is None else squares[j % m])
            pert = xi - x0
            if self.multiply_by_inputs:
                ref = xi - bi
                pert = torch.where(ref != 0, pert / torch.where(ref != 0, ref, 1), 0)
            dots.append((pert * phi[i]).flatten(1).sum(dim=1))
            diffs.append(fx[i] - _target_output(model, x0, target[i], self.output))
        dot = torch.cat(dots).reshape(n, m).double()
        diff = torch.cat(diffs).reshape(n, m).double()
        if self.optimal_scaling:
            den = dot.square().mean(dim=1)
            beta = torch.where(den > 0, (dot * diff).mean(dim=1) / torch.where(den > 0, den, 1), 0)
        else:
            beta = torch.ones(n, dtype=torch.float64, device=x.device)
        infid = (beta[:, None] * dot - diff).square().mean(dim=1)
        return InfidelityResult(scores=infid.cpu(), aggregate=nanmean(infid), target=target.cpu(),
                                beta=beta.cpu(), meta={"perturbation": self.perturbation,
                                                       "n_samples": m})


@dataclass(kw_only=True)
class SensitivityResult(MetricResult):
    """``scores``: the max-sensitivity per sample (lower is more stable).

    Attributes
    ----------
    samples : Tensor
        (N, n_samples) the (relative) change of the explanation at every
        sampled neighbour (NaN for 0 / 0); ``scores`` is its row maximum
        over the defined entries (NaN when there are none).
    """

    samples: torch.Tensor


@register("metric", "max_sensitivity", paper=_YEH, test_params={"n_samples": 2})
class MaxSensitivity(Metric):
    """Max-sensitivity: the largest change of the explanation in a small ball.

    ``SENS_MAX(Phi, f, x, r) = max_{||y - x||_inf <= r} ||Phi(y) - Phi(x)||``
    (Yeh et al., Definition 3.1), estimated by Monte-Carlo: ``n_samples``
    points drawn uniformly from the L-infinity ball of radius ``radius``
    around each input (clipped to the input bounds, as the authors' code
    samples), the explanation recomputed at each for the same target, all
    in batches of ``batch_size``. With ``normalize=True`` the change is
    divided by ``||Phi(x)||``, as the authors' code reports it (``inf`` when
    only ``Phi(x)`` is 0; undefined, NaN, when both are: an all-zero
    explanation that stays all zero is not stable but empty, and
    ``undefined`` says so). A random search gives a lower bound of the true
    maximum; ``aggregate`` is the mean over the defined samples (an ``inf``
    counts).

    Parameters
    ----------
    radius : float
        Radius ``r`` of the L-infinity ball, in input units.
    n_samples : int
        Neighbours drawn per input (the authors use 50).
    norm : {"l2", "linf"}
        Norm of the explanation difference (``"l2"`` is the Frobenius norm).
    normalize : bool
        Divide by the norm of the explanation at ``x``.
    batch_size : int
        Neighbours per explainer call.

    References
    ----------
    .. [1] Yeh, Hsieh, Suggala, Inouye, Ravikumar. "On the (in)fidelity and
       sensitivity of explanations". NeurIPS 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> res = MaxSensitivity(n_samples=8)(pretrained("digits-cnn", progress=False), x,
    ...                                   explainer="gradient")
    >>> bool((res.scores > 0).all())
    True
    """

    needs_explainer = True

    radius: float = param(0.02, positive=True)
    n_samples: int = param(50, integer=True, positive=True)
    norm: str = param("l2", choices=NORMS)
    normalize: bool = param(True, kind=bool)
    batch_size: int = param(256, integer=True, positive=True)

    def _size(self, t: torch.Tensor) -> torch.Tensor:
        f = t.flatten(1).double()
        return f.norm(dim=1) if self.norm == "l2" else f.abs().amax(dim=1)

    def _evaluate(self, model, x, target, explainer, attributions, seed):
        lo, hi = model.bounds
        phi = self._explain(explainer, None, model, x, target, seed)
        n, m = len(x), self.n_samples
        changes = []
        for start in range(0, max(n * m, 1), self.batch_size):  # an empty batch: one empty chunk
            i = torch.arange(start, min(start + self.batch_size, n * m), device=x.device) // m
            y = (x[i] + (torch.rand_like(x[i]) * 2 - 1) * self.radius).clamp(lo, hi)
            phi_y = check_attributions(explainer.explain(model, y, target[i], seed=seed)
                                       .attributions.to(x.device), y)
            changes.append(self._size(phi_y - phi[i]))
        change = torch.cat(changes).reshape(n, m)
        undefined = None
        if self.normalize:
            ref = self._size(phi)[:, None]
            change = torch.where(ref > 0, change / torch.where(ref > 0, ref, 1),
                                 torch.where(change > 0, float("inf"), float("nan")))
        empty = torch.isnan(change)  # 0 / 0: the explanation is zero at x and at the neighbour
        scores = torch.where(empty, float("-inf"), change).amax(dim=1)
        scores = torch.where(empty.all(dim=1), float("nan"), scores)
        known = ~torch.isnan(scores)
        agg = float(scores[known].mean()) if bool(known.any()) else float("nan")  # inf counts
        if not bool(known.all()):
            undefined = (f"the explanation is all zero at x and at every neighbour for "
                         f"{int((~known).sum())} of {len(scores)} samples: a relative change "
                         "0 / 0; an empty explanation, not a stable one")
        return SensitivityResult(scores=scores.cpu(), aggregate=agg,
                                 target=target.cpu(), samples=change.cpu(),
                                 meta={"radius": self.radius}, undefined=undefined)


infidelity = metric_twin(Infidelity, "infidelity")
max_sensitivity = metric_twin(MaxSensitivity, "max_sensitivity")
