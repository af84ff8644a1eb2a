"""Helpers shared by the universal and physical-world attacks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from scrutiny.attacks.base import margin_loss_terms
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel

LOSSES: tuple[str, ...] = ("ce", "margin")


def apply_perturbation(x: torch.Tensor, perturbation: torch.Tensor,
                       bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """``clip(x + perturbation)``: add one shared perturbation to every input of ``x``."""
    if not isinstance(perturbation, torch.Tensor) or perturbation.shape != x.shape[1:]:
        got = tuple(perturbation.shape) if isinstance(perturbation, torch.Tensor) else perturbation
        raise InputError(f"perturbation must be a tensor of one input's shape {tuple(x.shape[1:])}, "
                         f"got {got!r}")
    return (x + perturbation.to(x)).clamp(*bounds)


def ball_projector(threat: ThreatModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """Projection of perturbations ``(n, ...)`` onto the threat's ball and mask (no box)."""
    ball = ThreatModel(threat.norm, threat.eps, (-float("inf"), float("inf")), threat.mask)

    def project(v: torch.Tensor) -> torch.Tensor:
        return ball.project(torch.zeros_like(v), v)

    return project


def universal_objective(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                        loss: str) -> torch.Tensor:
    """Per-row objective the sticker and the patch maximise.

    ``"ce"``: untargeted ``CE(y)``; targeted ``-CE(target)`` (the log-probability
    of the target, as in RP2 and the adversarial patch). ``"margin"``: Carlini
    & Wagner's logit margin (:func:`~scrutiny.attacks.base.margin_loss_terms`).
    """
    if loss == "margin":
        return margin_loss_terms(logits, y, target, "margin")
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")
