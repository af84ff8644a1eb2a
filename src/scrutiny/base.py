"""What every method shares: declared hyperparameters stored verbatim, repr, seeding."""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from scrutiny.errors import InputError, NotDifferentiableError
from scrutiny.params import Param, declared
from scrutiny.types import Tags


class Method:
    """Base of attacks, explainers, metrics, defenses and certifiers.

    A subclass declares its hyperparameters as class attributes with
    :func:`scrutiny.params.param` and writes no ``__init__``: the base builds a
    keyword-only one that checks each value against its declaration, stores it
    under the same name and calls ``_post_init()`` (checks between parameters,
    derived state). So :meth:`get_params` is complete and
    ``type(m)(**m.get_params())`` rebuilds the method. A subclass inherits its
    parents' declarations and may redeclare one with another default (a preset).
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    tags: ClassVar[Tags] = Tags()
    #: The declared hyperparameters, by name (filled in for every subclass).
    hyperparameters: ClassVar[dict[str, Param]] = {}
    #: The test architectures (``scrutiny.testing.ARCHITECTURES``: ``"resnet"``, ``"vit"``)
    #: the method works on; on the others it raises an UnsupportedModelError naming the
    #: layer it has no rule for. The common check ``check_architectures`` runs both ways.
    architectures: ClassVar[tuple[str, ...]] = ("resnet", "vit")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.hyperparameters = declared(cls)
        if "__init__" not in vars(cls):
            inherited = next(k.__dict__["__init__"] for k in cls.__mro__[1:]
                             if "__init__" in k.__dict__)
            if inherited is object.__init__ or getattr(inherited, "declared", False):
                cls.__init__ = _declared_init(cls)  # type: ignore[method-assign]

    def _post_init(self) -> None:
        """Checks between parameters and derived state, after every parameter is stored."""

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters with their current values."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()

    __hash__ = object.__hash__


#: Constructor keywords of other attack libraries (torchattacks, ART, cleverhans) that
#: scrutiny takes elsewhere: the threat model's size and norm, and the step size.
_THREAT_WORDS = ("eps", "epsilon", "norm", "ord", "p")
_STEP_WORDS = ("alpha", "eps_step", "eps_iter", "step")


def _hint(method: Method, unknown: list[str]) -> str:
    """Where a torchattacks-style ``eps=`` / ``norm=`` / ``alpha=`` goes in scrutiny."""
    if method.kind != "attack":
        return ""
    hints = []
    if any(k in _THREAT_WORDS for k in unknown):
        hints.append("eps and the norm belong to the ThreatModel given at call time: "
                     "attack(model, x, y, threat=ThreatModel('linf', 0.1))")
    if any(k in _STEP_WORDS for k in unknown):
        params = type(method).hyperparameters
        hints.append("for an absolute step size use step_size=" if "step_size" in params
                     else "for a step as a fraction of eps use rel_step_size="
                     if "rel_step_size" in params
                     else f"{type(method).__name__} takes no step size")
    return "".join(f"; {h}" for h in hints)


def _declared_init(cls: type) -> Any:
    """The keyword-only ``__init__`` of ``cls``'s declared hyperparameters."""

    def __init__(self: Method, **kwargs: Any) -> None:
        params = type(self).hyperparameters
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise InputError(f"{type(self).__name__} does not accept "
                             f"{', '.join(map(repr, unknown))}; accepted: "
                             f"{', '.join(params) or 'none'}{_hint(self, unknown)}")
        for name, p in params.items():
            if name in kwargs:
                value = kwargs[name]
            elif p.required:
                raise InputError(f"{type(self).__name__} needs {name}=")
            else:
                value = copy.copy(p.default)
            setattr(self, name, p.validate(value))
        self._post_init()

    ann = {}
    for klass in reversed(cls.__mro__):
        ann.update(getattr(klass, "__annotations__", {}))
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY,
                             default=inspect.Parameter.empty if p.required else p.default,
                             annotation=ann.get(k, inspect.Parameter.empty))
           for k, p in cls.hyperparameters.items()])
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.declared = True  # type: ignore[attr-defined]
    return __init__


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with torch's RNG seeded, leaving the caller's RNG untouched."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def grad_wrt(out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``d out.sum() / d inputs``, with a clear error for a model without gradients."""
    if not out.requires_grad:
        raise NotDifferentiableError(
            "the model's output does not depend differentiably on its input (a detach, "
            "no_grad, argmax or non-torch step inside?); use a black-box method instead")
    (g,) = torch.autograd.grad(out.sum(), inputs)
    return g
