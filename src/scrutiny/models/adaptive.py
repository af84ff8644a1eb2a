"""Defense front ends and the adaptive model a white-box attack differentiates (BPDA, EOT).

A front end (:class:`Transform`, an input transform in front of a classifier)
declares how it breaks gradients: ``non_differentiable`` (BPDA with the
identity: forward ``g(x)``, backward as if ``g(x) = x``) or ``randomized``
(EOT: the loss or the output averaged over draws of the randomness).
:func:`adaptive` rewrites a defended model so that ANY white-box attack run on
it computes these gradients; :func:`eot_input_gradient` is the exact "average
of per-draw loss gradients" for an attack loop to use directly (Athalye et al.
ICML 2018).

This module sits with the models, below attacks and defenses: the attack base
(:mod:`scrutiny.attacks.base`) adapts its model with it and the defenses
(:mod:`scrutiny.defenses`) build their front ends on :class:`Transform`;
:mod:`scrutiny.defenses.adaptive` re-exports it under its public name.

The example is in :mod:`scrutiny.defenses.adaptive`, where users meet it.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.losses import margin_loss_terms
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.validation import check_positive


class Transform(nn.Module):
    """An input transform put in front of a model; it declares how it breaks gradients.

    Attributes
    ----------
    non_differentiable : bool
        The forward pass has zero or useless gradients (quantisation, median):
        adaptive attacks replace its backward pass by the identity (BPDA).
    randomized : bool
        Each forward draws a random transformation: adaptive attacks average
        over draws (EOT).
    """

    non_differentiable: ClassVar[bool] = False
    randomized: ClassVar[bool] = False

    def __init__(self, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        self.bounds = bounds


class StraightThrough(nn.Module):
    """BPDA with the identity: forward ``g(x)``, backward as if ``g(x) = x``.

    ``x + (g(x) - x).detach()`` has the value of ``g(x)`` and the gradient of
    ``x`` (Athalye, Carlini, Wagner 2018, section 4.1, for ``g(x) ~ x``).
    """

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.transform(x) - x).detach()


AVERAGES: tuple[str, ...] = ("log_probs", "logits", "probs")

#: The torch operations whose gradient is zero almost everywhere that BPDA makes
#: straight-through in a model that declares no front end (:func:`declare`).
ROUNDING_OPS: tuple[Any, ...] = (
    torch.round, torch.floor, torch.ceil, torch.trunc, torch.fix, torch.sign,
    torch.Tensor.round, torch.Tensor.floor, torch.Tensor.ceil, torch.Tensor.trunc,
    torch.Tensor.fix, torch.Tensor.sign)


_ROUNDING = frozenset(ROUNDING_OPS)


class StraightThroughOps(TorchFunctionMode):
    """BPDA for front ends nobody declared: every rounding op runs straight-through.

    Inside this mode each call of an op of :data:`ROUNDING_OPS` on a tensor
    that needs a gradient returns ``x + (op(x) - x).detach()``: the op's value,
    the identity's gradient (Athalye et al. 2018, 4.1, applied op by op, so a
    quantiser written as ``torch.round(x * 3) / 3`` anywhere in a forward is
    handled). ``calls`` counts the ops made straight-through. Integer casts
    (``x.to(torch.uint8)``) cut the graph and are not covered: the black-box
    stage is the answer there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _ROUNDING and args and isinstance(args[0], torch.Tensor) \
                and args[0].requires_grad and torch.is_grad_enabled() \
                and args[0].is_floating_point() and not kwargs.get("out"):
            x = args[0]
            with torch.no_grad():
                value = func(*args, **kwargs)
            name = getattr(func, "__name__", str(func)).strip("_")
            self.calls[name] = self.calls.get(name, 0) + 1
            return x + (value - x).detach()
        return func(*args, **kwargs)


