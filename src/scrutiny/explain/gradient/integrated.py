"""Integrated Gradients with Riemann and Gauss-Legendre quadrature."""

from __future__ import annotations

import numpy as np
import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, check_batch_size, target_gradient
from scrutiny.explain.baselines import make_baseline
from scrutiny.registry import register
from scrutiny.validation import check_positive

RULES: tuple[str, ...] = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                          "riemann_trapezoid")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a quadrature rule."""
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(steps)
        return torch.tensor((t + 1) / 2), torch.tensor(w / 2)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise InputError("riemann_trapezoid needs steps >= 2")
        a = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
        return a, w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if rule not in offsets:
        raise InputError(f"unknown rule {rule!r}; accepted: {', '.join(RULES)}")
    a = (torch.arange(steps, dtype=torch.float64) + offsets[rule]) / steps
    return a, torch.full((steps,), 1 / steps, dtype=torch.float64)


@register("explainer", "integrated_gradients", paper="Sundararajan, Taly, Yan. Axiomatic "
          "attribution for deep networks. ICML 2017", test_params={"steps": 8})
class IntegratedGradients(Explainer):
    """Integrated Gradients: ``(x - b) * integral_0^1 grad f(b + a (x - b)) da``.

    The integral is computed with a quadrature rule; attributions satisfy
    completeness, ``sum(attr) = f(x) - f(b)``, up to the quadrature error,
    which is returned per sample in ``Explanation.delta``. All ``N * steps``
    path points are evaluated in chunks of ``batch_size``.

    Parameters
    ----------
    steps : int
        Quadrature nodes.
    rule : {"gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"}
    baseline : {"zero", "blur", "uniform"}, float or Tensor
        Reference input ``b``.
    blur_sigma : float
        Gaussian sigma (pixels) of the ``"blur"`` baseline.
    batch_size : int
        Path points per forward/backward pass.

    References
    ----------
    .. [1] Sundararajan, Taly, Yan. "Axiomatic attribution for deep networks".
       ICML 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> e = IntegratedGradients()(pretrained("digits-cnn", progress=False), x)
    >>> bool((e.delta.abs() < 1e-2 * (e.outputs.abs() + 1)).all())
    True
    """

    def __init__(self, *, steps: int = 64, rule: str = "gausslegendre",
                 baseline: str | float | torch.Tensor = "zero", blur_sigma: float = 2.0,
                 batch_size: int = 512) -> None:
        check_positive("steps", steps, integer=True)
        check_batch_size(batch_size)
        quadrature(rule, steps)  # validates rule and steps
        if isinstance(baseline, str):
            make_baseline(baseline, torch.zeros(1, 1, 2, 2), (0.0, 1.0))  # validates the name
        self.steps = steps
        self.rule = rule
        self.baseline = baseline
        self.blur_sigma = blur_sigma
        self.batch_size = batch_size

    def linear_oracle(self, w, x):
        """Closed form on ``f = w.x + b`` with a constant baseline: ``(x - b) * w``."""
        if isinstance(self.baseline, str) and self.baseline != "zero":
            raise InputError(f"no closed form for the {self.baseline!r} baseline")
        b = 0.0 if self.baseline == "zero" else self.baseline
        return (x - b) * w

    def _explain(self, model, x, target):
        n = len(x)
        b = make_baseline(self.baseline, x, model.bounds, self.blur_sigma)
        alphas, weights = (t.to(device=x.device, dtype=x.dtype) for t in quadrature(self.rule, self.steps))
        diff = x - b
        total = torch.zeros_like(x)
        flat = torch.arange(n * self.steps, device=x.device)
        for chunk in flat.split(self.batch_size):
            i, s = chunk // self.steps, chunk % self.steps
            a = alphas[s].view(-1, *([1] * (x.dim() - 1)))
            g, _ = target_gradient(model, b[i] + a * diff[i], target[i])
            total.index_add_(0, i, g * weights[s].view_as(a))
        attr = diff * total
        with torch.no_grad():
            fx = model(x).gather(1, target[:, None])[:, 0]
            fb = model(b).gather(1, target[:, None])[:, 0]
        delta = attr.reshape(n, -1).sum(1) - (fx - fb)
        return attr, {"delta": delta, "baseline_output": (fb.cpu())}


def integrated_gradients(model, x, target=None, **params):
    """Function twin of :class:`IntegratedGradients`."""
    seed = params.pop("seed", 0)
    return IntegratedGradients(**params).explain(model, x, target, seed=seed)
