"""Influence functions: which training points a prediction rests on (Koh & Liang, 2017).

Upweighting a training point ``z`` by a small ``eps`` in the training objective
``R(theta) = (1/n) sum_i L(z_i, theta) + (l2/2) ||theta||^2`` moves the optimum by
``-eps H^{-1} grad L(z)`` (``H`` the Hessian of ``R`` at the optimum), so the loss of a
test point changes by ``eps I_up,loss(z, z_test)`` with

    I_up,loss(z, z_test) = -grad L(z_test)^T H^{-1} grad L(z).

Removing ``z`` is ``eps = -1/n``: its predicted change of the test loss is
``-I_up,loss(z, z_test) / n`` (the regulariser keeps its weight relative to the sum of the
remaining losses). Moving ``z``'s input by ``delta`` changes the test loss by about
``I_pert,loss(z, z_test)^T delta / n`` with

    I_pert,loss(z, z_test) = -grad L(z_test)^T H^{-1} grad_x grad_theta L(z).

``H^{-1} v`` comes from the exact Hessian (few parameters), conjugate gradients or
LiSSA, both on Hessian-vector products (forward-over-reverse differentiation with
:mod:`torch.func`); ``theta`` may be restricted to some layers (the last linear layer
of a network is the usual choice: its Hessian is small and positive definite with a
little damping). The model's weights are never touched: every derivative is taken with
respect to detached copies passed through :func:`torch.func.functional_call`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vmap

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["Influence", "InfluenceResult", "InfluenceSolver", "influence", "last_linear"]

#: Most parameters the exact solver builds a Hessian for (``p x p`` entries).
MAX_EXACT = 6000


def last_linear(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` module of ``model`` (of its wrapped module for a
    :class:`~scrutiny.models.wrapper.TorchModel`): the usual choice of ``layers``.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> last_linear(pretrained("digits-cnn", progress=False))
    'classifier'
    """
    module = model.module if isinstance(model, TorchModel) else model
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError(f"{type(module).__name__} has no nn.Linear layer")
    return names[-1]