class UndeclaredStraightThrough(nn.Module):
    """Run ``module`` under :class:`StraightThroughOps`; record which ops it made straight-through.

    Warns once when a forward that needs gradients met none of the ops: BPDA
    then cannot help (the gradient is masked some other way).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module
        self.calls: dict[str, int] = {}
        self._warned = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = StraightThroughOps()
        with mode:
            out = self.inner(x)
        for k, v in mode.calls.items():
            self.calls[k] = self.calls.get(k, 0) + v
        if x.requires_grad and not self.calls and not self._warned:
            self._warned = True
            warnings.warn("adaptive(): the model calls none of the rounding ops BPDA knows "
                          f"({', '.join(sorted({_op_name(f) for f in ROUNDING_OPS}))}), so its "
                          "gradients are unchanged; if they are masked (e.g. an integer cast), "
                          "use a black-box attack (square)", stacklevel=2)
        return out


def _op_name(func: Any) -> str:
    return getattr(func, "__name__", str(func)).strip("_")


def transforms_of(model: nn.Module) -> list[Transform]:
    """Every :class:`Transform` inside ``model`` (the defense front ends)."""
    return [m for m in model.modules() if isinstance(m, Transform)]


def is_randomized(model: nn.Module) -> bool:
    """Whether ``model`` needs EOT: a front end declares ``randomized``, or :func:`declare` said so."""
    return bool(getattr(model, "randomized", False)) or any(t.randomized
                                                            for t in transforms_of(model))


def is_non_differentiable(model: nn.Module) -> bool:
    """Whether ``model`` needs BPDA: a front end declares ``non_differentiable``, or
    :func:`declare` said so."""
    return bool(getattr(model, "non_differentiable", False)) or any(
        t.non_differentiable for t in transforms_of(model))


def declare(model: Any, *, non_differentiable: bool = False, randomized: bool = False,
            eot_samples: int | None = None) -> TorchModel:
    """The model with what it does to gradients declared, for a front end that is no :class:`Transform`.

    Returns a new :class:`TorchModel` sharing ``model``'s module; white-box
    attacks on it differentiate :func:`adaptive` of it: BPDA on every rounding
    op the forward calls (:class:`StraightThroughOps`) when
    ``non_differentiable``, EOT over ``eot_samples`` draws (default 16) when
    ``randomized``. The audit declares what its probe of the model finds.

    Examples
    --------
    A 4-level quantiser written inside ``forward`` (not a scrutiny defense) has
    zero input gradients; declared, PGD runs straight through it and breaks it.

    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.attacks import PGD
    >>> from scrutiny.types import ThreatModel
    >>> cnn, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> class Quantised(torch.nn.Module):
    ...     def __init__(self, net):
    ...         super().__init__()
    ...         self.net = net
    ...     def forward(self, x):
    ...         return self.net(torch.round(x * 3) / 3)
    >>> model, tm = Quantised(cnn), ThreatModel("linf", 0.3)
    >>> x, y = data.x[:64], data.y[:64]
    >>> import warnings; warnings.simplefilter("ignore")
    >>> plain = PGD(steps=20)(model, x, y, threat=tm).robust_accuracy()
    >>> bpda = PGD(steps=20)(declare(model, non_differentiable=True), x, y, threat=tm)
    >>> bpda.meta["adaptive"], plain > 0.5, bpda.robust_accuracy() < 0.2
    ('BPDA', True, True)
    """
    if eot_samples is not None:
        check_positive("eot_samples", eot_samples, integer=True)
    model = as_model(model)
    new = _copy(model)
    new.non_differentiable = bool(non_differentiable) or bool(getattr(model, "non_differentiable",
                                                                      False))
    new.randomized = bool(randomized) or bool(getattr(model, "randomized", False))
    new.eot_samples = eot_samples if eot_samples is not None else getattr(model, "eot_samples",
                                                                           None)
    return new


class EOT(nn.Module):
    """Average the outputs of ``module`` over ``samples`` random draws in one batched forward.

    The input batch is repeated ``samples`` times (chunks of at most
    ``batch_size`` rows), each copy sees its own draw of the randomness, and
    the ``samples`` outputs per input are averaged as log-probabilities
    (default), logits or probabilities (returned as log-probabilities).
    """

    def __init__(self, module: nn.Module, samples: int, average: str = "log_probs",
                 batch_size: int | None = None) -> None:
        super().__init__()
        self.inner = module
        self.samples = samples
        self.average = average
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        rep = x.repeat(self.samples, *([1] * (x.dim() - 1)))  # draw-major: row s*n + i
        step = self.batch_size or len(rep)
        out = torch.cat([self.inner(rep[i:i + step]) for i in range(0, len(rep), step)])
        out = out.reshape(self.samples, n, -1)
        if self.average == "logits":
            return out.mean(0)
        if self.average == "probs":
            return out.softmax(-1).mean(0).clamp_min(1e-30).log()
        return out.log_softmax(-1).mean(0)


def _copy(module: nn.Module) -> nn.Module:
    """Shallow copy sharing parameters and buffers, with its own child table."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    return new


def _rewrite(module: nn.Module) -> nn.Module:
    """Copy of the module tree with every non-differentiable front end made straight-through."""
    if isinstance(module, Transform):
        return StraightThrough(module) if module.non_differentiable else module
    if not any(isinstance(m, Transform) for m in module.modules()):
        return module
    new = _copy(module)
    for name, child in module._modules.items():
        if child is not None:
            new._modules[name] = _rewrite(child)
    return new


