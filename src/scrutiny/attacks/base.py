"""The Attack base class: owns every invariant, a subclass writes ``_run``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from scrutiny.base import Method, grad_wrt, seeded
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import AttackResult, Tags, ThreatModel
from scrutiny.validation import check_labels, check_x


class Attack(Method):
    """Base class of evasion attacks.

    ``__call__`` validates the arguments, puts the model in eval mode with
    frozen parameters (restored afterwards, even on error), seeds the RNG,
    calls ``_run``, projects the result into the threat model and the bounds,
    and recomputes success and norms from the model's predictions, so no
    subclass can report a success it did not achieve.
    """

    kind = "attack"
    tags = Tags()
    #: Names of call-time data keywords ``__call__`` forwards to ``_run`` (e.g.
    #: ``("guide",)`` for feature adversaries); data, not hyperparameters.
    call_data: ClassVar[tuple[str, ...]] = ()

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, threat: ThreatModel,
                 target: torch.Tensor | int | None = None, seed: int | None = 0,
                 **data: Any) -> AttackResult:
        """Attack ``model`` on ``(x, y)`` within ``threat``.

        Parameters
        ----------
        model : nn.Module or TorchModel
        x : Tensor
            Clean inputs ``(N, ...)`` within the model's bounds; not modified.
        y : Tensor
            True labels ``(N,)``.
        threat : ThreatModel
            Norm, eps, bounds (and optional mask) of allowed perturbations.
        target : Tensor or int, optional
            Target classes for a targeted attack.
        seed : int, optional
            Seeds random starts; the same seed gives the same result.
        **data
            Call-time data the attack declares in ``call_data``.
        """
        unknown = [k for k in data if k not in self.call_data]
        if unknown:
            raise InputError(f"{type(self).__name__} does not accept "
                             f"{', '.join(map(repr, unknown))}; accepted data keywords: "
                             f"{', '.join(self.call_data) or 'none'}")
        model = as_model(model, threat.bounds if isinstance(threat, ThreatModel) else None)
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.tags.norms:
            raise InputError(f"{type(self).__name__} supports norms {', '.join(self.tags.norms)}; "
                             f"got {threat.norm!r}")
        check_x(x, threat.bounds, image=self.tags.image_only)
        dev = model.device
        x0 = x.detach().to(dev).clone()
        with model.evaluating(), seeded(seed, dev):
            with torch.no_grad():
                clean_logits = model(x0)
            k = clean_logits.shape[1]
            y = check_labels(y, len(x0), k).to(dev)
            if target is not None:
                if not self.tags.targeted:
                    raise InputError(f"{type(self).__name__} is untargeted; do not pass target=")
                target = check_labels(target, len(x0), k, "target").to(dev)
            extra: dict = {}
            if len(x0) and (threat.eps > 0 or self.tags.minimum_norm):
                x_adv = self._run(model, x0, y, threat, target, **data)
                if isinstance(x_adv, tuple):  # (x_adv, meta): extra per-run information
                    x_adv, extra = x_adv
            else:  # nothing to optimise: the threat set is {x}
                x_adv = x0
            x_adv = threat.project(x0, x_adv.detach().to(x0.dtype)).detach()
            with torch.no_grad():
                logits = model(x_adv)
        pred = logits.argmax(dim=1)
        success = pred == target if target is not None else pred != y
        return AttackResult(
            x_adv=x_adv.to(x.device), success=success.cpu(), norms=threat.distance(x0, x_adv).cpu(),
            logits=logits.cpu(), clean_correct=(clean_logits.argmax(1) == y).cpu(),
            adv_correct=(pred == y).cpu(), y=y.cpu(),
            target=None if target is None else target.cpu(), threat=threat,
            meta={"attack": self.name, **extra})

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None
             ) -> torch.Tensor | tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        """The algorithm: return ``x_adv``, or ``(x_adv, meta)`` to add entries to
        :attr:`AttackResult.meta` (e.g. per-sample constants found by a search)."""
        raise NotImplementedError


def margin_loss_terms(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                      loss: str = "ce") -> torch.Tensor:
    """Per-sample objective an attack maximises.

    Untargeted: ``L(x, y)``. Targeted, in the loss-difference form of the
    course slides: ``L(x, y) - L(x, t)`` (push away from ``y``, towards ``t``).
    Since ``L(x, y) - L(x, t) = z_t - z_y`` for cross-entropy, the targeted CE
    form only needs ``t`` to beat ``y`` and may stop at a third class (as the
    slides note). ``loss="margin"`` is Carlini & Wagner's f6, unclipped:
    untargeted ``max_{j != y} z_j - z_y``, targeted ``z_t - max_{j != t} z_j``,
    which reaches the target more often.
    """
    if loss == "ce":
        out = F.cross_entropy(logits, y, reduction="none")
        if target is not None:
            out = out - F.cross_entropy(logits, target, reduction="none")
        return out
    if loss == "margin":
        if target is not None:
            zt = logits.gather(1, target[:, None])[:, 0]
            return zt - logits.scatter(1, target[:, None], float("-inf")).amax(dim=1)
        zy = logits.gather(1, y[:, None])[:, 0]
        return logits.scatter(1, y[:, None], float("-inf")).amax(dim=1) - zy
    raise InputError(f"unknown loss {loss!r}; accepted: ce, margin")


def input_gradient(model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                   target: torch.Tensor | None, loss: str = "ce"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward: ``(objective per sample, d objective / dx, logits)``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    obj = margin_loss_terms(logits, y, target, loss)
    return obj.detach(), grad_wrt(obj, x), logits.detach()
