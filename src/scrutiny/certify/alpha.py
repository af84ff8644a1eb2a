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
                       intersect_ibp: bool = True, margins: bool = False,
                       intermediate: bool = True) -> torch.Tensor:
    """Lower bounds of ``spec`` (``(N, S, K)``) on the output by alpha-CROWN.

    The starting point is CROWN (:func:`~scrutiny.certify.propagation.crown_relaxations`).
    Every bound that is computed by backward propagation gets its own lower
    slopes ``alpha`` in [0, 1] for the unstable ReLUs before it: every row of
    the output specification of every sample and, with ``intermediate``, the
    lower and the upper bound of every unstable pre-activation neuron (Xu et
    al. 2021; auto_LiRPA's per-start-node alphas). All slopes start at
    CROWN's adaptive ones and ``iterations`` steps of projected gradient
    ascent on the sum of the output bounds (Adam, step ``lr`` decayed by 0.98
    per step, then a clamp to [0, 1]) raise them; the gradient flows through
    the intermediate bounds into their slopes. Each step's intermediate bounds
    are intersected with CROWN's, and the best output bound of each row over
    the steps is kept, so the result is never below CROWN's (nor IBP's with
    ``intersect_ibp``). Every slope in [0, 1] gives a sound bound.

    ``margins``: the rows are margins (an all-zero row for ``y``); a sample
    whose every non-zero row is already > 0 is certified and leaves the
    optimisation (its bounds stop improving, its certificate is final).
    """
    relax, bounds = crown_relaxations(net, box, norm, x0, eps, "adaptive", intersect_ibp)
    start = len(net.ops)
    relus = [j for j, rx in relax.items() if isinstance(net.ops[j], ReLUOp) and len(rx[4])]
    rows = net.chunk_rows(len(x0), start, 0)
    if intermediate and len(relus) > 1:  # the later ReLUs' bounds depend on earlier slopes
        rows = spec.shape[1]  # one joint problem: the intermediate slopes serve every row
    outs = []
    for r in range(0, spec.shape[1], rows):
        sp = spec[:, r:r + rows]
        low = ibp_spec(net, sp, bounds, norm, x0, eps) if intersect_ibp else \
            sp.new_full(sp.shape[:2], -math.inf)
        if iterations and relus and len(x0):  # its first evaluation is CROWN's bound
            low = _optimise(net, sp, low, relax, bounds, relus, box, norm, x0, eps, iterations,
                            lr, margins, intermediate)
        else:
            low = torch.maximum(low, net.spec_lower(sp, start, 0, relax, box, norm, x0, eps))
        outs.append(low)
    return torch.cat(outs, dim=1)


