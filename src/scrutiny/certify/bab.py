"""beta-CROWN branch and bound: complete verification of small ReLU networks (Wang et al. 2021)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from scrutiny.certify.alpha import _LR_DECAY, adam_ascent, alpha_crown_bounds
from scrutiny.certify.base import BoundCertifier, CertResult, _full_precision
from scrutiny.certify.propagation import (
    Interval,
    Network,
    ReLUOp,
    compile_network,
    crown_relaxations,
    margin_spec,
)
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import ThreatModel

#: Per-sample outcomes of :class:`BetaCROWN`.
STATUSES = ("certified", "falsified", "unknown")


@dataclass
class BaBResult(CertResult):
    """:class:`~scrutiny.certify.base.CertResult` with the per-sample outcome of branch and bound.

    Attributes
    ----------
    status : tuple of str
        Per sample: ``"certified"`` (every margin proved > 0), ``"falsified"``
        (``counterexample`` holds a point of the threat set the model classifies
        otherwise, checked by a forward pass; a misclassified ``x`` is its own),
        or ``"unknown"`` (the time budget or the domain limit ran out).
    counterexample : Tensor
        ``(N, ...)`` the counterexamples (NaN where the sample is not falsified).
    domains : Tensor
        ``(N,)`` sub-domains bounded per sample.
    """

    status: tuple[str, ...] = ()
    counterexample: torch.Tensor | None = None
    domains: torch.Tensor | None = None

    def falsified_mask(self) -> torch.Tensor:
        """bool (N,): the samples with a counterexample."""
        return torch.tensor([s == "falsified" for s in self.status], dtype=torch.bool)


def _project(x: torch.Tensor, x0: torch.Tensor, box: Interval, norm: str,
             eps: torch.Tensor) -> torch.Tensor:
    """Into the threat set: the l2 ball (radial), then the box (which only moves a point
    towards ``x0``, so it stays in the ball)."""
    if norm == "l2":
        d = (x - x0).flatten(1)
        scale = (eps / d.norm(dim=1).clamp_min(1e-12)).clamp(max=1)
        x = x0 + (d * scale[:, None]).reshape(x.shape)
    return torch.minimum(torch.maximum(x, box[0]), box[1])


def _pgd(net: Network, x0: torch.Tensor, y: int, box: Interval, norm: str, eps: torch.Tensor,
         restarts: int, steps: int) -> torch.Tensor | None:
    """A point of the threat set of one sample ``x0`` ``(1, ...)`` that the network does not
    classify as ``y`` (PGD on the largest margin ``z_j - z_y`` from ``restarts`` random
    starts, steepest-ascent steps of 2.5 eps / steps), or None."""
    lo, hi = box
    xs = x0.expand(restarts, *x0.shape[1:])
    x = lo + (hi - lo) * torch.rand(xs.shape, dtype=x0.dtype, device=x0.device)
    x = _project(x, xs, (lo.expand_as(xs), hi.expand_as(xs)), norm, eps.expand(restarts))
    x[0] = x0[0]
    step = 2.5 * float(eps[0]) / max(steps, 1)
    for _ in range(steps + 1):
        with torch.enable_grad():
            x.requires_grad_(True)
            z = net.forward(x)
            other = z.clone()
            other[:, y] = -math.inf
            loss = other.amax(dim=1) - z[:, y]
            bad = (loss > 0).nonzero()
            if len(bad):
                return x[bad[0, 0]].detach().unsqueeze(0)
            (g,) = torch.autograd.grad(loss.sum(), x)
        if norm == "l2":
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *[1] * (x.dim() - 1))
        else:
            g = g.sign()
        x = _project(x.detach() + step * g, xs, (lo.expand_as(xs), hi.expand_as(xs)), norm,
                     eps.expand(restarts))
    return None


class _Domains:
    """Bounding a batch of sub-domains of one sample: per domain a specification row and
    a split per ReLU neuron (``+1`` active, ``-1`` inactive, 0 free)."""

    def __init__(self, net: Network, x0: torch.Tensor, box: Interval, norm: str,
                 eps: torch.Tensor, *, iterations: int, lr_alpha: float, lr_beta: float) -> None:
        self.net, self.x0, self.box, self.norm, self.eps = net, x0, box, norm, eps
        self.iterations, self.lr_alpha, self.lr_beta = iterations, lr_alpha, lr_beta
        self.relus = [j for j, op in enumerate(net.ops) if isinstance(op, ReLUOp)]
        relax, bounds = crown_relaxations(net, box, norm, x0, eps)
        self.root = {j: bounds[j] for j in self.relus}  # the sample's CROWN bounds

    def _expand(self, b: int) -> tuple[Interval, torch.Tensor, torch.Tensor]:
        x0 = self.x0.expand(b, *self.x0.shape[1:])
        return (self.box[0].expand_as(x0), self.box[1].expand_as(x0)), x0, self.eps.expand(b)

    def relaxations(self, splits: dict[int, torch.Tensor]) -> tuple[dict[int, tuple], torch.Tensor]:
        """CROWN's intermediate bounds of every domain, with the split neurons' bounds
        clamped at 0 (active: ``l >= 0``, inactive: ``u <= 0``): the relaxations and
        whether each domain is empty (some neuron with ``l > u``)."""
        net, b = self.net, len(next(iter(splits.values())))
        box, x0, eps = self._expand(b)
        relax: dict[int, tuple] = {}
        empty = torch.zeros(b, dtype=torch.bool, device=x0.device)
        for j in self.relus:
            lo, hi = (t.expand(b, *t.shape[1:]).reshape(b, -1) for t in self.root[j])
            sel = ((lo < 0) & (hi > 0)).any(dim=0).nonzero()[:, 0]
            if len(sel) and relax:
                m = len(sel)
                shape = net.shapes()[j]
                eye = torch.zeros(m, lo.shape[1], device=x0.device, dtype=x0.dtype)
                eye[torch.arange(m, device=x0.device), sel] = 1
                spec = torch.cat([eye, -eye]).reshape(1, 2 * m, *shape)
                low = net.spec_lower(spec, j, 0, relax, box, self.norm, x0, eps)
                lo, hi = lo.clone(), hi.clone()
                lo[:, sel] = torch.maximum(lo[:, sel], low[:, :m])
                hi[:, sel] = torch.minimum(hi[:, sel], -low[:, m:])
            s = splits[j]
            lo = torch.where(s > 0, lo.clamp(min=0), lo)
            hi = torch.where(s < 0, hi.clamp(max=0), hi)
            empty |= (lo > hi).any(dim=1)
            shape = net.shapes()[j]
            relax[j] = ReLUOp.relax(lo.reshape(b, *shape), hi.reshape(b, *shape), "adaptive")
        return relax, empty

    def bound(self, spec: torch.Tensor, splits: dict[int, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
        """Lower bounds ``(B,)`` of the rows ``spec`` ``(B, K)`` on the domains, by
        alpha-CROWN with beta multipliers for the split constraints (the Lagrangian
        ``f(x) - sum beta s z`` over the relaxation, ``beta >= 0``, is below ``f`` on the
        domain), optimised jointly by projected Adam ascent; the minimiser of the last
        bound on the input set ``(B, ...)``; per ReLU op the branching scores ``(B, D)``
        (-inf where a neuron is stable or split)."""
        net, b = self.net, len(spec)
        box, x0, eps = self._expand(b)
        relax, empty = self.relaxations(splits)
        cols = {j: relax[j][4] for j in self.relus}
        alphas = {j: relax[j][0][:, cols[j]].unsqueeze(1).clone() for j in self.relus}
        betas = {j: torch.zeros_like(relax[j][0]) for j in self.relus}
        sgn = {j: splits[j].to(x0.dtype) for j in self.relus}
        params = [*alphas.values(), *betas.values()]
        moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
        best = spec.new_full((b,), -math.inf)
        sp = spec.unsqueeze(1)
        for it in range(self.iterations + 1):
            with torch.enable_grad():
                for p in params:
                    p.requires_grad_(True)
                a, const, post = sp, sp.new_zeros(b, 1), {}
                for j in range(len(net.ops) - 1, -1, -1):
                    op = net.ops[j]
                    if op.affine:
                        a, c = op.back(a)
                    else:
                        post[j] = a
                        a, c = op.back(a, relax[j], alphas[j])
                        a = a - (betas[j] * sgn[j]).reshape(a.shape)
                    const = const + c
                low = Network.concretize(a, const, box, self.norm, x0, eps)[:, 0]
                best = torch.maximum(best, low.detach())
                if it == self.iterations:
                    break
                grads = torch.autograd.grad(low.sum(), params)
            for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                lr = (self.lr_alpha if i < len(alphas) else self.lr_beta) * _LR_DECAY ** it
                adam_ascent(p, g, *moments[i], it, lr)
                with torch.no_grad():
                    p.clamp_(0, 1) if i < len(alphas) else p.clamp_(min=0)
        best = best.masked_fill(empty, math.inf)
        # the minimiser of the last linear bound: a corner of the box (linf) or the ball's
        af = a.detach().reshape(b, -1)
        lo, hi = (t.reshape(b, -1) for t in box)
        if self.norm == "l2":
            pt = x0.reshape(b, -1) - eps[:, None] * af / af.norm(dim=1, keepdim=True).clamp_min(
                1e-12)
        else:
            pt = torch.where(af >= 0, lo, hi)
        pt = _project(pt.reshape(x0.shape), x0, box, self.norm, eps)
        scores = {}
        for j in self.relus:  # BaBSR-style: the upper line's intercept the bound pays
            lo_r, up, icpt, unstable = relax[j][:4]
            neg = (-post[j].detach().reshape(b, -1)).clamp(min=0)
            s = neg * icpt + 1e-6 * icpt  # tie-break: the widest triangle
            scores[j] = s.masked_fill(~unstable | (splits[j] != 0), -math.inf)
        return best, pt, scores, empty


def bab_verify(net: Network, x0: torch.Tensor, y: int, box: Interval, norm: str,
               eps: torch.Tensor, *, iterations: int, lr_alpha: float, lr_beta: float,
               batch_domains: int, max_domains: int, time_budget: float, restarts: int,
               attack_steps: int, root: torch.Tensor | None = None
               ) -> tuple[str, torch.Tensor, torch.Tensor | None, int]:
    """Branch and bound on one sample ``x0`` ``(1, ...)``: ``(status, margin lower bounds
    (K,), counterexample or None, domains bounded)``; ``root``: alpha-CROWN's margin lower
    bounds of the sample, when already computed."""
    t0 = time.perf_counter()
    k = net.shapes()[-1][0]
    z = net.forward(x0)
    spec = margin_spec(torch.tensor([y], device=x0.device), k, x0.dtype)[:, k:]
    low = alpha_crown_bounds(net, spec, box, norm, x0, eps, iterations=iterations, lr=lr_alpha,
                             margins=True)[0] if root is None else root.clone()
    low[y] = 0.0
    if int(z.argmax()) != y:
        return "falsified", low, x0.clone(), 0
    todo = [j for j in range(k) if j != y and low[j] <= 0]
    if not todo:
        return "certified", low, None, 0
    cex = _pgd(net, x0, y, box, norm, eps, restarts, attack_steps)
    if cex is not None:
        return "falsified", low, cex, 0
    dom = _Domains(net, x0, box, norm, eps, iterations=iterations, lr_alpha=lr_alpha,
                   lr_beta=lr_beta)
    dims = {j: math.prod(net.shapes()[j]) for j in dom.relus}
    # the open domains: row, lower bound, splits, scores (bounded once each, then split)
    rows = torch.tensor(todo, device=x0.device)
    splits = {j: torch.zeros(len(todo), d, dtype=torch.int8, device=x0.device)
              for j, d in dims.items()}
    bound, pts, scores, _ = dom.bound(spec[0, rows], splits)
    n_dom = len(todo)
    leaf_min = torch.full((k,), math.inf, device=x0.device)
    opened = (rows, bound, splits, scores)
    while True:
        rows, bound, splits, scores = opened
        # a counterexample at a domain's minimiser ends the search
        zs = net.forward(pts)
        viol = (zs.gather(1, rows[:, None])[:, 0] > zs[:, y]) & (zs.argmax(dim=1) != y)
        if viol.any():
            return "falsified", low, pts[viol.nonzero()[0, 0]].unsqueeze(0), n_dom
        done = bound > 0
        if done.any():
            leaf_min.scatter_reduce_(0, rows[done], bound[done], "amin")
        rows, bound = rows[~done], bound[~done]
        splits = {j: s[~done] for j, s in splits.items()}
        scores = {j: s[~done] for j, s in scores.items()}
        if not len(rows):
            break
        best_score = torch.stack([s.amax(dim=1) for s in scores.values()], 1)
        if (best_score.amax(dim=1) == -math.inf).any() or n_dom >= max_domains or \
                time.perf_counter() - t0 > time_budget:
            return "unknown", low, None, n_dom  # nothing left to split, or out of budget
        # split the worst domains first, on the neuron of largest score
        order = bound.argsort()[:batch_domains]
        rest = torch.ones(len(rows), dtype=torch.bool, device=x0.device)
        rest[order] = False
        layer = best_score[order].argmax(dim=1)
        children = {j: torch.cat([splits[j][order]] * 2) for j in splits}
        for li, j in enumerate(dom.relus):
            pick = (layer == li).nonzero()[:, 0]
            if len(pick):
                neuron = scores[j][order[pick]].argmax(dim=1)
                children[j][pick, neuron] = 1
                children[j][pick + len(order), neuron] = -1
        crow = torch.cat([rows[order]] * 2)
        cb, cp, cs, _ = dom.bound(spec[0, crow], children)
        n_dom += len(crow)
        keep = {j: s[rest] for j, s in splits.items()}
        opened = (torch.cat([rows[rest], crow]), torch.cat([bound[rest], cb]),
                  {j: torch.cat([keep[j], children[j]]) for j in splits},
                  {j: torch.cat([scores[j][rest], cs[j]]) for j in splits})
        # the kept domains' minimisers were checked: the clean point stands in for them
        pts = torch.cat([x0.expand(int(rest.sum()), *x0.shape[1:]), cp])
    for j in todo:
        low[j] = torch.maximum(low[j], leaf_min[j])
    return "certified", low, None, n_dom


@register("certifier", "beta_crown", paper="Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter. "
          "Beta-CROWN: efficient bound propagation with per-neuron split constraints for "
          "neural network robustness verification. NeurIPS 2021",
          test_params={"batch_size": 4, "iterations": 3, "max_domains": 4, "time_budget": 0.2,
                       "restarts": 4, "attack_steps": 5, "radius_steps": 3})
class BetaCROWN(BoundCertifier):
    """beta-CROWN branch and bound: complete verification of small ReLU networks.

    Per sample: a misclassified ``x`` is falsified by itself; alpha-CROWN
    (:class:`~scrutiny.certify.AlphaCROWN`, intermediate slopes optimised)
    bounds every margin ``z_y - z_j``, and the rows it proves > 0 are done;
    PGD from ``restarts`` random starts looks for a counterexample. Each
    margin left is split into sub-domains by fixing unstable ReLUs active
    (``z >= 0``) or inactive (``z <= 0``), ``batch_domains`` worst domains
    at a time, on the neuron of largest BaBSR-style score (the upper line's
    intercept times the negative part of the bound's coefficient on the
    neuron: what its relaxation costs the bound). A domain is bounded by CROWN
    intermediate bounds with the split neurons' bounds clamped at 0 (a domain
    where some ``l > u`` is empty), then the output bound by alpha-CROWN with
    a beta multiplier per split (``f(x) - sum beta s z(x) <= f(x)`` on the
    domain for ``beta >= 0``; the slopes and the betas are optimised jointly,
    ``iterations`` projected Adam steps). The minimiser of each domain's bound
    on the input set is checked by a forward pass: misclassified, it is a
    counterexample. A sample ends ``certified`` (every domain's bound > 0 or
    empty), ``falsified`` (a counterexample inside the threat set, checked)
    or ``unknown`` (``time_budget`` seconds or ``max_domains`` domains spent,
    or a domain with nothing left to split whose bound stays <= 0).

    Parameters
    ----------
    iterations : int
        Adam steps of every bound (alpha-CROWN at the root, alpha and beta in
        the domains).
    lr_alpha : float
        Step size of the slopes (AlphaCROWN's ``lr``: the root bound is exactly
        ``AlphaCROWN(iterations, lr=lr_alpha)``'s).
    lr_beta : float
        Step size of the split constraints' multipliers.
    batch_domains : int
        Domains split (two children each) and bounded at once.
    max_domains : int
        Domains bounded per sample before it is given up (``unknown``).
    time_budget : float
        Seconds per sample before it is given up (``unknown``).
    restarts : int
        Random restarts of the PGD search for a counterexample before branching.
    attack_steps : int
        Steps of each restart of that search.
    batch_size : int
        Samples bounded at once by :meth:`bounds` (alpha-CROWN's bounds).
    radius_steps : int
        Bisection rounds of :meth:`certified_radius`.

    Notes
    -----
    For small networks: a chain of affine layers and ReLUs (no max pooling);
    the cost per sample is at most ``time_budget`` (plus one domain batch),
    and one bounded domain costs one CROWN pass with ``iterations``
    forward-backward passes on top. The intermediate bounds of a domain are
    CROWN's (with its splits), not optimised with betas as in the paper's
    full version. :meth:`bounds` gives alpha-CROWN's (incomplete) bounds;
    :meth:`certify` gives a :class:`BaBResult` with the per-sample
    ``status`` and counterexamples; a radius search decides each eps by
    branch and bound (an unknown counts as not certified). Results depend on
    the machine's speed only when ``time_budget`` binds (``max_domains`` is
    deterministic).

    References
    ----------
    .. [1] Wang, Zhang, Xu, Lin, Jana, Hsieh, Kolter. "Beta-CROWN: efficient
       bound propagation with per-neuron split constraints for neural network
       robustness verification". NeurIPS 2021.
    .. [2] Bunel, Lu, Turkaslan, Torr, Kohli, Kumar. "Branch and bound for
       piecewise linear neural network verification" (BaBSR). JMLR 2020.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from scrutiny.models import TorchModel
    >>> from scrutiny.types import ThreatModel
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
    ...                     nn.Linear(8, 2))
    >>> model = TorchModel(net)
    >>> x = torch.rand(6, 2)
    >>> y = model.predict(x)
    >>> res = BetaCROWN().certify(model, x, y, ThreatModel("linf", 0.05))
    >>> set(res.status) <= {"certified", "falsified"}  # decided, every sample
    True
    >>> bool((model.predict(res.counterexample[res.falsified_mask()]) !=
    ...       y[res.falsified_mask()]).all())  # counterexamples are misclassified
    True
    """

    iterations: int = param(20, integer=True, nonneg=True)
    lr_alpha: float = param(0.5, positive=True)
    lr_beta: float = param(0.05, positive=True)
    batch_domains: int = param(64, integer=True, positive=True)
    max_domains: int = param(2000, integer=True, positive=True)
    time_budget: float = param(10.0, positive=True)
    restarts: int = param(16, integer=True, positive=True)
    attack_steps: int = param(20, integer=True, nonneg=True)
    batch_size: int = param(32, integer=True, positive=True)

    def _options(self) -> dict:
        return {"iterations": self.iterations, "lr_alpha": self.lr_alpha,
                "lr_beta": self.lr_beta, "batch_domains": self.batch_domains,
                "max_domains": self.max_domains, "time_budget": self.time_budget,
                "restarts": self.restarts, "attack_steps": self.attack_steps}

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor, margins: bool = False) -> torch.Tensor:
        if not margins:
            return alpha_crown_bounds(net, spec, box, norm, x0, eps, iterations=self.iterations,
                                      lr=self.lr_alpha)
        y = spec.sum(dim=1).argmax(dim=1)  # the margin rows of y: e_y - e_j, row y zero
        return self._verify(net, x0, y, box, norm, eps)[1]

    def _verify(self, net: Network, x0: torch.Tensor, y: torch.Tensor, box: Interval, norm: str,
                eps: torch.Tensor) -> tuple[list[str], torch.Tensor, list, list[int]]:
        """Statuses, margin lower bounds ``(N, K)``, counterexamples (or None) and domains
        per sample: alpha-CROWN on the whole batch, then branch and bound per sample on
        those it leaves open."""
        _check_relu(net)
        k = net.shapes()[-1][0]
        spec = margin_spec(y, k, x0.dtype)[:, k:]
        root = alpha_crown_bounds(net, spec, box, norm, x0, eps, iterations=self.iterations,
                                  lr=self.lr_alpha, margins=True)
        status, lows, cexs, doms = [], [], [], []
        for i in range(len(x0)):
            st, low, cex, nd = bab_verify(net, x0[i:i + 1], int(y[i]), (box[0][i:i + 1],
                                          box[1][i:i + 1]), norm, eps[i:i + 1], root=root[i],
                                          **self._options())
            status.append(st)
            lows.append(low)
            cexs.append(cex)
            doms.append(nd)
        return status, torch.stack(lows) if lows else root, cexs, doms

    def _certify(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                 threat: ThreatModel) -> CertResult:
        dev = model.device
        dtype = next(iter(model.parameters()), torch.empty(0)).dtype
        x0 = x.detach().to(dev, dtype)
        y = y.to(dev)
        eps = torch.full((len(x0),), float(threat.eps), device=dev, dtype=dtype)
        box = Network.input_box(x0, eps, threat.bounds)
        with model.evaluating(), torch.no_grad(), _full_precision():
            net = compile_network(model, x0[:64])
            status, lows, found, doms = [], [], [], []
            for i in range(0, len(x0), self.batch_size):
                part = slice(i, i + self.batch_size)
                st, low, cex, nd = self._verify(net, x0[part], y[part], (box[0][part],
                                                box[1][part]), threat.norm, eps[part])
                status += st
                lows.append(low)
                found += cex
                doms += nd
            cexs = [torch.full_like(x0[i], math.nan) if c is None else c[0]
                    for i, c in enumerate(found)]
            label = model.predict(x0).cpu()
        cert = torch.tensor([s == "certified" for s in status], dtype=torch.bool)
        radius = torch.where(cert, torch.full((len(cert),), float(threat.eps)),
                             torch.zeros(len(cert)))
        return BaBResult(label=label, radius=radius, abstain=torch.zeros_like(cert),
                         certified=cert, margin_lower=torch.cat(lows).cpu(),
                         meta={"falsified": status.count("falsified"),
                               "unknown": status.count("unknown")},
                         status=tuple(status), counterexample=torch.stack(cexs).cpu(),
                         domains=torch.tensor(doms))


def _check_relu(net: Network) -> None:
    bad = [op.name for op in net.ops if not op.affine and not isinstance(op, ReLUOp)]
    if bad:
        raise InputError(f"beta_crown splits ReLUs only; layer {bad[0]!r} is "
                         f"{type(net.ops[[o.name for o in net.ops].index(bad[0])]).__name__} "
                         "(max pooling): use alpha_crown or crown")
