"""Adversarial training objectives for the one training loop (:func:`scrutiny.models.training.train`).

Each objective is a callable ``objective(module, x, y) -> (loss, logits)``:

* :class:`FGSMMix`: Goodfellow et al.'s ``alpha L(x) + (1 - alpha) L(x_fgsm)``;
* :class:`FastFGSM`: FGSM from a random start with step ``1.25 eps`` (Wong et al.);
* :class:`PGDTraining`: loss on Madry's PGD adversary (no early stop);
* :class:`TRADES`: ``CE(f(x), y) + beta KL(f(x) || f(x'))`` with ``x'`` from PGD on the KL.

:class:`AdversarialTraining` (``defense:adversarial_training``) trains a copy
of a model with one of them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from scrutiny import progress
from scrutiny.attacks.lp import steepest_direction
from scrutiny.attacks.whitebox.pgd import FGSM, PGD
from scrutiny.base import grad_wrt
from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import Defense
from scrutiny.errors import InputError
from scrutiny.models.training import TrainHistory, train
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import ThreatModel

METHODS: tuple[str, ...] = ("fgsm_mix", "fast_fgsm", "pgd", "trades")


def _draw_seed() -> int:
    """A seed for the inner attack from torch's global RNG (seeded and checkpointed by train)."""
    return int(torch.randint(0, 2**31 - 1, (1,)))


