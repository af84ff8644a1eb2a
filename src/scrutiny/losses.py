"""Per-sample objectives shared by attacks, adaptive (EOT) gradients and defenses.

A low layer: it depends on torch and :mod:`scrutiny.errors` only, so attacks
(:mod:`scrutiny.attacks`), the adaptive model machinery
(:mod:`scrutiny.models.adaptive`) and defenses all import it without a cycle.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from scrutiny.errors import InputError

#: The objectives :func:`margin_loss_terms` accepts.
LOSSES: tuple[str, ...] = ("ce", "margin")


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

    Parameters
    ----------
    logits : Tensor
        ``(N, K)`` model outputs.
    y : Tensor
        ``(N,)`` true labels.
    target : Tensor, optional
        ``(N,)`` target labels of a targeted attack.
    loss : {"ce", "margin"}
        The objective.

    Returns
    -------
    Tensor
        ``(N,)`` objective per sample (larger is better for the attacker).

    Examples
    --------
    >>> logits = torch.tensor([[2.0, 0.5, 1.0]])
    >>> margin_loss_terms(logits, torch.tensor([0]), None, "margin")
    tensor([-1.])
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
    raise InputError(f"unknown loss {loss!r}; accepted: {', '.join(LOSSES)}")
