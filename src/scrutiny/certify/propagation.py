"""The bound-propagation core shared by IBP and CROWN.

A :class:`Network` is a chain of operations read from a model's module tree:
affine ones (Linear, Conv2d, average pooling, BatchNorm in eval mode, the
model wrapper's normalisation, Flatten) and the two piecewise-linear ones
(ReLU, MaxPool2d). Each affine operation knows its forward map, ``|W| r`` (for
interval arithmetic in centre-radius form) and its transpose ``A -> A W`` (for
backward linear bound propagation); each piecewise-linear one knows its
interval image and its linear relaxation.

A :class:`Network` is compiled once per model (:func:`compile_network`,
cached by the module, rebuilt when its structure changes) and holds
references to the model's modules, not copies of their numbers: every call
re-reads the weights (:meth:`Network.refresh`), so weights changed in place
between calls (training) are seen.

A leading dimension of 1 in ``A`` means the same coefficients for every
sample; it is broadcast at the first piecewise-linear op.

Linear bounds are always computed as *lower* bounds of ``A z + c`` (an upper
bound is minus the lower bound of ``-A z - c``), with ``A`` of shape
``(N, S, *shape)``: ``N`` samples, ``S`` specifications.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

from scrutiny.errors import InputError, UnsupportedModelError
from scrutiny.models.wrapper import TorchModel

SUPPORTED = ("Linear, Conv2d, ReLU, Flatten, AvgPool2d, AdaptiveAvgPool2d (integer ratio), "
             "MaxPool2d, BatchNorm1d/2d (eval mode, running statistics), Dropout, Identity")

#: Elements of the coefficient tensor ``A`` processed at once (memory budget of a chunk).
_CHUNK_ELEMENTS = 1 << 23

Interval = tuple[torch.Tensor, torch.Tensor]


def _flat(t: torch.Tensor, dims: int) -> torch.Tensor:
    return t.reshape(*t.shape[:dims], -1)


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """Images ``(B, C, H, W)`` stored channels-last (a no-op when they are): the same
    values, but on the CPU oneDNN's convolutions and max pooling run several times faster
    on them (measured 2.7x and 30x on the digits CNN's layers), and their outputs keep the
    layout. Used on the forward (interval) path, for batches of more than one image. One
    channel: the strides are set to channels-last's (a view; ``contiguous`` would keep
    ambiguous ones, and the convolution's output, read as channels-first, would cost the next
    layer a layout copy)."""
    if t.dim() != 4 or len(t) < 2:
        return t
    t = t.contiguous(memory_format=torch.channels_last)
    if t.shape[1] == 1 and t.stride(1) != 1:
        t = t.as_strided(t.shape, (t.shape[2] * t.shape[3], 1, t.shape[3], 1))
    return t


class Op:
    """One operation of the chain; ``setup`` fixes its per-sample shapes."""

    affine: bool = True
    #: Each input feeds at most one output, with a coefficient of one sign (Flatten,
    #: per-channel scaling, non-overlapping average pooling): a linear function of the
    #: output has the same minimum over the op's interval image as over its input box.
    separable: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        self.in_shape = tuple(in_shape)
        self._ref = ref.new_zeros(())
        self.refresh()
        with torch.no_grad():
            out = self.forward(torch.zeros((1, *in_shape), device=ref.device, dtype=ref.dtype))
        self.out_shape = tuple(out.shape[1:])
        self._post_setup(ref)
        return self.out_shape

    def _post_setup(self, ref: torch.Tensor) -> None:
        pass

    def refresh(self) -> None:
        """Re-read the numbers this op takes from the model (weights, statistics) and what
        is derived from them; called at the start of every bounds call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:  # pragma: no cover
        raise NotImplementedError


