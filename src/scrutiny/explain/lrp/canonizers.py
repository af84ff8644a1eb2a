"""Canonizers: rewrite a copy of a model into an LRP-friendly equivalent.

The user's model is never modified: :func:`canonize` deep-copies it first.

References
----------
.. [1] Anders, Neumann, Samek, Mueller, Lapuschkin. "Software for dataset-wide
   XAI: from local explanations to global insights with Zennit, CoRelAy, and
   ViRelAy". arXiv:2106.13200, 2021 (canonizers).
.. [2] Montavon, Binder, Lapuschkin, Samek, Mueller. "Layer-wise relevance
   propagation: an overview". LNCS 11700, 2019 (batch normalization is merged
   into the adjacent linear layer).
.. [3] Binder, Bockmayr, Haegele, Wienert, Heim, Hellweg, Ishii, Stenzinger,
   Hocke, Denkert, Mueller, Klauschen. "Morphological and molecular breast cancer
   profiling through explainable machine learning". Nature Machine
   Intelligence 3, 2021 (relevance of a residual sum split in proportion to the
   summands).
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from scrutiny.errors import InputError
from scrutiny.models.layers import Add

_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


@torch.no_grad()
def merge_batchnorm(linear: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (eval mode, running statistics) into ``linear`` in place.

    ``bn(linear(a)) = s * (W a + b - mean) + beta`` with ``s = gamma / sqrt(var + eps)``
    becomes ``W' a + b'`` with ``W' = s W`` (per output channel) and
    ``b' = s (b - mean) + beta``.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise InputError(f"{type(bn).__name__} without running statistics cannot be merged "
                         "(track_running_stats=False)")
    scale = (bn.running_var + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    w = linear.weight
    linear.weight.copy_(w * scale.view(-1, *([1] * (w.dim() - 1))))
    old_bias = linear.bias if linear.bias is not None else torch.zeros_like(shift)
    new_bias = old_bias * scale + shift
    if linear.bias is None:
        linear.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        linear.bias.copy_(new_bias)


def _adjacent_pairs(module: nn.Module, x: torch.Tensor) -> list[tuple[str, str]]:
    """(linear name, batchnorm name) pairs where the batchnorm consumes exactly the
    tensor the linear layer produced, found by one traced forward pass."""
    produced: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []

    def hook(name: str, mod: nn.Module):
        def fn(_m, inputs, out):
            if isinstance(mod, _BATCHNORM) and inputs and id(inputs[0]) in produced:
                pairs.append((produced[id(inputs[0])], name))
            if isinstance(mod, _LINEAR):
                produced[id(out)] = name
        return fn

    keep: list[torch.Tensor] = []  # keep outputs alive so ids stay unique during the pass
    for name, mod in module.named_modules():
        if isinstance(mod, _LINEAR + _BATCHNORM):
            handles.append(mod.register_forward_hook(hook(name, mod)))
            handles.append(mod.register_forward_hook(lambda _m, _i, o: keep.append(o)))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return pairs


_ADDS = (operator.add, operator.iadd, torch.add)


def residual_adds(module: nn.Module, x: torch.Tensor) -> nn.Module:
    """``module`` with every sum of two tensors of the same shape written in its ``forward``
    (``out + self.shortcut(x)``: a residual connection) done by an
    :class:`~scrutiny.models.layers.Add` module, so that LRP splits the relevance in
    proportion to the summands (zennit's ResNet canonizer does the same); ``module``
    itself when it has no such sum or cannot be traced by ``torch.fx`` (then LRP follows
    any functional sum with autograd's rule, and ``conservation_residual`` shows it).
    The layer names are kept (``layer1.0.conv1``); the new ones are ``add``, ``add_1``...
    """
    try:
        gm = torch.fx.symbolic_trace(module)
        ShapeProp(gm).propagate(x)
    except Exception:  # noqa: BLE001 - control flow, non-tensor inputs: leave it as it is
        return module
    n = 0
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADDS
                  or node.op == "call_method" and node.target in ("add", "add_"))
        args = node.args[:2]
        if not is_add or len(node.args) != 2 or node.kwargs or not all(
                isinstance(a, torch.fx.Node) and "tensor_meta" in a.meta for a in args):
            continue
        if any(a.meta["tensor_meta"].shape != node.meta["tensor_meta"].shape for a in args):
            continue  # a broadcast (a bias, position embeddings): not a residual connection
        name = "add"
        while hasattr(gm, name):
            n += 1
            name = f"add_{n}"
        n += 1
        gm.add_submodule(name, Add())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, tuple(args))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    if n == 0:
        return module
    gm.graph.lint()
    gm.recompile()
    return gm


def canonize(module: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``module`` in ``dtype`` with batch normalisation merged.

    Every BatchNorm that directly consumes the output of a Linear/Conv layer is
    folded into it and replaced by ``nn.Identity``; in-place activations are
    made out-of-place (LRP needs the layer inputs). A BatchNorm that follows
    anything else raises :class:`InputError`.

    Returns
    -------
    (copy, merged)
        The canonized copy and the names of the merged BatchNorm layers.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU()).eval()
    >>> x = torch.rand(1, 1, 5, 5)
    >>> copy_, merged = canonize(net, x, torch.float64)
    >>> merged, type(net[1]).__name__, type(copy_[1]).__name__
    (['1'], 'BatchNorm2d', 'Identity')
    >>> bool(torch.allclose(copy_(x.double()).float(), net(x), atol=1e-6))
    True
    """
    net = copy.deepcopy(module).to(dtype)
    for mod in net.modules():
        if getattr(mod, "inplace", False) is True:
            mod.inplace = False
    net = residual_adds(net, x.to(dtype))
    if not any(isinstance(m, _BATCHNORM) for m in net.modules()):
        return net, []
    pairs = _adjacent_pairs(net, x.to(dtype))
    mods = dict(net.named_modules())
    merged: list[str] = []
    used: set[str] = set()
    for lin_name, bn_name in pairs:
        bn = mods[bn_name]
        if bn_name in merged or lin_name in used:
            raise InputError(f"LRP cannot merge {bn_name!r} into {lin_name!r}: the layer or the "
                             "BatchNorm is used more than once")
        used.add(lin_name)
        merge_batchnorm(mods[lin_name], bn)
        _set_submodule(net, bn_name, nn.Identity())
        merged.append(bn_name)
    left = [n for n, m in net.named_modules() if isinstance(m, _BATCHNORM)]
    if left:
        raise InputError(f"LRP merges BatchNorm into the Linear/Conv layer right before it; "
                         f"{', '.join(map(repr, left))} does not follow one")
    return net, merged
