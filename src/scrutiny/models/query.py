"""QueryModel: a model you may only query, with an exact counter and a budget."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.validation import DEFAULT_BOUNDS, check_bounds

OUTPUTS: tuple[str, ...] = ("logits", "probs", "label")
#: How much each output kind reveals: a label < probabilities < logits (the logits
#: give the probabilities, the probabilities the label).
REVEALS: dict[str, int] = {"label": 0, "probs": 1, "logits": 2}


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
    bounds : (float, float), optional
        Valid input range; default a TorchModel's own bounds (it owns them:
        other bounds are an error), else [0, 1].
    name : str, optional
        Shown in reports.
    num_classes : int, optional
        Number of classes; needed only for a label-only callable (scores and
        torch models tell it).

    Attributes
    ----------
    queries : int
        Inputs the attacker has queried through :meth:`predict` (what the
        budget limits).
    evaluations : int
        Inputs the evaluator looked at through :meth:`_evaluate`: outside the
        budget, by design.

    Notes
    -----
    ``predict`` is the attacker's only door and every input through it is
    counted in :attr:`queries` and limited by the budget. :meth:`_evaluate` is
    the evaluator's: the attack base classes use it to check the prediction
    at the clean inputs and at the returned ``x_adv`` (success, norms, robust
    accuracy), one row per sample each, so an attack on ``N`` samples costs
    the black box ``2 N`` inputs on top of its queries. As in AutoAttack
    (whose Square attack checks the clean prediction and the returned points
    outside its query count), these looks are not part of the attack's
    queries and not limited by the budget: they are counted separately in
    :attr:`evaluations` and reported as ``AttackResult.meta["evaluator_queries"]``.
    Attacks must never call it.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> qm = QueryModel(nn.Linear(4, 3), output="label", budget=10)
    >>> qm.predict(torch.rand(4, 4)).shape, qm.queries
    (torch.Size([4]), 4)
    >>> _ = qm._evaluate(torch.rand(4, 4))  # the evaluator's look: outside the budget
    >>> qm.queries, qm.evaluations, qm.remaining
    (4, 4, 6)
    """

    def __init__(self, fn: nn.Module | Callable[[Any], Any], *, output: str = "logits",
                 budget: int | None = None, bounds: tuple[float, float] | None = None,
                 name: str | None = None, num_classes: int | None = None) -> None:
        if output not in OUTPUTS:
            raise InputError(f"unknown output {output!r}; accepted: {', '.join(OUTPUTS)}")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise InputError(f"budget must be an int >= 0 or None, got {budget!r}")
        if not callable(fn):
            raise InputError(f"fn must be callable, got {type(fn).__name__}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise InputError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")
        self._torch = as_model(fn, bounds) if isinstance(fn, nn.Module) else None
        own = self._torch.bounds if self._torch is not None else None
        if bounds is not None and own is not None and check_bounds(bounds) != own:
            raise InputError(f"bounds {tuple(bounds)!r} differ from the model's bounds {own!r}; "
                             "the model owns its bounds: leave bounds= out")
        self._fn = fn
        self.output = output
        self.budget = budget
        self.bounds = own or check_bounds(DEFAULT_BOUNDS if bounds is None else bounds)
        self.queries = 0
        self.evaluations = 0
        self.name = name or getattr(fn, "name", None) or type(fn).__name__
        self._num_classes = num_classes

    @property
    def device(self) -> torch.device:
        """Where the wrapped torch model lives (CPU for a callable)."""
        return self._torch.device if self._torch is not None else torch.device("cpu")

    @property
    def num_classes(self) -> int | None:
        """Number of classes, when known (given, or seen in a torch model or scores)."""
        if self._num_classes is None and self._torch is not None:
            return self._torch.num_classes
        return self._num_classes

    def reveals(self, output: str) -> bool:
        """Whether a query shows at least ``output`` (``"label"`` < ``"probs"`` < ``"logits"``)."""
        if output not in REVEALS:
            raise InputError(f"unknown output {output!r}; accepted: {', '.join(OUTPUTS)}")
        return REVEALS[self.output] >= REVEALS[output]

    @property
    def remaining(self) -> int | None:
        """Queries left, or None without a budget."""
        return None if self.budget is None else self.budget - self.queries

    def reset(self) -> None:
        """Set the counters (:attr:`queries`, :attr:`evaluations`) back to zero."""
        self.queries = 0
        self.evaluations = 0

    def evaluating(self) -> contextlib.AbstractContextManager:
        """A block of many queries: a wrapped torch model is put in eval mode once
        (:meth:`TorchModel.evaluating`), not at every query; a callable changes nothing.

        Examples
        --------
        >>> from torch import nn
        >>> box = QueryModel(nn.Linear(4, 3))
        >>> with box.evaluating():
        ...     box.predict(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        """
        return self._torch.evaluating() if self._torch is not None else contextlib.nullcontext()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Query a batch; returns scores ``(N, K)`` or labels ``(N,)`` on ``x``'s device.

        Every row counts as one query. A query that would go past the budget
        raises :class:`~scrutiny.errors.QueryBudgetExceeded` and is neither run
        nor counted.
        """
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        n = int(x.shape[0])
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget spent: {self.queries} of {self.budget} used, {n} more asked")
        self.queries += n
        return self._forward(x, self.output)

    def _forward(self, x: torch.Tensor, output: str) -> torch.Tensor:
        n = int(x.shape[0])
        with torch.no_grad():
            if isinstance(self._torch, TorchModel):
                if n:  # logits() is in eval mode; a forward that runs out of memory is split
                    logits = self._torch.logits(x, batch_size=n).to(x.device)
                else:
                    with self._torch.evaluating():
                        logits = self._torch(x.to(self._torch.device)).to(x.device)
                if output == "probs":
                    return logits.softmax(dim=1)
                return logits.argmax(dim=1) if output == "label" else logits
            out = self._fn(x.detach().cpu())
        out = torch.as_tensor(np.asarray(out) if not isinstance(out, torch.Tensor) else out)
        expect = 1 if self.output == "label" else 2
        if out.dim() != expect or out.shape[0] != n:
            raise InputError(f"the black box returned shape {tuple(out.shape)} for {n} inputs; "
                             f"expected {'(N,)' if expect == 1 else '(N, K)'} for output "
                             f"{self.output!r}")
        if self.output != "label" and self._num_classes is None:
            self._num_classes = int(out.shape[1])
        out = out.to(x.device)
        return out.long() if self.output == "label" else out.float()

    def _evaluate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluator's view: ``(scores (N, K), labels (N,))``, outside the budget.

        Not a query: not in :attr:`queries`, never refused by the budget, and
        counted in :attr:`evaluations` instead. The attack base classes call
        it to verify the prediction at the clean input and at ``x_adv``, as
        whoever scores the attack would. Scores are the logits of a torch
        model (also when queries reveal less), the callable's scores, or, for
        a label-only callable, the one-hot labels (needs ``num_classes``).
        Attacks must use :meth:`predict`.
        """
        self.evaluations += int(x.shape[0])
        if isinstance(self._torch, TorchModel):
            scores = self._forward(x, "logits")
            return scores, scores.argmax(dim=1)
        out = self._forward(x, self.output)
        if self.output != "label":
            return out, out.argmax(dim=1)
        k = self.num_classes
        if k is None:
            raise InputError("a label-only QueryModel over a callable needs num_classes= to "
                             "check labels and report results")
        if len(out) and (int(out.min()) < 0 or int(out.max()) >= k):
            raise InputError(f"the black box returned labels outside 0..{k - 1}")
        return torch.nn.functional.one_hot(out, k).float(), out

    __call__ = predict
