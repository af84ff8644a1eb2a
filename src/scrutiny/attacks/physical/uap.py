"""Universal adversarial perturbations: one perturbation for a whole data set (untargeted, targeted)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from scrutiny.attacks.base import Attack
from scrutiny.attacks.lp import steepest_direction
from scrutiny.attacks.physical.common import apply_perturbation, ball_projector
from scrutiny.attacks.whitebox.deepfool import DeepFool
from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


@register("attack", "uap", paper="Moosavi-Dezfooli, Fawzi, Fawzi, Frossard. Universal adversarial "
          "perturbations. CVPR 2017; targeted: Hirano, Takemoto. Simple iterative method for "
          "generating targeted universal adversarial perturbations. Algorithms 2020",
          test_params={"max_passes": 2, "deepfool_steps": 3, "candidates": 3})
class UAP(Attack):
    """Universal adversarial perturbation: one ``v`` with ``||v||_p <= xi`` that fools most inputs.

    The paper's algorithm (Moosavi-Dezfooli et al. 2017, Algorithm 1), with
    ``xi = threat.eps``: starting from ``v = 0``, pass over the data in a random
    order; for each point ``x_i`` whose label is not yet changed
    (``k(x_i + v) = k(x_i)``, ``k`` the predicted label), compute the minimal
    l2 perturbation ``dv_i`` sending ``x_i + v`` across the decision boundary
    (DeepFool, :class:`~scrutiny.attacks.whitebox.DeepFool`) and, when DeepFool
    succeeds, update ``v <- P_{p, xi}(v + dv_i)``, the projection onto the lp
    ball (l2 or linf). Passes repeat until the fooling rate on the data,
    ``mean(k(x + v) != k(x))``, reaches ``1 - delta`` or after ``max_passes``.
    The returned ``x_adv`` is ``clip(x + v)``; ``meta["perturbation"]`` holds
    ``v``, to apply to new images with :meth:`apply`.

    Targeted (``target=``, Hirano & Takemoto 2020): the same loop, the
    per-point step being a targeted fast gradient step
    ``x_adv = x_i + v - step_size * d`` (``d`` the steepest-descent direction
    of ``CE(x_i + v, target)`` in the threat's norm, sign for linf); when
    ``x_adv`` is classified as the target, ``v <- P(x_adv - x_i)``. Passes stop
    when the targeted success rate reaches ``1 - delta``. The paper uses one
    target class for all inputs; per-sample targets are accepted.

    Batched, unlike the paper: the per-point steps are computed for a
    mini-batch of ``batch_size`` not-yet-fooled points at the same ``v`` (one
    batched DeepFool or gradient call), then added to ``v`` one after the
    other, each followed by the projection as in the paper. With
    ``batch_size=1`` this is exactly the paper's sequential algorithm; larger
    batches use a slightly stale ``v`` within a mini-batch. Pixels outside a
    threat mask are never changed.

    Parameters
    ----------
    delta : float
        Stop once the fooling (targeted: success) rate on the data is ``>= 1 - delta``.
    max_passes : int
        Maximum number of passes over the data.
    overshoot : float
        DeepFool's overshoot.
    deepfool_steps : int
        DeepFool's maximum number of linearisation steps per point.
    candidates : int
        Classes DeepFool considers (the predicted one included, so at least 2).
    step_size : float, optional
        Step of the targeted fast gradient method, in input units (the norm
        of the step in the threat's norm); default ``eps / 5`` (on the digits
        CNN, ``eps / 10`` stalls for hard targets: no single step reaches them).
    batch_size : int
        Points whose steps are computed together.

    References
    ----------
    .. [1] Moosavi-Dezfooli, Fawzi, Fawzi, Frossard. "Universal adversarial
       perturbations". CVPR 2017.
    .. [2] Hirano, Takemoto. "Simple iterative method for generating targeted
       universal adversarial perturbations". Algorithms 13(11), 2020.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits(split="train"), load_digits(split="test")
    >>> res = UAP(max_passes=3)(model, train.x[:200], train.y[:200], threat=ThreatModel("l2", 2.5))
    >>> v = res.meta["perturbation"]
    >>> fooled = model.predict(UAP.apply(test.x, v)) != model.predict(test.x)
    >>> bool(fooled.float().mean() > 0.3)
    True
    """

    per_sample = False  # one perturbation for the whole batch
    tags = Tags(norms=("l2", "linf"), targeted=True, stochastic=True)

    delta: float = param(0.2, between=(0, 1))
    max_passes: int = param(10, integer=True, positive=True)
    overshoot: float = param(0.02, nonneg=True)
    deepfool_steps: int = param(10, integer=True, positive=True)
    candidates: int = param(10, integer=True, between=(2, math.inf), interval="[)")
    step_size: float | None = param(None, positive=True)
    batch_size: int = param(32, integer=True, positive=True)

    @staticmethod
    def apply(x: torch.Tensor, perturbation: torch.Tensor,
              bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Add the learned universal perturbation to new inputs: ``clip(x + v)``."""
        return apply_perturbation(x, perturbation, bounds)

    def _steps(self, model: TorchModel, xv: torch.Tensor, label: torch.Tensor,
               target: torch.Tensor | None, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point steps from ``xv`` and whether each reached its goal."""
        lo, hi = threat.bounds
        if target is None:
            df = DeepFool(candidates=self.candidates, overshoot=self.overshoot,
                          steps=self.deepfool_steps)
            l2 = ThreatModel("l2", float("inf"), threat.bounds, threat.mask)
            x_new = df._run(model, xv, label, l2, None)
            with torch.no_grad():
                ok = model(x_new.clamp(lo, hi)).argmax(1) != label
        else:
            xr = xv.detach().requires_grad_(True)
            grad = grad_wrt(F.cross_entropy(model(xr), target, reduction="none"), xr)
            m = threat.mask_for(xv)
            if m is not None:
                grad = grad * m
            step = self.step_size if self.step_size is not None else threat.eps / 5
            x_new = (xv - step * steepest_direction(grad, threat.norm)).clamp(lo, hi)
            with torch.no_grad():
                ok = model(x_new).argmax(1) == target
        return x_new - xv, ok

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        if threat.eps == float("inf"):
            raise InputError("UAP needs a finite radius xi = eps")
        lo, hi = threat.bounds
        project = ball_projector(threat)
        n = len(x)
        with torch.no_grad():
            label = torch.cat([model(x[i:i + 1024]).argmax(1) for i in range(0, n, 1024)])
        goal = label if target is None else target
        v = torch.zeros_like(x[:1])

        def reached(xa: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                pred = model(xa).argmax(1)
            return pred != goal[idx] if target is None else pred == goal[idx]

        def rate() -> float:
            hits = [reached((x[i:i + 1024] + v).clamp(lo, hi), torch.arange(i, min(i + 1024, n)))
                    for i in range(0, n, 1024)]
            return float(torch.cat(hits).float().mean())

        fooling, passes = rate(), 0
        with progress_bar(self.max_passes, "uap") as bar:
            while fooling < 1 - self.delta and passes < self.max_passes:
                perm = torch.randperm(n, device=x.device)
                for s in range(0, n, self.batch_size):
                    idx = perm[s:s + self.batch_size]
                    xv = (x[idx] + v).clamp(lo, hi)
                    todo = ~reached(xv, idx)
                    if not todo.any():
                        continue
                    idx, xv = idx[todo], xv[todo]
                    dv, ok = self._steps(model, xv, label[idx],
                                         None if target is None else target[idx], threat)
                    for d in dv[ok]:  # the paper's sequential update, one point at a time
                        v = project(v + d)
                passes += 1
                fooling = rate()
                bar.advance(f"rate {fooling:.3f}")
        key = "fooling_rate" if target is None else "targeted_success_rate"
        return x + v, {"perturbation": v[0].detach(), key: fooling, "passes": passes}
