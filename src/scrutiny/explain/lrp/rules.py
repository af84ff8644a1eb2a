"""LRP rules built from small functions (in the style of Zennit, Anders et al. 2021).

A layer that is linear in its input, ``z_j = sum_i a_i w_ij + b_j`` (Linear,
ConvNd, average pooling with the implicit positive weight), redistributes the
relevance ``R_j`` of its outputs to its inputs with a :class:`Rule`. A rule
is a signed sum of :class:`Term` s; each term names

* pairs ``(input_modifier, weight_modifier)``: the term's contributions are
  ``z_ij = sum_k in_k(a)_i * w_k(W)_ij``;
* a bias modifier: the term's share of the bias ``rho(b)_j``;
* a stabilizer ``d_j = stab(z_j)`` of the denominator ``z_j = sum_i z_ij + rho(b)_j``;

and gives ``R_i = coef * sum_j z_ij / d_j * R_j``. With coefficients summing
to one, each layer conserves relevance up to what the biases and the
stabilizer absorb, which :func:`propagate` returns explicitly:
``sum_i R_i + bias_share + stabilizer_share = sum_j R_j`` exactly. An output
whose denominator is exactly 0 passes nothing down; its relevance is counted
in the stabilizer share.

References
----------
.. [1] Bach, Binder, Montavon, Klauschen, Mueller, Samek. "On pixel-wise
   explanations for non-linear classifier decisions by layer-wise relevance
   propagation". PLoS ONE 2015.
.. [2] Montavon, Binder, Lapuschkin, Samek, Mueller. "Layer-wise relevance
   propagation: an overview". In Explainable AI, LNCS 11700, 2019.
.. [3] Anders, Neumann, Samek, Mueller, Lapuschkin. "Software for dataset-wide
   XAI: from local explanations to global insights with Zennit, CoRelAy, and
   ViRelAy". arXiv:2106.13200, 2021.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from scrutiny.errors import InputError

Modifier = Callable[[torch.Tensor], torch.Tensor]
Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------ small functions
def identity(t: torch.Tensor) -> torch.Tensor:
    return t


def positive(t: torch.Tensor) -> torch.Tensor:
    """``max(0, t)``."""
    return t.clamp(min=0)


def negative(t: torch.Tensor) -> torch.Tensor:
    """``min(0, t)``."""
    return t.clamp(max=0)


def zero(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(t)


def plus_gamma(gamma: float) -> Modifier:
    """``t + gamma * max(0, t)`` (the LRP-gamma weight transform)."""
    return lambda t: t + gamma * t.clamp(min=0)


def constant(value: torch.Tensor) -> Modifier:
    """Replace the layer input by a fixed tensor (the z^B bounds)."""
    def mod(a: torch.Tensor) -> torch.Tensor:
        v = value.to(a)
        if v.dim() and v.shape != a.shape:
            raise InputError(f"the zbox bounds have shape {tuple(v.shape)} but the layer's input "
                             f"has shape {tuple(a.shape)}; assign zbox to the first layer or give "
                             "scalar low/high")
        return v.expand_as(a)
    return mod


def exact(z: torch.Tensor) -> torch.Tensor:
    """No stabilizer: ``d = z`` (outputs with ``z = 0`` pass nothing down)."""
    return z


def epsilon_stabilizer(eps: float) -> Modifier:
    """``d = z + eps * sign(z)`` with ``sign(0) = +1``."""
    return lambda z: z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


# ------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Term:
    """One signed part of a rule: ``coef * sum_j z_ij / stab(z_j) * R_j``."""

    coef: float
    pairs: tuple[tuple[Modifier, Modifier], ...]
    bias: Modifier
    stabilizer: Modifier


@dataclass(frozen=True)
class Rule:
    """A named propagation rule for a layer linear in its input."""

    name: str
    terms: tuple[Term, ...]


def epsilon_rule(eps: float) -> Rule:
    """LRP-epsilon: ``R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j`` (eps = 0: LRP-0)."""
    stab = epsilon_stabilizer(eps) if eps > 0 else exact
    return Rule("epsilon" if eps > 0 else "z", (Term(1.0, ((identity, identity),), identity, stab),))


def alpha_beta_rule(alpha: float, beta: float) -> Rule:
    """LRP-alpha-beta (Bach et al. 2015): positive and negative contributions separately.

    ``R_i = sum_j (alpha (a_i w_ij)^+ / z_j^+ - beta (a_i w_ij)^- / z_j^-) R_j`` with
    ``z_j^+ = sum_i (a_i w_ij)^+ + b_j^+`` (and alike for ``^-``): the positive part
    of the bias joins the positive denominator, as in the paper.
    """
    pos = Term(alpha, ((positive, positive), (negative, negative)), positive, exact)
    neg = Term(-beta, ((positive, negative), (negative, positive)), negative, exact)
    return Rule("alphabeta", (pos, neg) if beta else (pos,))


def zplus_rule() -> Rule:
    """z+: only positive contributions, ``R_i = sum_j (a_i w_ij)^+ / z_j^+ R_j``.

    Equal to alpha=1, beta=0; for non-negative inputs (after a ReLU) this is
    ``a_i w_ij^+ / sum_i a_i w_ij^+`` (plus the positive bias in the denominator).
    """
    return Rule("zplus", alpha_beta_rule(1.0, 0.0).terms)


def gamma_rule(gamma: float) -> Rule:
    """LRP-gamma (Montavon et al. 2019): weights ``w + gamma w^+``, bias ``b + gamma b^+``."""
    rho = plus_gamma(gamma)
    return Rule("gamma", (Term(1.0, ((identity, rho),), rho, exact),))


def zbox_rule(low: torch.Tensor | float, high: torch.Tensor | float) -> Rule:
    """z^B for inputs bounded in ``[low, high]`` (Montavon et al. 2017/2019).

    ``R_i = sum_j (a_i w_ij - l_i w_ij^+ - h_i w_ij^-) / sum_i (...) R_j``; the
    bias is not part of the denominator, so it absorbs no relevance.
    """
    lo, hi = torch.as_tensor(low), torch.as_tensor(high)
    pairs = ((identity, identity), (constant(-lo), positive), (constant(-hi), negative))
    return Rule("zbox", (Term(1.0, pairs, zero, exact),))


RULES: tuple[str, ...] = ("epsilon", "z", "zplus", "alphabeta", "gamma", "zbox")
_RULE_KEYS: dict[str, tuple[str, ...]] = {"epsilon": ("epsilon",), "z": (), "zplus": (),
                                          "alphabeta": ("alpha", "beta"), "gamma": ("gamma",),
                                          "zbox": ("low", "high")}


def check_alpha_beta(alpha: float, beta: float) -> None:
    if not isinstance(alpha, int | float) or not isinstance(beta, int | float):
        raise InputError(f"alpha and beta must be numbers, got {alpha!r}, {beta!r}")
    if beta < 0 or abs(alpha - beta - 1) > 1e-9:
        raise InputError(f"alpha-beta needs beta >= 0 and alpha - beta = 1 (relevance "
                         f"conservation), got alpha={alpha!r}, beta={beta!r}")


def make_rule(spec: Any, *, epsilon: float, alpha: float, beta: float, gamma: float,
              bounds: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 1.0)) -> Rule:
    """Build a :class:`Rule` from plain data.

    ``spec`` is a rule name (one of :data:`RULES`) or a dict ``{"rule": name,
    **overrides}`` whose overrides replace the explainer-wide hyperparameters
    for that rule (``epsilon``; ``alpha``, ``beta``; ``gamma``; ``low``, ``high``
    for zbox, in the layer's input space).

    Examples
    --------
    >>> hyper = dict(epsilon=1e-6, alpha=2.0, beta=1.0, gamma=0.25)
    >>> make_rule({"rule": "alphabeta", "alpha": 1.0, "beta": 0.0}, **hyper).name
    'alphabeta'
    >>> make_rule("alphabeta", **{**hyper, "beta": 0.5})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scrutiny.errors.InputError: alpha-beta needs beta >= 0 and alpha - beta = 1 ...
    """
    if isinstance(spec, Mapping):
        name = spec.get("rule")
        over = {k: v for k, v in spec.items() if k != "rule"}
    else:
        name, over = spec, {}
    if not isinstance(name, str) or name not in RULES:
        raise InputError(f"unknown LRP rule {name!r}; accepted: {', '.join(RULES)} (or a dict "
                         "{'rule': name, ...overrides})")
    bad = [k for k in over if k not in _RULE_KEYS[name]]
    if bad:
        raise InputError(f"LRP rule {name!r} does not accept {', '.join(map(repr, bad))}; "
                         f"accepted: {', '.join(_RULE_KEYS[name]) or 'none'}")
    if name == "epsilon":
        eps = over.get("epsilon", epsilon)
        if not isinstance(eps, int | float) or not eps >= 0:
            raise InputError(f"epsilon must be a number >= 0, got {eps!r}")
        return epsilon_rule(float(eps))
    if name == "z":
        return epsilon_rule(0.0)
    if name == "zplus":
        return zplus_rule()
    if name == "alphabeta":
        a, b = over.get("alpha", alpha), over.get("beta", beta)
        check_alpha_beta(a, b)
        return alpha_beta_rule(float(a), float(b))
    if name == "gamma":
        g = over.get("gamma", gamma)
        if not isinstance(g, int | float) or not g >= 0:
            raise InputError(f"gamma must be a number >= 0, got {g!r}")
        return gamma_rule(float(g))
    lo, hi = over.get("low", bounds[0]), over.get("high", bounds[1])
    if isinstance(lo, int | float) and isinstance(hi, int | float) and not lo < hi:
        raise InputError(f"zbox needs low < high, got low={lo!r}, high={hi!r}")
    return zbox_rule(lo, hi)


# ------------------------------------------------------------------ propagation
def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


def propagate(rule: Rule, lin: Linear, a: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None, relevance: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relevance of the inputs of ``z = lin(a, weight) + bias`` under ``rule``.

    ``lin`` is linear in its first argument; ``bias`` is already shaped to
    broadcast against ``z``. The gradient of ``lin`` against the ratios
    ``s_j = R_j / d_j`` gives ``sum_j w_ij s_j`` exactly (no approximation).

    Returns
    -------
    (R_in, bias_share, stabilizer_share)
        ``R_in`` like ``a``; the shares are ``(N,)`` with
        ``sum R_in + bias_share + stabilizer_share = sum R`` per sample.

    Examples
    --------
    >>> import torch
    >>> import torch.nn.functional as F
    >>> a, w, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, -0.5]]), torch.tensor([0.5])
    >>> r_in, bias_share, stab = propagate(epsilon_rule(0.0), F.linear, a, w, b, torch.tensor([[1.0]]))
    >>> r_in, bias_share, stab
    (tensor([[ 2., -2.]]), tensor([1.]), tensor([0.]))
    """
    r_in = torch.zeros_like(a)
    bias_share = a.new_zeros(a.shape[0])
    stab_share = a.new_zeros(a.shape[0])
    for term in rule.terms:
        with torch.enable_grad():
            us = [in_mod(a).detach().requires_grad_(True) for in_mod, _ in term.pairs]
            z = sum(lin(u, w_mod(weight)) for u, (_, w_mod) in zip(us, term.pairs, strict=True))
        b = term.bias(bias) if bias is not None else torch.zeros((), dtype=a.dtype, device=a.device)
        z_full = z.detach() + b
        d = term.stabilizer(z_full)
        nonzero = d != 0
        s = torch.where(nonzero, relevance / torch.where(nonzero, d, 1.0), 0.0)
        grads = torch.autograd.grad(z, us, grad_outputs=s)
        r_in = r_in + term.coef * sum(u.detach() * g for u, g in zip(us, grads, strict=True))
        bias_share = bias_share + term.coef * _per_sample(b.expand_as(s) * s)
        lost = torch.where(nonzero, 0.0, relevance)
        stab_share = stab_share + term.coef * _per_sample((d - z_full) * s + lost)
    return r_in, bias_share, stab_share
