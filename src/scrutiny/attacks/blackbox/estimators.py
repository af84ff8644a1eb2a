"""Zeroth-order gradient estimators and optimisers for any batched black-box function.

A black-box function here is ``f(points, rows) -> values``: ``points`` is a
stack ``(m, ...)`` of inputs, ``rows`` (m,) says which sample of the batch each
point belongs to (for per-sample query accounting; plain functions ignore it),
and ``values`` is ``(m,)``. Every estimator stacks all the points it needs
(all samples, all coordinates or directions) and calls ``f`` once per chunk
of ``batch_size`` points.

Examples
--------
>>> import torch
>>> f = lambda p, rows: (p ** 2).flatten(1).sum(1)          # f(x) = ||x||^2
>>> x = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
>>> fd_gradient(f, x).float()                                # 2x
tensor([[ 2., -4.,  1.]])
>>> x_min = zo_minimize(f, x, optimizer="adam", steps=300, lr=0.05, q=20)
>>> bool(f(x_min, None) < 1e-2)
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scrutiny.errors import InputError

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DISTRIBUTIONS = ("sphere", "gaussian")
OPTIMIZERS = ("sgd", "signsgd", "adam", "svrg")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _evaluate(f: Objective, points: torch.Tensor, rows: torch.Tensor,
              batch_size: int | None) -> torch.Tensor:
    """``f`` over ``points`` in chunks of ``batch_size`` rows."""
    bs = batch_size or len(points) or 1
    outs = [f(points[i:i + bs], rows[i:i + bs]).reshape(-1) for i in range(0, len(points), bs)]
    return torch.cat(outs) if outs else points.new_zeros(0)


def fd_derivatives(f: Objective, x: torch.Tensor, coords: torch.Tensor, *, h: float = 1e-4,
                   fx: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                   batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Symmetric finite differences along chosen coordinates (Chen et al. 2017, ZOO).

    ``g_i = (f(x + h e_i) - f(x - h e_i)) / 2h`` and, when ``fx = f(x)`` is
    given, ``h_i = (f(x + h e_i) - 2 f(x) + f(x - h e_i)) / h^2``.

    Parameters
    ----------
    f : callable
        ``f(points, rows) -> (m,)``.
    x : Tensor
        ``(N, ...)`` points.
    coords : Tensor
        ``(N, k)`` flat coordinate indices per sample (``2 N k`` evaluations).
    h : float
        Step.
    fx : Tensor, optional
        ``(N,)`` values at ``x``; needed for the second derivatives.
    rows : Tensor, optional
        ``(N,)`` sample index of each ``x`` passed to ``f`` (default ``arange(N)``).
    batch_size : int, optional
        Points per call of ``f``.

    Returns
    -------
    (Tensor, Tensor or None)
        ``(N, k)`` first and (with ``fx``) second derivatives.
    """
    n, k = coords.shape
    flat = x.reshape(n, -1)
    rows = torch.arange(n, device=x.device) if rows is None else rows
    sample = torch.arange(n, device=x.device).repeat_interleave(k)
    which = coords.reshape(-1)
    pts = flat[sample].repeat(2, 1)
    step = torch.cat([torch.full_like(which, 1), torch.full_like(which, -1)]).to(x.dtype) * h
    pts[torch.arange(2 * n * k, device=x.device), which.repeat(2)] += step
    vals = _evaluate(f, pts.view(2 * n * k, *x.shape[1:]), rows[sample].repeat(2), batch_size)
    plus, minus = vals[:n * k].view(n, k), vals[n * k:].view(n, k)
    g = (plus - minus) / (2 * h)
    hess = None if fx is None else (plus - 2 * fx.view(n, 1) + minus) / (h * h)
    return g, hess


