"""Integrated Gradients with adaptive, Riemann and Gauss-Legendre quadrature."""

from __future__ import annotations

import numpy as np
import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin, target_gradient
from scrutiny.explain.baselines import check_baseline, make_baseline
from scrutiny.explain.gradient.layer import LayerPath, layer_activations
from scrutiny.params import param
from scrutiny.registry import register

RULES: tuple[str, ...] = ("adaptive", "gausslegendre", "riemann_left", "riemann_right",
                          "riemann_middle", "riemann_trapezoid")


def quadrature(rule: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``alpha`` in [0, 1] and weights (summing to 1) of a quadrature rule.

    For ``"adaptive"`` these are the rule's starting mesh (trapezoid nodes).
    """
    if rule == "adaptive":
        if steps < 2:
            raise InputError("the adaptive rule needs steps >= 2")
        return quadrature("riemann_trapezoid", initial_nodes(steps))
    if rule == "gausslegendre":
        t, w = np.polynomial.legendre.leggauss(steps)
        return torch.tensor((t + 1) / 2), torch.tensor(w / 2)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise InputError("riemann_trapezoid needs steps >= 2")
        a = torch.linspace(0, 1, steps, dtype=torch.float64)
        w = torch.full((steps,), 1 / (steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (steps - 1)
        return a, w
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if rule not in offsets:
        raise InputError(f"unknown rule {rule!r}; accepted: {', '.join(RULES)}")
    a = (torch.arange(steps, dtype=torch.float64) + offsets[rule]) / steps
    return a, torch.full((steps,), 1 / steps, dtype=torch.float64)


def _path_points(forward, b, diff, target, i, alpha, batch_size):
    """Target output and attribution gradient at the path points ``b[i] + alpha * diff[i]``.

    ``forward(points, rows)`` gives the outputs at the points of samples ``rows``
    (the model itself for input attributions, a :class:`LayerPath` for a layer's).
    Returns ``f`` (one value per point) and ``g * diff[i]`` (one flat row per point).

    The points go in passes of at most ``batch_size``, as few as the round needs,
    padded (repeating a pass's first point) to a multiple of an eighth of
    ``batch_size``, so the varying round sizes of the adaptive rule reuse a few batch
    shapes (CPU convolution backends set up each new shape once, which costs more
    than the padding).
    """
    fs, gs = [], []
    grain = max(1, batch_size // 8)
    for sl in torch.arange(len(i), device=b.device).split(batch_size):
        k = len(sl)
        pad = min(batch_size, -(-k // grain) * grain) - k
        sl = torch.cat([sl, sl[:1].expand(pad)])
        ii = i[sl]
        d = diff[ii]
        a = alpha[sl].to(b.dtype).view(-1, *([1] * (b.dim() - 1)))
        g, out = target_gradient(lambda p, rows=ii: forward(p, rows), b[ii] + a * d, target[ii])
        fs.append(out[:k])
        gs.append((g[:k] * d[:k]).reshape(k, -1))
    return torch.cat(fs), torch.cat(gs)


#: Input values per forward/backward pass when ``batch_size`` is None (see :func:`path_batch`).
PASS_VALUES = 2**15


def path_batch(batch_size: int | None, numel: int) -> int:
    """Path points per pass: ``batch_size``, or for None about :data:`PASS_VALUES` input
    values (``numel`` per point), at least 16: 512 points of 8x8, 41 of 28x28.

    On a CPU a pass is cheapest per point while its activations stay in cache: on a
    CNN over 28x28 digits, 128 points per pass cost about 0.6x as much per point as 512
    (benchmarks/bench_ig.py), for scrutiny and Captum alike.
    """
    if batch_size is not None:
        return batch_size
    return max(16, PASS_VALUES // max(1, numel))


def initial_nodes(steps: int) -> int:
    """Size of the adaptive rule's starting mesh for a budget of ``steps`` nodes.

    At most 8: a coarse start leaves more of the nodes to the refinement, which puts
    them where the gradient changes (on the 28x28 CNN of benchmarks/bench_ig.py, with
    48 nodes per sample, the attribution error is 4.3e-3 starting from 8 nodes and
    5.0e-3 from 24).
    """
    return max(2, min(8, steps // 4))


def kink_weights(h: torch.Tensor, df: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``(w_a, w_b)`` of an interval's end gradients, exact for one switch inside.

    On a piecewise-linear network the path function ``f(a)`` is piecewise
    linear, so its gradient is piecewise constant. If it switches once, at
    ``c``, inside ``[a, b]`` (width ``h``), the integral is ``g_a (c - a) +
    g_b (b - c)`` and ``df = f(b) - f(a) = s_a (c - a) + s_b (b - c)`` gives
    ``c`` (``s`` is the path derivative ``g . (x - b)``). Intervals whose
    ``c`` would fall outside ``[a, b]`` (several switches), or whose slopes do
    not determine it, keep the trapezoid weights ``h / 2``.
    """
    ds = sb - sa
    determined = ds.abs() > 1e-6 * (sa.abs() + sb.abs()) + torch.finfo(h.dtype).tiny
    wb = (df - h * sa) / torch.where(determined, ds, 1)
    inside = determined & (wb >= -1e-6 * h) & (wb <= h * (1 + 1e-6))
    wb = torch.where(inside, wb.clamp(min=0).minimum(h), h / 2)
    return h - wb, wb


def _grow(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` with its second dimension zero-padded to ``size``."""
    if t.shape[1] >= size:
        return t
    return torch.cat([t, t.new_zeros((t.shape[0], size - t.shape[1], *t.shape[2:]))], 1)


def adaptive_path_integral(forward, b: torch.Tensor, diff: torch.Tensor, target: torch.Tensor,
                           steps: int, rtol: float, batch_size: int, min_steps: int = 0
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``diff * integral_0^1 grad f(b + a diff) da`` on an adaptive per-sample mesh.

    ``f`` is ``forward(points, rows)``: the outputs at path points of the
    samples ``rows`` (see :func:`_path_points`).

    Per sample: start from a uniform mesh of :func:`initial_nodes` nodes
    (including ``a = 0`` and ``a = 1``); each node's forward/backward gives
    ``f(a)``, the attribution gradient ``v(a) = g(a) * diff`` and the path
    derivative ``s(a) = sum v(a)``.
    Each interval ``[a_k, a_{k+1}]`` (width ``h_k``) integrates ``v`` with the
    weights of :func:`kink_weights` (exact when the gradient switches at most
    once inside it, the trapezoid rule otherwise); ``r_k = f(a_{k+1}) - f(a_k)
    - w_a s_k - w_b s_{k+1}`` is then the interval's exact completeness error,
    non-zero only where the one-switch model cannot explain ``f``.

    Rounds bisect a quarter of the starting mesh's size of intervals per
    sample, until a sample has at least ``min_steps`` nodes and ``|sum_k r_k|
    <= rtol |f(x) - f(b)|`` (the completeness check the paper recommends), or
    its budget of ``steps`` nodes is spent (``rtol = 0``: always the budget,
    with no completeness goal). While a sample's completeness
    check fails, its intervals with the largest ``|r_k|`` are bisected;
    otherwise those with the largest ``h_k ||v_{k+1} - v_k||_1``,
    the L1 change of the attribution across the interval. All samples' new
    nodes go in passes of at most ``batch_size``; every decision is per sample, so a
    sample's result does not depend on the rest of the batch. Nodes and
    intervals are stored in the order they are made (no re-sorting; the store
    grows with the largest mesh instead of holding the whole budget); only the
    two intervals a bisection creates are recomputed. Returns the attributions
    (shape of ``b``), the nodes used per sample, ``f(b)`` and ``f(b + diff)``
    (the nodes at ``a = 0`` and ``a = 1``).
    """
    n = len(b)
    dflat = diff.reshape(n, -1)
    dim = dflat.shape[1]
    m0 = initial_nodes(steps)
    q = max(1, m0 // 4)
    dev, dt = b.device, b.dtype
    target_nodes = steps if rtol == 0 else max(2, min(min_steps, steps))  # rtol=0: the budget
    cap = min(steps, max(m0, target_nodes) + 4 * q)  # nodes stored per sample, grown on demand
    # nodes, in the order they were made
    alpha = torch.zeros((n, cap), device=dev, dtype=torch.float64)
    f = torch.zeros((n, cap), device=dev, dtype=dt)
    s = torch.zeros_like(f)
    v = torch.zeros((n, cap, dim), device=dev, dtype=dt)
    # intervals: end nodes (indices into the node arrays), weights, residual, refinement score
    left = torch.zeros((n, cap - 1), device=dev, dtype=torch.long)
    right = torch.zeros_like(left)
    wa, wb, r, jump = (torch.zeros((n, cap - 1), device=dev, dtype=dt) for _ in range(4))
    count = torch.full((n,), m0, device=dev, dtype=torch.long)
    ii = torch.arange(n, device=dev).repeat_interleave(m0)
    pos = torch.arange(m0, device=dev).repeat(n)
    new = torch.linspace(0, 1, m0, device=dev, dtype=torch.float64)[pos]
    ki = torch.arange(n, device=dev).repeat_interleave(m0 - 1)  # intervals to (re)compute
    kk = torch.arange(m0 - 1, device=dev).repeat(n)
    left[ki, kk], right[ki, kk] = kk, kk + 1
    rank = torch.arange(q, device=dev)[None]
    while True:
        fv, vv = _path_points(forward, b, diff, target, ii, new, batch_size)
        alpha[ii, pos], f[ii, pos], v[ii, pos] = new, fv, vv
        s[ii, pos] = vv.sum(1)
        la, ra = left[ki, kk], right[ki, kk]
        h = (alpha[ki, ra] - alpha[ki, la]).to(dt)
        df = f[ki, ra] - f[ki, la]
        sa, sb = s[ki, la], s[ki, ra]
        wa[ki, kk], wb[ki, kk] = w = kink_weights(h, df, sa, sb)
        r[ki, kk] = df - w[0] * sa - w[1] * sb
        jump[ki, kk] = (v[ki, ra] - v[ki, la]).abs().sum(1) * h
        valid = torch.arange(cap - 1, device=dev)[None] < (count - 1)[:, None]
        span = (f[:, m0 - 1] - f[:, 0]).abs()  # the starting mesh: a = 0 first, a = 1 last
        failing = (r.sum(1).abs() > rtol * span) & (rtol > 0)  # rtol=0: no completeness goal
        active = (failing | (count < target_nodes)) & (count < steps)
        if not active.any():
            break
        score = torch.where(valid, torch.where(failing[:, None], r.abs(), jump), -1)
        # over the whole budget's width, so that ties go as they would with a full store
        score = torch.cat([score, score.new_full((n, steps - cap), -1)], 1)
        top = score.topk(q, dim=1).indices
        take = active[:, None] & (rank < (steps - count)[:, None]) & (rank < (count - 1)[:, None])
        ii, j = take.nonzero(as_tuple=True)
        k = top[ii, j]
        pos = count[ii] + j  # the new node
        knew = count[ii] - 1 + j  # the interval it splits off
        count = count + take.sum(1)
        if int(count.max()) > cap:  # grow the store (by half, within the budget)
            cap = min(steps, max(int(count.max()), cap + cap // 2))
            alpha, f, s, v = (_grow(t, cap) for t in (alpha, f, s, v))
            left, right, wa, wb, r, jump = (_grow(t, cap - 1)
                                            for t in (left, right, wa, wb, r, jump))
        new = (alpha[ii, left[ii, k]] + alpha[ii, right[ii, k]]) / 2
        left[ii, knew], right[ii, knew] = pos, right[ii, k]
        right[ii, k] = pos
        ki, kk = torch.cat([ii, ii]), torch.cat([k, knew])
    node_w = torch.zeros((n, cap), device=dev, dtype=dt)
    node_w.scatter_add_(1, left, torch.where(valid, wa, 0))
    node_w.scatter_add_(1, right, torch.where(valid, wb, 0))
    return (torch.einsum("ns,nsd->nd", node_w, v).reshape(b.shape), count, f[:, 0],
            f[:, m0 - 1])


@register("explainer", "integrated_gradients", paper="Sundararajan, Taly, Yan. Axiomatic "
          "attribution for deep networks. ICML 2017", test_params={"steps": 8})
class IntegratedGradients(Explainer):
    """Integrated Gradients: ``(x - b) * integral_0^1 grad f(b + a (x - b)) da``.

    The integral is computed with a quadrature rule; attributions satisfy
    completeness, ``sum(attr) = f(x) - f(b)``, up to the quadrature error,
    which is returned per sample in ``Explanation.delta`` (recomputed from the
    final attributions and ``f(x)``, ``f(b)``: the adaptive rule's nodes at
    ``a = 1`` and ``a = 0``, two extra forward passes for the fixed rules). Path
    points of all samples are evaluated in chunks of ``batch_size``.

    On ReLU networks the integrand is piecewise constant with thousands of
    small switches along the path, so every fixed rule converges only as
    ``1 / steps`` (higher-order rules help little). The default
    ``rule="adaptive"`` (see :func:`adaptive_path_integral`) uses what each
    forward pass gives for free, the output ``f`` at the node: on each
    interval of a per-sample mesh it weights the two end gradients so that
    the interval's attribution sum equals ``f(b) - f(a)``, which is the exact
    integral when the gradient switches once inside the interval (the
    exact-line view of piecewise-linear networks, Sotoudeh & Thakur [2]), and
    keeps the trapezoid weights where ``f`` shows more than one switch. It
    refines those intervals until the completeness check of the paper,
    ``|delta| <= rtol |f(x) - f(b)|``, holds (and every sample has
    ``min_steps`` nodes, placed where the gradient changes most), or the
    budget of ``steps`` nodes is spent. Nothing is rescaled. Because the
    weights enforce completeness interval by interval, ``delta`` is small by
    construction and no longer measures the error of the attribution
    vector: on the digits CNN the default's per-feature error (against a
    4,097-node reference) is about that of 50-60 fixed nodes, see
    docs/benchmarks.md. On networks with smooth activations the weights are
    an approximation like any rule's. The fixed rules run exactly ``steps``
    nodes per sample.

    Parameters
    ----------
    steps : int
        Quadrature nodes (fixed rules); node budget per sample (adaptive).
    rule : {"adaptive", "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", \
"riemann_trapezoid"}
        The quadrature rule: adaptive (below), Gauss-Legendre or a Riemann sum.
    rtol : float
        Adaptive rule only: stop refining a sample once ``|delta| <= rtol *
        |f(x) - f(b)|``. 0 sets no completeness goal: the whole budget goes
        where the gradient changes most, which gives the most accurate map
        per node (the completeness goal spends nodes on the sum instead).
    min_steps : int
        Adaptive rule only: nodes every sample gets (capped at ``steps``),
        for the accuracy of the attribution vector, whatever its ``delta``.
    baseline : {"zero", "blur", "uniform"}, float or Tensor
        Reference input ``b``.
    blur_sigma : float
        Gaussian sigma (pixels) of the ``"blur"`` baseline.
    batch_size : int, optional
        Path points per forward/backward pass; None (default) sizes the
        passes to the input (:func:`path_batch`: 512 points of 8x8, 41 of
        28x28), which keeps their activations in a CPU's cache.
    layer : str, optional
        Attribute to this layer's output (Captum's LayerIntegratedGradients):
        the path runs over the layer's activations, from those of the
        baseline input to those of ``x``.

    References
    ----------
    .. [1] Sundararajan, Taly, Yan. "Axiomatic attribution for deep networks".
       ICML 2017.
    .. [2] Sotoudeh, Thakur. "Computing linear restrictions of neural
       networks". NeurIPS 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> e = IntegratedGradients()(pretrained("digits-cnn", progress=False), x)
    >>> span = (e.outputs - e.meta["baseline_output"]).abs()
    >>> bool((e.delta.abs() <= 1e-2 * span).all()), int(e.meta["nodes"].max()) <= 128
    (True, True)
    """

    steps: int = param(128, integer=True, positive=True)
    rule: str = param("adaptive", choices=RULES)
    rtol: float = param(1e-3, nonneg=True)
    min_steps: int = param(50, integer=True, positive=True)
    baseline: str | float | torch.Tensor = param("zero", check=check_baseline)
    blur_sigma: float = param(2.0, nonneg=True)
    batch_size: int | None = param(None, integer=True, positive=True)
    layer: str | None = param(None, kind=str)

    def _post_init(self) -> None:
        quadrature(self.rule, self.steps)  # the rule's own limits on steps

    def linear_oracle(self, w, x):
        """Closed form on ``f = w.x + b`` with a constant baseline: ``(x - b) * w``."""
        if isinstance(self.baseline, str) and self.baseline != "zero":
            raise InputError(f"no closed form for the {self.baseline!r} baseline")
        b = 0.0 if self.baseline == "zero" else self.baseline
        return (x - b) * w

    def _explain(self, model, x, target):
        n = len(x)
        b = make_baseline(self.baseline, x, model.bounds, self.blur_sigma)
        extra = {}
        if self.layer is None:
            def forward(points, rows):
                return model(points)
        else:  # the path runs over the layer's activations, from the baseline input's
            forward = LayerPath(model, self.layer, x)
            b = layer_activations(model, self.layer, b)
            extra["location"] = self.layer
        ends = layer_activations(model, self.layer, x) if self.layer is not None else x
        diff = ends - b
        batch = path_batch(self.batch_size, x[0].numel() if n else 1)
        if self.rule == "adaptive":
            # the rule keeps every node's gradient: samples go in blocks of <= ~2**25 values
            block = max(1, 2**25 // (self.steps * max(1, b[0].numel() if n else 1)))
            parts = [adaptive_path_integral(lambda p, rows, i=i: forward(p, rows + i),
                                            b[i:i + block], diff[i:i + block],
                                            target[i:i + block], self.steps, self.rtol,
                                            batch, self.min_steps)
                     for i in range(0, n, block)]
            # f(b) and f(x) are the mesh's nodes at a = 0 and a = 1: no extra passes
            if parts:
                attr, nodes, fb, fx = (torch.cat(t) for t in zip(*parts, strict=True))
            else:  # an empty batch
                attr, nodes = torch.zeros_like(b), torch.zeros(0, dtype=torch.long)
                fb = fx = b.new_zeros(0)
            extra["nodes"] = nodes.cpu()
        else:
            alphas, weights = (t.to(device=x.device, dtype=x.dtype)
                               for t in quadrature(self.rule, self.steps))
            total = torch.zeros_like(b)
            flat = torch.arange(n * self.steps, device=x.device)
            for chunk in flat.split(batch):
                i, s = chunk // self.steps, chunk % self.steps
                a = alphas[s].view(-1, *([1] * (b.dim() - 1)))
                g, _ = target_gradient(lambda p, rows=i: forward(p, rows), b[i] + a * diff[i],
                                       target[i])
                total.index_add_(0, i, g * weights[s].view_as(a))
            attr = diff * total
            with torch.no_grad():
                fx = model(x).gather(1, target[:, None])[:, 0]
                fb = forward(b, torch.arange(n, device=x.device)).gather(1, target[:, None])[:, 0]
        delta = attr.flatten(1).sum(1) - (fx - fb)
        return attr, {"delta": delta, "baseline_output": fb.cpu(), **extra}


integrated_gradients = function_twin(IntegratedGradients, "integrated_gradients")
