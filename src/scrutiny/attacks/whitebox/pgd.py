"""First-order Lp attacks: FGSM / fast gradient, PGD and BIM (PGD without random start)."""

from __future__ import annotations

import math

import torch

from scrutiny.attacks.base import Attack, input_gradient, margin_loss_terms
from scrutiny.attacks.lp import random_start, steepest_direction
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

LOSSES = ("ce", "margin")


@register("attack", "fgsm", paper="Goodfellow, Shlens, Szegedy. Explaining and harnessing "
          "adversarial examples. ICLR 2015")
class FGSM(Attack):
    """Fast Gradient Sign Method (linf) and fast gradient method (l2).

    One step of size eps along the steepest-ascent direction of the loss:
    ``x' = clip(x + eps * sign(grad_x L(x, y)))`` for linf and
    ``x' = clip(x + eps * grad / ||grad||_2)`` for l2. Targeted, the loss is
    the difference ``L(x, y) - L(x, t)``.

    Parameters
    ----------
    loss : {"ce", "margin"}
        Cross-entropy (the paper's) or the logit margin.

    References
    ----------
    .. [1] Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial
       examples". ICLR 2015.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = FGSM()(model, data.x[:64], data.y[:64], threat=ThreatModel("linf", 0.1))
    >>> res.robust_accuracy() < res.clean_accuracy()
    True
    """

    tags = Tags(norms=("linf", "l2"), targeted=True)

    loss: str = param("ce", choices=LOSSES)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        _, grad, _ = input_gradient(model, x, y, target, self.loss)
        return x + threat.eps * steepest_direction(grad, threat.norm)


@register("attack", "pgd", paper="Madry, Makelov, Schmidt, Tsipras, Vladu. Towards deep "
          "learning models resistant to adversarial attacks. ICLR 2018",
          test_params={"steps": 5})
class PGD(Attack):
    """Projected gradient descent under linf, l2 or l1, with random start and restarts.

    ``x_{t+1} = Proj(x_t + alpha * d_t)`` with ``d_t`` the steepest-ascent
    direction of the loss for the threat model's norm and ``Proj`` the exact
    projection onto the eps-ball intersected with the input box. With
    ``random_start=False`` this is BIM (Kurakin et al. 2016).

    Parameters
    ----------
    steps : int
        Iterations per restart.
    rel_step_size : float, optional
        Step ``alpha`` as a fraction of eps; default ``2.5 / steps`` (Madry et al.).
    step_size : float, optional
        Absolute step ``alpha`` in input units, instead of ``rel_step_size``.
    random_start : bool
        Start from a uniformly random point of the ball.
    restarts : int
        Independent runs; each attacks only the samples not yet broken.
    loss : {"ce", "margin"}
        Objective maximised; targeted attacks use ``L(x, y) - L(x, t)``.
    early_stop : bool
        Stop optimising a sample once it is misclassified and keep that
        iterate (evaluation). Set False for Madry's PGD: every sample runs
        all steps and the last iterate is returned (with several restarts,
        the last iterate of the best restart: a success, else the highest loss).
    l1_sparsity : float
        For l1: the step moves the top ``1 - l1_sparsity`` fraction of coordinates.

    References
    ----------
    .. [1] Madry et al. "Towards deep learning models resistant to
       adversarial attacks". ICLR 2018.
    .. [2] Kurakin, Goodfellow, Bengio. "Adversarial examples in the physical
       world". 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = PGD(steps=20)(model, data.x[:64], data.y[:64], threat=ThreatModel("linf", 0.1))
    >>> bool(res.success.float().mean() > 0.5)
    True
    """

    tags = Tags(norms=("linf", "l2", "l1"), targeted=True, stochastic=True)

    steps: int = param(40, integer=True, positive=True)
    rel_step_size: float | None = param(None, positive=True)
    step_size: float | None = param(None, positive=True)
    random_start: bool = param(True, kind=bool)
    restarts: int = param(1, integer=True, positive=True)
    loss: str = param("ce", choices=LOSSES)
    early_stop: bool = param(True, kind=bool)
    l1_sparsity: float = param(0.95, between=(0, 1), interval="[)")

    def _post_init(self) -> None:
        if self.step_size is not None and self.rel_step_size is not None:
            raise InputError(f"give step_size (absolute, {self.step_size!r}) or rel_step_size "
                             f"(a fraction of eps, {self.rel_step_size!r}), not both")

    def _schedule(self, threat: ThreatModel) -> tuple[int, float]:
        """Number of steps and absolute step size for this threat model."""
        if self.step_size is not None:
            return self.steps, self.step_size
        return self.steps, threat.eps * (self.rel_step_size or 2.5 / self.steps)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        if not math.isfinite(threat.eps):  # the random start and alpha = eps / 4 need a radius
            raise InputError(f"{type(self).__name__} needs a finite eps (a fixed-budget attack); "
                             "for the smallest perturbation use fmn, deepfool or cw")
        n = len(x)
        steps, alpha = self._schedule(threat)
        best = x.clone()
        best_obj = torch.full((n,), -torch.inf, device=x.device)
        best_succ = torch.zeros(n, dtype=torch.bool, device=x.device)

        def keep(idx: torch.Tensor, xa: torch.Tensor, obj: torch.Tensor, logits: torch.Tensor):
            pred = logits.argmax(1)
            succ = pred == target[idx] if target is not None else pred != y[idx]
            better = ~best_succ[idx] & (succ | (obj > best_obj[idx]))
            j = idx[better]
            best[j], best_obj[j], best_succ[j] = xa[better], obj[better], succ[better]
            return succ

        for _ in range(self.restarts):
            idx = (~best_succ).nonzero()[:, 0]
            if not len(idx):
                break
            x0 = x[idx]
            xa = random_start(x0, threat) if self.random_start else x0.clone()
            for _ in range(steps):
                t = None if target is None else target[idx]
                obj, grad, logits = input_gradient(model, xa, y[idx], t, self.loss)
                if self.early_stop:  # keep the first success; drop broken samples
                    live = ~keep(idx, xa, obj, logits)
                    if not live.any():
                        break
                    idx, x0, xa, grad = idx[live], x0[live], xa[live], grad[live]
                step = steepest_direction(grad, threat.norm, self.l1_sparsity)
                xa = threat.project(x0, xa + alpha * step)
            else:
                if not self.early_stop and self.restarts == 1:
                    best[idx] = xa  # Madry's PGD: the last iterate, no extra forward pass
                    break
                with torch.no_grad():  # score the last iterate to compare restarts
                    logits = model(xa)
                    t = None if target is None else target[idx]
                    keep(idx, xa, margin_loss_terms(logits, y[idx], t, self.loss), logits)
        return best


