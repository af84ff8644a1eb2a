"""alpha-CROWN: CROWN with the ReLU lower slopes optimised per specification (Xu et al. 2021)."""

from __future__ import annotations

import math

import torch

from scrutiny.certify.base import BoundCertifier
from scrutiny.certify.propagation import Interval, Network, ReLUOp, crown_relaxations, ibp_spec
from scrutiny.params import param
from scrutiny.registry import register

#: Adam's moment decays and denominator guard (the defaults of torch.optim.Adam) and the
#: learning-rate decay per iteration (auto_LiRPA's ``lr_decay``).
_BETAS, _ADAM_EPS, _LR_DECAY = (0.9, 0.999), 1e-8, 0.98


def alpha_crown_bounds(net: Network, spec: torch.Tensor, box: Interval, norm: str,
                       x0: torch.Tensor, eps: torch.Tensor, *, iterations: int, lr: float,
                       intersect_ibp: bool = True, margins: bool = False) -> torch.Tensor:
    """Lower bounds of ``spec`` (``(N, S, K)``) on the output by alpha-CROWN.

    The intermediate (pre-activation) bounds and relaxations are CROWN's
    (:func:`~scrutiny.certify.propagation.crown_relaxations`) and stay fixed.
    For the output specification, every row of every sample gets its own
    lower slopes ``alpha`` in [0, 1] for the unstable ReLUs of every layer,
    starting at CROWN's adaptive slopes; ``iterations`` steps of projected
    gradient ascent (Adam, step ``lr`` decayed by 0.98 per step, then a clamp
    to [0, 1]) raise the bound, and the best bound of each row over the steps
    is kept, so the result is never below CROWN's (nor IBP's with
    ``intersect_ibp``). Every slope in [0, 1] gives a sound bound.

    ``margins``: the rows are margins (an all-zero row for ``y``); a sample
    whose every non-zero row is already > 0 is certified and leaves the
    optimisation (its bounds stop improving, its certificate is final).
    """
    relax, bounds = crown_relaxations(net, box, norm, x0, eps, "adaptive", intersect_ibp)
    start = len(net.ops)
    rows = net.chunk_rows(len(x0), start, 0)
    relus = [j for j, rx in relax.items() if isinstance(net.ops[j], ReLUOp) and len(rx[4])]
    outs = []
    for r in range(0, spec.shape[1], rows):
        sp = spec[:, r:r + rows]
        low = ibp_spec(net, sp, bounds, norm, x0, eps) if intersect_ibp else \
            sp.new_full(sp.shape[:2], -math.inf)
        if iterations and relus and len(x0):  # its first evaluation is CROWN's bound
            low = _optimise(net, sp, low, relax, relus, box, norm, x0, eps, iterations, lr,
                            margins)
        else:
            low = torch.maximum(low, net.spec_lower(sp, start, 0, relax, box, norm, x0, eps))
        outs.append(low)
    return torch.cat(outs, dim=1)


def _optimise(net: Network, spec: torch.Tensor, best: torch.Tensor, relax: dict[int, tuple],
              relus: list[int], box: Interval, norm: str, x0: torch.Tensor, eps: torch.Tensor,
              iterations: int, lr: float, margins: bool) -> torch.Tensor:
    """Projected Adam ascent on the slopes of the ReLU ops ``relus``, from CROWN's; the best
    bound per row over ``best`` and every step. Samples that are done (``margins``: all rows
    > 0) are dropped from the batch."""
    n, s = spec.shape[:2]
    best = best.clone()
    trivial = spec.flatten(2).abs().amax(dim=2) == 0 if margins else None  # row y: exactly 0
    # the slopes of the unstable columns only (a stable neuron's slope is fixed)
    cols = {j: relax[j][4] for j in relus}
    alphas = {j: relax[j][0][:, cols[j]].unsqueeze(1).expand(n, s, -1).clone() for j in relus}
    moments = {j: (torch.zeros_like(a), torch.zeros_like(a)) for j, a in alphas.items()}
    active = torch.arange(n, device=x0.device)
    for it in range(iterations + 1):
        if margins:
            done = ((best[active] > 0) | trivial[active]).all(dim=1)
            if done.any():
                keep = ~done
                active = active[keep]
                alphas = {j: a[keep] for j, a in alphas.items()}
                moments = {j: (m[keep], v[keep]) for j, (m, v) in moments.items()}
        if not len(active):
            break
        rx = {j: net.ops[j].select(t, active) for j, t in relax.items()}
        bx = (box[0][active], box[1][active])
        full = {j: _full(a, rx[j]) for j, a in alphas.items()}
        with torch.enable_grad():
            for a in full.values():
                a.requires_grad_(True)
            low = net.spec_lower(spec[active] if spec.shape[0] > 1 else spec, len(net.ops), 0,
                                 rx, bx, norm, x0[active], eps[active], full)
            best[active] = torch.maximum(best[active], low.detach())
            if it == iterations:  # the last step's bound is evaluated, not stepped from
                break
            grads = torch.autograd.grad(low.sum(), list(full.values()))
        step = lr * _LR_DECAY ** it
        for (j, a), g in zip(alphas.items(), grads, strict=True):
            g = g[:, :, cols[j]]
            m, v = moments[j]
            m.mul_(_BETAS[0]).add_(g, alpha=1 - _BETAS[0])
            v.mul_(_BETAS[1]).addcmul_(g, g, value=1 - _BETAS[1])
            mhat = m / (1 - _BETAS[0] ** (it + 1))
            vhat = v / (1 - _BETAS[1] ** (it + 1))
            a.add_(step * mhat / (vhat.sqrt() + _ADAM_EPS)).clamp_(0, 1)  # ascent, projected
    return best


