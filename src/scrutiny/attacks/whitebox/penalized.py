"""Penalised attacks of the course slides: the loss traded against the perturbation norm."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from scrutiny.attacks.base import Attack
from scrutiny.base import grad_wrt
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel, lp_norm, project_l1_box


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def prox_norm(v: torch.Tensor, tau: float, norm: str) -> torch.Tensor:
    """Proximal operator of ``tau * ||.||_p`` per sample: ``argmin_d tau ||d|| + ||d - v||^2 / 2``.

    l1: soft thresholding; l2: block shrinkage ``v * max(0, 1 - tau / ||v||)``;
    linf: by Moreau's decomposition, ``v`` minus its projection onto the l1
    ball of radius ``tau``.

    Examples
    --------
    >>> prox_norm(torch.tensor([[3.0, -0.5]]), 1.0, "l1")
    tensor([[2., -0.]])
    """
    if norm == "l1":
        return v.sign() * (v.abs() - tau).clamp_min(0)
    if norm == "l2":
        n = lp_norm(v, "l2")
        return v * _view((1 - tau / n.clamp_min(1e-12)).clamp_min(0), v)
    inf = torch.full_like(v, float("inf"))
    eps = torch.full((len(v),), float(tau), dtype=v.dtype, device=v.device)
    return v - project_l1_box(v, eps, -inf, inf)


@register("attack", "penalized", paper="Course slides (penalised form of the adversarial "
          "objective); Szegedy et al. ICLR 2014; Carlini & Wagner S&P 2017",
          test_params={"steps": 5})
class Penalized(Attack):
    """The penalised adversarial objective, solved by proximal gradient steps.

    Untargeted: ``max_delta L(x + delta, y) - lam * ||delta||_p``; targeted:
    ``min_delta L(x + delta, t) + lam * ||delta||_p``, ``L`` the cross-entropy
    and ``p`` the threat model's norm. Instead of a hard eps constraint the
    norm is a penalty, and ``lam`` sets the trade-off: larger ``lam``, smaller
    perturbations and fewer successes. Each step is a gradient step on the loss
    followed by the proximal operator of the norm term and a clip to the
    input box (exact for l1 and linf, whose prox and the box separate for l1;
    an approximation for l2):

    ``delta <- clip(prox_{a lam ||.||_p}(delta + a grad L(x + delta, y)))``
    (``- a grad L(x + delta, t)`` when targeted), from ``delta = 0``. The last
    iterate is returned: the point the trade-off settles on, successful or not.

    The objective is local: ``delta = 0`` stays a fixed point while
    ``||grad L(x, y)||_q <= lam`` (``q`` the dual norm), so untargeted runs
    leave confidently classified inputs (saturated softmax, tiny gradient)
    untouched unless ``lam`` is small; the targeted form, whose loss has a
    large gradient far from the target, does not have this problem.

    The perturbation is not bounded: call it with ``ThreatModel(norm,
    float("inf"))``; with a finite eps the result is projected onto the
    eps-ball. Pixels outside a threat mask are kept fixed.

    Parameters
    ----------
    lam : float
        Weight ``lambda`` of the norm penalty.
    steps : int
        Proximal gradient steps.
    step_size : float
        Step ``a`` of the gradient step (and ``a * lam`` is the prox threshold).

    References
    ----------
    .. [1] Szegedy et al. "Intriguing properties of neural networks". ICLR
       2014 (the penalised, box-constrained formulation).
    .. [2] Parikh, Boyd. "Proximal algorithms". Foundations and Trends in
       Optimization, 2014.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> x, y, tm = data.x[:16], data.y[:16], ThreatModel("l2", float("inf"))
    >>> weak, strong = (Penalized(lam=lam)(model, x, y, threat=tm) for lam in (10.0, 0.5))
    >>> bool(weak.norms.mean() < strong.norms.mean())
    True
    """

    tags = Tags(norms=("l2", "l1", "linf"), targeted=True, minimum_norm=True)

    lam: float = param(1.0, nonneg=True)
    steps: int = param(100, integer=True, positive=True)
    step_size: float = param(0.05, positive=True)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        lo, hi = threat.bounds
        mask = threat.mask_for(x)
        a = float(self.step_size)
        delta = torch.zeros_like(x)
        for _ in range(self.steps):
            xa = (x + delta).requires_grad_(True)
            logits = model(xa)
            if target is None:
                g = grad_wrt(F.cross_entropy(logits, y, reduction="none"), xa)
            else:
                g = -grad_wrt(F.cross_entropy(logits, target, reduction="none"), xa)
            with torch.no_grad():
                delta = prox_norm(delta + a * g, a * self.lam, threat.norm)
                if mask is not None:
                    delta = delta * mask
                delta = (x + delta).clamp(lo, hi) - x
        return x + delta