class _Slopes:
    """The optimised slopes: ``(start node, ReLU op) -> (N, rows, unstable columns)``, with
    Adam's moments; ``start`` is ``len(net.ops)`` for the output specification, else a
    pre-activation node whose unstable neurons are re-bounded, per sample its own:
    ``sel[start]`` ``(N, m)`` holds each sample's unstable neurons first, then the padding
    index ``D`` (the node's size); rows: their lower bounds, then their upper bounds."""

    def __init__(self, net: Network, relax: dict[int, tuple], relus: list[int], s: int,
                 bounds: list[Interval], intermediate: bool) -> None:
        n = len(relax[relus[0]][0])
        self.cols = {j: relax[j][4] for j in relus}
        self.sel: dict[int, torch.Tensor] = {}
        starts = [(len(net.ops), s)]
        if intermediate:
            for j in relus[1:]:  # the first ReLU's bounds depend on no slope
                lo, hi = (t.reshape(n, -1) for t in bounds[j])
                unstable = (lo < 0) & (hi > 0)
                count = unstable.sum(dim=1)
                m = int(count.max())
                if m:
                    first = torch.argsort((~unstable).to(torch.uint8), dim=1, stable=True)
                    pad = torch.arange(m, device=lo.device) >= count[:, None]
                    self.sel[j] = first[:, :m].masked_fill(pad, unstable.shape[1])
                    starts.append((j, 2 * m))
        self.alphas = {(st, j): relax[j][0][:, self.cols[j]].unsqueeze(1).expand(
            n, rows, -1).clone() for st, rows in starts for j in relus if j < st}
        self.moments = {k: (torch.zeros_like(a), torch.zeros_like(a))
                        for k, a in self.alphas.items()}

    def keep(self, keep: torch.Tensor, sizes: dict[int, int]) -> None:
        """Keep the samples ``keep`` (a mask), and of each start node's rows only as many
        as the samples left have unstable neurons (``sizes``: the nodes' sizes, the
        padding index)."""
        self.alphas = {k: a[keep] for k, a in self.alphas.items()}
        self.moments = {k: (m[keep], v[keep]) for k, (m, v) in self.moments.items()}
        for j, sel in list(self.sel.items()):
            sel = sel[keep]
            m, used = sel.shape[1], int((sel < sizes[j]).sum(dim=1).amax()) if len(sel) else 0
            self.sel[j] = sel[:, :used]
            if used == m:
                continue
            rows = torch.cat([torch.arange(used), m + torch.arange(used)]).to(sel.device)
            for k in [k for k in self.alphas if k[0] == j]:
                self.alphas[k] = self.alphas[k][:, rows]
                self.moments[k] = tuple(t[:, rows] for t in self.moments[k])
                if not used:  # nothing left to re-bound at this node
                    del self.alphas[k], self.moments[k]
            if not used:
                del self.sel[j]

    def step(self, grads: list[torch.Tensor], it: int, lr: float) -> None:
        """One projected Adam ascent step (``grads`` on the slope tensors)."""
        for (k, a), g in zip(self.alphas.items(), grads, strict=True):
            adam_ascent(a, g, *self.moments[k], it, lr * _LR_DECAY ** it)
            a.clamp_(0, 1)


def adam_ascent(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, it: int,
                lr: float) -> None:
    """One Adam step of ascent on ``p`` in place (``torch.optim.Adam``'s update with its
    default decays, maximising), moments ``m`` and ``v`` updated in place; ``it`` counts
    from 0."""
    with torch.no_grad():
        m.lerp_(g, 1 - _BETAS[0])
        v.mul_(_BETAS[1]).addcmul_(g, g, value=1 - _BETAS[1])
        denom = (v / (1 - _BETAS[1] ** (it + 1))).sqrt_().add_(_ADAM_EPS)
        p.addcdiv_(m, denom, value=lr / (1 - _BETAS[0] ** (it + 1)))


