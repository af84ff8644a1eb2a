"""Geometry of the threat sets below :class:`scrutiny.types.ThreatModel`: the local Wasserstein ball.

Images are mass distributions: pixel intensities, normalised by each image's
total mass (so distances are "fraction of the mass times pixels moved"); mass
moves within each channel and only inside a ``k x k`` neighbourhood (the
local transport plans of Wong, Schmidt & Kolter 2019), at cost
``||(di, dj)||_p`` per unit of mass.

This module takes plain numbers (``eps``, ``bounds``, ``kernel_size``, ``p``)
and knows nothing of threat models or attacks: :class:`~scrutiny.types.ThreatModel`
calls it for ``norm="wasserstein"`` and the Wasserstein attack
(:class:`scrutiny.attacks.whitebox.wasserstein.WassersteinPGD`) projects with it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F

from scrutiny.errors import InputError


def transport_cost(kernel_size: int, p: float = 2.0) -> torch.Tensor:
    """``(k*k,)`` cost of moving unit mass by each offset of a ``k x k`` kernel.

    Row-major offsets ``(di, dj)``, ``-k//2 <= di, dj <= k//2`` (the order of
    :func:`torch.nn.functional.unfold`), cost ``(|di|^p + |dj|^p)^(1/p)``.

    Examples
    --------
    >>> transport_cost(3, p=2).view(3, 3)
    tensor([[1.4142, 1.0000, 1.4142],
            [1.0000, 0.0000, 1.0000],
            [1.4142, 1.0000, 1.4142]], dtype=torch.float64)
    """
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, dtype=torch.float64).abs()
    return (d[:, None] ** p + d[None, :] ** p).pow(1 / p).reshape(-1)


def _neighbours(v: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k*k, H*W)``: for each pixel, ``v`` at the pixel plus each offset (-inf outside)."""
    r = k // 2
    padded = F.pad(v, (r, r, r, r), value=-math.inf)
    return F.unfold(padded, k)


def _lambertw_exp(u: torch.Tensor) -> torch.Tensor:
    """``W(exp(u))`` (principal branch) for any real ``u``, without forming ``exp(u)``."""
    small = u < -30  # W(z) = z - z^2 + ... for tiny z
    uu = torch.where(small, torch.zeros_like(u), u)
    w = torch.where(uu > 1, uu - torch.log(uu.clamp_min(1.0)), torch.exp(uu.clamp_max(1.0)) / 2)
    for _ in range(8):  # Newton on w + log w = u: quadratic convergence, stays positive
        w = (w * (1 + uu - torch.log(w)) / (1 + w)).clamp_min(1e-300)
    return torch.where(small, torch.exp(u), w)


def _plan(la: torch.Tensor, lb: torch.Tensor, lpsi: torch.Tensor, cost: torch.Tensor, k: int
          ) -> torch.Tensor:
    """``Pi[b, o, i] = exp(la_i + lb_{i+o} - lpsi * C_o - 1)`` (the ``l*`` are scaled by lambda)."""
    nb = _neighbours(lb, k)
    return torch.exp(la.flatten(1)[:, None, :] + nb - lpsi[:, None, None] * cost[None, :, None] - 1)