class _Objective:
    """Shared repr (stable across processes, so checkpoints can check it)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class FGSMMix(_Objective):
    """``alpha CE(f(x), y) + (1 - alpha) CE(f(x + eps sign(grad_x CE(f(x), y))), y)``.

    The FGSM point is recomputed from the current weights at every step and
    treated as a constant (Goodfellow, Shlens, Szegedy 2015, eq. in section 5).
    Records the accuracy on the clean batch.
    """

    def __init__(self, threat: ThreatModel, alpha: float = 0.5) -> None:
        self.threat = threat
        self.alpha = alpha

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = FGSM()(as_model(module, self.threat.bounds), x, y, threat=self.threat).x_adv
        out = module(x)
        adv = module(x_adv)
        loss = self.alpha * F.cross_entropy(out, y) + (1 - self.alpha) * F.cross_entropy(adv, y)
        return loss, out


class PGDTraining(_Objective):
    """Cross-entropy on the adversary of an attack (Madry's PGD; fast FGSM is one step of it).

    Records the accuracy on the adversarial batch.
    """

    def __init__(self, threat: ThreatModel, attack: PGD) -> None:
        self.threat = threat
        self.attack = attack

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        res = self.attack(as_model(module, self.threat.bounds), x, y, threat=self.threat,
                          seed=_draw_seed())
        adv = module(res.x_adv)
        return F.cross_entropy(adv, y), adv


def FastFGSM(threat: ThreatModel, rel_step_size: float = 1.25) -> PGDTraining:  # noqa: N802
    """Wong, Rice, Kolter's "fast is better than free" adversary: FGSM from a random start.

    ``delta ~ U(-eps, eps)``, one signed-gradient step of ``1.25 eps``,
    projected onto the ball and the box: exactly one step of :class:`PGD`
    with a random start and no early stop.
    """
    return PGDTraining(threat, PGD(steps=1, rel_step_size=rel_step_size, random_start=True,
                                   early_stop=False))


class TRADES(_Objective):
    """``CE(f(x), y) + beta * KL(f(x) || f(x'))``, ``x'`` maximising the KL by PGD.

    ``x'`` starts at ``x + 0.001 N(0, I)`` (projected) and takes ``steps``
    signed-gradient steps of ``step_size`` on ``KL(f(x) || f(x'))`` with
    ``f(x)`` fixed, the model in eval mode (Zhang et al. 2019, Algorithm 1
    and their code). The KL term is the batch mean. Records the accuracy on
    the clean batch.
    """

    def __init__(self, threat: ThreatModel, beta: float = 6.0, steps: int = 10,
                 step_size: float | None = None) -> None:
        self.threat = threat
        self.beta = beta
        self.steps = steps
        self.step_size = step_size

    def adversary(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The KL-maximising point ``x'`` (inputs gradients only, weights frozen)."""
        model = as_model(module, self.threat.bounds)
        alpha = self.step_size or self.threat.eps / 4
        with model.evaluating():
            with torch.no_grad():
                p_clean = F.softmax(model(x), dim=1)
            xa = self.threat.project(x, x + 0.001 * torch.randn_like(x))
            for _ in range(self.steps):
                xa = xa.detach().requires_grad_(True)
                kl = F.kl_div(F.log_softmax(model(xa), dim=1), p_clean, reduction="none").sum(1)
                g = grad_wrt(kl, xa)
                xa = self.threat.project(x, xa.detach() + alpha * steepest_direction(g, self.threat.norm))
        return xa.detach()

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x_adv = self.adversary(module, x)
        out = module(x)
        adv = module(x_adv)
        kl = F.kl_div(F.log_softmax(adv, dim=1), F.softmax(out, dim=1), reduction="batchmean")
        return F.cross_entropy(out, y) + self.beta * kl, out


@register("defense", "adversarial_training", paper="Madry, Makelov, Schmidt, Tsipras, Vladu. "
          "Towards deep learning models resistant to adversarial attacks. ICLR 2018",
          test_params={"epochs": 1, "steps": 2})
class AdversarialTraining(Defense):
    """Adversarial training: Goodfellow's FGSM mix, fast FGSM, Madry's PGD or TRADES.

    :meth:`fit` trains a copy of the model with the chosen objective through
    :func:`scrutiny.models.training.train` (Adam, cosine schedule, seeded, one
    thread, progress bar, safetensors checkpoints with exact resume);
    :meth:`wrap` returns the trained copy.

    * ``"fgsm_mix"``: ``alpha CE(x) + (1 - alpha) CE(x_fgsm)`` (Goodfellow et al. 2015);
    * ``"fast_fgsm"``: CE at FGSM from a uniform random start, step
      ``1.25 eps`` (Wong, Rice, Kolter 2020);
    * ``"pgd"``: CE at :class:`~scrutiny.attacks.PGD` with a random start,
      ``steps`` steps of ``rel_step_size * eps`` (default ``2.5 / steps``)
      and no early stop (Madry et al. 2018);
    * ``"trades"``: ``CE(x) + beta KL(f(x) || f(x'))``, ``x'`` by ``steps``
      signed steps of ``eps / 4`` (or ``rel_step_size * eps``) on the KL
      (Zhang et al. 2019).

    Parameters
    ----------
    method : {"fgsm_mix", "fast_fgsm", "pgd", "trades"}
        The training objective (see above).
    norm : {"linf", "l2"}
        Norm of the training threat model.
    eps : float
        Training radius, in input units.
    steps : int
        Inner attack steps (pgd, trades).
    rel_step_size : float, optional
        Inner step as a fraction of eps (default: 2.5/steps for pgd, 1.25 for
        fast_fgsm, 0.25 for trades).
    alpha : float
        Weight of the clean loss in ``fgsm_mix`` (the paper's 0.5).
    beta : float
        Weight of the KL term in ``trades`` (the paper's 1/lambda = 6).
    epochs : int
        Passes over the training data.
    lr : float
        Learning rate of Adam (cosine schedule).
    batch_size : int
        Training mini-batch size.
    weight_decay : float
        Adam's weight decay.
    seed : int
        Seeds the training loop: shuffling and the inner attacks' random starts.
    checkpoint : str, optional
        ``.safetensors`` checkpoint path; an existing one is resumed.

    Notes
    -----
    Wong et al. also use a cyclic learning rate and mixed precision; here the
    loop's Adam + cosine schedule is used for every method. Fitted attributes:
    ``model_`` (the trained TorchModel) and ``history_``.

    References
    ----------
    .. [1] Goodfellow, Shlens, Szegedy. "Explaining and harnessing adversarial
       examples". ICLR 2015.
    .. [2] Madry et al. "Towards deep learning models resistant to adversarial
       attacks". ICLR 2018.
    .. [3] Wong, Rice, Kolter. "Fast is better than free: revisiting
       adversarial training". ICLR 2020.
    .. [4] Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan. "Theoretically principled
       trade-off between robustness and accuracy". ICML 2019.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import SmallCNN, TorchModel
    >>> net = TorchModel(SmallCNN(width=8))
    >>> at = AdversarialTraining(method="fast_fgsm", eps=0.1, epochs=1).fit(net, load_digits())
    >>> robust = at.wrap(net)
    >>> len(at.history_.loss)
    1
    """

    method: str = param("pgd", choices=METHODS)
    norm: str = param("linf", choices=("linf", "l2"))
    eps: float = param(0.1, positive=True)
    steps: int = param(10, integer=True, positive=True)
    rel_step_size: float | None = param(None, positive=True)
    alpha: float = param(0.5, between=(0, 1))
    beta: float = param(6.0, nonneg=True)
    epochs: int = param(30, integer=True, positive=True)
    lr: float = param(3e-3, positive=True)
    batch_size: int = param(64, integer=True, positive=True)
    weight_decay: float = param(1e-4, nonneg=True)
    seed: int = param(0, integer=True)
    checkpoint: str | None = param(None, kind=str)

    def objective(self, bounds: tuple[float, float] = (0.0, 1.0)) -> Any:
        """The per-batch objective for :func:`~scrutiny.models.training.train`."""
        threat = ThreatModel(self.norm, self.eps, bounds)
        if self.method == "fgsm_mix":
            return FGSMMix(threat, self.alpha)
        if self.method == "fast_fgsm":
            return FastFGSM(threat, self.rel_step_size or 1.25)
        if self.method == "pgd":
            return PGDTraining(threat, PGD(steps=self.steps, rel_step_size=self.rel_step_size,
                                           random_start=True, early_stop=False))
        step = None if self.rel_step_size is None else self.rel_step_size * self.eps
        return TRADES(threat, self.beta, self.steps, step)

    def fit(self, model: Any, data: Any = None) -> AdversarialTraining:
        """Train a copy of ``model`` (its initial weights as given) on ``data``."""
        if not isinstance(data, ArrayDataset):
            raise InputError(f"data must be an ArrayDataset of training inputs, got "
                             f"{type(data).__name__}")
        if len(data) == 0:
            raise InputError("adversarial training needs at least one training sample; "
                             "data is empty")
        model = copy.deepcopy(as_model(model))
        self.history_: TrainHistory = train(
            model, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            weight_decay=self.weight_decay, seed=self.seed, progress=progress.enabled(),
            objective=self.objective(model.bounds), checkpoint=self.checkpoint)
        model.eval()
        self.model_: TorchModel | None = model
        return self

    def wrap(self, model: Any = None) -> TorchModel:
        """The adversarially trained copy (``model`` is not used: training replaces it)."""
        self._check_fitted("model_")
        return self.model_
