"""Wasserstein adversarial examples (Wong, Schmidt & Kolter 2019): PGD with projected Sinkhorn.

Images are mass distributions: pixel intensities, normalised by each image's
total mass (so distances are "fraction of the mass times pixels moved"); mass
moves within each channel and only inside a ``k x k`` neighbourhood (the
paper's local transport plans), at cost ``||(di, dj)||_p`` per unit of mass.
The geometry (transport cost, projected Sinkhorn, the exact distance) lives in
:mod:`scrutiny.geometry`, below :class:`~scrutiny.types.ThreatModel`, and is
re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from scrutiny.attacks.base import Attack, input_gradient
from scrutiny.geometry import (  # noqa: F401  (transport_cost, wasserstein_distance: re-exported)
    project_wasserstein_ball,
    projected_sinkhorn,
    transport_cost,
    wasserstein_distance,
)
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

LOSSES = ("ce", "margin")


def project_wasserstein(x0: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """:meth:`ThreatModel.project` for ``norm="wasserstein"``: points already inside (by
    the exact distance) are kept, the others go through :func:`projected_sinkhorn`."""
    return project_wasserstein_ball(x0, x, threat.eps, threat.bounds,
                                    kernel_size=threat.wasserstein_kernel, p=threat.wasserstein_p,
                                    inside=threat.contains(x0, x))


@register("attack", "wasserstein", paper="Wong, Schmidt, Kolter. Wasserstein adversarial "
          "examples via projected Sinkhorn iterations. ICML 2019",
          test_params={"steps": 3, "sinkhorn_steps": 5})
class WassersteinPGD(Attack):
    """PGD in a Wasserstein ball: linf steepest-ascent steps, projected by projected Sinkhorn.

    Each iteration takes the step ``x + alpha * sign(grad L)`` and projects it
    onto the Wasserstein ball around the clean image (and the box) with
    :func:`projected_sinkhorn`; the ball's radius grows with the paper's
    schedule, ``eps_t = eps_init * eps_factor^(t // eps_every)``, capped at
    the threat model's eps (``ThreatModel("wasserstein", eps)``, in units of
    the image's mass times pixels: 0.1 moves 10% of the mass by one pixel).
    A sample stops once misclassified (its point is kept), so the reported
    distance is close to the smallest radius the schedule needed.

    Parameters
    ----------
    steps : int
        PGD iterations (the reference code's ``maxiters``).
    step_size : float
        ``alpha`` of the linf step, in input units (the paper's 0.1).
    eps_init : float, optional
        First radius of the schedule; None starts at the threat's eps.
    eps_factor : float
        Radius growth factor (>= 1) every ``eps_every`` iterations.
    eps_every : int
        Iterations between radius increases.
    lam : float
        Entropic regularisation of the projection (the paper's 1000).
    sinkhorn_steps : int
        Projected Sinkhorn iterations per projection.
    loss : {"ce", "margin"}
        Objective; targeted attacks use ``L(x, y) - L(x, t)``.

    Notes
    -----
    The transport window (``k x k``, the paper's 5 x 5 default) and the
    cost's p-norm (2) belong to the threat model:
    ``ThreatModel("wasserstein", eps, wasserstein_kernel=5, wasserstein_p=2)``.
    Defaults follow the authors' code (``eps_init=0.01``, ``eps_factor=1.1``
    every 10 iterations, ``alpha=0.1``, ``lam=1000``). Unlike the paper, which
    clips to ``[0, 1]`` after the projection (breaking mass conservation), the
    box is part of the projection and every iterate is rounded to an exactly
    feasible plan (see :func:`projected_sinkhorn`), so the output conserves
    mass and its exact distance (:func:`wasserstein_distance`) is within eps.

    References
    ----------
    .. [1] Wong, Schmidt, Kolter. "Wasserstein adversarial examples via
       projected Sinkhorn iterations". ICML 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> tm = ThreatModel("wasserstein", 0.3)

    The default schedule needs about 360 steps to grow from 0.01 to 0.3;
    ``eps_init=None`` searches the whole ball from the first step:

    >>> res = WassersteinPGD(steps=10, eps_init=None)(model, data.x[:16], data.y[:16], threat=tm)
    >>> bool((res.norms <= 0.3 + 1e-4).all())  # exact transport distances, inside the ball
    True
    >>> round(res.clean_accuracy(), 2), res.robust_accuracy()
    (0.94, 0.0)
    """

    tags = Tags(norms=("wasserstein",), targeted=True, image_only=True)

    steps: int = param(200, integer=True, positive=True)
    step_size: float = param(0.1, positive=True)
    eps_init: float | None = param(0.01, positive=True, optional=True)
    eps_factor: float = param(1.1, between=(1, math.inf), interval="[)")
    eps_every: int = param(10, integer=True, positive=True)
    lam: float = param(1000.0, positive=True)
    sinkhorn_steps: int = param(50, integer=True, positive=True)
    loss: str = param("ce", choices=LOSSES)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        n, dev = len(x), x.device
        start = threat.eps if self.eps_init is None else min(self.eps_init, threat.eps)
        eps = torch.full((n,), start, dtype=torch.float64, device=dev)
        best = x.clone()
        eps_used = torch.full((n,), math.nan, dtype=torch.float64)
        idx = torch.arange(n, device=dev)
        xa = x.clone()
        with progress_bar(self.steps, "Wasserstein PGD") as bar:
            xa, idx, eps = self._loop(model, x, y, threat, target, best, eps_used, idx, xa, eps, bar)
        if len(idx):  # the last iterate of the samples still robust (it may succeed)
            with torch.no_grad():
                logits = model(xa)
            t = None if target is None else target[idx]
            pred = logits.argmax(1)
            succ = pred == t if t is not None else pred != y[idx]
            eps_used[idx[succ].cpu()] = eps[succ].cpu()
            best[idx] = xa
        return best, {"eps_reached": eps_used.to(x.dtype)}

    def _loop(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
              target: torch.Tensor | None, best: torch.Tensor, eps_used: torch.Tensor,
              idx: torch.Tensor, xa: torch.Tensor, eps: torch.Tensor, bar: Any
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The PGD iterations; broken samples are stored in ``best`` and dropped."""
        for i in range(self.steps):
            t = None if target is None else target[idx]
            _, grad, logits = input_gradient(model, xa, y[idx], t, self.loss)
            pred = logits.argmax(1)
            succ = pred == t if t is not None else pred != y[idx]
            if succ.any():
                best[idx[succ]] = xa[succ]
                eps_used[idx[succ].cpu()] = eps[succ].cpu()
                keep = ~succ
                idx, xa, grad, eps = idx[keep], xa[keep], grad[keep], eps[keep]
                if not len(idx):
                    break
            if i > 0 and i % self.eps_every == 0:
                eps = (eps * self.eps_factor).clamp(max=threat.eps)
            step = xa + self.step_size * grad.sign()
            xa = projected_sinkhorn(x[idx], step, eps, threat.bounds,
                                    kernel_size=threat.wasserstein_kernel,
                                    p=threat.wasserstein_p, lam=self.lam,
                                    iters=self.sinkhorn_steps)
            bar.advance(f"robust {len(idx)}/{len(x)}")
        return xa, idx, eps