def _fold(pi: torch.Tensor, shape: tuple[int, int], k: int) -> torch.Tensor:
    """Mass arriving at each pixel: ``sum_o Pi[b, o, i - o]`` as ``(B, 1, H, W)``."""
    return F.fold(pi, shape, k, padding=k // 2)


def projected_sinkhorn(x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor | float,
                       bounds: tuple[float, float], *, kernel_size: int = 5, p: float = 2.0,
                       lam: float = 1000.0, iters: int = 50) -> torch.Tensor:
    """Project ``x`` onto the Wasserstein ball of radius ``eps`` around ``x0`` (and the box).

    Projected Sinkhorn (Wong et al. 2019, Alg. 1): block-coordinate ascent on
    the dual of the entropy-regularised projection

    ``min_{z, Pi >= 0} 1/2 ||w - z||^2 + 1/lam sum Pi log Pi``
    ``s.t. Pi 1 = a, Pi^T 1 = z, <Pi, C> <= eps, lo <= z <= hi``

    (``a = x0 / m``, ``w = x / m``, ``m`` the mass of ``x0``): an exact
    Sinkhorn step for the source potential, the closed form of the target
    potential through the Lambert W function, and one Newton step for the
    multiplier of the cost constraint, ``iters`` times. The box, which the
    paper enforces by clipping afterwards, is handled inside the dual: the
    target potential's root is clipped to where its marginal stays in
    ``[lo, hi] / m``.

    The iterate's plan is then made exactly feasible (this rounding is ours):
    its rows are rescaled to ``a``; columns above ``hi`` (below ``lo``) give
    the excess back to (take the shortfall from) their sources' own pixel,
    for a few rounds; if the cost still exceeds ``eps``, or a column is still
    outside the box, the plan is mixed with the identity plan (a convex
    combination of two feasible plans). The result, the plan's target
    marginal times ``m``, lies in the ball (an exact certificate: the plan),
    in the box, and has exactly ``x0``'s mass in every channel.

    Parameters
    ----------
    x0, x : Tensor
        ``(N, C, H, W)`` non-negative images; ``x0`` is the centre.
    eps : float or Tensor
        Radius per sample (in units of normalised mass times pixels).
    bounds : (float, float)
        Input box, ``lo >= 0``.
    kernel_size, p : int, float
        Local transport window and the cost's p-norm.
    lam : float
        Entropic regularisation (the paper's 1000).
    iters : int
        Sinkhorn iterations.
    """
    n, c, h, wd = x0.shape
    k = kernel_size
    dt = torch.float64
    lo, hi = bounds
    mass = x0.to(dt).flatten(1).sum(1).clamp_min(1e-30)
    view = (-1, 1, 1, 1)
    a = (x0.to(dt) / mass.view(view)).reshape(n * c, 1, h, wd)
    w = (x.to(dt) / mass.view(view)).reshape(n * c, 1, h, wd)
    lo_n = (lo / mass).repeat_interleave(c).view(view)
    hi_n = (hi / mass).repeat_interleave(c).view(view)
    eps_t = torch.as_tensor(eps, dtype=dt, device=x0.device).expand(n)
    cost = transport_cost(k, p).to(x0.device)
    loga = torch.log(a)
    lb = torch.zeros_like(a)  # lam * beta
    psi = torch.ones(n, dtype=dt, device=x0.device)  # lam times the cost multiplier
    log_lam = math.log(lam)
    for _ in range(iters):
        lpsi = psi.repeat_interleave(c)
        # source potential: rows of the plan equal a
        la = loga + 1 - torch.logsumexp(_neighbours(lb, k) - lpsi[:, None, None]
                                        * cost[None, :, None], dim=1).view_as(a)
        # target potential: beta + A exp(lam beta) = w, clipped to keep the marginal in the box
        logA = torch.logsumexp(_neighbours(la, k) - lpsi[:, None, None] * cost[None, :, None],
                               dim=1).view_as(a) - 1
        lb = lam * w - _lambertw_exp(log_lam + logA + lam * w)
        lb = torch.minimum(torch.maximum(lb, torch.log(lo_n) - logA), torch.log(hi_n) - logA)
        lb = torch.nan_to_num(lb, nan=0.0, posinf=0.0)
        # one Newton step on the cost multiplier (psi >= 0); with no mass moving at all
        # (the step is undefined) the constraint is slack: psi = 0
        pi = _plan(la, lb, lpsi, cost, k)
        c1 = (pi * cost[None, :, None]).reshape(n, -1).sum(1)
        c2 = (pi * cost[None, :, None] ** 2).reshape(n, -1).sum(1)
        step = torch.where(c2 > 0, (c1 - eps_t) / c2.clamp_min(1e-300), -psi)
        psi = (psi + step).clamp_min(0)
    lpsi = psi.repeat_interleave(c)
    pi = _plan(la, lb, lpsi, cost, k)
    z = _round_plan(pi, a, lo_n, hi_n, eps_t, cost, (n, c, h, wd))
    return (z * mass.view(view)).to(x.dtype)


def _round_plan(pi: torch.Tensor, a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                eps: torch.Tensor, cost: torch.Tensor, shape: tuple[int, int, int, int],
                rounds: int = 20) -> torch.Tensor:
    """Make a local plan exactly feasible; return its target marginal (normalised)."""
    n, c, h, wd = shape
    k = int(round(math.sqrt(cost.numel())))
    centre = cost.numel() // 2
    af = a.flatten(1)  # (B, HW)
    pi = torch.nan_to_num(pi, nan=0.0, posinf=0.0)
    rows = pi.sum(1)
    pi = pi * torch.where(rows > 0, af / rows.clamp_min(1e-300), torch.zeros_like(rows))[:, None]
    # an empty row with mass (no target in reach): keep the mass at its pixel
    pi[:, centre] += torch.where(rows > 0, torch.zeros_like(af), af)
    lo_f, hi_f = lo.view(-1, 1), hi.view(-1, 1)
    off = torch.ones(cost.numel(), 1, dtype=pi.dtype, device=pi.device)
    off[centre] = 0
    for _ in range(rounds):
        z = _fold(pi, (h, wd), k).flatten(1)
        over, under = z > hi_f, z < lo_f
        if not (over.any() or under.any()):
            break
        # over-full target j: cut the mass other pixels send to it by the excess (possible:
        # what j keeps of its own is <= a_j <= hi); the senders keep that mass
        inflow = z - pi[:, centre]
        keep = torch.where(over, 1 - (z - hi_f) / inflow.clamp_min(1e-300), torch.ones_like(z))
        sc = _neighbours(keep.clamp(0, 1).view(-1, 1, h, wd).log(), k).exp()
        sc = torch.where(off.bool()[None], sc, torch.ones_like(sc))
        before = pi.sum(1)
        pi = pi * sc
        pi[:, centre] += before - pi.sum(1)
        # under-full target j: j sends less to the others and keeps it (possible: what j
        # sends out is a_j minus what it keeps, and a_j >= lo)
        z = _fold(pi, (h, wd), k).flatten(1)
        out = (pi * off[None]).sum(1)
        need = (lo_f - z).clamp_min(0)
        frac = torch.where(z < lo_f, (need / out.clamp_min(1e-300)).clamp(max=1.0),
                           torch.zeros_like(out))
        moved = pi * off[None] * frac[:, None]
        pi = pi - moved
        pi[:, centre] += moved.sum(1)
    z = _fold(pi, (h, wd), k).flatten(1)
    # the cost constraint, then any box violation left beyond rounding: mix with the
    # identity plan (a column inside the box stays inside for any t: both ends are)
    cst = (pi * cost[None, :, None]).reshape(n, -1).sum(1)
    t = torch.where(cst > eps, eps / cst.clamp_min(1e-300), torch.ones_like(cst))
    t = t.repeat_interleave(c)[:, None]
    tol = 1e-9 * hi_f
    over, under = z > hi_f + tol, z < lo_f - tol
    up = torch.where(over, (hi_f - af) / (z - af).clamp_min(1e-300), torch.ones_like(z))
    down = torch.where(under, (af - lo_f) / (af - z).clamp_min(1e-300), torch.ones_like(z))
    tb = torch.minimum(up, down).clamp(0, 1).amin(1, keepdim=True).view(n, c).amin(1)
    t = torch.minimum(t, tb.repeat_interleave(c)[:, None]).clamp(0, 1)
    z = af + t * (z - af)
    return torch.minimum(torch.maximum(z, lo_f), hi_f).view(n, c, h, wd)


# ---------------------------------------------------------------- exact distance (LP)
@lru_cache(maxsize=8)
def _lp_structure(c: int, h: int, w: int, kernel_size: int, p: float):
    """Sparse equality constraints and costs of the local transport LP for one image shape."""
    from scipy import sparse

    r = kernel_size // 2
    cost = transport_cost(kernel_size, p).numpy()
    src, dst, cst = [], [], []
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                for o, (di, dj) in enumerate((a, b) for a in range(-r, r + 1)
                                             for b in range(-r, r + 1)):
                    ti, tj = i + di, j + dj
                    if 0 <= ti < h and 0 <= tj < w:
                        src.append((ch * h + i) * w + j)
                        dst.append((ch * h + ti) * w + tj)
                        cst.append(cost[o])
    nv, npx = len(src), c * h * w
    cols = np.arange(nv)
    a_eq = sparse.vstack([sparse.csr_matrix((np.ones(nv), (src, cols)), shape=(npx, nv)),
                          sparse.csr_matrix((np.ones(nv), (dst, cols)), shape=(npx, nv))])
    return a_eq.tocsr(), np.asarray(cst)


def wasserstein_distance(x0: torch.Tensor, x: torch.Tensor, *, kernel_size: int = 5,
                         p: float = 2.0, mass_tol: float = 1e-4) -> torch.Tensor:
    """Exact local Wasserstein distance per sample, by linear programming (scipy HiGHS).

    ``min <Pi, C>`` over plans ``Pi >= 0`` that move mass only within each
    channel and inside the ``k x k`` window, from ``x0 / m`` to ``x / m``
    (``m`` the mass of ``x0``). ``inf`` where a channel's mass differs by more
    than ``mass_tol`` (relative to ``m``; smaller differences are rescaled
    away), where a value is negative, or where no local plan exists. Meant for
    small images (one LP with ``C H W k^2`` variables per sample).

    Examples
    --------
    >>> x0 = torch.zeros(1, 1, 4, 4); x0[0, 0, 1, 1] = 1.0
    >>> x = torch.zeros(1, 1, 4, 4); x[0, 0, 1, 2] = 0.5; x[0, 0, 1, 1] = 0.5
    >>> wasserstein_distance(x0, x)
    tensor([0.5000])
    """
    if x0.dim() != 4 or x.shape != x0.shape:
        raise InputError(f"the Wasserstein distance needs two image batches (N, C, H, W) of "
                         f"the same shape, got {tuple(x0.shape)} and {tuple(x.shape)}")
    n, c, h, w = x0.shape
    a_eq, cst = _lp_structure(c, h, w, kernel_size, float(p))
    a64 = x0.detach().double().cpu().reshape(n, c, h * w)
    b64 = x.detach().double().cpu().reshape(n, c, h * w)
    out = torch.full((n,), math.inf, dtype=torch.float64)
    rhs: dict[int, np.ndarray] = {}
    for s in range(n):
        a, b = a64[s], b64[s]
        m = float(a.sum())
        if (a < 0).any() or (b < 0).any():
            continue
        if m <= 0:
            out[s] = 0.0 if float(b.abs().sum()) == 0 else math.inf
            continue
        ma, mb = a.sum(1), b.sum(1)
        if float((ma - mb).abs().max()) > mass_tol * m:
            continue
        b = b * torch.where(mb > 0, ma / mb.clamp_min(1e-300), torch.ones_like(mb))[:, None]
        if bool((b.sum(1) - ma).abs().max() > mass_tol * m):
            continue  # a channel of x is empty but x0's is not
        if torch.equal(a, b):
            out[s] = 0.0
            continue
        rhs[s] = torch.cat([a.reshape(-1), b.reshape(-1)]).numpy() / m
    out[list(rhs)] = torch.tensor(_solve_lps(a_eq, cst, list(rhs.values())), dtype=torch.float64)
    return out.to(x.dtype)


def _solve_lps(a_eq, cst: np.ndarray, rhs: list[np.ndarray]) -> list[float]:
    """Optimal values of ``min cst @ v, a_eq @ v = r, v >= 0`` for each ``r`` (inf if
    infeasible): one block-diagonal LP for all, per-sample LPs if that one fails."""
    from scipy import sparse
    from scipy.optimize import linprog

    def solve(a, c, r):  # HiGHS' presolve can call tiny-but-feasible marginals infeasible
        return linprog(c, A_eq=a, b_eq=r, bounds=(0, None), method="highs",
                       options={"presolve": False})

    if not rhs:
        return []
    if len(rhs) > 1:
        res = solve(sparse.block_diag([a_eq] * len(rhs), format="csr"), np.tile(cst, len(rhs)),
                    np.concatenate(rhs))
        if res.status == 0:
            return [float(v) for v in (res.x.reshape(len(rhs), -1) @ cst)]
    out = []
    for r in rhs:
        res = solve(a_eq, cst, r)
        out.append(float(res.fun) if res.status == 0 else math.inf)
    return out


def project_wasserstein_ball(x0: torch.Tensor, x: torch.Tensor, eps: float,
                             bounds: tuple[float, float], *, kernel_size: int = 5, p: float = 2.0,
                             inside: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``x`` onto the Wasserstein ball of radius ``eps`` around ``x0`` and the box.

    Samples marked in ``inside`` are returned as they are; the others go
    through :func:`projected_sinkhorn` (after clipping to ``bounds``).

    Parameters
    ----------
    x0, x : Tensor
        ``(N, C, H, W)`` non-negative images; ``x0`` is the centre.
    eps : float
        Radius (in units of normalised mass times pixels).
    bounds : (float, float)
        Input box, ``lo >= 0``.
    kernel_size, p : int, float
        Local transport window and the cost's p-norm.
    inside : Tensor, optional
        bool ``(N,)``: samples already in the set, kept unchanged (what
        :meth:`scrutiny.types.ThreatModel.contains` says); None projects every sample.

    Returns
    -------
    Tensor
        The projected batch, same shape and dtype as ``x``.
    """
    if inside is None:
        inside = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    if bool(inside.all()):
        return x
    lo, hi = bounds
    out = x.clone()
    j = (~inside).nonzero()[:, 0]
    out[j] = projected_sinkhorn(x0[j], x[j].clamp(lo, hi), eps, bounds,
                                kernel_size=kernel_size, p=p)
    return out
