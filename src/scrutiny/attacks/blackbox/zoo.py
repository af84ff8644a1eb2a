"""ZOO (Chen et al. AISec 2017): zeroth-order coordinate descent with ADAM or Newton steps."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from scrutiny.attacks.base import Attack, BlackBox
from scrutiny.attacks.blackbox.estimators import fd_derivatives
from scrutiny.attacks.blackbox.zo import _fooled, score_loss
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

SOLVERS = ("adam", "newton")


@register("attack", "zoo", paper="Chen, Zhang, Sharma, Yi, Hsieh. ZOO: zeroth order optimization "
          "based black-box attacks to deep neural networks without training substitute models. "
          "AISec 2017", test_params={"steps": 3, "coords_per_iteration": 8,
                                        "search_steps": 1})
class ZOO(Attack):
    """ZOO: stochastic coordinate descent on the C&W objective with log-probabilities.

    Minimises ``||delta||_2^2 + c * f(x + delta)`` with ``f`` the hinge on
    log-probabilities (:func:`~scrutiny.attacks.blackbox.zo.score_loss`,
    ``"cw"``), using only scores. Every iteration picks
    ``coords_per_iteration`` coordinates per sample (uniformly, or by
    importance sampling), estimates their first and second derivatives by
    symmetric differences with step ``h`` (``2 k + 1`` queries per sample,
    all samples in one batch: the ``+ 1`` is the current point, whose loss
    tells success) and updates each chosen coordinate by

    * ZOO-ADAM (Algorithm 2): per-coordinate ADAM moments with their own
      iteration counts, ``delta_i -= lr * M_hat / (sqrt(v_hat) + 1e-8)``;
    * ZOO-Newton (Algorithm 1): ``delta_i -= lr * g_i / h_i`` if
      ``h_i > 0`` else ``delta_i -= lr * g_i``;

    then projects onto the box and the threat set. ``c`` is found by binary
    search as in C&W (``search_steps`` rounds: a success halves the
    interval downwards, a failure multiplies ``c`` by 10 until bracketed);
    the result per sample is the smallest-norm success, else the lowest loss.

    Parameters
    ----------
    solver : {"adam", "newton"}
        ZOO-ADAM (Algorithm 2) or ZOO-Newton (Algorithm 1) coordinate updates.
    steps : int
        Iterations per binary-search round.
    coords_per_iteration : int
        Coordinates updated per iteration (the paper: 128).
    lr : float
        Learning rate of the ADAM or Newton update (the paper: 0.01 for ADAM).
    h : float
        Finite-difference step (the paper: 1e-4).
    initial_const : float
        First ``c``.
    search_steps : int
        Rounds of the binary search over ``c``.
    kappa : float
        Confidence margin of the hinge.
    importance_sampling : bool
        Sample coordinates with probability proportional to the max-pooled
        absolute perturbation over ``region x region`` blocks (plus a floor),
        refreshed every ``importance_every`` iterations (images only).
    region : int
        Block side of the importance map (the paper: 8).
    importance_every : int
        Iterations between refreshes of the importance map.
    early_stop : bool
        Stop a sample within a round at its first success (saves queries;
        the binary search still lowers ``c`` and the distortion).
    max_queries : int
        Per-sample query limit.
    batch_size : int, optional
        Largest number of inputs per query call.

    Notes
    -----
    The attack-space dimension reduction and hierarchical resize of the
    paper (for large images) are not implemented; ``early_stop`` departs from
    the paper's run-all-iterations rounds (disable it for the paper's).

    References
    ----------
    .. [1] Chen, Zhang, Sharma, Yi, Hsieh. "ZOO: zeroth order optimization
       based black-box attacks to deep neural networks without training
       substitute models". AISec 2017.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> zoo = ZOO(steps=40, coords_per_iteration=32, lr=0.1, search_steps=1)
    >>> res = zoo(QueryModel(model, output="probs"), data.x[:16], data.y[:16],
    ...           threat=ThreatModel("l2", 3.0))
    >>> res.robust_accuracy() < res.clean_accuracy()
    True
    """

    tags = Tags(white_box=False, output="probs", norms=("l2",), targeted=True, stochastic=True,
                minimum_norm=True)

    solver: str = param("adam", choices=SOLVERS)
    steps: int = param(1000, integer=True, positive=True)
    coords_per_iteration: int = param(128, integer=True, positive=True)
    lr: float = param(0.01, positive=True)
    h: float = param(1e-4, positive=True)
    initial_const: float = param(10.0, positive=True)
    search_steps: int = param(4, integer=True, positive=True)
    kappa: float = param(0.0, nonneg=True)
    importance_sampling: bool = param(False, kind=bool)
    region: int = param(8, integer=True, positive=True)
    importance_every: int = param(10, integer=True, positive=True)
    early_stop: bool = param(True, kind=bool)
    max_queries: int = param(100000, integer=True, positive=True)
    batch_size: int | None = param(None, integer=True, positive=True)

    def _weights(self, delta: torch.Tensor) -> torch.Tensor:
        """Coordinate sampling weights ``(n, d)``."""
        n = len(delta)
        if not self.importance_sampling or delta.dim() != 4:
            return torch.ones(n, delta[0].numel(), device=delta.device)
        h, w = delta.shape[2:]
        r = min(self.region, h, w)
        pooled = F.max_pool2d(delta.abs(), kernel_size=r, stride=r, ceil_mode=True)
        up = F.interpolate(pooled, size=(h, w), mode="nearest")
        up = up / up.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (up + 0.05).flatten(1)  # the floor keeps every coordinate reachable

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        n = len(x)
        d = x[0].numel()
        k = min(self.coords_per_iteration, d)
        cost = 2 * k + 1
        lo, hi = threat.bounds
        idx_all = torch.arange(n, device=x.device)
        const = torch.full((n,), float(self.initial_const), device=x.device)
        c_lo = torch.zeros(n, device=x.device)
        c_hi = torch.full((n,), float("inf"), device=x.device)
        best_norm = torch.full((n,), float("inf"), device=x.device)
        best_loss = torch.full((n,), float("inf"), device=x.device)
        ever = torch.zeros(n, dtype=torch.bool, device=x.device)

        def objective(pts: torch.Tensor, rows: torch.Tensor):
            logp = box.log_probs(pts, rows)
            t = None if target is None else target[rows]
            hinge = score_loss(logp, y[rows], t, "cw", self.kappa)
            dist = (pts - x[rows]).flatten(1).pow(2).sum(1)
            return const[rows] * hinge + dist, logp

        total = self.search_steps * self.steps
        with progress_bar(total, "zoo") as bar:
            for _ in range(self.search_steps):
                delta = torch.zeros_like(x)
                m = torch.zeros(n, d, device=x.device)
                v = torch.zeros(n, d, device=x.device)
                steps_i = torch.zeros(n, d, device=x.device)
                weights = self._weights(delta)
                hit_round = torch.zeros(n, dtype=torch.bool, device=x.device)
                for it in range(self.steps):
                    bar.advance()
                    live = box.fit(idx_all[~(hit_round & self.early_stop)
                                           & (box.counts + cost <= self.max_queries)], cost)
                    if not len(live):
                        break
                    if self.importance_sampling and it % self.importance_every == 0:
                        weights = self._weights(delta)
                    coords = torch.multinomial(weights[live], k, replacement=False)
                    cur = (x[live] + delta[live]).clamp(lo, hi)
                    fx, logp = objective(cur, live)  # the current point: success and f(x)
                    t = None if target is None else target[live]
                    hit = _fooled(logp, y[live], t)
                    norm = (cur - x[live]).flatten(1).norm(dim=1)
                    inside = norm <= threat.eps * (1 + 1e-6) + 1e-9
                    better = (hit & inside & (norm < best_norm[live])) | (
                        ~ever[live] & ~hit & (fx < best_loss[live]))
                    j = live[better]
                    box.best[j] = cur[better]
                    best_norm[live[hit & inside]] = torch.minimum(best_norm[live[hit & inside]],
                                                                  norm[hit & inside])
                    best_loss[j] = torch.where(hit[better], best_loss[j], fx[better])
                    ever[live[hit & inside]] = True
                    hit_round[live[hit]] = True
                    if self.early_stop:
                        keep = ~hit
                        live, coords, cur, fx = live[keep], coords[keep], cur[keep], fx[keep]
                        if not len(live):
                            continue
                    g, hess = fd_derivatives(lambda p, r: objective(p, r)[0], cur, coords,
                                             h=self.h, fx=fx, rows=live,
                                             batch_size=self.batch_size)
                    if self.solver == "adam":
                        b1, b2 = 0.9, 0.999
                        mm, vv, tt = m[live], v[live], steps_i[live]
                        mi = b1 * mm.gather(1, coords) + (1 - b1) * g
                        vi = b2 * vv.gather(1, coords) + (1 - b2) * g * g
                        ti = tt.gather(1, coords) + 1
                        mm.scatter_(1, coords, mi)
                        vv.scatter_(1, coords, vi)
                        tt.scatter_(1, coords, ti)
                        m[live], v[live], steps_i[live] = mm, vv, tt
                        m_hat = mi / (1 - b1 ** ti)
                        v_hat = vi / (1 - b2 ** ti)
                        step = -self.lr * m_hat / (v_hat.sqrt() + 1e-8)
                    else:
                        step = torch.where(hess > 0, -self.lr * g / hess.clamp_min(1e-12),
                                           -self.lr * g)
                    flat = delta[live].flatten(1)
                    flat.scatter_add_(1, coords, step.to(flat.dtype))
                    new = threat.project(x[live], (x[live] + flat.view_as(x[live])).clamp(lo, hi))
                    delta[live] = new - x[live]
                # binary search on c (C&W): success lowers c, failure raises it
                c_hi = torch.where(hit_round, torch.minimum(c_hi, const), c_hi)
                c_lo = torch.where(hit_round, c_lo, torch.maximum(c_lo, const))
                const = torch.where(torch.isinf(c_hi), const * 10, (c_lo + c_hi) / 2)
        finite = best_norm[torch.isfinite(best_norm)]
        return box.best.clone(), {"median_l2_of_successes": float(finite.median())
                                  if len(finite) else math.nan}