def _full(alpha: torch.Tensor, relax: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``(N, S, D)`` lower slopes: ``alpha`` on the unstable columns, the relaxation's
    elsewhere (only unstable neurons read them)."""
    low, cols = relax[0], relax[4]
    out = low.unsqueeze(1).expand(-1, alpha.shape[1], -1).clone()
    out[:, :, cols] = alpha
    return out


@register("certifier", "alpha_crown", paper="Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh. Fast and "
          "complete: enabling complete neural network verification with rapid and massively "
          "parallel incomplete verifiers. ICLR 2021", test_params={"batch_size": 4,
                                                                  "iterations": 2})
class AlphaCROWN(BoundCertifier):
    """alpha-CROWN: CROWN with the ReLU relaxations' lower slopes optimised.

    CROWN bounds an unstable ReLU (``l < 0 < u``) from below by ``alpha z``;
    every ``alpha`` in [0, 1] is sound, and CROWN picks 0 or 1 by a
    heuristic. alpha-CROWN makes the slopes free variables, separate for
    every output specification (each margin ``z_y - z_j``, each logit) and
    every sample, and maximises the bound by projected gradient ascent: Adam
    with step ``lr`` (decayed by 0.98 per step, as auto_LiRPA), a clamp to
    [0, 1] after each step, ``iterations`` steps from CROWN's slopes, the
    best bound of each row over the steps kept. The result is never looser
    than CROWN's (same intermediate bounds, and the first bound evaluated is
    CROWN's), and with ``intersect_ibp`` never looser than IBP's.

    Parameters
    ----------
    iterations : int
        Gradient steps (0 gives CROWN).
    lr : float
        Adam's step size on the slopes.
    intersect_ibp : bool
        As :class:`~scrutiny.certify.CROWN`'s: intersect every layer's bounds
        and the final ones with interval bounds.
    batch_size : int
        Samples bounded (and optimised) at once.
    radius_steps : int
        Bisection rounds of :meth:`certified_radius`.

    Notes
    -----
    The intermediate layer bounds are CROWN's and are not optimised: only the
    slopes seen by the output specification are. This is auto_LiRPA's default
    (``fix_interm_bounds=True``: its alpha-CROWN computes the intermediate
    bounds once, by CROWN, and optimises the output's slopes); the paper
    also optimises slopes for the intermediate bounds, which is tighter and
    costs one set of slopes per intermediate neuron. Max pooling keeps
    DeepPoly's fixed relaxation (auto_LiRPA also optimises its lower
    combination). Deterministic: the start and every step are fixed (no
    seed). When certifying (:meth:`certify`, :meth:`certified_radius`) only
    the margins' lower bounds are optimised, and a sample leaves the
    optimisation as soon as all its margins are > 0.

    References
    ----------
    .. [1] Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh. "Fast and complete:
       enabling complete neural network verification with rapid and
       massively parallel incomplete verifiers". ICLR 2021.
    .. [2] Zhang, Weng, Chen, Hsieh, Daniel. "Efficient neural network
       robustness certification with general activation functions".
       NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.certify import CROWN
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> x, y = data.x[:2], data.y[:2]
    >>> crown = CROWN().bounds(model, x, 0.05, y=y)
    >>> alpha = AlphaCROWN(iterations=5).bounds(model, x, 0.05, y=y)
    >>> bool((alpha.margin_lower >= crown.margin_lower - 1e-6).all())  # never looser
    True
    >>> bool(alpha.margin_lower.mean() > crown.margin_lower.mean() + 0.1)  # and tighter
    True
    >>> # measured: mean margin lower bound +0.23 over CROWN's (2 images, 5 steps)
    """

    iterations: int = param(20, integer=True, nonneg=True)
    lr: float = param(0.5, positive=True)
    intersect_ibp: bool = param(True, kind=bool)
    batch_size: int = param(32, integer=True, positive=True)

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor, margins: bool = False) -> torch.Tensor:
        return alpha_crown_bounds(net, spec, box, norm, x0, eps, iterations=self.iterations,
                                  lr=self.lr, intersect_ibp=self.intersect_ibp, margins=margins)