def adaptive(model: Any, *, eot_samples: int | None = None, average: str = "log_probs",
             batch_size: int | None = None) -> TorchModel:
    """The model an adaptive white-box attack should differentiate (BPDA and EOT).

    Returns a new :class:`TorchModel` sharing ``model``'s parameters (the
    original is not changed) in which

    * every front end that declares ``non_differentiable`` is wrapped in
      :class:`StraightThrough`: the forward value is
      unchanged, the backward pass is the identity (BPDA, Athalye et al. 4.1);
    * if a front end declares ``randomized``, the whole model is wrapped in
      :class:`EOT`: each forward averages ``eot_samples`` draws, batched.

    * a model whose gradients :func:`declare` marked ``non_differentiable``
      (a front end that is no :class:`Transform`) runs under
      :class:`StraightThroughOps`: every rounding op it calls is straight-through.

    A model with nothing declared is returned unchanged (as a TorchModel), with
    a warning: ``adaptive`` cannot know what masks its gradients (use
    :func:`declare`, or a black-box attack).

    Parameters
    ----------
    model : nn.Module or TorchModel
        A defended model, e.g. from ``BitDepthReduction().wrap(model)``.
    eot_samples : int, optional
        Draws per forward for randomized defenses (default: the model's
        declared ``eot_samples``, else 16).
    average : {"log_probs", "logits", "probs"}
        What EOT averages over draws. ``"log_probs"`` makes the true-class
        term of the cross-entropy exactly the mean per-draw loss, so the
        gradient of ``-log p_y`` is exactly EOT's ``E_t[grad L]``; the
        log-sum-exp normaliser of the averaged output adds a (small) term,
        so the full CE gradient is close to, not equal to, the average of
        per-draw gradients. For the margin loss, ``"log_probs"`` and
        ``"logits"`` both give ``E_t[z_j - z_y]`` maximised over ``j``
        (the max taken after averaging). Use :func:`eot_input_gradient` for
        the exact average of per-draw loss gradients.
    batch_size : int, optional
        Most rows per forward of the expanded batch (default: all at once).

    Notes
    -----
    Predictions of the returned model on a randomized defense are those of
    the averaged output, i.e. of the expected classifier; evaluate the robust
    accuracy of adversarial examples on the defended model itself.

    References
    ----------
    .. [1] Athalye, Carlini, Wagner. "Obfuscated gradients give a false sense of
       security: circumventing defenses to adversarial examples". ICML 2018.
    .. [2] Athalye, Engstrom, Ilyas, Kwok. "Synthesizing robust adversarial
       examples". ICML 2018 (EOT).
    """
    if eot_samples is None:
        eot_samples = getattr(model, "eot_samples", None) or 16
    check_positive("eot_samples", eot_samples, integer=True)
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    if average not in AVERAGES:
        raise InputError(f"unknown average {average!r}; accepted: {', '.join(AVERAGES)}")
    model = as_model(model)
    undeclared_bpda = bool(getattr(model, "non_differentiable", False))
    if not transforms_of(model) and not undeclared_bpda and not getattr(model, "randomized", False):
        warnings.warn(f"adaptive(): {model.name} declares no front end (no scrutiny Transform, "
                      "nothing declared with scrutiny.models.adaptive.declare), so it is returned "
                      "unchanged and BPDA/EOT cannot help; declare(model, non_differentiable=True) "
                      "makes its rounding ops straight-through, and a black-box attack (square) "
                      "needs no gradients", stacklevel=2)
        return model
    inner = _rewrite(model.module)
    if undeclared_bpda:
        inner = UndeclaredStraightThrough(inner)
    if is_randomized(model) and eot_samples > 1:
        inner = EOT(inner, eot_samples, average, batch_size)
    new = _copy(model)
    new._modules["module"] = inner
    new.name = f"adaptive({model.name})"
    new.is_adaptive = True  # the attack base does not adapt it a second time
    return new


def eot_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       target: torch.Tensor | None = None, loss: str = "ce", *, samples: int = 16,
                       batch_size: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EOT gradient: ``(mean objective, mean_t grad_x L(f(t(x))), mean logits)`` over draws.

    Same contract as :func:`scrutiny.attacks.base.input_gradient`, but the
    objective of each of ``samples`` draws of the model's randomness is
    differentiated and the gradients averaged (exactly Athalye et al.'s
    ``E_t[grad L]``), in one batched forward and backward (chunks of
    ``batch_size`` rows). Non-differentiable front ends should already be
    straight-through: pass ``adaptive(model, eot_samples=1)``.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.defenses import RandomResizePad
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> defended = RandomResizePad(scale=(1.0, 1.5)).wrap(model)
    >>> obj, g, logits = eot_input_gradient(defended, data.x[:4], data.y[:4], samples=8)
    >>> g.shape
    torch.Size([4, 1, 8, 8])
    """
    check_positive("samples", samples, integer=True)
    n = len(x)
    x = x.detach().requires_grad_(True)
    rep = x.repeat(samples, *([1] * (x.dim() - 1)))
    yr = y.repeat(samples)
    tr = None if target is None else target.repeat(samples)
    step = batch_size or len(rep)
    logits = torch.cat([model(rep[i:i + step]) for i in range(0, len(rep), step)])
    obj = margin_loss_terms(logits, yr, tr, loss).reshape(samples, n).mean(0)
    return obj.detach(), grad_wrt(obj, x), logits.detach().reshape(samples, n, -1).mean(0)
