"""Objectives of feature visualisation: what an optimised input should excite.

An :class:`Objective` maps a batch of inputs to one value per input, to be *maximised*. The
atoms address a layer of the model by name (``model.layer(name)``, read with the forward
hook of :func:`scrutiny.models.hooks.capture`, as the CAM family does) or its logits:

- :func:`neuron`: one unit, ``a[:, c, y, x]`` (the centre of the map by default);
- :func:`channel`: the mean of a channel's map, ``a[:, c].mean()``;
- :func:`deepdream`: the mean of the squared activations of a whole layer (DeepDream);
- :func:`direction`: the projection of the spatially averaged activations on a vector
  (a channel is the direction of its basis vector);
- :func:`class_logit` and :func:`class_probability`: a class's logit, or its softmax
  probability. The probability can be raised by *lowering the other classes' logits*, not
  only by raising the class's own; an image optimised for it may show what the class is
  *not* rather than what it is (Olah et al. 2017, who optimise pre-softmax logits for that
  reason; Simonyan et al. 2014 do the same).

Objectives compose like numbers, as in Lucent: ``a + b``, ``a - 0.5 * b``, ``-a``, ``a / 2``;
the value of a sum is the weighted sum of its terms' values. ``repr`` writes the formula.

References
----------
.. [1] Olah, Mordvintsev, Schubert. "Feature Visualization". Distill 2017.
.. [2] Erhan, Bengio, Courville, Vincent. "Visualizing higher-layer features of a deep
   network". University of Montreal technical report 1341, 2009.
.. [3] Simonyan, Vedaldi, Zisserman. "Deep inside convolutional networks: visualising image
   classification models and saliency maps". ICLR workshop 2014.

Examples
--------
>>> from scrutiny.models import pretrained
>>> from scrutiny.data import load_digits
>>> model = pretrained("digits-cnn", progress=False)
>>> obj = channel("features.5", 3) - 0.5 * deepdream("features.3")
>>> obj
channel('features.5', 3) - 0.5 * deepdream('features.3')
>>> x = load_digits(split="test").x[:4]
>>> v = obj.values(model, x)
>>> a, b = channel("features.5", 3).values(model, x), deepdream("features.3").values(model, x)
>>> tuple(v.shape), bool(torch.allclose(v, a - 0.5 * b))
((4,), True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scrutiny.errors import InputError
from scrutiny.explain.gradient.layer import _checked
from scrutiny.models.hooks import capture
from scrutiny.models.wrapper import TorchModel, as_model

__all__ = ["Objective", "channel", "class_logit", "class_probability", "deepdream",
           "direction", "neuron"]


def _index(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _classes(value: int | Sequence[int] | torch.Tensor) -> int | tuple[int, ...]:
    """One class for every input, or one per input (a sequence)."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, list | tuple):
        if not value:
            raise InputError("classes must not be empty")
        return tuple(_index("a class", v) for v in value)
    return _index("the class", value)


def _pick(out: torch.Tensor, cls: int | tuple[int, ...]) -> torch.Tensor:
    """Column ``cls`` of ``out`` (N, K), or column ``cls[i]`` of row ``i``."""
    k = out.shape[1]
    wanted = (cls,) if isinstance(cls, int) else cls
    if max(wanted) >= k:
        raise InputError(f"class {max(wanted)} is out of range for a model with {k} classes")
    if isinstance(cls, int):
        return out[:, cls]
    if len(cls) != len(out):
        raise InputError(f"{len(cls)} classes given for a batch of {len(out)} inputs")
    return out.gather(1, torch.tensor(cls, device=out.device)[:, None])[:, 0]


def _channel(name: str, a: torch.Tensor, c: int) -> torch.Tensor:
    if a.dim() < 2:
        raise InputError(f"layer {name!r} outputs shape {tuple(a.shape)}; it has no channels")
    if c >= a.shape[1]:
        raise InputError(f"channel {c} is out of range: layer {name!r} has {a.shape[1]} channels")
    return a[:, c]