class Affine(Op):
    """``x -> W x + b``; subclasses give ``forward``, ``abs_linear`` and ``transpose``."""

    bias: torch.Tensor  # (out_shape), the image of 0

    def _post_setup(self, ref: torch.Tensor) -> None:
        self._bias()

    def _bias(self) -> None:
        with torch.no_grad():
            z = self._ref.new_zeros((1, *self.in_shape))
            self.bias = self.forward(z)[0]

    def abs_linear(self, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``|W| r`` (no bias)."""
        raise NotImplementedError

    def transpose(self, a: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``A W`` for ``A`` of shape ``(M, *out_shape)``, giving ``(M, *in_shape)``."""
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        c, r = self.forward(mid), self.abs_linear(rad)
        return c - r, c + r

    def back(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A W, A b)`` for ``A`` of shape ``(N, S, *out_shape)``."""
        n, s = a.shape[:2]
        const = _flat(a, 2) @ self.bias.reshape(-1)
        return self.transpose(a.reshape(n * s, *self.out_shape)).reshape(n, s, *self.in_shape), const


class _Weighted(Affine):
    """An affine op whose weight and bias are those of a module, re-read by :meth:`refresh`
    (the op holds a weak reference to the module: the compiled network never keeps a
    model alive)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__(name)
        self._module = weakref.ref(module)
        self.w, self.b = module.weight.detach(), _detach(module.bias)

    def refresh(self) -> None:
        m = self._module()
        if m is None:  # pragma: no cover - the cache drops a network with its module
            raise InputError(f"layer {self.name!r}: its module no longer exists")
        self.w, self.b = m.weight.detach(), _detach(m.bias)
        self.w_abs = self.w.abs()
        self._halves()
        if self.out_shape:
            self._bias()

    def _halves(self) -> None:
        """``W / 2`` and ``|W| / 2`` for :meth:`interval` (halving is exact in floating point,
        so the bounds are those of the plain centre-radius form)."""
        self.w_half, self.w_abs_half = self.w * 0.5, self.w_abs * 0.5

    def _map(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The op's linear map with weight ``w`` and bias ``b``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x, self.w, self.b)

    def abs_linear(self, r: torch.Tensor) -> torch.Tensor:
        return self._map(r, self.w_abs, None)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        """Centre-radius form ``c = W (hi + lo) / 2 + b``, ``r = |W| (hi - lo) / 2`` with the
        halves folded into the weights (two elementwise passes and two allocations fewer)."""
        c = self._map(hi + lo, self.w_half, self.b)
        r = self._map(hi - lo, self.w_abs_half, None)
        low = c - r
        return low, c.add_(r)

    def _bias(self) -> None:
        """The image of 0: the bias on every output position (zero padding), no forward."""
        if self.b is None:
            self.bias = self.w.new_zeros(self.out_shape)
        else:
            self.bias = self.b.reshape(-1, *([1] * (len(self.out_shape) - 1))).expand(
                self.out_shape)


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


class LinearOp(_Weighted):

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if tuple(in_shape) != (self.w.shape[1],):
            raise InputError(f"layer {self.name!r} (Linear) expects flat inputs of "
                             f"{self.w.shape[1]} features, got per-sample shape {tuple(in_shape)}; "
                             "add a Flatten before it")
        return super().setup(in_shape, ref)

    def _map(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, w, b)

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        return a @ self.w


class ConvOp(_Weighted):
    """2-d convolution (also average pooling as a depthwise convolution)."""

    def __init__(self, name: str, module: nn.Conv2d, stride: tuple[int, int],
                 padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> None:
        super().__init__(name, module)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.output_padding = (0, 0)

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if len(in_shape) != 3:
            raise InputError(f"layer {self.name!r} (convolution/pooling) needs image inputs "
                             f"(C, H, W), got per-sample shape {tuple(in_shape)}")
        out = super().setup(in_shape, ref)
        k = self.w.shape[2:]
        self.output_padding = tuple(
            in_shape[1 + i] - ((out[1 + i] - 1) * self.stride[i] - 2 * self.padding[i]
                               + self.dilation[i] * (k[i] - 1) + 1) for i in range(2))
        return out

    def _map(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(_nhwc(x), w, b, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(a, self.w, None, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class ScaleOp(Affine):
    """Per-channel ``x * a + c`` (normalisation, BatchNorm in eval mode); ``source`` gives
    ``(a, c)`` and is called again by :meth:`refresh`."""

    separable = True

    def __init__(self, name: str, source: Callable[[], tuple[torch.Tensor, torch.Tensor]]
                 ) -> None:
        super().__init__(name)
        self.source = source
        self.refresh()

    def refresh(self) -> None:
        with torch.no_grad():
            scale, shift = self.source()
        self.a, self.c = scale.detach().flatten(), shift.detach().flatten()
        if self.out_shape:
            self.bias = self._view(self.c).expand(self.out_shape)

    def _view(self, t: torch.Tensor) -> torch.Tensor:
        if t.numel() == 1:
            return t.reshape(())
        return t.reshape(-1, *([1] * (len(self.in_shape) - 1)))

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if self.a.numel() > 1 and (not in_shape or in_shape[0] != self.a.numel()):
            raise InputError(f"layer {self.name!r} has {self.a.numel()} channels but its input "
                             f"has per-sample shape {tuple(in_shape)}")
        self.in_shape = tuple(in_shape)
        return super().setup(in_shape, ref)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._view(self.a) + self._view(self.c)

    def abs_linear(self, r: torch.Tensor) -> torch.Tensor:
        return r * self._view(self.a).abs()

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        return a * self._view(self.a)


class FlattenOp(Affine):
    separable = True

    def __init__(self, name: str, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__(name)
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if self.start_dim == 0:
            raise InputError(f"layer {self.name!r} flattens the batch dimension (start_dim=0)")
        return super().setup(in_shape, ref)

    def abs_linear(self, r: torch.Tensor) -> torch.Tensor:
        return self.forward(r)

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        return a.reshape(len(a), *self.in_shape)


class ReLUOp(Op):
    """ReLU with the triangle upper bound and a lower line of slope ``alpha``.

    ``relax`` gives per neuron ``(lower slope, upper slope, upper intercept,
    unstable)`` (the lower intercept is 0): stable neurons are exact; an
    unstable one (``l < 0 < u``) gets the upper line ``u (z - l) / (u - l)``
    and the lower line ``alpha z`` with ``alpha = 1 if u >= -l else 0``
    (CROWN's adaptive choice) or ``alpha = u / (u - l)`` (Fast-Lin); ``back``
    takes other lower slopes per specification (alpha-CROWN's, any in [0, 1]
    is sound).
    """

    affine = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return torch.relu(lo), torch.relu(hi)

    @staticmethod
    def relax(lo: torch.Tensor, hi: torch.Tensor, relaxation: str) -> tuple[torch.Tensor, ...]:
        active, unstable = lo >= 0, (lo < 0) & (hi > 0)
        width = torch.where(unstable, hi - lo, torch.ones_like(hi))
        up_slope = torch.where(unstable, hi / width, active.to(hi.dtype))
        up_icpt = torch.where(unstable, -hi * lo / width, torch.zeros_like(hi))
        if relaxation == "fastlin":
            low_slope = up_slope
        else:
            low_slope = torch.where(unstable, (hi >= -lo).to(hi.dtype), active.to(hi.dtype))
        unstable = _flat(unstable, 1)
        cols = unstable.any(dim=0).nonzero()[:, 0]
        return (_flat(low_slope, 1), _flat(up_slope, 1), _flat(up_icpt, 1), unstable, cols)

    @staticmethod
    def select(relax: tuple[torch.Tensor, ...], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The relaxation of the samples ``idx``."""
        low, up, icpt, unstable, cols = relax
        return low[idx], up[idx], icpt[idx], unstable[idx], cols

    @staticmethod
    def back(a: torch.Tensor, relax: tuple[torch.Tensor, ...], alpha: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` through the relaxation: the lower line where a coefficient is >= 0, the
        upper one where it is < 0. ``alpha`` ``(N, S, len(cols))``: lower slopes of the
        neurons ``cols`` (those unstable in some sample) per specification row
        (alpha-CROWN's; a neuron stable in a sample keeps its exact line there); default:
        the relaxation's. Only the columns ``cols`` need the sign test: elsewhere the
        neuron is stable in every sample and both lines are the same."""
        low, up, icpt, unstable, cols = relax
        af = _flat(a, 2)
        out = af * up.unsqueeze(1)
        if not len(cols):
            return out.reshape(*out.shape[:2], *a.shape[2:]), out.new_zeros(out.shape[:2])
        au = af[:, :, cols]
        lu, uu, iu = (t[:, cols].unsqueeze(1) for t in (low, up, icpt))
        if alpha is not None:
            lu = torch.where(unstable[:, cols].unsqueeze(1), alpha, lu)
        out[:, :, cols] = torch.where(au >= 0, au * lu, au * uu)
        const = (au.clamp(max=0) * iu).sum(-1)
        return out.reshape(*out.shape[:2], *a.shape[2:]), const


class MaxPoolOp(Op):
    """2-d max pooling (no padding or dilation) with DeepPoly's relaxation.

    In each window let ``i`` be the input with the largest lower bound. Lower
    line ``y >= x_i``; upper line ``y <= x_i`` when ``l_i >= u_j`` for every
    other ``j`` of the window (then ``y = x_i`` exactly), else the constant
    ``y <= max_j u_j``.
    """

    affine = False

    def __init__(self, name: str, kernel: tuple[int, int], stride: tuple[int, int]) -> None:
        super().__init__(name)
        self.kernel, self.stride = kernel, stride

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if len(in_shape) != 3:
            raise InputError(f"layer {self.name!r} (MaxPool2d) needs image inputs (C, H, W), got "
                             f"per-sample shape {tuple(in_shape)}")
        return super().setup(in_shape, ref)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(_nhwc(x), self.kernel, self.stride)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Interval:
        return self.forward(lo), self.forward(hi)

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, k*k, oh, ow)."""
        c, oh, ow = self.out_shape
        cols = F.unfold(t, self.kernel, stride=self.stride)
        return cols.reshape(len(t), c, -1, oh, ow)

    def relax(self, lo: torch.Tensor, hi: torch.Tensor, relaxation: str) -> tuple[torch.Tensor, ...]:
        lw, uw = self._windows(lo), self._windows(hi)
        lmax, idx = lw.max(dim=2)
        onehot = F.one_hot(idx, lw.shape[2]).movedim(-1, 2).to(torch.bool)
        others = uw.masked_fill(onehot, -math.inf).amax(dim=2)
        dominated = lmax >= others
        return onehot.to(lo.dtype), dominated, uw.amax(dim=2)

    @staticmethod
    def select(relax: tuple[torch.Tensor, ...], idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The relaxation of the samples ``idx``."""
        return tuple(t[idx] for t in relax)

    def back(self, a: torch.Tensor, relax: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        onehot, dominated, umax = relax
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        dom = dominated.unsqueeze(1)
        coef = pos + torch.where(dom, neg, torch.zeros_like(neg))          # on x_i
        n, s = coef.shape[:2]
        const = _flat(torch.where(dom, torch.zeros_like(neg), neg) * umax.unsqueeze(1), 2).sum(-1)
        cols = coef.unsqueeze(3) * onehot.unsqueeze(1)                     # (N, S, C, kk, oh, ow)
        c, h, w = self.in_shape
        cols = cols.reshape(n * s, c * onehot.shape[2], -1)
        out = F.fold(cols, (h, w), self.kernel, stride=self.stride)
        return out.reshape(n, s, *self.in_shape), const


# ------------------------------------------------------------------ reading a model
def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Pool(ConvOp):
    """Average pooling as a depthwise convolution with a constant weight (set by ``setup``).

    Non-overlapping windows that tile the input (stride = kernel, no padding) are
    :attr:`~Op.separable` and transpose by repeating each coefficient over its window.
    """

    def refresh(self) -> None:
        self.w_abs = getattr(self, "w", None)  # the weight is >= 0 and never changes
        if self.w_abs is not None:
            self._halves()

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        out = super().setup(in_shape, ref)
        k = tuple(self.w.shape[2:])
        self.separable = (tuple(self.stride) == k and tuple(self.padding) == (0, 0)
                          and all(out[1 + i] * k[i] == in_shape[1 + i] for i in range(2)))
        return out

    def transpose(self, a: torch.Tensor) -> torch.Tensor:
        if not self.separable:
            return super().transpose(a)
        (kh, kw), (m, c, oh, ow) = self.w.shape[2:], a.shape
        rep = (a * self.w.reshape(-1)[0])[:, :, :, None, :, None].expand(m, c, oh, kh, ow, kw)
        return rep.reshape(m, c, oh * kh, ow * kw)


class _AdaptiveAvgPool(_Pool):
    def __init__(self, name: str, output_size) -> None:
        Op.__init__(self, name)
        self.output_size = output_size
        self.b = None

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if len(in_shape) != 3:
            raise InputError(f"layer {self.name!r} (AdaptiveAvgPool2d) needs image inputs "
                             f"(C, H, W), got per-sample shape {tuple(in_shape)}")
        c, h, w = in_shape
        osz = self.output_size if isinstance(self.output_size, tuple | list) else \
            (self.output_size, self.output_size)
        oh, ow = (h if osz[0] is None else osz[0]), (w if osz[1] is None else osz[1])
        if h % oh or w % ow:
            raise InputError(f"layer {self.name!r} (AdaptiveAvgPool2d) maps {h}x{w} to {oh}x{ow}, "
                             "not an integer ratio; only integer ratios are supported")
        k = (h // oh, w // ow)
        self.w = torch.full((c, 1, *k), 1.0 / (k[0] * k[1]), device=ref.device, dtype=ref.dtype)
        self.stride, self.padding, self.dilation, self.groups = k, (0, 0), (1, 1), c
        return super().setup(in_shape, ref)


class _AvgPool(_Pool):
    def __init__(self, name: str, m: nn.AvgPool2d) -> None:
        Op.__init__(self, name)
        self.kernel, self.b = _pair(m.kernel_size), None
        self.stride = _pair(m.stride if m.stride is not None else m.kernel_size)
        self.padding, self.dilation = _pair(m.padding), (1, 1)
        self.divisor = m.divisor_override or self.kernel[0] * self.kernel[1]
        if m.ceil_mode or (not m.count_include_pad and self.padding != (0, 0)):
            raise InputError(f"layer {name!r} (AvgPool2d): ceil_mode=True and "
                             "count_include_pad=False with padding are not supported")

    def setup(self, in_shape: tuple[int, ...], ref: torch.Tensor) -> tuple[int, ...]:
        if len(in_shape) != 3:
            raise InputError(f"layer {self.name!r} (AvgPool2d) needs image inputs (C, H, W), got "
                             f"per-sample shape {tuple(in_shape)}")
        c = in_shape[0]
        self.w = torch.full((c, 1, *self.kernel), 1.0 / self.divisor, device=ref.device,
                            dtype=ref.dtype)
        self.groups = c
        return super().setup(in_shape, ref)


def _unsupported(name: str, what: str, why: str = "") -> UnsupportedModelError:
    return UnsupportedModelError(f"certification does not support layer {name!r} ({what}){why}; "
                                 f"supported: {SUPPORTED}")


def _no_rule(name: str, m: nn.Module) -> UnsupportedModelError | None:
    """The error naming the first layer of ``m`` (a torch.nn leaf, in registration order)
    that certification has no rule for (LayerNorm, Softmax, GELU, ...), or None."""
    for sub, child in m.named_modules():
        if not sub or any(True for _ in child.children()) \
                or not type(child).__module__.startswith("torch.nn"):
            continue
        path = f"{name}.{sub}" if name else sub
        try:
            if _leaf_ops(path, child) is not None:
                continue
        except UnsupportedModelError as e:
            return e
        return _unsupported(path, type(child).__name__)
    return None


def _leaf_ops(name: str, m: nn.Module) -> list[Op] | None:
    """Ops of a supported leaf module, [] for a no-op, None if not a known leaf."""
    if isinstance(m, nn.Linear):
        return [LinearOp(name, m)]
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str) and m.padding != "valid":
            raise _unsupported(name, "Conv2d", f" with padding={m.padding!r}, "
                               f"padding_mode={m.padding_mode!r}")
        pad = (0, 0) if isinstance(m.padding, str) else _pair(m.padding)
        return [ConvOp(name, m, _pair(m.stride), pad, _pair(m.dilation), m.groups)]
    if isinstance(m, nn.ReLU):
        return [ReLUOp(name)]
    if isinstance(m, nn.Flatten):
        return [FlattenOp(name, m.start_dim, m.end_dim)]
    if isinstance(m, nn.Identity | nn.Dropout | nn.Dropout2d | nn.Dropout1d):
        return []
    if isinstance(m, nn.AvgPool2d):
        return [_AvgPool(name, m)]
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return [_AdaptiveAvgPool(name, m.output_size)]
    if isinstance(m, nn.MaxPool2d):
        if _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode \
                or m.return_indices:
            raise _unsupported(name, "MaxPool2d", " with padding, dilation, ceil_mode or "
                               "return_indices")
        return [MaxPoolOp(name, _pair(m.kernel_size),
                          _pair(m.stride if m.stride is not None else m.kernel_size))]
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if m.running_mean is None or m.running_var is None:
            raise _unsupported(name, type(m).__name__, " without running statistics")
        return [ScaleOp(name, _batchnorm_source(weakref.ref(m)))]
    return None


def _batchnorm_source(ref: weakref.ref) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """BatchNorm in eval mode as ``x * scale + shift``, read from the module when called."""

    def source() -> tuple[torch.Tensor, torch.Tensor]:
        m = ref()
        if m is None:  # pragma: no cover - the cache drops a network with its module
            raise InputError("a BatchNorm layer of the certified model no longer exists")
        scale = torch.rsqrt(m.running_var.detach() + m.eps)
        shift = -m.running_mean.detach() * scale
        if m.affine:
            scale, shift = scale * m.weight.detach(), shift * m.weight.detach() + m.bias.detach()
        return scale, shift

    return source


_RELU_FUNCS = (torch.relu, F.relu, torch.nn.functional.relu)
_FLATTEN_FUNCS = (torch.flatten,)


def _module_ops(name: str, m: nn.Module) -> Iterator[Op]:
    leaf = _leaf_ops(name, m)
    if leaf is not None:
        yield from leaf
        return
    if isinstance(m, nn.Sequential):
        for child_name, child in m.named_children():
            yield from _module_ops(f"{name}.{child_name}" if name else child_name, child)
        return
    if m.__module__.startswith("torch.nn"):
        raise _unsupported(name or "<model>", type(m).__name__)
    try:
        graph = torch.fx.symbolic_trace(m).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one clear message
        raise _no_rule(name, m) or UnsupportedModelError(
                         f"cannot read the layers of {type(m).__name__} {name!r} (torch.fx "
                         f"tracing failed: {e}); certification needs a chain of {SUPPORTED}") from e
    prev = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                raise InputError(f"{type(m).__name__} {name!r} takes several inputs; "
                                 "certification needs a single-input chain")
            prev = node
            continue
        if node.op == "output":
            if node.args[0] is not prev:
                raise InputError(f"{type(m).__name__} {name!r} is not a chain of layers")
            continue
        tensors = [a for a in node.all_input_nodes]
        qual = f"{name}.{node.target}" if name and node.op == "call_module" else str(node.target)
        if tensors != [prev]:
            what = type(m.get_submodule(node.target)).__name__ if node.op == "call_module" \
                else f"the operation {getattr(node.target, '__name__', node.target)}"
            raise UnsupportedModelError(
                f"certification has no rule for residual connections: layer {qual!r} ({what}) "
                f"of {type(m).__name__} {name or '<model>'!r} branches from or merges into "
                f"the chain; it needs a chain of {SUPPORTED}")
        if node.op == "call_module":
            yield from _module_ops(qual, m.get_submodule(node.target))
        elif node.op == "call_function" and node.target in _RELU_FUNCS or \
                node.op == "call_method" and node.target == "relu":
            yield ReLUOp(node.name)
        elif node.op == "call_function" and node.target in _FLATTEN_FUNCS or \
                node.op == "call_method" and node.target == "flatten":
            args = list(node.args[1:]) + [node.kwargs.get(k) for k in ("start_dim", "end_dim")
                                          if k in node.kwargs]
            start = args[0] if args else 0
            end = args[1] if len(args) > 1 else -1
            yield FlattenOp(node.name, start, end)
        else:
            what = getattr(node.target, "__name__", str(node.target))
            raise _no_rule(name, m) or _unsupported(node.name, f"the operation {what}")
        prev = node


class Network:
    """A model read as a chain of :class:`Op`, normalisation first.

    Parameters
    ----------
    model : TorchModel
        Its ``mean``/``std`` normalisation becomes the first (affine) operation,
        so bounds are taken in the input's natural range.
    x : Tensor
        A batch of inputs (on the model's device): fixes the shapes and checks
        that the chain reproduces the model's logits.
    """

    def __init__(self, model: TorchModel, x: torch.Tensor) -> None:
        ops: list[Op] = []
        ref = x[:1]
        if model.mean is not None:  # copies: the cache key holds their values
            mean, std = model.mean.detach().clone(), model.std.detach().clone()
            ops.append(ScaleOp("normalisation", lambda: (1 / std, -mean / std)))
        ops += list(_module_ops("", model.module))
        shape = tuple(x.shape[1:])
        for op in ops:
            shape = op.setup(shape, ref)
        self.ops = ops
        self.in_shape = tuple(x.shape[1:])
        self.check(model, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            x = op.forward(x)
        return x

    def refresh(self) -> None:
        """Re-read every op's numbers from the model (weights changed in place are seen)."""
        for op in self.ops:
            op.refresh()

    def check(self, model: TorchModel, x: torch.Tensor) -> None:
        """InputError unless the chain reproduces the model's logits at ``x``."""
        with torch.no_grad():
            got, want = self.forward(x), model(x)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise InputError("the layers read from the model do not reproduce its output (does "
                             f"its forward do more than chain {SUPPORTED}?)")

    # ---------------------------------------------------------------- input set
    @staticmethod
    def input_box(x0: torch.Tensor, eps: torch.Tensor, bounds: tuple[float, float]) -> Interval:
        """The box ``[x0 - eps, x0 + eps]`` intersected with the input bounds (per-sample eps)."""
        e = eps.reshape(-1, *([1] * (x0.dim() - 1)))
        return (x0 - e).clamp(min=bounds[0]), (x0 + e).clamp(max=bounds[1])

    @staticmethod
    def concretize(a: torch.Tensor, const: torch.Tensor, box: Interval, norm: str,
                   x0: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """min of ``A z + const`` over the box (and over the l2 ball when ``norm="l2"``)."""
        af = _flat(a, 2)
        lo, hi = (_flat(t, 1).unsqueeze(-1) for t in box)
        out = (af @ ((hi + lo) / 2) - af.abs() @ ((hi - lo) / 2))[..., 0]
        if norm == "l2" and x0 is not None:  # the l2 ball via the dual norm; both are supersets
            ball = (af @ _flat(x0, 1).unsqueeze(-1))[..., 0] - eps[:, None] * af.norm(dim=-1)
            out = torch.maximum(out, ball)
        return out + const

    # ---------------------------------------------------------------- propagation
    def back(self, a: torch.Tensor, start: int, stop: int, relax: dict[int, tuple],
             alphas: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Propagate ``A`` on the input of op ``start`` back to the input of op ``stop``;
        ``alphas[j]`` ``(N, S, len(cols))``: lower slopes of ReLU op ``j``'s columns
        ``cols`` per row (alpha-CROWN, see :meth:`ReLUOp.back`)."""
        const = a.new_zeros(a.shape[:2])
        for j in range(start - 1, stop - 1, -1):
            op = self.ops[j]
            if op.affine:
                a, c = op.back(a)
            elif alphas is not None and j in alphas:
                a, c = op.back(a, relax[j], alphas[j])
            else:
                a, c = op.back(a, relax[j])
            const = const + c
        return a, const

    def spec_lower(self, spec: torch.Tensor, start: int, stop: int, relax: dict[int, tuple],
                   box: Interval, norm: str, x0: torch.Tensor, eps: torch.Tensor,
                   alphas: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Lower bounds of ``spec`` (``(N, S, *shape of node start)``) by backward propagation
        to node ``stop``, concretised on ``box`` (the input set when ``stop == 0``)."""
        a, const = self.back(spec, start, stop, relax, alphas)
        if stop == 0:
            return self.concretize(a, const, box, norm, x0, eps)
        return self.concretize(a, const, box, "linf")

    def shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shape of each node (node ``i`` is the input of op ``i``)."""
        return [self.in_shape] + [op.out_shape for op in self.ops]

    def chunk_rows(self, n: int, start: int, stop: int) -> int:
        """How many specification rows fit the memory budget for ``n`` samples."""
        shapes = self.shapes()[stop:start + 1]
        biggest = max(math.prod(s) for s in shapes)
        return max(1, _CHUNK_ELEMENTS // max(1, n * biggest))


#: Compiled networks by module: ``{module: (signature, Network)}``. Weak keys, and the ops
#: hold their modules weakly, so the cache never keeps a model alive.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Network]] = \
    weakref.WeakKeyDictionary()


def _signature(model: TorchModel, x: torch.Tensor) -> tuple:
    """What the compiled chain depends on besides the weights' values: the per-sample input
    shape, dtype and device, the normalisation, and per submodule its type, configuration
    (``extra_repr``) and the identity, shape, dtype and device of each parameter and buffer
    (a parameter replaced by another object, or resized, rebuilds the network)."""
    parts: list = [tuple(x.shape[1:]), x.dtype, x.device]
    for t in (model.mean, model.std):
        parts.append(None if t is None else tuple(t.detach().flatten().tolist()))
    for name, m in model.module.named_modules():
        parts.append((name, type(m), m.extra_repr()))
        for pname, t in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)):
            parts.append((pname, id(t), tuple(t.shape), t.dtype, t.device))
    return tuple(parts)


def compile_network(model: TorchModel, x: torch.Tensor) -> Network:
    """The model's :class:`Network` for inputs like ``x``, built once and reused.

    The first call reads the model (module tree, ``torch.fx`` for custom
    modules) and checks the chain against the model's logits at ``x``; later
    calls with the same module find it in a cache keyed by the module and
    only re-read the weights (:meth:`Network.refresh`: in-place changes,
    e.g. training steps, are seen) and re-check the logits at ``x[:1]``. A
    change of structure (another layer, configuration, input shape, dtype,
    device, normalisation, or a parameter replaced by a new object) rebuilds
    it. A custom module whose ``forward`` is changed without any of these
    changing is caught by the logit check, not by the key.

    Parameters
    ----------
    model : TorchModel
    x : Tensor
        A batch of inputs on the model's device (fixes the shapes).

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> model = pretrained("digits-cnn", progress=False)
    >>> x = torch.rand(2, 1, 8, 8)
    >>> compile_network(model, x) is compile_network(model, x[:1])  # built once
    True
    """
    key = _signature(model, x)
    hit = _COMPILED.get(model.module)
    if hit is not None and hit[0] == key:
        net = hit[1]
        net.refresh()
        net.check(model, x[:1])
        return net
    net = Network(model, x)
    _COMPILED[model.module] = (key, net)
    return net


def margin_spec(y: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, 2K, K)``: rows ``e_j`` (the logits) then ``e_y - e_j`` (the margins; row ``y`` is 0)."""
    eye = torch.eye(k, device=y.device, dtype=dtype)
    logits = eye.expand(len(y), k, k)
    margins = eye[y].unsqueeze(1) - eye.unsqueeze(0)
    return torch.cat([logits, margins], dim=1)


def ibp_bounds(net: Network, box: Interval) -> list[Interval]:
    """Interval bounds of every node (Gowal et al.): ``[box, op_0(box), ...]``."""
    out = [box]
    for op in net.ops:
        out.append(op.interval(*out[-1]))
    return out


def ibp_node(net: Network, box: Interval, stop: int) -> Interval:
    """The interval bounds of node ``stop`` only (those of :func:`ibp_bounds`): the nodes
    before it are dropped as soon as they are used, and a ReLU after a weighted layer
    works in place on that layer's fresh output (less memory traffic and allocation)."""
    lo, hi = box
    fresh = False
    for op in net.ops[:stop]:
        if fresh and isinstance(op, ReLUOp):
            lo, hi = lo.clamp_(min=0), hi.clamp_(min=0)
        else:
            lo, hi = op.interval(lo, hi)
        fresh = isinstance(op, _Weighted)
    return lo, hi


def last_nonlinear(net: Network) -> int:
    """Index of the node after the last piecewise-linear op (0 if there is none)."""
    idx = [i for i, op in enumerate(net.ops) if not op.affine]
    return idx[-1] + 1 if idx else 0


def ibp_stop(net: Network) -> int:
    """The node where IBP concretises a specification: after the last piecewise-linear op,
    moved past the :attr:`~Op.separable` ops that follow it (their interval image loses
    nothing for a linear function; folding the specification through them would only cost
    time). 0 for a network without piecewise-linear ops (folded down to the input, where
    the l2 ball is used exactly)."""
    stop = last_nonlinear(net)
    while 0 < stop < len(net.ops) and net.ops[stop].separable:
        stop += 1
    return stop


def ibp_spec(net: Network, spec: torch.Tensor, bounds: list[Interval], norm: str,
             x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Lower bounds of ``spec`` on the output with the specification folded into the
    trailing affine layers (Gowal et al.), concretised on the interval bounds there."""
    stop = ibp_stop(net)
    return net.spec_lower(spec, len(net.ops), stop, {}, bounds[stop], norm, x0, eps)


def crown_bounds(net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
                 eps: torch.Tensor, relaxation: str = "adaptive", intersect_ibp: bool = True,
                 rebound: str = "live") -> torch.Tensor:
    """Lower bounds of ``spec`` (``(N, S, K)``) on the output by CROWN.

    The pre-activation bounds of every piecewise-linear op are computed in
    turn by backward propagation to the input through the relaxations of the
    ops before it (Zhang et al. 2018). With ``intersect_ibp`` each node's
    bounds are also intersected with the interval image of the previous
    node's (sound, only tighter), only neurons that are unstable under those
    interval bounds are re-bounded by back-propagation (the relaxation of a
    stable ReLU does not depend on its bounds, unless a max pooling follows:
    ``rebound="live"`` then also re-bounds the active neurons before it,
    ``"unstable"`` keeps their interval bounds, cheaper and looser), and the
    final bounds are intersected with IBP's, so the result is never looser than IBP.
    """
    relax, bounds = crown_relaxations(net, box, norm, x0, eps, relaxation, intersect_ibp,
                                      rebound)
    out = _chunked_spec(net, spec, len(net.ops), relax, box, norm, x0, eps)
    if intersect_ibp:
        out = torch.maximum(out, ibp_spec(net, spec, bounds, norm, x0, eps))
    return out


def crown_relaxations(net: Network, box: Interval, norm: str, x0: torch.Tensor,
                      eps: torch.Tensor, relaxation: str = "adaptive", intersect_ibp: bool = True,
                      rebound: str = "live") -> tuple[dict[int, tuple], list[Interval]]:
    """CROWN's pre-activation bounds and relaxations (see :func:`crown_bounds`):
    ``({op index: relax}, [bounds of every node])``."""
    ops = net.ops
    lows, highs = [box[0]], [box[1]]
    relax: dict[int, tuple] = {}
    n = len(x0)
    for i, op in enumerate(ops):
        lo, hi = op.interval(lows[i], highs[i])
        node = i + 1
        if node < len(ops) and not ops[node].affine and op.affine:
            if intersect_ibp and norm == "linf" and all(o.affine for o in ops[:node]):
                need = torch.zeros(lo[0].numel(), dtype=torch.bool, device=lo.device)  # exact
            elif intersect_ibp and isinstance(ops[node], ReLUOp):
                # a stable ReLU's relaxation does not depend on its bounds, but a max pooling
                # after it uses the bounds of every neuron that is not provably inactive
                # (rebound="unstable": those keep their interval bounds)
                feeds_pool = (rebound == "live" and node + 1 < len(ops)
                              and not ops[node + 1].affine)
                live = hi > 0 if feeds_pool else (lo < 0) & (hi > 0)
                need = live.reshape(n, -1).any(dim=0)
            else:
                need = torch.ones(lo[0].numel(), dtype=torch.bool, device=lo.device)
            sel = need.nonzero()[:, 0]
            if len(sel):
                lc, uc = _crown_neurons(net, node, sel, relax, box, norm, x0, eps)
                lo_f, hi_f = lo.reshape(n, -1).clone(), hi.reshape(n, -1).clone()
                if intersect_ibp:
                    lo_f[:, sel] = torch.maximum(lo_f[:, sel], lc)
                    hi_f[:, sel] = torch.minimum(hi_f[:, sel], uc)
                else:
                    lo_f[:, sel], hi_f[:, sel] = lc, uc
                lo, hi = lo_f.reshape(lo.shape), hi_f.reshape(hi.shape)
        lows.append(lo)
        highs.append(hi)
        if node < len(ops) and not ops[node].affine:
            relax[node] = ops[node].relax(lo, hi, relaxation)
    return relax, list(zip(lows, highs, strict=True))


def _chunked_spec(net: Network, spec: torch.Tensor, start: int, relax: dict[int, tuple],
                  box: Interval, norm: str, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    rows = net.chunk_rows(len(x0), start, 0)
    outs = [net.spec_lower(spec[:, r:r + rows], start, 0, relax, box, norm, x0, eps)
            for r in range(0, spec.shape[1], rows)]
    return torch.cat(outs, dim=1)


def _crown_neurons(net: Network, node: int, sel: torch.Tensor, relax: dict[int, tuple],
                   box: Interval, norm: str, x0: torch.Tensor, eps: torch.Tensor) -> Interval:
    """CROWN lower and upper bounds ``(N, len(sel))`` of the selected neurons of a node."""
    n = len(x0)
    shape = net.shapes()[node]
    numel = math.prod(shape)
    rows = max(1, net.chunk_rows(n, node, 0) // 2)
    lows, highs = [], []
    for r in range(0, len(sel), rows):
        idx = sel[r:r + rows]
        m = len(idx)
        eye = torch.zeros(m, numel, device=x0.device, dtype=x0.dtype)
        eye[torch.arange(m, device=x0.device), idx] = 1
        # the same for every sample: kept at batch size 1 until the first ReLU or pooling
        spec = torch.cat([eye, -eye]).reshape(1, 2 * m, *shape)
        low = net.spec_lower(spec, node, 0, relax, box, norm, x0, eps)
        lows.append(low[:, :m])
        highs.append(-low[:, m:])
    return torch.cat(lows, dim=1), torch.cat(highs, dim=1)
