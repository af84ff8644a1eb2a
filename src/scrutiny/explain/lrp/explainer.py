"""Layer-wise Relevance Propagation: the LRP explainer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scrutiny.errors import InputError, NotDifferentiableError, UnsupportedModelError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.explain.lrp.canonizers import canonize
from scrutiny.explain.lrp.rules import (
    RULES,
    Rule,
    check_alpha_beta,
    epsilon_stabilizer,
    exact,
    make_rule,
    propagate,
)
from scrutiny.models.layers import Add
from scrutiny.params import param
from scrutiny.registry import register

#: Layers linear in their input: relevance is redistributed by a rule.
LINEAR_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
#: Layers relevance passes through unchanged (reshaped to the input's shape).
PASS_LAYERS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.Identity)
MAXPOOL_LAYERS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_SUPPORTED = LINEAR_LAYERS + PASS_LAYERS + MAXPOOL_LAYERS + (Add,)
MAXPOOL_MODES: tuple[str, ...] = ("winner", "proportional")
PRECISIONS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32}


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(dim=1)


def _x_times_w(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x * w


def _check_rules(name: str, rules: object) -> None:
    if not isinstance(rules, Mapping):
        raise InputError(f"{name} must be a dict {{layer name or type: rule}}, got "
                         f"{type(rules).__name__}")
    for key in rules:
        if not isinstance(key, str) or not key:
            raise InputError(f"{name} keys must be layer names or type names, got {key!r}")


class _Call:
    """One forward call of a supported layer, and its relevance backward."""

    def __init__(self, key: str, module: nn.Module, rule: Rule | None, inputs: list[torch.Tensor],
                 output: torch.Tensor, lrp: LRP, records: dict[str, dict[str, torch.Tensor]]):
        self.key, self.module, self.rule, self.lrp = key, module, rule, lrp
        self.inputs, self.output, self.records = inputs, output, records

    def backward(self, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m, a = self.module, self.inputs[0]
        zero = a.new_zeros(a.shape[0])
        bias, stab = zero, zero
        if isinstance(m, LINEAR_LAYERS):
            r_in, bias, stab = self._linear(m, a, r)
            rels: tuple[torch.Tensor, ...] = (r_in,)
        elif isinstance(m, PASS_LAYERS):
            rels = (r.reshape(a.shape),)
        elif isinstance(m, MAXPOOL_LAYERS):
            r_in, stab = self._maxpool(m, a, r)
            rels = (r_in,)
        else:  # Add: split in proportion to the summands
            z = self.output
            d = epsilon_stabilizer(self.lrp.epsilon)(z) if self.lrp.epsilon > 0 else exact(z)
            nonzero = d != 0
            s = torch.where(nonzero, r / torch.where(nonzero, d, 1.0), 0.0)
            rels = tuple(t * s for t in self.inputs)
            stab = _per_sample((d - z) * s + torch.where(nonzero, 0.0, r))
        self.records[self.key] = {
            "in": sum(_per_sample(t) for t in rels), "out": _per_sample(r), "bias": bias,
            "stabilizer": stab}
        return rels

    def _linear(self, m: nn.Module, a: torch.Tensor, r: torch.Tensor):
        assert self.rule is not None
        if isinstance(m, nn.Linear):
            return propagate(self.rule, lambda u, w: F.linear(u, w), a, m.weight, m.bias, r)
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            b = None if m.bias is None else m.bias.view(-1, *([1] * (r.dim() - 2)))
            return propagate(self.rule, lambda u, w: m._conv_forward(u, w, None), a, m.weight, b, r)
        one = torch.ones((), dtype=a.dtype, device=a.device)  # pooling: implicit positive weight
        return propagate(self.rule, lambda u, w: w * m.forward(u), a, one, None, r)

    def _maxpool(self, m: nn.Module, a: torch.Tensor, r: torch.Tensor):
        with torch.enable_grad():
            u = a.detach().requires_grad_(True)
            if self.lrp.maxpool == "winner":
                (g,) = torch.autograd.grad(m.forward(u), u, grad_outputs=r)
                return g, a.new_zeros(a.shape[0])
            if m.dilation not in (1, (1,) * (a.dim() - 2)):
                raise InputError(f"maxpool='proportional' does not support dilation ({self.key!r})")
            pool = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[a.dim()]
            z = pool(u, m.kernel_size, m.stride, m.padding, m.ceil_mode)
        nonzero = z != 0
        s = torch.where(nonzero, r / torch.where(nonzero, z.detach(), 1.0), 0.0)
        (g,) = torch.autograd.grad(z, u, grad_outputs=s)
        return a * g, _per_sample(torch.where(nonzero, 0.0, r))


class _Relevance(torch.autograd.Function):
    """Identity in the forward pass; the layer's LRP rule in the backward pass."""

    @staticmethod
    def forward(ctx, call: _Call, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.call = call
        return call.output.clone()

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        return (None, *ctx.call.backward(r))


@register("explainer", "lrp", paper="Bach, Binder, Montavon, Klauschen, Mueller, Samek. On "
          "pixel-wise explanations for non-linear classifier decisions by layer-wise relevance "
          "propagation. PLoS ONE 2015", test_params={"batch_size": 2})
class LRP(Explainer):
    """Layer-wise Relevance Propagation with per-layer rules (a composite).

    The relevance of the explained output, ``R = f_target(x)`` (all other
    logits 0), is propagated from the output to the input layer by layer.
    Each layer linear in its input (Linear, ConvNd, average and adaptive
    average pooling) redistributes the relevance of its outputs with its rule:

    * ``"epsilon"``: ``R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j``;
    * ``"z"``: the same with ``eps = 0`` (LRP-0; equals gradient x input);
    * ``"alphabeta"``: ``sum_j (alpha (a_i w_ij)^+ / z_j^+ - beta (a_i w_ij)^- / z_j^-) R_j``
      with ``alpha - beta = 1`` (Bach et al.; the bias's positive/negative part joins
      ``z_j^+`` / ``z_j^-``);
    * ``"zplus"``: alpha=1, beta=0 (for inputs >= 0: ``a_i w_ij^+ / sum_i a_i w_ij^+``);
    * ``"gamma"``: weights and bias ``w + gamma w^+`` (Montavon et al. 2019);
    * ``"zbox"`` (z^B): for the first layer, with inputs bounded in
      ``[l, h]``: ``(a_i w_ij - l_i w_ij^+ - h_i w_ij^-) / sum_i (...)``. The bounds
      default to the model's bounds mapped through its normalisation.

    ReLU, Flatten, Dropout and Identity pass relevance through unchanged.
    MaxPool is winner-take-all (``maxpool="winner"``, the relevance of a window
    goes to its maximum, as the gradient routes it) or proportional to the
    activations in the window (``"proportional"``). A residual sum written with
    :class:`scrutiny.models.layers.Add` splits the relevance in proportion to
    the summands (epsilon-stabilized with ``epsilon``). BatchNorm is merged
    into the preceding Linear/Conv layer on a deep copy of the model (the
    user's model is never modified). Any other layer type raises InputError.

    Conservation is accounted for explicitly: at every layer
    ``sum(R_in) + bias share + stabilizer share = sum(R_out)`` per sample, where
    the bias share is ``sum_j b_j R_j / d_j`` (the relevance a bias keeps for
    itself; 0 for the zbox rule, which leaves the bias out) and the
    stabilizer share is ``sum_j (d_j - z_j) R_j / d_j`` plus the relevance of any
    output whose denominator is exactly 0. On a bias-free ReLU network with the
    z rule (or z+, when no denominator vanishes) both shares are 0 and
    ``sum(attributions) = f_target(x)`` at every layer.

    Parameters
    ----------
    rule : str or dict
        Default rule of the linear layers: one of ``"epsilon"``, ``"z"``,
        ``"zplus"``, ``"alphabeta"``, ``"gamma"``, ``"zbox"``, or a dict
        ``{"rule": name, **overrides}`` (e.g. ``{"rule": "epsilon", "epsilon": 0.25}``).
    rules : dict, optional
        The composite: ``{key: rule}`` where ``key`` is a layer name (a
        container's name covers the layers inside it; the longest matching
        name wins) or a layer type name such as ``"Conv2d"``. Names beat types,
        types beat ``rule``. Example: ``{"Conv2d": "zplus", "classifier": "epsilon"}``.
    epsilon : float
        Stabilizer of the epsilon rule (and of the ``Add`` split).
    alpha : float
        Weight of the positive part in the alpha-beta rule (``alpha - beta = 1``).
    beta : float
        Weight of the negative part in the alpha-beta rule (``beta >= 0``).
    gamma : float
        Weight of the positive part in the gamma rule.
    maxpool : {"winner", "proportional"}
        How MaxPool layers redistribute relevance.
    precision : {"float64", "float32"}
        Floating type of the internal computation (float64 keeps conservation
        to ~1e-12; the attributions come back in ``x``'s dtype).
    batch_size : int
        Samples per forward/backward pass.

    Notes
    -----
    ``Explanation.meta`` holds, per layer call (keys in forward order in
    ``meta["layers"]``), ``(N,)`` tensors: ``layer_relevance`` (sum of the
    relevance at the layer's input), ``layer_relevance_out`` (at its output),
    ``bias_relevance`` and ``stabilizer_relevance``; their totals
    ``bias_relevance_total`` and ``stabilizer_relevance_total``; the merged
    BatchNorm names ``merged_batchnorm``; and ``conservation_residual`` =
    ``sum(attributions) + bias total + stabilizer total - f_target(x)``,
    which is ~0 unless the model's forward uses functional operations LRP
    cannot see (a functional pooling, or a functional ``x + y`` residual in a
    forward ``torch.fx`` cannot trace: a traceable one is rewritten to
    :class:`Add` by :func:`~scrutiny.explain.lrp.canonizers.residual_adds`).

    Shortfalls: layers are found through module hooks, so operations written
    functionally in ``forward`` are followed by plain autograd (reshapes,
    ``torch.flatten``, ``torch.cat`` and functional ReLU are fine; a
    functional sum or pooling is not relevance-aware: use :class:`Add` and
    pooling modules). Only BatchNorm directly after a Linear/Conv is supported.

    References
    ----------
    .. [1] Bach, Binder, Montavon, Klauschen, Mueller, Samek. "On pixel-wise
       explanations for non-linear classifier decisions by layer-wise relevance
       propagation". PLoS ONE 10(7), 2015.
    .. [2] Montavon, Binder, Lapuschkin, Samek, Mueller. "Layer-wise relevance
       propagation: an overview". In Explainable AI, LNCS 11700, 2019.
    .. [3] Montavon, Lapuschkin, Binder, Samek, Mueller. "Explaining nonlinear
       classification decisions with deep Taylor decomposition". Pattern
       Recognition 65, 2017 (z+ and z^B).
    .. [4] Anders, Neumann, Samek, Mueller, Lapuschkin. "Software for dataset-wide
       XAI: from local explanations to global insights with Zennit, CoRelAy, and
       ViRelAy". arXiv:2106.13200, 2021.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> model = pretrained("digits-cnn", progress=False)
    >>> e = LRP(rule="epsilon", rules={"features.0": "zbox"})(model, x)
    >>> e.attributions.shape
    torch.Size([4, 1, 8, 8])
    >>> total = e.attributions.sum((1, 2, 3)) + e.meta["bias_relevance_total"]
    >>> bool(((total + e.meta["stabilizer_relevance_total"] - e.outputs).abs() < 1e-4).all())
    True
    """

    #: No rule for attention, layer norm or GELU: a vision transformer is refused.
    architectures = ("resnet",)
    rule: str | dict[str, Any] = param("epsilon")
    rules: dict[str, str | dict[str, Any]] | None = param(None, check=_check_rules)
    epsilon: float = param(1e-6, nonneg=True)
    alpha: float = param(2.0, kind=float)
    beta: float = param(1.0, nonneg=True)
    gamma: float = param(0.25, nonneg=True)
    maxpool: str = param("winner", choices=MAXPOOL_MODES)
    precision: str = param("float64", choices=tuple(PRECISIONS))
    batch_size: int = param(128, integer=True, positive=True)

    def _post_init(self) -> None:
        check_alpha_beta(self.alpha, self.beta)
        hyper = {"epsilon": self.epsilon, "alpha": self.alpha, "beta": self.beta,
                 "gamma": self.gamma}
        for spec in [self.rule, *(self.rules or {}).values()]:
            make_rule(spec, **hyper)

    @property
    def linear_oracle(self):
        """``x * w`` on a linear model when its rule is epsilon (eps -> 0) or z."""
        spec = self.rule if not self.rules else None
        name = spec.get("rule") if isinstance(spec, Mapping) else spec
        return _x_times_w if name in ("epsilon", "z") else None

    # ------------------------------------------------------------ composite
    def _spec_for(self, name: str, module: nn.Module) -> Any:
        rules = self.rules or {}
        hits = [k for k in rules if k == name or name.startswith(k + ".")]
        if hits:
            return rules[max(hits, key=len)]
        if type(module).__name__ in rules:
            return rules[type(module).__name__]
        return self.rule

    def _check_keys(self, net: nn.Module) -> None:
        names = {n for n, _ in net.named_modules() if n}
        types = {type(m).__name__ for m in net.modules()} | {c.__name__ for c in _SUPPORTED}
        for key in self.rules or {}:
            if key not in names and key not in types and not any(
                    n.startswith(key + ".") for n in names):
                raise InputError(f"rules key {key!r} is neither a layer name nor a layer type of "
                                 f"the model; layer names: {', '.join(sorted(names))}")

    # ------------------------------------------------------------ explain
    def _explain(self, model, x, target):
        dtype = PRECISIONS[self.precision]
        net, merged = canonize(model.module, model._norm(x[:1].to(dtype)), dtype)
        self._check_keys(net)
        leaves = [(n, m) for n, m in net.named_modules() if not list(m.children())]
        for n, m in leaves:
            if not isinstance(m, _SUPPORTED):
                raise UnsupportedModelError(
                                 f"LRP does not support layer {n!r} ({type(m).__name__}); "
                                 f"supported: {', '.join(sorted(c.__name__ for c in _SUPPORTED))}, "
                                 "and BatchNorm after a Linear/Conv layer")
            if isinstance(m, MAXPOOL_LAYERS) and m.return_indices:
                raise InputError(f"LRP does not support MaxPool with return_indices ({n!r})")
        lo, hi = model.bounds
        attrs: list[torch.Tensor] = []
        per_batch: list[dict[str, dict[str, torch.Tensor]]] = []
        order: list[str] = []
        outputs: list[torch.Tensor] = []
        # at least one (possibly empty) chunk: an empty batch gets its shapes from the model
        for start in range(0, max(len(x), 1), self.batch_size):
            xb = model._norm(x[start:start + self.batch_size].to(dtype)).detach()
            tb = target[start:start + self.batch_size]
            bounds = (model._norm(torch.full_like(xb, lo)), model._norm(torch.full_like(xb, hi)))
            hyper = {"epsilon": self.epsilon, "alpha": self.alpha, "beta": self.beta,
                     "gamma": self.gamma, "bounds": bounds}
            records: dict[str, dict[str, torch.Tensor]] = {}
            calls: dict[str, int] = {}
            handles = []

            def hook_for(name: str, rule: Rule | None, records=records, calls=calls,
                         first=start == 0):
                def hook(mod, inputs, output):
                    if not isinstance(output, torch.Tensor) or not all(
                            isinstance(t, torch.Tensor) for t in inputs):
                        raise InputError(f"LRP needs tensor inputs and outputs at {name!r}")
                    if isinstance(mod, Add) and any(t.shape != output.shape for t in inputs):
                        raise InputError(f"Add {name!r}: LRP needs summands of the output's shape "
                                         "(no broadcasting)")
                    k = calls.get(name, 0)
                    calls[name] = k + 1
                    key = name if k == 0 else f"{name}#{k}"
                    if first:
                        order.append(key)
                    call = _Call(key, mod, rule, [t.detach() for t in inputs], output.detach(),
                                 self, records)
                    return _Relevance.apply(call, *inputs)
                return hook

            try:
                for n, m in leaves:
                    rule = (make_rule(self._spec_for(n, m), **hyper)
                            if isinstance(m, LINEAR_LAYERS) else None)
                    handles.append(m.register_forward_hook(hook_for(n, rule)))
                xb.requires_grad_(True)
                with torch.enable_grad():
                    out = net(xb)
                if not isinstance(out, torch.Tensor) or out.dim() != 2:
                    raise InputError("the model must return logits of shape (N, K)")
                if not out.requires_grad:
                    raise NotDifferentiableError("the model's output does not depend "
                                                 "differentiably on its input")
                f = out.gather(1, tb[:, None])
                r0 = torch.zeros_like(out).scatter(1, tb[:, None], f.detach())
                (g,) = torch.autograd.grad(out, xb, grad_outputs=r0)
            finally:
                for h in handles:
                    h.remove()
            attrs.append(g.detach())
            outputs.append(f.detach()[:, 0])
            per_batch.append(records)
        attr = torch.cat(attrs)
        fx = torch.cat(outputs)
        meta: dict[str, Any] = {"layers": order, "merged_batchnorm": merged}
        for field, key in (("in", "layer_relevance"), ("out", "layer_relevance_out"),
                           ("bias", "bias_relevance"), ("stabilizer", "stabilizer_relevance")):
            # in the internal precision, so the accounting is exact
            meta[key] = {k: torch.cat([rec[k][field] for rec in per_batch]) for k in order}
        bias_total = sum((meta["bias_relevance"][k] for k in order), torch.zeros_like(fx))
        stab_total = sum((meta["stabilizer_relevance"][k] for k in order), torch.zeros_like(fx))
        meta["bias_relevance_total"] = bias_total
        meta["stabilizer_relevance_total"] = stab_total
        meta["conservation_residual"] = _per_sample(attr) + bias_total + stab_total - fx
        return attr.to(x.dtype), meta


lrp = function_twin(LRP, "lrp")

__all__ = ["LRP", "MAXPOOL_MODES", "RULES", "lrp"]
