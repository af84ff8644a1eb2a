"""Adaptive evaluation of preprocessing defenses: BPDA and EOT (Athalye et al. ICML 2018).

A defense whose transform declares ``non_differentiable`` gets BPDA with the
identity (forward ``g(x)``, backward as if ``g(x) = x``); one that declares
``randomized`` gets EOT (the loss or the output averaged over draws of the
randomness). :func:`adaptive` rewrites a defended model so that ANY white-box
attack run on it computes these gradients; :func:`eot_input_gradient` is the
exact "average of per-draw loss gradients" for an attack loop to use directly.

The machinery lives in :mod:`scrutiny.models.adaptive`, below both the attacks
(whose base class adapts its model with it) and the defenses; this module is
its public name and re-exports it.

Examples
--------
A 1-bit quantiser in front of the digits CNN has zero input gradients, so PGD
through it (``adaptive=False``) barely moves. By default the attack base
differentiates ``adaptive(defended)`` itself (BPDA): the same attack as passing
``adaptive(defended)`` explicitly, and it breaks the defense.

>>> import torch
>>> from scrutiny.models import pretrained
>>> from scrutiny.data import load_digits
>>> from scrutiny.attacks import PGD
>>> from scrutiny.types import ThreatModel
>>> from scrutiny.defenses import BitDepthReduction
>>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
>>> x, y = data.x[:64], data.y[:64]
>>> defended = BitDepthReduction(bits=1).wrap(model)
>>> tm = ThreatModel("linf", 0.3)
>>> naive = PGD(steps=20)(defended, x, y, threat=tm, adaptive=False)
>>> auto = PGD(steps=20)(defended, x, y, threat=tm)
>>> auto.meta["adaptive"]
'BPDA'
>>> bpda = PGD(steps=20)(adaptive(defended), x, y, threat=tm)
>>> torch.equal(bpda.x_adv, auto.x_adv)
True
>>> naive.robust_accuracy() > 0.7, auto.robust_accuracy() < 0.3  # measured: 0.80, 0.17
(True, True)
"""

from __future__ import annotations

from scrutiny.models.adaptive import (
    AVERAGES,
    EOT,
    adaptive,
    declare,
    eot_input_gradient,
    is_non_differentiable,
    is_randomized,
    transforms_of,
)

__all__ = ["AVERAGES", "EOT", "adaptive", "declare", "eot_input_gradient", "is_non_differentiable",
           "is_randomized", "transforms_of"]
