"""What every method shares: parameters stored verbatim, repr, seeding."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from scrutiny.errors import NotDifferentiableError
from scrutiny.types import Tags


class Method:
    """Base of attacks and explainers.

    Subclasses take keyword-only hyperparameters in ``__init__`` and store each
    under the same attribute name, so :meth:`get_params` is complete and
    ``type(m)(**m.get_params())`` rebuilds the method.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    tags: ClassVar[Tags] = Tags()

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
