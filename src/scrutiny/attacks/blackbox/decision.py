"""Decision-based (hard-label) attacks: they see only the top label of each query.

Boundary attack, HopSkipJump, OPT and Sign-OPT are minimum-norm attacks:
they start from an adversarial point (uniform noise or an image of another
class, moved close to the clean input by a binary search on the line between
them) and walk along the decision boundary towards the clean input. With a
finite ``eps`` a sample stops as soon as its adversarial point is inside the
ball (like Foolbox's criteria), saving queries; with ``eps=inf`` every sample
runs its whole schedule.

The algorithms are written as functions over a *label oracle* ``is_adv(xq,
rows) -> bool`` (``rows`` the sample index of each queried row); the classes
feed them :class:`~scrutiny.attacks.base.BlackBox` queries, counted per
sample, and write the best point so far into ``box.best`` so that a spent
budget returns it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from scrutiny.attacks.base import Attack, BlackBox
from scrutiny.errors import InputError
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel, lp_norm


def _v(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-row vector viewed to broadcast over ``like``'s trailing dimensions."""
    return t.view(-1, *([1] * (like.dim() - 1)))


class LabelOracle:
    """The decision of a hard-label attack: is a queried point adversarial for its sample?

    Parameters
    ----------
    labels : callable
        ``labels(xq, rows) -> (n,)`` top labels of the queried rows (``rows``:
        the sample each row is charged to), e.g. ``BlackBox.labels``.
    y : Tensor
        True labels ``(N,)``.
    target : Tensor, optional
        Target classes ``(N,)``: then adversarial means "classified as the target".
    """

    def __init__(self, labels: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 y: torch.Tensor, target: torch.Tensor | None = None) -> None:
        self.labels = labels
        self.y = y
        self.target = target

    def judge(self, lab: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Whether labels ``lab`` are adversarial for samples ``rows`` (no query)."""
        lab = lab.to(self.y.device)
        return lab == self.target[rows] if self.target is not None else lab != self.y[rows]

    def __call__(self, xq: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One counted query of ``xq``; bool ``(n,)``."""
        if len(xq) == 0:
            return torch.zeros(0, dtype=torch.bool, device=self.y.device)
        return self.judge(self.labels(xq, rows), rows)


def line_search_to_boundary(is_adv: LabelOracle, x0: torch.Tensor, x_adv: torch.Tensor,
                            rows: torch.Tensor, steps: int = 12) -> torch.Tensor:
    """Binary search on the segment ``x0 -> x_adv`` for the adversarial point closest to ``x0``.

    ``x_adv`` must be adversarial; the result is the upper end of the final
    bracket, so it stays adversarial. One query per row and step.
    """
    lo = torch.zeros(len(x0), device=x0.device, dtype=x0.dtype)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = is_adv(x0 + _v(mid, x0) * (x_adv - x0), rows)
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv, lo, mid)
    return x0 + _v(hi, x0) * (x_adv - x0)