def fd_gradient(f: Objective, x: torch.Tensor, *, h: float = 1e-4,
                rows: torch.Tensor | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Coordinate-wise symmetric-difference gradient of ``f`` at ``x`` (``2 d`` evaluations).

    Exact up to ``O(h^2)`` for smooth ``f`` (the ZOO estimator on every coordinate).
    """
    n = len(x)
    d = x[0].numel() if n else 0
    coords = torch.arange(d, device=x.device).repeat(n, 1)
    g, _ = fd_derivatives(f, x, coords, h=h, rows=rows, batch_size=batch_size)
    return g.view_as(x)


def sample_directions(x: torch.Tensor, q: int, dist: str = "sphere") -> torch.Tensor:
    """``(N, q, ...)`` random directions: uniform on the unit sphere or standard Gaussian."""
    if dist not in DISTRIBUTIONS:
        raise InputError(f"unknown dist {dist!r}; accepted: {', '.join(DISTRIBUTIONS)}")
    u = torch.randn(len(x), q, *x.shape[1:], device=x.device, dtype=x.dtype)
    if dist == "sphere":
        u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(len(x), q, *([1] * (x.dim() - 1)))
    return u


def random_gradient(f: Objective, x: torch.Tensor, *, q: int = 10, mu: float = 0.005,
                    dist: str = "sphere", antithetic: bool = False, fx: torch.Tensor | None = None,
                    directions: torch.Tensor | None = None, scale: float | None = None,
                    rows: torch.Tensor | None = None, batch_size: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random-direction gradient estimate averaged over ``q`` directions.

    Forward differences (AutoZOOM, Tu et al. AAAI 2019)::

        g = scale / q * sum_j (f(x + mu u_j) - f(x)) / mu * u_j

    or antithetic pairs (NES, Ilyas et al. ICML 2018; ``2q`` evaluations)::

        g = scale / q * sum_j (f(x + mu u_j) - f(x - mu u_j)) / (2 mu) * u_j

    With ``scale`` the dimension ``d`` for directions on the unit sphere and 1
    for Gaussian ones (the defaults), ``E[g]`` is the gradient of a smoothed
    ``f`` (bias ``O(mu)``), and the error of the average shrinks as ``q`` grows.

    Parameters
    ----------
    f : callable
        ``f(points, rows) -> (m,)``.
    x : Tensor
        ``(N, ...)``.
    q : int
        Directions per sample (ignored when ``directions`` is given).
    mu : float
        Smoothing radius (finite-difference step).
    dist : {"sphere", "gaussian"}
    antithetic : bool
        Use ``f(x - mu u)`` instead of ``f(x)``.
    fx : Tensor, optional
        ``(N,)`` values at ``x`` for forward differences; evaluated (N more
        evaluations) when missing.
    directions : Tensor, optional
        ``(N, q, ...)`` directions to reuse (e.g. ZO-SVRG's control variate).
    scale : float, optional
        Overrides the scale (AutoZOOM's ``b``).
    rows : Tensor, optional
        ``(N,)`` sample index of each ``x`` passed to ``f``.
    batch_size : int, optional
        Points per call of ``f``.

    Returns
    -------
    (Tensor, Tensor or None)
        The estimate ``(N, ...)`` and ``f(x)`` when it was evaluated or given.
    """
    n = len(x)
    rows = torch.arange(n, device=x.device) if rows is None else rows
    u = sample_directions(x, q, dist) if directions is None else directions
    q = u.shape[1]
    d = x[0].numel() if n else 1
    if scale is None:
        scale = float(d) if dist == "sphere" else 1.0
    xs = x[:, None]
    sample = torch.arange(n, device=x.device).repeat_interleave(q)
    plus = (xs + mu * u).reshape(n * q, *x.shape[1:])
    if antithetic:
        minus = (xs - mu * u).reshape(n * q, *x.shape[1:])
        vals = _evaluate(f, torch.cat([plus, minus]), rows[sample].repeat(2), batch_size)
        diff = (vals[:n * q] - vals[n * q:]).view(n, q) / (2 * mu)
    else:
        if fx is None:
            pts = torch.cat([x, plus])
            vals = _evaluate(f, pts, torch.cat([rows, rows[sample]]), batch_size)
            fx, vals = vals[:n], vals[n:]
        else:
            vals = _evaluate(f, plus, rows[sample], batch_size)
        diff = (vals.view(n, q) - fx.view(n, 1)) / mu
    g = scale / q * (diff.view(n, q, *([1] * (x.dim() - 1))) * u).sum(dim=1)
    return g, fx


# ---------------------------------------------------------------- optimisers
class ZOOptimizer:
    """Per-sample state of a zeroth-order update rule (a descent step on ``x``)."""

    def __init__(self, lr: float) -> None:
        if not lr > 0:
            raise InputError(f"lr must be > 0, got {lr!r}")
        self.lr = lr
        self.state: dict[str, torch.Tensor] = {}

    def _buf(self, name: str, like: torch.Tensor) -> torch.Tensor:
        if name not in self.state:
            self.state[name] = torch.zeros_like(like)
        return self.state[name]

    def step(self, x: torch.Tensor, g: torch.Tensor, idx: torch.Tensor,
             full_like: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """New ``x`` for the samples ``idx`` (``full_like`` shapes the state)."""
        raise NotImplementedError


class ZOSGD(ZOOptimizer):
    """``x - lr * g`` (ZO-SGD, Ghadimi & Lan 2013)."""

    def step(self, x, g, idx, full_like):
        return x - self.lr * g


class ZOSignSGD(ZOOptimizer):
    """``x - lr * sign(g)`` (ZO-signSGD, Liu et al. ICLR 2019)."""

    def step(self, x, g, idx, full_like):
        return x - self.lr * g.sign()


class ZOAdaMM(ZOOptimizer):
    """ZO-AdaMM (Chen et al. NeurIPS 2019): AMSGrad on the estimate.

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``; ``v_hat = max(v_hat, v)``;
    ``x = x - lr m / sqrt(v_hat)``. The projection step that follows is Euclidean,
    which equals the paper's ``sqrt(v_hat)``-weighted projection for box and
    linf constraints (coordinate-wise sets) and approximates it for l2 balls.
    """

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def step(self, x, g, idx, full_like):
        m, v, vh = (self._buf(k, full_like) for k in ("m", "v", "v_hat"))
        m[idx] = self.beta1 * m[idx] + (1 - self.beta1) * g
        v[idx] = self.beta2 * v[idx] + (1 - self.beta2) * g * g
        vh[idx] = torch.maximum(vh[idx], v[idx])
        return x - self.lr * m[idx] / (vh[idx].sqrt() + self.eps)


def make_optimizer(name: str, lr: float, **kw: float) -> ZOOptimizer:
    """The update rule called ``name`` (ZO-SVRG uses ``sgd`` steps on its control variate)."""
    if name not in OPTIMIZERS:
        raise InputError(f"unknown optimizer {name!r}; accepted: {', '.join(OPTIMIZERS)}")
    if name == "adam":
        return ZOAdaMM(lr, **kw)
    if name == "signsgd":
        return ZOSignSGD(lr)
    return ZOSGD(lr)


def zo_minimize(f: Objective, x0: torch.Tensor, *, optimizer: str = "adam", steps: int = 100,
                lr: float = 0.01, q: int = 10, mu: float = 0.005, dist: str = "sphere",
                epoch_length: int = 10, q_snapshot: int | None = None,
                project: Callable[[torch.Tensor], torch.Tensor] | None = None,
                batch_size: int | None = None) -> torch.Tensor:
    """Minimise a batched black-box ``f`` from ``x0`` with a zeroth-order optimiser.

    ``optimizer``: ``"sgd"`` (ZO-SGD), ``"signsgd"`` (ZO-signSGD, Liu et al.
    ICLR 2019), ``"adam"`` (ZO-AdaMM, Chen et al. NeurIPS 2019) or ``"svrg"``
    (ZO-SVRG, Liu et al. NeurIPS 2018): every ``epoch_length`` steps a
    snapshot ``x~`` and a fine estimate ``g~`` with ``q_snapshot`` directions
    (default ``10 q``); in between the step uses the control variate
    ``g(x; u) - g(x~; u) + g~`` with the same directions ``u`` at both points.
    Here the finite sum SVRG reduces the variance of is the average over
    random directions (the paper's experiments use a sum over images).
    ``project`` maps each iterate back into the feasible set.
    """
    x = x0.detach().clone()
    n = len(x)
    idx = torch.arange(n, device=x.device)
    opt = make_optimizer(optimizer, lr)
    snap = g_snap = f_snap = None
    fx = None
    for t in range(steps):
        if optimizer == "svrg":
            if t % epoch_length == 0:
                snap = x.clone()
                g_snap, f_snap = random_gradient(f, snap, q=q_snapshot or 10 * q, mu=mu,
                                                 dist=dist, fx=fx, batch_size=batch_size)
            u = sample_directions(x, q, dist)
            g_x, fx = random_gradient(f, x, mu=mu, dist=dist, fx=fx, directions=u,
                                      batch_size=batch_size)
            g_s, _ = random_gradient(f, snap, mu=mu, dist=dist, fx=f_snap, directions=u,
                                     batch_size=batch_size)
            g = g_x - g_s + g_snap
        else:
            g, fx = random_gradient(f, x, q=q, mu=mu, dist=dist, fx=fx, batch_size=batch_size)
        x = opt.step(x, g, idx, x)
        if project is not None:
            x = project(x)
        fx = None
    return x