def _check_layers(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value \
            or not all(isinstance(v, str) and v for v in value):
        raise InputError(f"{name} must be a non-empty tuple of layer or parameter names, "
                         f"got {value!r}")
    return tuple(value)


class _Problem:
    """The training objective around the trained weights, restricted to the chosen
    parameters ``theta`` (flattened): per-sample losses, gradients, Hessian(-vector
    products), chunked over the training data.

    When theta lies in one sub-module whose output is the model's logits (the last linear
    layer), the module's inputs are computed once and every derivative runs through that
    module alone (the "head"): the same numbers, without re-running the frozen layers.
    """

    def __init__(self, model: TorchModel, data: ArrayDataset, layers: tuple[str, ...] | None,
                 l2: float, batch_size: int) -> None:
        self.model, self.l2, self.batch_size = model, l2, batch_size
        chosen = _select(model, layers)
        self.names = [n for n, _ in chosen]
        self.shapes = [p.shape for _, p in chosen]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in chosen])
        self.dtype = self.theta.dtype
        self.y = data.y.to(model.device)
        self.n = len(data)
        self.head: nn.Module | None = None
        self.head_names: list[str] = []
        self.raw = self.inputs(data.x)
        if layers is not None:
            self._find_head()
        self.x = self.features(self.raw)

    @property
    def size(self) -> int:
        return self.theta.numel()

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.model.device, self.dtype)

    def _find_head(self) -> None:
        """Use the deepest module holding theta as the head if, on the first training
        chunk, it runs once per forward on one tensor and returns the model's output."""
        parts = [n.split(".")[1:-1] for n in self.names]  # drop "module." and the leaf
        common: list[str] = []
        for level in zip(*parts, strict=False):
            if len(set(level)) > 1:
                break
            common.append(level[0])
        if not common:
            return
        name = ".".join(common)
        head = self.model.layer(name)
        seen: list[tuple[tuple, dict, torch.Tensor]] = []
        handle = head.register_forward_hook(
            lambda _m, args, kwargs, out: seen.append((args, kwargs, out)), with_kwargs=True)
        try:
            with torch.no_grad():
                out = self.model(self.raw[:self.batch_size])
        finally:
            handle.remove()
        if len(seen) == 1 and not seen[0][1] and len(seen[0][0]) == 1 \
                and isinstance(seen[0][0][0], torch.Tensor) and torch.equal(seen[0][2], out):
            self.head = head
            self.head_names = [n[len("module.") + len(name) + 1:] for n in self.names]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the loss reads: ``x`` itself, or the head's inputs when there is a head."""
        if self.head is None:
            return x
        store: list[torch.Tensor] = []
        handle = self.head.register_forward_hook(lambda _m, args, _o: store.append(args[0]))
        try:
            with torch.no_grad():
                for i in range(0, len(x), self.batch_size):
                    self.model(x[i:i + self.batch_size])
        finally:
            handle.remove()
        return torch.cat(store) if store else x.new_zeros(0)

    def params(self, flat: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        out, i = {}, 0
        for name, shape in zip(names, self.shapes, strict=True):
            k = shape.numel()
            out[name] = flat[i:i + k].view(shape)
            i += k
        return out

    def losses(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy at weights ``flat`` (the other weights as trained) of
        the features ``x`` (see :meth:`features`)."""
        if self.head is None:
            return self.full_losses(flat, x, y)
        logits = functional_call(self.head, self.params(flat, self.head_names), (x,))
        return nn.functional.cross_entropy(logits, y, reduction="none")

    def full_losses(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy of inputs ``x`` through the whole model."""
        logits = functional_call(self.model, self.params(flat, self.names), (x,))
        return nn.functional.cross_entropy(logits, y, reduction="none")

    def chunks(self) -> list[slice]:
        b = self.batch_size
        return [slice(i, min(i + b, self.n)) for i in range(0, self.n, b)]

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``grad_theta L(z_i)`` per sample of features ``x``, ``(m, p)`` (no regulariser)."""
        def one(flat, xi, yi):
            return self.losses(flat, xi[None], yi[None])[0]
        per = vmap(grad(one), in_dims=(None, 0, 0))
        out = [per(self.theta, x[i:i + self.batch_size], y[i:i + self.batch_size])
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out) if out else self.theta.new_zeros(0, self.size)

    def input_grads(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``grad_x (s_t . grad_theta L(x_i, y_i))`` for each row ``s_t`` of ``s`` and each
        input ``x_i`` (not features): ``(m, t, *input_shape)``."""
        def one(xi, yi):
            return s @ grad(lambda f: self.full_losses(f, xi[None], yi[None])[0])(self.theta)
        return vmap(jacrev(one))(x, y)

    def hessian(self) -> torch.Tensor:
        """``H = (1/n) sum_i hess L(z_i) + l2 I`` (dense, ``(p, p)``)."""
        h = torch.zeros(self.size, self.size, dtype=self.dtype, device=self.theta.device)
        for sl in self.chunks():
            xc, yc = self.x[sl], self.y[sl]
            h += hessian(lambda f, xc=xc, yc=yc: self.losses(f, xc, yc).sum())(self.theta)
        h /= self.n
        h.diagonal().add_(self.l2)
        return h

    def hvp(self, v: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``H v`` for each row of ``v`` ``(k, p)``; on the training rows ``index`` only
        (a LiSSA minibatch) when given."""
        def on(xc, yc, m):
            g = grad(lambda f: self.losses(f, xc, yc).sum() / m)
            return vmap(lambda u: jvp(g, (self.theta,), (u,))[1])(v)
        if index is not None:
            out = on(self.x[index], self.y[index], len(index))
        else:
            out = sum(on(self.x[sl], self.y[sl], self.n) for sl in self.chunks())
        return out + self.l2 * v


def _select(model: TorchModel, layers: tuple[str, ...] | None
            ) -> list[tuple[str, torch.Tensor]]:
    """``(full name, parameter)`` of the chosen layers' (or named) parameters, in the
    model's order; all floating-point parameters when ``layers`` is None."""
    named = {n: p for n, p in model.module.named_parameters() if p.is_floating_point()}
    if layers is None:
        keep = set(named)
    else:
        keep = set()
        modules = dict(model.module.named_modules())
        for entry in layers:
            if entry in named:
                keep.add(entry)
            elif entry in modules and entry:
                found = [f"{entry}.{n}" for n, _ in modules[entry].named_parameters()]
                if not found:
                    raise InputError(f"layer {entry!r} of {model.name} has no parameters")
                keep.update(found)
            else:
                raise InputError(f"no layer or parameter {entry!r} in {model.name}; layers: "
                                 + ", ".join(model.layer_names()))
    chosen = [(f"module.{n}", p) for n, p in named.items() if n in keep]
    if not chosen:
        raise InputError(f"{model.name} has no parameters to take influence over")
    if len({p.dtype for _, p in chosen}) > 1:
        raise InputError("the chosen parameters have several dtypes")
    return chosen


def _conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                         max_iter: int, tol: float) -> tuple[torch.Tensor, int, float]:
    """Solve ``A x = b_k`` for each row of ``b`` with A symmetric positive definite (given
    as ``apply(v)`` on rows); a row stops when its residual is ``<= tol ||b_k||``. Returns
    the solutions, the iterations run and the largest relative residual."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    target = tol ** 2 * rs
    done = rs <= target
    it = 0
    while it < max_iter and not bool(done.all()):
        ap = apply(p)
        curv = (p * ap).sum(1)
        if bool((curv[~done] <= 0).any()):
            raise InputError("the damped Hessian is not positive definite (conjugate gradients "
                             "met negative curvature); raise damping or restrict layers")
        alpha = torch.where(done, 0.0, rs / torch.where(done, 1.0, curv))
        x = x + alpha[:, None] * p
        r = r - alpha[:, None] * ap
        new = (r * r).sum(1)
        done = done | (new <= target)
        p = r + (new / torch.where(rs > 0, rs, 1.0))[:, None] * p
        rs = new
        it += 1
    rel = (rs / b.pow(2).sum(1).clamp_min(torch.finfo(b.dtype).tiny)).sqrt()
    return x, it, float(rel.max()) if len(rel) else 0.0


class InfluenceSolver(Learned):
    """Shared settings and inverse-Hessian-vector products of the influence methods
    (:class:`Influence`, :class:`~scrutiny.explain.influence.InfluencePoisoning`); their
    class docstrings describe the parameters.
    """

    solver: str = param("exact", choices=("exact", "cg", "lissa"))
    damping: float = param(0.001, nonneg=True)
    layers: tuple[str, ...] | None = param(None, optional=True, check=_check_layers)
    l2: float = param(0.0, nonneg=True)
    batch_size: int = param(256, integer=True, positive=True)
    max_iter: int = param(100, integer=True, positive=True)
    tol: float = param(1e-6, positive=True)
    lissa_scale: float | None = param(None, positive=True)
    lissa_repeats: int = param(1, integer=True, positive=True)

    def on_last_layer(self, model: nn.Module) -> InfluenceSolver:
        """This method when it names its ``layers``; else a copy restricted to the model's last
        linear layer (:func:`last_linear`: the paper's choice for networks, and what the exact
        solver can take on a network of more than a few thousand parameters).

        Examples
        --------
        >>> from scrutiny.models import pretrained
        >>> Influence().on_last_layer(pretrained("digits-cnn", progress=False)).layers
        ('classifier',)
        """
        if self.layers is not None:
            return self
        return type(self)(**{**self.get_params(), "layers": (last_linear(model),)})

    def _problem(self, model: TorchModel, data: ArrayDataset | None) -> _Problem:
        if data is None or len(data) == 0:
            raise InputError(f"{type(self).__name__} needs the training data (a non-empty "
                             "ArrayDataset)")
        prob = _Problem(model, data, self.layers, self.l2, self.batch_size)
        if self.solver == "exact" and prob.size > MAX_EXACT:
            raise InputError(f"solver='exact' builds a {prob.size} x {prob.size} Hessian (more "
                             f"than {MAX_EXACT} parameters); restrict layers or use solver='cg'")
        return prob

    def _test_data(self, prob: _Problem, data: ArrayDataset, x_test: Any, y_test: Any
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x_test, torch.Tensor) or not isinstance(y_test, torch.Tensor):
            raise InputError(f"{type(self).__name__} needs x_test and y_test tensors, got "
                             f"{type(x_test).__name__} and {type(y_test).__name__}")
        if tuple(x_test.shape[1:]) != tuple(data.input_shape) or x_test.dim() < 2:
            raise InputError(f"x_test must have shape (N, *{tuple(data.input_shape)}), got "
                             f"{tuple(x_test.shape)}")
        if y_test.shape != (len(x_test),):
            raise InputError(f"y_test must have shape ({len(x_test)},), got {tuple(y_test.shape)}")
        if not bool(torch.isfinite(x_test).all()):
            raise InputError("x_test holds NaN or infinite values")
        if len(y_test) and (int(y_test.min()) < 0 or int(y_test.max()) >= data.num_classes):
            raise InputError(f"y_test must lie in [0, {data.num_classes}), got range "
                             f"[{int(y_test.min())}, {int(y_test.max())}]")
        return prob.inputs(x_test), y_test.to(prob.model.device, torch.long)

    def _inverse(self, prob: _Problem, b: torch.Tensor, meta: dict[str, Any],
                 hess: torch.Tensor | None = None) -> torch.Tensor:
        """``(H + damping I)^{-1}`` applied to each row of ``b`` ``(k, p)``."""
        if len(b) == 0:
            return b.clone()
        if self.solver == "exact":
            if hess is None:
                hess = self._damped_hessian(prob)
            return torch.linalg.solve(hess, b.double().T).T.to(b.dtype)
        apply = lambda v: prob.hvp(v) + self.damping * v  # noqa: E731
        if self.solver == "cg":
            x, it, res = _conjugate_gradients(apply, b, self.max_iter, self.tol)
            meta.setdefault("cg_iterations", []).append(it)
            meta["cg_residual"] = max(meta.get("cg_residual", 0.0), res)
            return x
        return self._lissa(prob, b, meta)

    def _damped_hessian(self, prob: _Problem) -> torch.Tensor:
        h = prob.hessian().double()
        h.diagonal().add_(self.damping)
        return h

    def _lissa(self, prob: _Problem, b: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
        """LiSSA (Agarwal et al., 2017): ``h_j = b + h_{j-1} - (H_j + damping) h_{j-1} / scale``
        with ``H_j`` the Hessian on a random minibatch (``batch_size`` points drawn without
        replacement: the whole set when it is smaller); ``H^{-1} b ~ h_J / scale``."""
        scale = self.lissa_scale
        if scale is None:  # twice the largest eigenvalue, by power iteration on the full H
            v = torch.randn(1, prob.size, dtype=prob.dtype, device=prob.theta.device)
            top = 0.0
            for _ in range(20):
                v = v / v.norm()
                hv = prob.hvp(v) + self.damping * v
                top = float((v * hv).sum())
                v = hv
            scale = 2.0 * max(top, 1e-12)
            meta["lissa_scale"] = scale
        m = min(self.batch_size, prob.n)
        total = torch.zeros_like(b)
        for _ in range(self.lissa_repeats):
            h = b.clone()
            for _ in range(self.max_iter):
                index = None if m == prob.n else \
                    torch.randperm(prob.n, device=prob.theta.device)[:m]
                h = b + h - (prob.hvp(h, index) + self.damping * h) / scale
            total += h / scale
        return total / self.lissa_repeats


@dataclass
class InfluenceResult(LearnedResult):
    """What :class:`Influence` returns.

    Attributes
    ----------
    up_loss : torch.Tensor
        ``(n_test, n_train)``: ``I_up,loss(z_i, z_test)``, the derivative of the test loss
        with respect to the weight of training point ``i``. Removing point ``i`` changes
        the test loss by about ``-up_loss[:, i] / n_train``.
    helpful, harmful : torch.Tensor
        ``(n_test, top_k)`` training indices: the most negative ``up_loss`` first (their
        removal raises the test loss most), the most positive first.
    self_influence : torch.Tensor or None
        ``(n_train,)``: ``I_up,loss(z_i, z_i)`` (<= 0 for a positive definite H); the most
        negative are the most influential on themselves (candidates for mislabels).
    pert_loss : torch.Tensor or None
        ``(n_test, n_train, *input_shape)``: ``I_pert,loss(z_i, z_test)``.
    """

    up_loss: torch.Tensor
    helpful: torch.Tensor
    harmful: torch.Tensor
    self_influence: torch.Tensor | None = None
    pert_loss: torch.Tensor | None = None


@register("learned", "influence",
          paper="Koh, P. W. and Liang, P. Understanding Black-box Predictions via Influence "
                "Functions. ICML 2017",
          test_params={"solver": "exact", "top_k": 3})
class Influence(InfluenceSolver):
    """Influence functions: how each training point moves each test point's loss.

    ``up_loss[t, i] = -grad L(z_t)^T H^{-1} grad L(z_i)`` (Koh & Liang's
    ``I_up,loss``), the derivative of test point ``t``'s loss with respect to the weight
    of training point ``i`` in the objective ``(1/n) sum_i L(z_i) + (l2/2) ||theta||^2``
    (``L`` the cross-entropy, ``H`` that objective's Hessian plus ``damping``). Convention:
    removing point ``i`` changes the test loss by about ``-up_loss[t, i] / n``; negative
    values are helpful points, positive harmful ones. Gradients and Hessians are taken with
    respect to the parameters of ``layers`` only (default: every parameter); for a network,
    the last linear layer (:func:`last_linear`) is the usual choice, as in the paper's
    image experiments. Call: ``influence(model, train, x_test=..., y_test=...,
    self_influence=False, pert_loss=False)``; ``pert_loss`` holds ``n_test x n_train``
    input-shaped gradients, so ask for it only on small problems; ``self_influence`` solves
    ``H^{-1} grad L(z_i)`` for every training point (cheap with ``"exact"``, one solve per
    point with ``"cg"`` or ``"lissa"``).

    Parameters
    ----------
    solver : {"exact", "cg", "lissa"}
        How ``H^{-1} v`` is computed: ``"exact"`` builds the dense Hessian with
        :func:`torch.func.hessian` (at most 6000 parameters) and solves it in float64;
        ``"cg"`` runs conjugate gradients on Hessian-vector products (needs a positive
        definite damped Hessian); ``"lissa"`` runs the stochastic LiSSA recursion on
        minibatch Hessians.
    damping : float
        Added to the Hessian's diagonal (Koh & Liang damp the non-convex networks' Hessian
        this way; 0 is exact for a convex model with ``l2 > 0``).
    layers : tuple of str, optional
        Layer (module) or parameter names (e.g. ``("classifier",)`` or ``("6.weight",)``)
        whose parameters are theta; None takes every parameter.
    l2 : float
        L2 strength of the training objective, ``(l2/2) ||theta||^2`` beside the mean loss:
        the Hessian includes ``l2 I``. Give the value the model was trained with.
    batch_size : int
        Training points per chunk of gradients and Hessian products (and LiSSA's minibatch).
    max_iter : int
        Conjugate-gradient iterations, or LiSSA recursion depth.
    tol : float
        Relative residual at which conjugate gradients stop.
    lissa_scale : float, optional
        LiSSA's scale (must exceed the damped Hessian's largest eigenvalue); None takes
        twice the one found by 20 power iterations.
    lissa_repeats : int
        Independent LiSSA estimates averaged.
    top_k : int
        How many helpful and harmful training points to list per test point.

    References
    ----------
    .. [1] Koh, P. W. and Liang, P. Understanding Black-box Predictions via Influence
       Functions. ICML 2017.
    .. [2] Agarwal, N., Bullins, B. and Hazan, E. Second-Order Stochastic Optimization for
       Machine Learning in Linear Time. JMLR 2017 (LiSSA).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits().subset(range(300)), load_digits(split="test")
    >>> r = Influence(layers=("classifier",), damping=0.01, top_k=3)(
    ...     model, train, x_test=test.x[:2], y_test=test.y[:2])
    >>> tuple(r.up_loss.shape), tuple(r.helpful.shape)
    ((2, 300), (2, 3))
    >>> bool(r.up_loss[0, r.helpful[0, 0]] <= r.up_loss[0].min())
    True
    """

    top_k: int = param(10, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
             self_influence: bool = False, pert_loss: bool = False,
             **call: Any) -> InfluenceResult:
        if call:
            raise InputError(f"unknown call arguments {sorted(call)}; Influence takes x_test, "
                             "y_test, self_influence, pert_loss")
        prob = self._problem(model, data)
        xt, yt = self._test_data(prob, data, x_test, y_test)
        ft = prob.features(xt)
        meta: dict[str, Any] = {"method": "influence", **self.get_params(),
                                "parameters": prob.size, "n_train": prob.n,
                                "head": prob.head is not None}
        chunks = prob.chunks()
        with progress_bar(len(chunks) * (2 if self_influence or pert_loss else 1) + 1,
                          "influence") as bar:
            bar.step("H^-1 grad L(z_test)")
            hess = self._damped_hessian(prob) if self.solver == "exact" else None
            s_test = self._inverse(prob, prob.grads(ft, yt), meta, hess)
            bar.advance()
            up = prob.theta.new_zeros(len(xt), prob.n)
            for k, sl in enumerate(chunks):
                bar.step(f"training chunk {k + 1}/{len(chunks)}")
                up[:, sl] = -(s_test @ prob.grads(prob.x[sl], prob.y[sl]).T)
                bar.advance()
            selfs = perts = None
            if self_influence:
                selfs = prob.theta.new_zeros(prob.n)
            if pert_loss:
                perts = prob.theta.new_zeros(len(xt), prob.n, *prob.raw.shape[1:])
            if self_influence or pert_loss:
                for k, sl in enumerate(chunks):
                    bar.step(f"self/pert chunk {k + 1}/{len(chunks)}")
                    if selfs is not None:
                        g = prob.grads(prob.x[sl], prob.y[sl])
                        selfs[sl] = -(g * self._inverse(prob, g, meta, hess)).sum(1)
                    if perts is not None:
                        perts[:, sl] = -prob.input_grads(prob.raw[sl], prob.y[sl],
                                                         s_test).transpose(0, 1)
                    bar.advance()
        k = min(self.top_k, prob.n)
        order = torch.argsort(up, dim=1, stable=True)
        harmful = torch.argsort(-up, dim=1, stable=True)[:, :k]
        return InfluenceResult(up_loss=up.detach(), helpful=order[:, :k], harmful=harmful,
                               self_influence=None if selfs is None else selfs.detach(),
                               pert_loss=None if perts is None else perts.detach(), meta=meta)

    @classmethod
    def common_call(cls, method: Learned, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> LearnedResult:
        """Influence of the 20 tiny images on 3 of them, over the last linear layer."""
        if method.layers is None:
            method = type(method)(**{**method.get_params(), "layers": (last_linear(model),)})
        return method(model, data, seed=seed, x_test=data.x[:3], y_test=data.y[:3],
                      self_influence=True)


def influence(model: nn.Module, train: ArrayDataset, x_test: torch.Tensor,
              y_test: torch.Tensor, *, self_influence: bool = False, pert_loss: bool = False,
              seed: int | None = 0, **hyperparameters: Any) -> InfluenceResult:
    """Function twin of :class:`Influence`: ``influence(model, train, x_test, y_test,
    layers=..., solver=...)``."""
    return Influence(**hyperparameters)(model, train, seed=seed, x_test=x_test, y_test=y_test,
                                        self_influence=self_influence, pert_loss=pert_loss)