@dataclass(frozen=True)
class _Neuron:
    layer: str
    channel: int
    position: tuple[int, int] | None

    def value(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        m = _channel(self.layer, acts[self.layer], self.channel)
        if m.dim() == 1:  # a dense layer: the unit itself
            return m
        if m.dim() != 3:
            raise InputError(f"neuron needs a layer with (N, C) or (N, C, H, W) output; "
                             f"{self.layer!r} outputs {tuple(acts[self.layer].shape)}")
        h, w = m.shape[1:]
        y, x = self.position if self.position is not None else (h // 2, w // 2)
        if not (0 <= y < h and 0 <= x < w):
            raise InputError(f"position {(y, x)} is outside layer {self.layer!r}'s {h}x{w} map")
        return m[:, y, x]

    def __str__(self) -> str:
        pos = "" if self.position is None else f", {self.position}"
        return f"neuron({self.layer!r}, {self.channel}{pos})"


@dataclass(frozen=True)
class _Channel:
    layer: str
    channel: int

    def value(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        m = _channel(self.layer, acts[self.layer], self.channel)
        return m.flatten(1).mean(1) if m.dim() > 1 else m

    def __str__(self) -> str:
        return f"channel({self.layer!r}, {self.channel})"


@dataclass(frozen=True)
class _DeepDream:
    layer: str

    def value(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        return acts[self.layer].flatten(1).pow(2).mean(1)

    def __str__(self) -> str:
        return f"deepdream({self.layer!r})"


@dataclass(frozen=True)
class _Direction:
    layer: str
    vector: tuple[float, ...]

    def value(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        a = acts[self.layer]
        if a.dim() < 2 or a.shape[1] != len(self.vector):
            raise InputError(f"the direction has {len(self.vector)} entries; layer "
                             f"{self.layer!r} outputs {tuple(a.shape)} ({a.shape[1]} channels)")
        mean = a.flatten(2).mean(2) if a.dim() > 2 else a  # spatially averaged: (N, C)
        return mean @ torch.tensor(self.vector, dtype=a.dtype, device=a.device)

    def __str__(self) -> str:
        return f"direction({self.layer!r}, <{len(self.vector)} values>)"


@dataclass(frozen=True)
class _Logit:
    cls: int | tuple[int, ...]
    softmax: bool = False
    log: bool = False

    layer = None

    def value(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        if not self.softmax:
            return _pick(logits, self.cls)
        return _pick(logits.log_softmax(1) if self.log else logits.softmax(1), self.cls)

    def __str__(self) -> str:
        if not self.softmax:
            return f"class_logit({self.cls})"
        return f"class_probability({self.cls}{', log=True' if self.log else ''})"


class Objective:
    """A weighted sum of terms, each one value per input; maximised by the optimisers.

    Built with the atoms of this module and combined with ``+``, ``-``, ``*`` and ``/`` by
    numbers. ``objective(acts, logits)`` evaluates it from the layers' outputs (a dict by
    layer name) and the logits; :meth:`values` runs the model on inputs.
    """

    def __init__(self, terms: Sequence[tuple[float, Any]]) -> None:
        self.terms: tuple[tuple[float, Any], ...] = tuple((float(w), t) for w, t in terms)

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the layers the objective reads, in order of first use."""
        return tuple(dict.fromkeys(t.layer for _, t in self.terms if t.layer is not None))

    def __call__(self, acts: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        total = None
        for w, t in self.terms:
            v = w * t.value(acts, logits)
            total = v if total is None else total + v
        return total if total is not None else logits.new_zeros(len(logits))

    def values(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        """The objective at inputs ``x`` (N,), with the graph when ``x`` requires grad
        (``model``: a TorchModel or an ``nn.Module``, run as it is: set eval mode first)."""
        model = as_model(model)
        with contextlib.ExitStack() as stack:
            stores = {n: stack.enter_context(capture(model.layer(n))) for n in self.layers}
            logits = model(x)
        acts = {}
        for n, store in stores.items():
            if "out" not in store:
                raise InputError(f"layer {n!r} is not called in the model's forward pass")
            acts[n] = _checked(n, store["out"])
        return self(acts, logits)

    def _scaled(self, k: float) -> Objective:
        if isinstance(k, bool) or not isinstance(k, int | float):
            return NotImplemented
        return Objective([(w * k, t) for w, t in self.terms])

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return Objective(self.terms + other.terms)
        if isinstance(other, int | float) and other == 0:  # sum() starts from 0
            return self
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return self + (-1.0) * other
        return NotImplemented

    def __mul__(self, k: float) -> Objective:
        return self._scaled(k)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Objective:
        if isinstance(k, int | float) and not isinstance(k, bool):
            if k == 0:
                raise InputError("an objective divided by 0")
            return self._scaled(1.0 / k)
        return NotImplemented

    def __neg__(self) -> Objective:
        return self._scaled(-1.0)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Objective) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        if not self.terms:
            return "Objective([])"
        out = ""
        for i, (w, t) in enumerate(self.terms):
            sign = "-" if w < 0 else "+"
            mag = abs(w)
            text = str(t) if mag == 1 else f"{mag:g} * {t}"
            out += (f"-{text}" if sign == "-" else text) if i == 0 else f" {sign} {text}"
        return out


def neuron(layer: str, channel: int, position: tuple[int, int] | None = None) -> Objective:
    """One unit: ``a[:, channel, y, x]`` of layer ``layer`` (``position = (y, x)``, the
    centre of the map when None); on a dense layer, ``a[:, channel]``."""
    if position is not None:
        if not isinstance(position, Sequence) or len(position) != 2:
            raise InputError(f"position must be (y, x), got {position!r}")
        position = (_index("position y", position[0]), _index("position x", position[1]))
    return Objective([(1.0, _Neuron(str(layer), _index("channel", channel), position))])


def channel(layer: str, channel: int) -> Objective:
    """The mean over its map of channel ``channel`` of layer ``layer``."""
    return Objective([(1.0, _Channel(str(layer), _index("channel", channel)))])


def deepdream(layer: str) -> Objective:
    """DeepDream's layer objective: the mean of the squared activations of ``layer``."""
    return Objective([(1.0, _DeepDream(str(layer)))])


def direction(layer: str, vector: Sequence[float] | torch.Tensor) -> Objective:
    """``<mean_{y,x} a[:, :, y, x], vector>``: the projection of layer ``layer``'s spatially
    averaged activations on ``vector`` (one entry per channel)."""
    v = torch.as_tensor(vector, dtype=torch.float64).flatten()
    if v.numel() == 0 or not bool(torch.isfinite(v).all()):
        raise InputError("the direction must be a non-empty vector of finite values")
    return Objective([(1.0, _Direction(str(layer), tuple(v.tolist())))])


def class_logit(cls: int | Sequence[int]) -> Objective:
    """The logit of class ``cls`` (a sequence: class ``cls[i]`` for input ``i``)."""
    return Objective([(1.0, _Logit(_classes(cls)))])


def class_probability(cls: int | Sequence[int], log: bool = False) -> Objective:
    """The softmax probability of class ``cls`` (a sequence: one class per input). Unlike the
    logit, it also rises when the *other* classes' logits fall. ``log=True``: its logarithm,
    ``logit_cls - logsumexp(logits)``, which has the same maximiser but a gradient that does
    not vanish where the class is improbable (that of the probability is ``p`` times smaller,
    so an optimisation started where ``p`` is tiny hardly moves)."""
    return Objective([(1.0, _Logit(_classes(cls), softmax=True, log=bool(log)))])