def starting_points(is_adv: LabelOracle, x0: torch.Tensor, bounds: tuple[float, float],
                    *, tries: int = 25, given: torch.Tensor | None = None,
                    labels0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial starting points ``(x_start, found)`` for a decision-based attack.

    In order: the caller's ``given`` points (checked, one query each); for an
    untargeted attack uniform noise in the bounds first (``tries`` rounds, one
    query per still-missing sample each); an image of the batch that is
    adversarial for the sample, the nearest in l2 (another class when
    untargeted, the target class when targeted; one query per image of the
    batch, reused for every sample, or none when their labels ``labels0``
    are given); then noise for a targeted attack.
    """
    n = len(x0)
    rows = torch.arange(n, device=x0.device)
    start = x0.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x0.device)
    lo, hi = bounds
    if given is not None:
        if not isinstance(given, torch.Tensor) or given.shape != x0.shape:
            raise InputError(f"starting_points must be a tensor of shape {tuple(x0.shape)}, got "
                             f"{getattr(given, 'shape', type(given).__name__)}")
        g = given.detach().to(x0).clamp(lo, hi)
        ok = is_adv(g, rows)
        start[ok], found[ok] = g[ok], True

    def noise() -> None:
        for _ in range(tries):
            miss = (~found).nonzero().flatten()
            if not len(miss):
                return
            cand = torch.rand_like(x0[miss]) * (hi - lo) + lo
            ok = is_adv(cand, miss)
            start[miss[ok]], found[miss[ok]] = cand[ok], True

    def batch_images() -> None:
        miss = (~found).nonzero().flatten()
        if not len(miss) or n < 2:
            return
        lab = labels0 if labels0 is not None else is_adv.labels(x0, rows)  # charged to itself
        for i in miss.tolist():
            ok = is_adv.judge(lab, torch.full_like(rows, i))
            cands = ok.nonzero().flatten()
            if len(cands):
                d = (x0[cands] - x0[i]).flatten(1).norm(dim=1)
                start[i], found[i] = x0[cands[d.argmin()]], True

    targeted = is_adv.target is not None
    (batch_images if targeted else noise)()
    (noise if targeted else batch_images)()
    return start, found


def _distance(x0: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    if len(x) == 0:  # lp_norm cannot flatten an empty batch
        return x.new_zeros(0)
    return lp_norm(x - x0, norm)


def _outside(dist: torch.Tensor, eps: float) -> torch.Tensor:
    """Samples not yet inside the eps-ball (all of them for eps = inf: no early stop)."""
    return dist > eps if math.isfinite(eps) else torch.ones_like(dist, dtype=torch.bool)


class _Ring:
    """Per-sample success statistics over the last ``size`` trials (Foolbox-style deques)."""

    def __init__(self, n: int, size: int, device: torch.device) -> None:
        self.size = size
        self.hist = torch.zeros(n, size, dtype=torch.bool, device=device)
        self.count = torch.zeros(n, dtype=torch.long, device=device)

    def add(self, idx: torch.Tensor, ok: torch.Tensor) -> None:
        self.hist[idx, self.count[idx] % self.size] = ok
        self.count[idx] += 1

    def full(self) -> torch.Tensor:
        return self.count >= self.size

    def rate(self) -> torch.Tensor:
        return self.hist.float().mean(dim=1)

    def clear(self, mask: torch.Tensor) -> None:
        self.count[mask] = 0
        self.hist[mask] = False


def boundary_attack(is_adv: LabelOracle, x0: torch.Tensor, x: torch.Tensor,
                    active: torch.Tensor, best: torch.Tensor, *, steps: int,
                    spherical_step: float, source_step: float, step_adaptation: float,
                    convergence: float, eps: float, bounds: tuple[float, float]) -> dict:
    """Brendel et al.'s boundary attack (l2) from adversarial points ``x`` (rows ``active``).

    Each step draws, per sample, a Gaussian proposal made orthogonal to the
    direction to ``x0`` and scaled to ``spherical_step`` times the distance,
    projects it back onto the sphere around ``x0`` (the *orthogonal step*),
    then moves towards ``x0`` by ``source_step`` times the distance (the
    *source step*); both candidates are queried in one call. Every 10 steps
    the step sizes adapt: over the last 100 orthogonal candidates, a success
    rate above 0.5 multiplies both steps by ``step_adaptation``, below 0.2
    divides them; over the last 30 full candidates, above 0.25 multiplies the
    source step, below 0.1 divides it. A sample stops when its source step
    falls below ``convergence`` or its distance below ``eps``. ``best`` is
    updated in place; returns per-sample meta (final step sizes).
    """
    n = len(x0)
    lo, hi = bounds
    sph = torch.full((n,), float(spherical_step), device=x0.device, dtype=x0.dtype)
    src = torch.full_like(sph, float(source_step))
    sph_stats, src_stats = _Ring(n, 100, x0.device), _Ring(n, 30, x0.device)
    x = x.clone()
    dist = _distance(x0, x, "l2")
    done_steps = 0
    with progress_bar(steps, "boundary attack") as bar:
        for step in range(1, steps + 1):
            run = active & (src >= convergence) & _outside(dist, eps)
            idx = run.nonzero().flatten()
            if not len(idx):
                break
            xo, xa = x0[idx], x[idx]
            u = xo - xa
            u_norm = _v(lp_norm(u, "l2").clamp_min(1e-12), u)
            u_dir = u / u_norm
            eta = torch.randn_like(xa)
            eta = eta - _v((eta * u_dir).flatten(1).sum(1), eta) * u_dir
            eta = eta * (_v(sph[idx], eta) * u_norm / _v(lp_norm(eta, "l2").clamp_min(1e-12), eta))
            shrink = 1 / torch.sqrt(sph[idx] ** 2 + 1)
            sph_cand = (xo + _v(shrink, eta) * (eta - u)).clamp(lo, hi)
            new_src = xo - sph_cand
            new_norm = _v(lp_norm(new_src, "l2").clamp_min(1e-12), new_src)
            length = (_v(src[idx], u) * u_norm + (new_norm - u_norm)).clamp_min(0) / new_norm
            cand = (sph_cand + length * new_src).clamp(lo, hi)
            adv = is_adv(torch.cat([sph_cand, cand]), torch.cat([idx, idx]))
            sph_ok, ok = adv[:len(idx)], adv[len(idx):]
            moved = idx[ok]
            x[moved] = cand[ok]
            dist[moved] = _distance(x0[moved], x[moved], "l2")
            best[moved] = x[moved]
            sph_stats.add(idx, sph_ok)
            src_stats.add(idx, ok)
            done_steps = step
            if step % 10 == 0:
                full, rate = sph_stats.full(), sph_stats.rate()
                up, down = full & (rate > 0.5), full & (rate < 0.2)
                sph[up] *= step_adaptation
                src[up] *= step_adaptation
                sph[down] /= step_adaptation
                src[down] /= step_adaptation
                sph_stats.clear(up | down)
                full, rate = src_stats.full(), src_stats.rate()
                up, down = full & (rate > 0.25), full & (rate < 0.1)
                src[up] *= step_adaptation
                src[down] /= step_adaptation
                src_stats.clear(up | down)
            bar.advance(f"median l2 {float(dist[active].median()):.3f}" if active.any() else "")
    return {"steps_run": done_steps, "spherical_step": sph.cpu(), "source_step": src.cpu()}


def _project_hsja(x0: torch.Tensor, xp: torch.Tensor, alpha: torch.Tensor, norm: str
                  ) -> torch.Tensor:
    """HopSkipJump's projection: l2 blends towards ``x0``, linf clips into the alpha box."""
    a = _v(alpha, x0)
    if norm == "l2":
        return (1 - a) * x0 + a * xp
    return torch.minimum(torch.maximum(xp, x0 - a), x0 + a)


def _hsja_boundary(is_adv: LabelOracle, x0: torch.Tensor, xp: torch.Tensor, rows: torch.Tensor,
                   norm: str, theta: float, max_steps: int = 40) -> torch.Tensor:
    """Binary search between ``x0`` and the adversarial ``xp`` to within HopSkipJump's theta.

    Only the rows whose bracket is still wider than their threshold are queried.
    """
    if norm == "l2":
        hi = torch.ones(len(x0), device=x0.device, dtype=x0.dtype)
        thr = torch.full_like(hi, theta)
    else:
        hi = _distance(x0, xp, "linf")
        thr = torch.minimum(hi * theta, torch.full_like(hi, theta))
    lo = torch.zeros_like(hi)
    for _ in range(max_steps):
        open_ = ((hi - lo) > thr).nonzero().flatten()
        if not len(open_):
            break
        mid = (hi[open_] + lo[open_]) / 2
        adv = is_adv(_project_hsja(x0[open_], xp[open_], mid, norm), rows[open_])
        hi[open_] = torch.where(adv, mid, hi[open_])
        lo[open_] = torch.where(adv, lo[open_], mid)
    return _project_hsja(x0, xp, hi, norm)


def hop_skip_jump(is_adv: LabelOracle, x0: torch.Tensor, x: torch.Tensor, active: torch.Tensor,
                  best: torch.Tensor, *, norm: str, steps: int, init_evals: int,
                  max_evals: int, gamma: float, eps: float, bounds: tuple[float, float]
                  ) -> dict:
    """HopSkipJumpAttack (Chen, Jordan, Wainwright) from adversarial points ``x``.

    Iteration ``t``: (1) binary search to the boundary between ``x0`` and the
    iterate, to within ``theta = gamma / d^(3/2)`` (l2) or ``gamma / d^2``
    (linf); (2) Monte-Carlo estimate of the boundary's normal from
    ``B_t = min(init_evals * sqrt(t), max_evals)`` unit random directions
    (Gaussian for l2, uniform for linf) at radius ``delta_t`` (0.1 times the
    box width at ``t = 1``, then ``sqrt(d) * theta * dist`` for l2 and
    ``d * theta * dist`` for linf), each answered +1 / -1 by one query with
    the mean answer subtracted as a baseline; (3) geometric step search:
    start at ``xi = dist / sqrt(t)`` along the estimate (its sign for linf)
    and halve until the point is adversarial. All samples and all directions
    of an iteration go in one query call. Returns meta; ``best`` updated in place.
    """
    n = len(x0)
    lo, hi = bounds
    d = x0[0].numel()
    theta = gamma / d ** 1.5 if norm == "l2" else gamma / d ** 2
    x = x.clone()
    idx = active.nonzero().flatten()
    if len(idx):
        x[idx] = _hsja_boundary(is_adv, x0[idx], x[idx], idx, norm, theta)
        best[idx] = x[idx]
    dist = torch.where(active, _distance(x0, x, norm), torch.full((n,), math.inf, device=x0.device))
    best_dist = dist.clone()
    evals_used = 0
    with progress_bar(steps, "HopSkipJump") as bar:
        for t in range(1, steps + 1):
            idx = (active & _outside(best_dist, eps)).nonzero().flatten()
            if not len(idx):
                break
            xa, xo, m = x[idx], x0[idx], len(idx)
            delta = (0.1 * (hi - lo) * torch.ones(m, device=x0.device, dtype=x0.dtype) if t == 1
                     else (math.sqrt(d) if norm == "l2" else d) * theta * dist[idx])
            b = int(min(init_evals * math.sqrt(t), max_evals))
            shape = (m, b, *xa.shape[1:])
            rv = torch.randn(shape, device=x0.device, dtype=x0.dtype) if norm == "l2" else \
                torch.rand(shape, device=x0.device, dtype=x0.dtype) * 2 - 1
            rv = rv / lp_norm(rv.flatten(0, 1), "l2").clamp_min(1e-12).view(m, b, *[1] * (xa.dim() - 1))
            dl = delta.view(m, 1, *[1] * (xa.dim() - 1))
            xq = (xa[:, None] + dl * rv).clamp(lo, hi)
            rv = (xq - xa[:, None]) / dl
            ans = is_adv(xq.flatten(0, 1), idx.repeat_interleave(b)).view(m, b).to(x0.dtype)
            evals_used += m * b
            f = 2 * ans - 1
            mean = f.mean(dim=1, keepdim=True)
            f = torch.where(mean.abs() == 1, f, f - mean)
            grad = (f.view(m, b, *[1] * (xa.dim() - 1)) * rv).mean(dim=1)
            v = grad / _v(lp_norm(grad, "l2").clamp_min(1e-12), grad) if norm == "l2" else grad.sign()
            # geometric progression of the step size until the step lands adversarial
            xi = dist[idx] / math.sqrt(t)
            cand = xa.clone()
            search = torch.ones(m, dtype=torch.bool, device=x0.device)
            for _ in range(25):
                s = search.nonzero().flatten()
                if not len(s):
                    break
                c = (xa[s] + _v(xi[s], xa[s]) * v[s]).clamp(lo, hi)
                ok = is_adv(c, idx[s])
                cand[s[ok]] = c[ok]
                search[s[ok]] = False
                xi[s[~ok]] /= 2
            x_new = _hsja_boundary(is_adv, xo, cand, idx, norm, theta)
            x[idx] = x_new
            dist[idx] = _distance(xo, x_new, norm)
            better = dist[idx] < best_dist[idx]
            best[idx[better]] = x_new[better]
            best_dist[idx[better]] = dist[idx[better]]
            bar.advance(f"median {norm} {float(best_dist[active].median()):.3f}")
    return {"mc_queries": evals_used}


#: The returned point sits at ``g * _MARGIN``: ``g`` is bisected to ~1e-6 of the boundary,
#: where the float noise of another batch composition could flip the label back.
_MARGIN = 1 + 1e-4


def _opt_point(x0: torch.Tensor, theta: torch.Tensor, lam: torch.Tensor,
               bounds: tuple[float, float]) -> torch.Tensor:
    return (x0 + _v(lam, x0) * theta).clamp(*bounds)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / _v(lp_norm(t, "l2").clamp_min(1e-12), t)


def _binary_search_g(is_adv: LabelOracle, x0: torch.Tensor, theta: torch.Tensor,
                     rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, tol: torch.Tensor,
                     bounds: tuple[float, float], max_steps: int = 60) -> torch.Tensor:
    """Bisection of ``lambda`` in ``[lo, hi]`` (``hi`` adversarial) until ``hi - lo <= tol``."""
    lo, hi = lo.clone(), hi.clone()
    for _ in range(max_steps):
        o = ((hi - lo) > tol).nonzero().flatten()
        if not len(o):
            break
        mid = (lo[o] + hi[o]) / 2
        adv = is_adv(_opt_point(x0[o], theta[o], mid, bounds), rows[o])
        hi[o] = torch.where(adv, mid, hi[o])
        lo[o] = torch.where(adv, lo[o], mid)
    return hi


def g_local(is_adv: LabelOracle, x0: torch.Tensor, theta: torch.Tensor, rows: torch.Tensor,
            lam0: torch.Tensor, tol: torch.Tensor, bounds: tuple[float, float],
            lam_max: float, max_steps: int = 200) -> torch.Tensor:
    """OPT's fine-grained local search for ``g(theta)`` near ``lam0`` (inf when none).

    ``g(theta) = min {lambda > 0 : f(x0 + lambda theta) is adversarial}`` for a
    unit ``theta``. From ``lam0``: if not adversarial, grow ``lambda`` by 1%
    until it is (giving up above ``lam_max``); else shrink by 1% until it is
    not; then bisect to ``tol``. Batched over rows; each step queries only
    the rows still searching.
    """
    m = len(x0)
    lam0 = lam0.clone()
    finite = torch.isfinite(lam0)
    lam0[~finite] = lam_max
    adv0 = is_adv(_opt_point(x0, theta, lam0, bounds), rows)
    lo = torch.where(adv0, lam0 * 0.99, lam0)
    hi = torch.where(adv0, lam0, lam0 * 1.01)
    failed = torch.zeros(m, dtype=torch.bool, device=x0.device)
    grow = ~adv0
    shrink = adv0.clone()
    for _ in range(max_steps):
        g = grow.nonzero().flatten()
        if len(g):
            ok = is_adv(_opt_point(x0[g], theta[g], hi[g], bounds), rows[g])
            grow[g[ok]] = False
            stay = g[~ok]
            hi[stay] *= 1.01
            over = stay[hi[stay] > lam_max]
            failed[over], grow[over] = True, False
        s = shrink.nonzero().flatten()
        if len(s):
            ok = is_adv(_opt_point(x0[s], theta[s], lo[s], bounds), rows[s])
            shrink[s[~ok]] = False
            lo[s[ok]] *= 0.99
        if not grow.any() and not shrink.any():
            break
    grow_or_shrink_left = grow | shrink  # safety cap reached: treat as failed
    failed |= grow_or_shrink_left
    ok = (~failed).nonzero().flatten()
    out = torch.full((m,), math.inf, device=x0.device, dtype=x0.dtype)
    if len(ok):
        out[ok] = _binary_search_g(is_adv, x0[ok], theta[ok], rows[ok], lo[ok], hi[ok],
                                   tol[ok] if tol.dim() else tol.expand(len(ok)), bounds)
    return out


def opt_initial_direction(is_adv: LabelOracle, x0: torch.Tensor, x_start: torch.Tensor,
                          found: torch.Tensor, active: torch.Tensor, *, directions: int,
                          bounds: tuple[float, float], tol: float = 1e-5
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """OPT's initial ``theta``: the best of ``directions`` random Gaussian directions
    (and of the starting point's direction) by ``g``; ``(theta, g)``, g inf when none
    or when the sample is not ``active``.

    All candidate points ``x0 + theta_raw`` are queried at once; then, as in
    the paper, each adversarial candidate is first checked at the current
    best ``g`` (one query) and bisected only if it beats it.
    """
    n = len(x0)
    raw = torch.randn((n, directions, *x0.shape[1:]), device=x0.device, dtype=x0.dtype)
    raw = torch.cat([(x_start - x0)[:, None], raw], dim=1)
    k = raw.shape[1]
    adv = torch.zeros(n, k, dtype=torch.bool, device=x0.device)
    act = active.nonzero().flatten()  # rows of samples to attack; the others stay at g = inf
    pts = (x0[act, None] + raw[act]).clamp(*bounds)
    adv[act] = is_adv(pts.flatten(0, 1), act.repeat_interleave(k)).view(len(act), k)
    adv[:, 0] &= found  # the start direction only where a start was found
    lam_raw = lp_norm(raw.flatten(0, 1), "l2").view(n, k)
    theta = torch.zeros_like(x0)
    g = torch.full((n,), math.inf, device=x0.device, dtype=x0.dtype)
    for j in range(k):
        cand = adv[:, j].nonzero().flatten()
        if not len(cand):
            continue
        th = _unit(raw[cand, j])
        lam = lam_raw[cand, j]
        cur = g[cand]
        # beats the current best? one query at min(current best, its own length)
        probe = torch.minimum(cur, lam)
        check = probe < lam
        keep = torch.ones(len(cand), dtype=torch.bool, device=x0.device)
        c = check.nonzero().flatten()
        if len(c):
            keep[c] = is_adv(_opt_point(x0[cand[c]], th[c], probe[c], bounds), cand[c])
        cand, th, probe = cand[keep], th[keep], probe[keep]
        if not len(cand):
            continue
        lam_g = _binary_search_g(is_adv, x0[cand], th, cand, torch.zeros_like(probe), probe,
                                 torch.full_like(probe, tol), bounds)
        better = lam_g < g[cand]
        g[cand[better]] = lam_g[better]
        theta[cand[better]] = th[better]
    return theta, g


def opt_attack(is_adv: LabelOracle, x0: torch.Tensor, theta: torch.Tensor, g: torch.Tensor,
               best: torch.Tensor, *, estimator: str, steps: int, alpha: float, beta: float,
               directions: int, eps: float, bounds: tuple[float, float]) -> dict:
    """OPT (``estimator="rgf"``) and Sign-OPT (``estimator="sign"``) on ``g(theta)``.

    Minimises ``g(theta)``, the distance to the boundary along the unit
    direction ``theta``, with zeroth-order gradient descent. RGF (OPT):
    ``grad = mean_u (g(theta + beta u) - g(theta)) / beta * u`` over
    ``directions`` unit Gaussian ``u``, each ``g`` by the fine-grained local
    search. Sign (Sign-OPT): ``grad = mean_u sign(g(theta + beta u) -
    g(theta)) u``, each sign from one query at ``x0 + g(theta) (theta + beta
    u) / ||.||``. Step: ``theta - alpha grad`` with the papers' line search
    (double alpha while ``g`` improves, else quarter it until it does); when
    alpha falls below 1e-4 it resets to 1 and beta shrinks tenfold, and a
    sample stops when beta falls below 1e-8 (or ``g <= eps``). The local
    searches use tolerance ``beta / 500``. The point returned for a sample
    is ``x0 + 1.0001 g theta`` (clipped), a hair outside the bisected
    boundary so that float noise cannot flip its label back.
    """
    n = len(x0)
    lam_max = (bounds[1] - bounds[0]) * math.sqrt(x0[0].numel())
    theta, g = theta.clone(), g.clone()
    al = torch.full((n,), float(alpha), device=x0.device, dtype=x0.dtype)
    be = torch.full_like(al, float(beta))
    live = torch.isfinite(g)
    ok = live.nonzero().flatten()
    best[ok] = _opt_point(x0[ok], theta[ok], g[ok] * _MARGIN, bounds)
    best_g = g.clone()
    q = directions
    with progress_bar(steps, "Sign-OPT" if estimator == "sign" else "OPT") as bar:
        for _ in range(steps):
            idx = (live & _outside(best_g, eps)).nonzero().flatten()
            if not len(idx):
                break
            m = len(idx)
            th, gg, xo = theta[idx], g[idx], x0[idx]
            u = torch.randn((m, q, *x0.shape[1:]), device=x0.device, dtype=x0.dtype)
            u = u / lp_norm(u.flatten(0, 1), "l2").clamp_min(1e-12).view(m, q, *[1] * (x0.dim() - 1))
            bv = be[idx].view(m, 1, *[1] * (x0.dim() - 1))
            tt = (th[:, None] + bv * u).flatten(0, 1)
            tt = _unit(tt)
            rows = idx.repeat_interleave(q)
            xo_rep = xo.repeat_interleave(q, dim=0)
            if estimator == "sign":
                adv = is_adv(_opt_point(xo_rep, tt, gg.repeat_interleave(q), bounds), rows)
                sign = torch.where(adv, -1.0, 1.0).to(x0.dtype).view(m, q)
                grad = (sign.view(m, q, *[1] * (x0.dim() - 1)) * u).mean(dim=1)
                min_g1 = torch.full((m,), math.inf, device=x0.device, dtype=x0.dtype)
                min_tt = th
            else:
                g1 = g_local(is_adv, xo_rep, tt, rows, gg.repeat_interleave(q),
                             (be[idx] / 500).repeat_interleave(q), bounds, lam_max).view(m, q)
                diff = torch.where(torch.isfinite(g1), g1 - gg[:, None], torch.zeros_like(g1))
                grad = ((diff / be[idx][:, None]).view(m, q, *[1] * (x0.dim() - 1)) * u).mean(1)
                min_g1, arg = g1.min(dim=1)
                min_tt = tt.view(m, q, *x0.shape[1:])[torch.arange(m, device=x0.device), arg]
            # line search: grow alpha while g improves, else shrink until it does
            min_th, min_g = th.clone(), gg.clone()
            grow = torch.ones(m, dtype=torch.bool, device=x0.device)
            for _ in range(15):
                s = grow.nonzero().flatten()
                if not len(s):
                    break
                nt = _unit(th[s] - _v(al[idx[s]], th[s]) * grad[s])
                ng = g_local(is_adv, xo[s], nt, idx[s], min_g[s], be[idx[s]] / 500, bounds, lam_max)
                al[idx[s]] *= 2
                imp = ng < min_g[s]
                min_th[s[imp]], min_g[s[imp]] = nt[imp], ng[imp]
                grow[s[~imp]] = False
            shrink = min_g >= gg
            for _ in range(15):
                s = shrink.nonzero().flatten()
                if not len(s):
                    break
                al[idx[s]] *= 0.25
                nt = _unit(th[s] - _v(al[idx[s]], th[s]) * grad[s])
                ng = g_local(is_adv, xo[s], nt, idx[s], gg[s], be[idx[s]] / 500, bounds, lam_max)
                imp = ng < gg[s]
                min_th[s[imp]], min_g[s[imp]] = nt[imp], ng[imp]
                shrink[s[imp]] = False
            use_u = min_g1 < min_g  # OPT: a sampled direction beat the line search
            min_th[use_u], min_g[use_u] = min_tt[use_u], min_g1[use_u]
            theta[idx], g[idx] = min_th, min_g
            better = min_g < best_g[idx]
            b = idx[better]
            best_g[b] = min_g[better]
            best[b] = _opt_point(x0[b], theta[b], g[b] * _MARGIN, bounds)
            reset = al[idx] < 1e-4
            r = idx[reset]
            al[r] = 1.0
            be[r] *= 0.1
            live[r[be[r] < 1e-8]] = False
            bar.advance(f"median l2 {float(best_g[torch.isfinite(best_g)].median()):.3f}"
                        if torch.isfinite(best_g).any() else "")
    return {"g": best_g.cpu()}


# ---------------------------------------------------------------- the registered attacks
class _DecisionAttack(Attack):
    """Shared parts: label-only tags, starting points.

    Subclasses declare ``init_tries`` (rounds of uniform noise tried as
    starting points) and ``batch_size``.
    """

    tags = Tags(white_box=False, output="label", norms=("l2",), targeted=True, stochastic=True,
                minimum_norm=True)
    #: ``starting_points=`` (N, ...) adversarial inputs to start from (e.g. images of the
    #: target class); checked with one query each, the others found as usual.
    call_data = ("starting_points",)

    def _start(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
               target: torch.Tensor | None, given: torch.Tensor | None, blend: bool = True
               ) -> tuple[LabelOracle, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Oracle, starting points, mask of samples with one, mask of samples to attack."""
        is_adv = LabelOracle(box.labels, y, target)
        rows = torch.arange(len(x), device=x.device)
        lab0 = box.labels(x, rows)  # one query each: is the clean input already adversarial?
        start, found = starting_points(is_adv, x, threat.bounds, tries=self.init_tries,
                                       given=given, labels0=lab0)
        todo = ~is_adv.judge(lab0, rows)  # already adversarial: nothing to minimise, x_adv = x
        found &= todo
        idx = found.nonzero().flatten()
        if blend and len(idx):
            start[idx] = line_search_to_boundary(is_adv, x[idx], start[idx], idx)
        box.best[idx] = start[idx]
        return is_adv, start, found, todo


_EXAMPLE = """
    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> black_box = QueryModel(model, output="label", budget=20_000)
    >>> res = {call}(black_box, data.x[:4], data.y[:4],
    ...     threat=ThreatModel("{norm}", float("inf")))
    >>> bool(res.success.all()), int(res.queries.sum()) <= 20_000
    (True, True)
"""


@register("attack", "boundary", paper="Brendel, Rauber, Bethge. Decision-based adversarial "
          "attacks: reliable attacks against black-box machine learning models. ICLR 2018",
          test_params={"steps": 5, "init_tries": 3})
class BoundaryAttack(_DecisionAttack):
    __doc__ = """Boundary attack: a random walk along the decision boundary towards the input.

    Needs only the top label. Starts from an adversarial point (uniform noise,
    else an image of the batch of another class / of the target class, or
    ``starting_points=``), moved to the boundary by a binary search on the
    line to the clean input. Each step proposes an orthogonal step on the
    sphere around the clean input and a step towards it (both queried at
    once); the step sizes adapt to the success rates of the last 100
    orthogonal / 30 full proposals (see :func:`boundary_attack`). l2, minimum
    norm; with a finite eps a sample stops once inside the ball.

    Parameters
    ----------
    steps : int
        Steps per sample (2 queries each). Foolbox's default; set a budget
        on the QueryModel to bound the cost.
    spherical_step : float
        Initial relative size of the orthogonal step (a fraction of the
        current distance).
    source_step : float
        Initial relative size of the step towards the input (a fraction of
        the current distance).
    step_adaptation : float
        Factor by which step sizes grow or shrink.
    source_step_convergence : float
        A sample stops when its source step falls below this.
    init_tries : int
        Rounds of uniform noise tried as starting points.
    batch_size : int, optional
        Largest number of inputs per query call.

    Notes
    -----
    As in Foolbox, one proposal per sample and step (the paper's method also
    allows several), and the starting point is blended towards the input by a
    binary search rather than used as drawn.

    References
    ----------
    .. [1] Brendel, Rauber, Bethge. "Decision-based adversarial attacks:
       reliable attacks against black-box machine learning models". ICLR 2018.
    """ + _EXAMPLE.format(call="BoundaryAttack(steps=100)", norm="l2")

    steps: int = param(25000, integer=True, positive=True)
    spherical_step: float = param(0.01, positive=True)
    source_step: float = param(0.01, positive=True)
    step_adaptation: float = param(1.5, between=(1, math.inf), interval="()")
    source_step_convergence: float = param(1e-7, positive=True)
    init_tries: int = param(25, integer=True, positive=True)
    batch_size: int | None = param(1024, integer=True, positive=True, optional=True)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, starting_points: torch.Tensor | None = None):
        is_adv, start, found, todo = self._start(box, x, y, threat, target, starting_points)
        meta = boundary_attack(is_adv, x, start, found, box.best, steps=self.steps,
                               spherical_step=self.spherical_step, source_step=self.source_step,
                               step_adaptation=self.step_adaptation,
                               convergence=self.source_step_convergence, eps=threat.eps,
                               bounds=threat.bounds)
        return box.best, {"steps_run": meta["steps_run"], "start_found": found.cpu()}


@register("attack", "hop_skip_jump", paper="Chen, Jordan, Wainwright. HopSkipJumpAttack: a "
          "query-efficient decision-based attack. IEEE S&P 2020",
          test_params={"steps": 2, "init_evals": 10, "init_tries": 3})
class HopSkipJump(_DecisionAttack):
    __doc__ = """HopSkipJumpAttack: boundary search, Monte-Carlo gradient direction, geometric step.

    Needs only the top label; l2 and linf. Each iteration: a binary search
    to the boundary, an estimate of the boundary's normal from
    ``init_evals * sqrt(t)`` random directions (all samples' directions in
    one query call), and a geometric search of the step size along it
    (details in :func:`hop_skip_jump`). Minimum norm: with a finite eps a
    sample stops once inside the ball.

    Parameters
    ----------
    steps : int
        Iterations (the paper's experiments use up to a few dozen).
    init_evals : int
        Directions of the first gradient estimate (``B_0``, the paper's 100).
    max_evals : int
        Upper bound on directions per estimate (1e4 in the paper's code).
    gamma : float
        Sets the binary-search tolerance ``theta = gamma / d^(3/2)`` (l2) or
        ``gamma / d^2`` (linf) and the probing radius.
    init_tries : int
        Rounds of uniform noise tried as starting points.
    batch_size : int, optional
        Largest number of inputs per query call.

    References
    ----------
    .. [1] Chen, Jordan, Wainwright. "HopSkipJumpAttack: a query-efficient
       decision-based attack". IEEE S&P 2020.
    """ + _EXAMPLE.format(call="HopSkipJump(steps=5)", norm="l2")

    tags = Tags(white_box=False, output="label", norms=("l2", "linf"), targeted=True,
                stochastic=True, minimum_norm=True)

    steps: int = param(40, integer=True, positive=True)
    init_evals: int = param(100, integer=True, positive=True)
    max_evals: int = param(10000, integer=True, positive=True)
    gamma: float = param(1.0, positive=True)
    init_tries: int = param(25, integer=True, positive=True)
    batch_size: int | None = param(1024, integer=True, positive=True, optional=True)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, starting_points: torch.Tensor | None = None):
        # the paper blends the start by its own binary search (theta tolerance)
        is_adv, start, found, todo = self._start(box, x, y, threat, target, starting_points,
                                           blend=False)
        meta = hop_skip_jump(is_adv, x, start, found, box.best, norm=threat.norm,
                             steps=self.steps, init_evals=self.init_evals,
                             max_evals=self.max_evals, gamma=self.gamma, eps=threat.eps,
                             bounds=threat.bounds)
        return box.best, {**meta, "start_found": found.cpu()}


class _OptFamily(_DecisionAttack):
    """OPT and Sign-OPT: the same parameters and loop; the estimator differs."""

    estimator = "rgf"

    steps: int = param(1000, integer=True, positive=True)
    step_size: float = param(0.2, positive=True)
    beta: float = param(0.001, positive=True)
    n_samples: int = param(10, integer=True, positive=True)
    init_directions: int = param(100, integer=True, positive=True)
    init_tries: int = param(25, integer=True, positive=True)
    batch_size: int | None = param(1024, integer=True, positive=True, optional=True)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, starting_points: torch.Tensor | None = None):
        is_adv, start, found, todo = self._start(box, x, y, threat, target, starting_points,
                                           blend=False)
        theta, g = opt_initial_direction(is_adv, x, start, found, todo,
                                         directions=self.init_directions, bounds=threat.bounds)
        meta = opt_attack(is_adv, x, theta, g, box.best, estimator=self.estimator,
                          steps=self.steps, alpha=self.step_size, beta=self.beta,
                          directions=self.n_samples, eps=threat.eps, bounds=threat.bounds)
        return box.best, {"g": meta["g"]}


_OPT_PARAMS = """
    Parameters
    ----------
    steps : int
        Iterations (the reference code's 1000; set a budget to bound the cost).
    step_size : float
        Initial step size on ``theta`` (the papers' ``alpha``, 0.2), adapted by
        the line search.
    beta : float
        Smoothing radius of the directional estimates (0.001).
    n_samples : int
        Random directions per gradient estimate ({q}).
    init_directions : int
        Random Gaussian directions tried for the initial ``theta`` (100).
    init_tries : int
        Rounds of uniform noise tried as starting points.
    batch_size : int, optional
        Largest number of inputs per query call.
"""


@register("attack", "opt", paper="Cheng, Le, Chen, Yi, Zhang, Hsieh. Query-efficient hard-label "
          "black-box attack: an optimization-based approach. ICLR 2019",
          test_params={"steps": 1, "n_samples": 3, "init_directions": 3,
                       "init_tries": 3})
class OPT(_OptFamily):
    __doc__ = """OPT attack: hard-label attack as minimisation of the boundary distance g(theta).

    ``g(theta)`` is the distance from the input to the decision boundary
    along the unit direction ``theta``, computed by a fine-grained search and
    bisection (queries only labels). OPT minimises it with the random
    gradient-free (RGF) estimate averaged over ``n_samples`` Gaussian
    directions and a line search on the step (see :func:`opt_attack`). The
    ``n_samples`` local searches of all samples are batched into one
    query call per search step. l2, minimum norm.
    """ + _OPT_PARAMS.format(q="10, the reference code's") + """
    References
    ----------
    .. [1] Cheng, Le, Chen, Yi, Zhang, Hsieh. "Query-efficient hard-label
       black-box attack: an optimization-based approach". ICLR 2019.
    """ + _EXAMPLE.format(call="OPT(steps=3)", norm="l2")

    estimator = "rgf"


@register("attack", "sign_opt", paper="Cheng, Singh, Chen, Chen, Liu, Hsieh. Sign-OPT: a "
          "query-efficient hard-label adversarial attack. ICLR 2020",
          test_params={"steps": 1, "n_samples": 10, "init_directions": 3,
                       "init_tries": 3})
class SignOPT(_OptFamily):
    __doc__ = """Sign-OPT: OPT with the sign of each directional derivative from a single query.

    The sign of ``g(theta + beta u) - g(theta)`` is read from one query at
    ``x0 + g(theta) (theta + beta u) / ||theta + beta u||``: adversarial means
    the boundary is nearer along the perturbed direction (sign -1). The
    estimate ``mean_u sign * u`` over ``n_samples`` directions (all samples'
    in one query call) drives the same line search as OPT
    (:func:`opt_attack`). l2, minimum norm.
    """ + _OPT_PARAMS.format(q="200, the paper's K") + """
    References
    ----------
    .. [1] Cheng, Singh, Chen, Chen, Liu, Hsieh. "Sign-OPT: a query-efficient
       hard-label adversarial attack". ICLR 2020.
    """ + _EXAMPLE.format(call="SignOPT(steps=2, n_samples=20)", norm="l2")

    estimator = "sign"

    n_samples: int = param(200, integer=True, positive=True)