def _relaxations(net: Network, relax: dict[int, tuple], bounds: list[Interval],
                 full: dict[tuple[int, int], torch.Tensor], sel: dict[int, torch.Tensor],
                 box: Interval, norm: str, x0: torch.Tensor, eps: torch.Tensor
                 ) -> dict[int, tuple]:
    """The relaxations of the piecewise-linear ops with the pre-activation bounds of the
    neurons ``sel[j]`` re-bounded by back-propagation with the slopes ``full`` (and
    intersected with CROWN's ``bounds``); a max pooling right after a re-bounded ReLU is
    relaxed again on the new bounds. The ReLU relaxations keep CROWN's unstable columns
    (the slopes' layout; a neuron that became stable is exact). ``sel[j]`` ``(N, m)``: per
    sample the neurons to re-bound, padded with the node's size (see :class:`_Slopes`)."""
    out: dict[int, tuple] = {}
    cur: dict[int, Interval] = {}
    n = len(x0)
    for j in sorted(relax):
        op = net.ops[j]
        if j in sel:
            lo, hi = bounds[j]
            idx, (m, d) = sel[j], (sel[j].shape[1], lo[0].numel())
            eye = torch.zeros(n, m, d + 1, device=x0.device, dtype=x0.dtype)
            eye.scatter_(2, idx.unsqueeze(-1), 1.0)  # a padding row hits column d, dropped
            eye = eye[:, :, :d]
            spec = torch.cat([eye, -eye], dim=1).reshape(n, 2 * m, *lo.shape[1:])
            b = net.spec_lower(spec, j, 0, out, box, norm, x0, eps,
                               {i: a for (st, i), a in full.items() if st == j})
            new = []
            for t, bt, best in ((lo, b[:, :m], torch.maximum), (hi, -b[:, m:], torch.minimum)):
                t = torch.cat([t.reshape(n, -1), t.new_zeros(n, 1)], dim=1)  # padding column
                new.append(t.scatter(1, idx, best(t.gather(1, idx), bt))[:, :d].reshape(lo.shape))
            cur[j] = lo, hi = new[0], new[1]
            out[j] = (*op.relax(lo, hi, "adaptive")[:4], relax[j][4])
        elif j - 1 in cur and not isinstance(op, ReLUOp):  # max pooling after a ReLU
            out[j] = op.relax(*(torch.relu(t) for t in cur[j - 1]), "adaptive")
        else:
            out[j] = relax[j]
    return out


def _optimise(net: Network, spec: torch.Tensor, best: torch.Tensor, relax: dict[int, tuple],
              bounds: list[Interval], relus: list[int], box: Interval, norm: str,
              x0: torch.Tensor, eps: torch.Tensor, iterations: int, lr: float, margins: bool,
              intermediate: bool) -> torch.Tensor:
    """Projected Adam ascent on the slopes of the ReLU ops ``relus`` (:class:`_Slopes`),
    from CROWN's; the best bound per row over ``best`` and every step. Samples that are done
    (``margins``: all rows > 0) are dropped from the batch."""
    n, s = spec.shape[:2]
    best = best.clone()
    trivial = spec.flatten(2).abs().amax(dim=2) == 0 if margins else None  # row y: exactly 0
    slopes = _Slopes(net, relax, relus, s, bounds, intermediate)
    active = torch.arange(n, device=x0.device)
    end = len(net.ops)
    sizes = {j: bounds[j][0][0].numel() for j in slopes.sel}
    for it in range(iterations + 1):
        if margins:
            done = ((best[active] > 0) | trivial[active]).all(dim=1)
            if done.any():
                active = active[~done]
                slopes.keep(~done, sizes)
        if not len(active):
            break
        rx = {j: net.ops[j].select(t, active) for j, t in relax.items()}
        bnd = {j: (bounds[j][0][active], bounds[j][1][active]) for j in slopes.sel}
        bx, xa, ea = (box[0][active], box[1][active]), x0[active], eps[active]
        with torch.enable_grad():
            full = {k: a.detach().requires_grad_(True) for k, a in slopes.alphas.items()}
            if slopes.sel:
                rx = _relaxations(net, rx, bnd, full, slopes.sel, bx, norm, xa, ea)
            low = net.spec_lower(spec[active] if spec.shape[0] > 1 else spec, end, 0, rx, bx,
                                 norm, xa, ea, {j: a for (st, j), a in full.items()
                                                if st == end})
            best[active] = torch.maximum(best[active], low.detach())
            if it == iterations:  # the last step's bound is evaluated, not stepped from
                break
            grads = torch.autograd.grad(low.sum(), list(full.values()), allow_unused=True)
        slopes.step([torch.zeros_like(f) if g is None else g
                     for f, g in zip(full.values(), grads, strict=True)], it, lr)
    return best


@register("certifier", "alpha_crown", paper="Xu, Zhang, Wang, Wang, Jana, Lin, Hsieh. Fast and "
          "complete: enabling complete neural network verification with rapid and massively "
          "parallel incomplete verifiers. ICLR 2021", test_params={"batch_size": 4,
                                                                  "iterations": 2,
                                                                  "radius_steps": 4})
