"""Expectation over Transformation (Athalye et al.): adversarial examples robust to transforms."""

from __future__ import annotations

import torch

from scrutiny.attacks.base import Attack, margin_loss_terms
from scrutiny.attacks.lp import random_start, steepest_direction
from scrutiny.attacks.physical.common import LOSSES
from scrutiny.attacks.physical.transforms import check_scale, random_transform
from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


def transformed_objective(model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                          target: torch.Tensor | None, n_samples: int, loss: str,
                          transform: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean objective over ``n_samples`` random transforms of each row of ``x`` and its gradient.

    The ``n_samples * len(x)`` transformed copies go through the model in one
    forward pass; returns ``(objective (N,), d objective / dx)``.
    """
    n = len(x)
    xr = x.detach().requires_grad_(True)
    rep = xr.repeat(n_samples, *([1] * (x.dim() - 1)))            # (n_samples * n, ...)
    xt = random_transform(rep, **transform)
    yt = y.repeat(n_samples)
    tt = None if target is None else target.repeat(n_samples)
    obj = margin_loss_terms(model(xt), yt, tt, loss).view(n_samples, n).mean(dim=0)
    return obj.detach(), grad_wrt(obj, xr)


@register("attack", "eot", paper="Athalye, Engstrom, Ilyas, Kwok. Synthesizing robust adversarial "
          "examples. ICML 2018", test_params={"steps": 3, "n_samples": 2})
class EOT(Attack):
    """Expectation over Transformation (EOT) with projected gradient ascent.

    Maximises the expected loss over a distribution ``T`` of image
    transformations, ``max_{x' in B(x, eps)} E_{t ~ T} L(t(x'), y)``, so the
    adversarial example survives rotation, rescaling, shifts and brightness
    changes. Each step estimates the gradient of the expectation by the mean
    over ``n_samples`` fresh random transformations (differentiable
    :func:`~scrutiny.attacks.physical.transforms.random_transform`; all
    ``n_samples * N`` copies in one forward pass), then takes a projected
    steepest-ascent (PGD) step in the threat model's norm, as in the paper's
    2D experiments. Targeted, the objective is the loss difference
    ``L(t(x'), y) - L(t(x'), target)`` (or the margin towards the target).

    The paper constrains the expected perceptual (LAB) distance between
    ``t(x')`` and ``t(x)`` by a Lagrangian penalty; here the constraint is the
    threat model's Lp ball around the untransformed ``x`` (the usual EOT-PGD
    of robustness evaluations). Per sample, the iterate with the highest
    estimated expected objective is returned.

    Parameters
    ----------
    steps : int
        PGD iterations.
    n_samples : int
        Transformations drawn per image and step to estimate the expectation.
    rel_step_size : float, optional
        Step size as a fraction of eps; default ``2.5 / steps``.
    random_start : bool
        Start from a random point of the eps-ball.
    loss : {"ce", "margin"}
        Objective per transformed copy.
    rotation : float
        Maximum rotation in degrees (uniform in ``[-rotation, rotation]``).
    scale : (float, float)
        Range of the scale factor.
    translate : float
        Maximum shift per axis, as a fraction of the image side.
    brightness : float
        Maximum additive brightness change, as a fraction of the input range.
    batch_size : int
        Most transformed copies per forward pass; images are processed in
        chunks of ``max(1, batch_size // n_samples)``.

    References
    ----------
    .. [1] Athalye, Engstrom, Ilyas, Kwok. "Synthesizing robust adversarial
       examples". ICML 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> eot = EOT(steps=20, n_samples=8, rotation=10, scale=(0.9, 1.1), translate=0.05)
    >>> res = eot(model, data.x[:32], data.y[:32], threat=ThreatModel("linf", 0.2))
    >>> res.success_rate() > 0.5
    True
    """

    tags = Tags(norms=("linf", "l2", "l1"), targeted=True, stochastic=True, image_only=True)

    steps: int = param(40, integer=True, positive=True)
    n_samples: int = param(10, integer=True, positive=True)
    rel_step_size: float | None = param(None, positive=True)
    random_start: bool = param(True, kind=bool)
    loss: str = param("ce", choices=LOSSES)
    rotation: float = param(15.0, between=(0, 180))
    scale: tuple = param((0.9, 1.1), kind=tuple, check=check_scale)
    translate: float = param(0.1, between=(0, 1))
    brightness: float = param(0.0, nonneg=True)
    batch_size: int = param(1024, integer=True, positive=True)

    def transform_params(self, bounds: tuple[float, float]) -> dict:
        """Keyword arguments of :func:`random_transform` for these hyperparameters."""
        return {"rotation": self.rotation, "scale": tuple(self.scale), "translate": self.translate,
                "brightness": self.brightness, "bounds": bounds}

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        if threat.eps == float("inf"):
            raise InputError("EOT needs a finite eps (it is a fixed-budget attack)")
        alpha = threat.eps * (self.rel_step_size or 2.5 / self.steps)
        tf = self.transform_params(threat.bounds)
        chunk = max(1, self.batch_size // self.n_samples)
        best = x.clone()
        best_obj = torch.full((len(x),), -torch.inf, device=x.device, dtype=x.dtype)
        starts = range(0, len(x), chunk)
        with progress_bar(len(starts) * self.steps, "eot") as bar:
            for i in starts:
                sl = slice(i, i + chunk)
                x0, yc = x[sl], y[sl]
                tc = None if target is None else target[sl]
                xa = random_start(x0, threat) if self.random_start else x0.clone()
                for step in range(self.steps + 1):  # the last pass only scores the last iterate
                    obj, grad = transformed_objective(model, xa, yc, tc, self.n_samples, self.loss,
                                                      tf)
                    better = obj > best_obj[sl]
                    best[sl][better], best_obj[sl][better] = xa[better], obj[better]
                    if step == self.steps:
                        break
                    xa = threat.project(x0, xa + alpha * steepest_direction(grad, threat.norm))
                    bar.advance()
        return best, {"expected_objective": best_obj.cpu()}