@register("attack", "bim", paper="Kurakin, Goodfellow, Bengio. Adversarial examples in the "
          "physical world. ICLR 2017 workshop (arXiv:1607.02533, 2016)",
          test_params={"steps": 5})
class BIM(PGD):
    """Basic Iterative Method: iterated FGSM with clipping, from the clean input.

    ``x_0 = x``, ``x_{N+1} = Clip_{x, eps}(x_N + alpha * sign(grad_x L(x_N, y)))``:
    PGD under linf without random start, with the paper's absolute step
    ``alpha = 1/255`` of the input range and ``min(eps + 4, 1.25 eps)``
    iterations, eps in units of 1/255 of the input range (so ``eps = 8/255``
    gives 10 steps of 1/255). The loop is :class:`PGD`'s, so the best iterate
    per sample is kept and a sample stops once misclassified (``early_stop``).

    A preset of :class:`PGD`: the same parameters, with ``steps=None`` (the
    paper's schedule) and ``random_start=False``.

    Parameters
    ----------
    steps : int, optional
        Iterations; default the paper's ``ceil(min(e + 4, 1.25 e))`` with
        ``e = 255 * eps / (hi - lo)``.
    rel_step_size : float, optional
        Step ``alpha`` as a fraction of eps, instead of ``step_size``.
    step_size : float, optional
        Absolute step ``alpha`` in input units; default ``(hi - lo) / 255``.
    random_start : bool
        Start from a random point of the ball (False: the paper's clean start).
    restarts : int
        Independent runs; each attacks only the samples not yet broken.
    loss : {"ce", "margin"}
        Objective; targeted attacks use ``L(x, y) - L(x, t)`` (the paper's
        iterative least-likely-class method is ``target=`` the least likely class).
    early_stop : bool
        Stop optimising a sample once it is misclassified.
    l1_sparsity : float
        Unused: BIM is an linf attack (kept from :class:`PGD`).

    References
    ----------
    .. [1] Kurakin, Goodfellow, Bengio. "Adversarial examples in the physical
       world". arXiv:1607.02533, 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> tm = ThreatModel("linf", 0.1)
    >>> bim = BIM()(model, data.x[:64], data.y[:64], threat=tm)
    >>> fgsm = FGSM()(model, data.x[:64], data.y[:64], threat=tm)
    >>> bim.robust_accuracy() <= fgsm.robust_accuracy()
    True
    """

    tags = Tags(norms=("linf",), targeted=True)

    steps: int | None = param(None, integer=True, positive=True)
    random_start: bool = param(False, kind=bool)

    def _schedule(self, threat: ThreatModel) -> tuple[int, float]:
        lo, hi = threat.bounds
        e = 255 * threat.eps / (hi - lo)
        steps = self.steps or max(1, math.ceil(min(e + 4, 1.25 * e)))
        if self.rel_step_size is not None:
            return steps, threat.eps * self.rel_step_size
        return steps, self.step_size or (hi - lo) / 255
