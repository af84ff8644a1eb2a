"""QueryModel: a model you may only query, with an exact counter and a budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.models.wrapper import TorchModel, as_model

OUTPUTS: tuple[str, ...] = ("logits", "probs", "label")


class QueryModel:
    """A black box: ``predict`` only, every queried input counted.

    Parameters
    ----------
    fn : nn.Module, TorchModel or callable
        A torch model (queried without gradients) or any callable mapping a
        batch ``(N, ...)`` (tensor) to scores ``(N, K)`` or labels ``(N,)``
        (tensor or numpy array).
    output : {"logits", "probs", "label"}
        What a query reveals. For a torch model, probabilities are the softmax
        and the label the argmax of its logits; a callable must already return
        this kind.
    budget : int, optional
        Total number of inputs that may be queried; a query that would go past
        it raises :class:`~scrutiny.errors.QueryBudgetExceeded` and is not run.
    bounds : (float, float)
        Valid input range.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> qm = QueryModel(nn.Linear(4, 3), output="label", budget=10)
    >>> qm.predict(torch.rand(4, 4)).shape, qm.queries
    (torch.Size([4]), 4)
    """

    def __init__(self, fn: nn.Module | Callable[[Any], Any], *, output: str = "logits",
                 budget: int | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 name: str | None = None) -> None:
        if output not in OUTPUTS:
            raise InputError(f"unknown output {output!r}; accepted: {', '.join(OUTPUTS)}")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise InputError(f"budget must be an int >= 0 or None, got {budget!r}")
        if not callable(fn):
            raise InputError(f"fn must be callable, got {type(fn).__name__}")
        self._torch = as_model(fn, bounds) if isinstance(fn, nn.Module) else None
        self._fn = fn
        self.output = output
        self.budget = budget
        self.bounds = (float(bounds[0]), float(bounds[1]))
        self.queries = 0
        self.name = name or getattr(fn, "name", None) or type(fn).__name__

    @property
    def remaining(self) -> int | None:
        """Queries left, or None without a budget."""
        return None if self.budget is None else self.budget - self.queries

    def reset(self) -> None:
        """Set the counter back to zero."""
        self.queries = 0

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Query a batch; returns scores ``(N, K)`` or labels ``(N,)``."""
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        n = int(x.shape[0])
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget spent: {self.queries} of {self.budget} used, {n} more asked")
        self.queries += n
        with torch.no_grad():
            if isinstance(self._torch, TorchModel):
                with self._torch.evaluating():
                    logits = self._torch(x.to(self._torch.device)).cpu()
                if self.output == "probs":
                    return logits.softmax(dim=1)
                return logits.argmax(dim=1) if self.output == "label" else logits
            out = self._fn(x.detach().cpu())
        out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
        expect = 1 if self.output == "label" else 2
        if out.dim() != expect or out.shape[0] != n:
            raise InputError(f"the black box returned shape {tuple(out.shape)} for {n} inputs; "
                             f"expected {'(N,)' if expect == 1 else '(N, K)'} for output "
                             f"{self.output!r}")
        return out.long() if self.output == "label" else out.float()

    __call__ = predict