class AlphaCROWN(BoundCertifier):
    """alpha-CROWN: CROWN with the ReLU relaxations' lower slopes optimised.

    CROWN bounds an unstable ReLU (``l < 0 < u``) from below by ``alpha z``;
    every ``alpha`` in [0, 1] is sound, and CROWN picks 0 or 1 by a
    heuristic. alpha-CROWN makes the slopes free variables, separate for
    every bound computed by backward propagation: every output specification
    row (each margin ``z_y - z_j``, each logit) of every sample and, with
    ``intermediate`` (the paper's and auto_LiRPA's default), the lower and
    the upper bound of every unstable pre-activation neuron, which shape the
    relaxations of the later layers. It maximises the sum of the output
    bounds by projected gradient ascent through the whole chain: Adam with
    step ``lr`` (decayed by 0.98 per step, as auto_LiRPA), a clamp to [0, 1]
    after each step, ``iterations`` steps from CROWN's slopes, the best bound
    of each row over the steps kept. The result is never looser than CROWN's
    (every step's intermediate bounds are intersected with CROWN's, and the
    first bound evaluated is CROWN's), and with ``intersect_ibp`` never
    looser than IBP's.

    Parameters
    ----------
    iterations : int
        Gradient steps (0 gives CROWN).
    lr : float
        Adam's step size on the slopes.
    intersect_ibp : bool
        As :class:`~scrutiny.certify.CROWN`'s: intersect every layer's bounds
        and the final ones with interval bounds.
    intermediate : bool
        Optimise the slopes of the intermediate bounds too (Xu et al.);
        False optimises the output's slopes only, on CROWN's intermediate
        bounds (auto_LiRPA's ``fix_interm_bounds`` with given intermediate
        bounds, as in branch and bound).
    batch_size : int
        Samples bounded (and optimised) at once.
    radius_steps : int
        Bisection rounds of :meth:`certified_radius`.

    Notes
    -----
    Cost: one step is one CROWN pass (every intermediate neuron that CROWN
    finds unstable in a sample re-bounded for that sample, and the output
    rows, with per-row slopes) and its gradient, so ``iterations`` steps cost
    a few times ``iterations`` CROWN passes, linear in the samples (those not
    yet certified); memory grows with the unstable
    neurons of a layer times those of the layers before it (one slope per
    pair and sample). With ``intermediate=False`` a step is one output pass.
    Max pooling keeps DeepPoly's fixed relaxation (auto_LiRPA also optimises
    its lower combination). Deterministic: the start and every step are
    fixed (no seed). When certifying (:meth:`certify`,
    :meth:`certified_radius`) only the margins' lower bounds are optimised,
    and a sample leaves the optimisation as soon as all its margins are > 0.

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
    >>> alpha = AlphaCROWN(iterations=5, intermediate=False).bounds(model, x, 0.05, y=y)
    >>> bool((alpha.margin_lower >= crown.margin_lower - 1e-6).all())  # never looser
    True
    >>> bool(alpha.margin_lower.mean() > crown.margin_lower.mean() + 0.1)  # and tighter
    True
    >>> # measured: mean margin lower bound +0.23 over CROWN's (2 images, 5 steps; the
    >>> # output's slopes only: with the intermediate ones too it takes ~15x longer here)
    """

    iterations: int = param(20, integer=True, nonneg=True)
    lr: float = param(0.5, positive=True)
    intersect_ibp: bool = param(True, kind=bool)
    intermediate: bool = param(True, kind=bool)
    batch_size: int = param(32, integer=True, positive=True)

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor, margins: bool = False) -> torch.Tensor:
        return alpha_crown_bounds(net, spec, box, norm, x0, eps, iterations=self.iterations,
                                  lr=self.lr, intersect_ibp=self.intersect_ibp, margins=margins,
                                  intermediate=self.intermediate)
