"""The call preamble every kind of method shares: one place that starts a call.

An attack, an explainer, a metric and a certifier begin a call the same way:
refuse call-time data keywords the method does not declare, check the threat
model (a :class:`~scrutiny.types.ThreatModel` of a norm the method supports),
wrap the model (a plain ``nn.Module`` in a :class:`TorchModel`, or in a
:class:`QueryModel` for a black-box attack), give the threat model the
model's bounds (the model owns them: :meth:`ThreatModel.resolve`), check that
``x`` is a finite float batch inside them, copy ``x`` to the model's device
(the caller's tensor is never touched), enter eval mode with frozen
parameters (:meth:`TorchModel.evaluating`) and a forked, seeded RNG
(:func:`~scrutiny.base.seeded`), and run the clean forward pass, refusing
outputs that are not a finite ``(N, K)`` tensor. :func:`prepare` does all of
it and yields a :class:`Call`; the method's body runs inside the ``with``
block, so everything is restored on exit, also on error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.models.memory import chunked
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import ThreatModel
from scrutiny.validation import check_labels, check_outputs, check_x


@dataclass
class Call:
    """One prepared call of a method: what its body works on.

    Attributes
    ----------
    model : TorchModel or QueryModel
        The wrapped model (a :class:`QueryModel` on the black-box path).
    x : Tensor
        The caller's inputs, untouched: results go back to ``x.device``.
    x0 : Tensor
        A detached copy of ``x`` on the model's device, for the method to use.
    logits : Tensor or None
        The clean outputs ``(N, K)``, checked finite (on the black-box path the
        evaluator's look, outside the query budget); None when the call asked
        for no clean pass (``prepare(clean=False)``).
    threat : ThreatModel or None
        The threat model with the model's bounds (None when the method takes none).
    queries_at_start, evaluations_at_start : int
        A QueryModel's counters before the call (0 for a TorchModel): the
        call's queries are ``model.queries - queries_at_start``.
    """

    model: TorchModel | QueryModel
    x: torch.Tensor
    x0: torch.Tensor
    logits: torch.Tensor | None
    threat: ThreatModel | None = None
    queries_at_start: int = 0
    evaluations_at_start: int = 0

    @property
    def device(self) -> torch.device:
        """Where the model (and :attr:`x0`) lives."""
        return self.x0.device

    @property
    def num_classes(self) -> int:
        """``K``, from the clean outputs."""
        return int(self.logits.shape[1])

    def labels(self, y: Any, what: str = "y") -> torch.Tensor:
        """``y`` checked as ``(N,)`` class indices of the model, on its device."""
        return check_labels(y, len(self.x0), self.num_classes, what).to(self.device)

    def target(self, target: Any) -> torch.Tensor:
        """The class to explain per sample: ``target`` checked, or the predicted class."""
        if target is None:
            return self.logits.argmax(dim=1)
        return self.labels(target, "target")


#: The most samples :func:`as_batch` gathers from a DataLoader (or any iterable of
#: batches) into one batch; set it higher to accept bigger loaders, or pass ``limit=``.
MAX_LOADER_SAMPLES = 10_000


def as_batch(x: Any, y: Any = None, *, limit: int | None = None
             ) -> tuple[Any, Any]:
    """``(x, y)`` as one batch: a DataLoader or any iterable of batches concatenated.

    A tensor ``x`` (or anything that is not an iterable of batches) passes
    through unchanged with ``y``, for the preamble to check. Otherwise ``x``
    is iterated once: each item is an ``(x, y)`` pair (a tuple or list, as a
    :class:`torch.utils.data.DataLoader` over a labelled dataset gives; further
    items are ignored) or a tensor of inputs alone, and the batches are
    concatenated in the loader's order. The labels come from the loader
    unless ``y`` is given; a loader of inputs alone gives ``y = None``. At
    most ``limit`` samples (default :data:`MAX_LOADER_SAMPLES`) are gathered:
    a bigger loader is refused with an :class:`InputError` rather than
    filling the memory.

    Examples
    --------
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.rand(10, 3), torch.arange(10) % 2)
    >>> x, y = as_batch(DataLoader(data, batch_size=4))
    >>> tuple(x.shape), y.tolist()
    ((10, 3), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    >>> as_batch(DataLoader(data, batch_size=4), limit=8)
    Traceback (most recent call last):
    ...
    scrutiny.errors.InputError: the loader holds more than limit=8 samples; ...
    """
    if isinstance(x, torch.Tensor) or isinstance(x, (str, bytes, Mapping)) or not isinstance(
            x, Iterable):
        return x, y
    limit = MAX_LOADER_SAMPLES if limit is None else int(limit)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = 0
    for i, item in enumerate(x):
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            bx, by = item[0], item[1]
        elif isinstance(item, (tuple, list)) and len(item) == 1:
            bx, by = item[0], None
        else:
            bx, by = item, None
        if not isinstance(bx, torch.Tensor):
            raise InputError(f"batch {i} of the loader holds {type(bx).__name__} inputs; "
                             "expected (x, y) pairs of tensors or tensors of inputs")
        if i and (by is None) == bool(ys):
            raise InputError(f"batch {i} of the loader {'lacks' if by is None else 'adds'} "
                             "labels; give every batch as (x, y) or none")
        n += len(bx)
        if n > limit:
            raise InputError(f"the loader holds more than limit={limit} samples; pass fewer "
                             "(a Subset, or take a few batches) or raise "
                             "scrutiny.models.calls.MAX_LOADER_SAMPLES")
        xs.append(bx)
        if by is not None:
            ys.append(torch.as_tensor(by))
    if not xs:
        raise InputError("the loader gave no batch; give x as a tensor (N, ...) for an "
                         "empty batch")
    xb = torch.cat(xs)
    if y is None and ys:
        y = torch.cat(ys)
    return xb, y


def check_call_data(who: str, data: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """Refuse call-time data keywords outside ``accepted``, naming them and the accepted ones."""
    unknown = [k for k in data if k not in accepted]
    if unknown:
        raise InputError(f"{who} does not accept {', '.join(map(repr, unknown))}; accepted data "
                         f"keywords: {', '.join(accepted) or 'none'}")


def check_threat(who: str, threat: object, norms: Sequence[str]) -> ThreatModel:
    """``threat`` as a :class:`ThreatModel` of one of ``norms`` (the method's ``tags.norms``)."""
    if not isinstance(threat, ThreatModel):
        raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
    if threat.norm not in norms:
        raise InputError(f"{who} supports norms {', '.join(norms)}; got {threat.norm!r}")
    return threat


def as_query_model(model: Any, bounds: tuple[float, float] | None, output: str,
                   who: str = "this attack") -> QueryModel:
    """The QueryModel a black-box attack queries.

    A QueryModel passes through if it reveals at least ``output`` (else an
    :class:`InputError`); a torch module is wrapped in a QueryModel that
    reveals exactly ``output``, without budget, so its gradients are never
    used (a plain module with ``bounds``, a TorchModel with its own).
    """
    if isinstance(model, QueryModel):
        if not model.reveals(output):
            raise InputError(f"{who} needs queries that reveal {output!r}; this QueryModel "
                             f"answers only {model.output!r}")
        return model
    if isinstance(model, nn.Module):
        return QueryModel(model, output=output,
                          bounds=None if isinstance(model, TorchModel) else bounds)
    raise InputError(f"{who} is a black-box attack: give it a QueryModel or a torch.nn.Module, "
                     f"got {type(model).__name__}; wrap a callable in QueryModel(fn, output=...)")


def _clean_outputs(model: TorchModel | QueryModel, x0: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(model, QueryModel):
        logits, _ = model._evaluate(x0)  # the evaluator's look: outside the budget
    else:
        with torch.no_grad():  # split where the whole batch runs out of memory
            logits = chunked(model, x0, len(x0), what=f"{name}'s clean forward pass")
    return check_outputs(logits, len(x0))


@contextlib.contextmanager
def prepare(method: object, model: Any, x: torch.Tensor, *, seed: int | None = 0,
            data: Mapping[str, Any] | None = None, accepted: Sequence[str] | None = None,
            entry: str | None = None, threat: object = None, norms: Sequence[str] | None = None,
            image: bool = False, query: str | None = None, no_grad: bool = False,
            clean: bool = True) -> Iterator[Call]:
    """Start a call of ``method`` on ``model`` and ``x``; the body runs inside.

    Steps, in order: the call-time ``data`` keywords against ``accepted``
    (default ``method.call_data``); with ``norms``, ``threat`` must be a
    ThreatModel of one of them; the model is wrapped (:func:`as_model`, a
    plain module getting the threat model's explicit bounds, or with
    ``query`` :func:`as_query_model`); the threat model takes the model's
    bounds (:meth:`ThreatModel.resolve`: an explicit, different one is an
    InputError naming both); ``x`` is checked (finite float batch inside the
    model's bounds; ``(N, C, H, W)`` with ``image``) and copied; eval mode
    with frozen parameters (a TorchModel), ``seeded(seed)`` and, with
    ``no_grad``, ``torch.no_grad()`` are entered; the clean forward pass runs
    and is checked (:func:`~scrutiny.validation.check_outputs`), unless ``clean``
    is False.

    Parameters
    ----------
    method : object
        The method called; its class name goes into the error messages, and
        its ``call_data`` is the default of ``accepted``.
    model : nn.Module, TorchModel or QueryModel
    x : Tensor
        The caller's inputs ``(N, ...)``; never modified.
    seed : int, optional
        Seeds torch's RNG (forked: the caller's is left as it was).
    data : mapping, optional
        Call-time data keywords given to the call.
    accepted : sequence of str, optional
        The data keywords the call accepts (default ``method.call_data``).
    entry : str, optional
        The called method's name for the data error (``"explain"`` gives
        ``"Lime.explain does not accept ..."``).
    threat : ThreatModel, optional
        Checked with ``norms`` and resolved to the model's bounds.
    norms : sequence of str, optional
        The norms the method supports (``tags.norms``); given, a threat model
        is required.
    image : bool
        ``x`` must be images ``(N, C, H, W)`` (``tags.image_only``).
    query : {"logits", "probs", "label"}, optional
        The black-box path: the model becomes a :class:`QueryModel` that
        reveals at least this; the clean outputs are its evaluator's look.
    no_grad : bool
        Run the body without autograd (certifiers).
    clean : bool
        Run the clean forward pass (``Call.logits``); False for a body that never
        reads the clean outputs (bound propagation's ``bounds``): ``Call.logits``
        is then None.

    Yields
    ------
    Call

    Notes
    -----
    How a certifier base adopts it (``_certify`` runs inside; a threat model
    without bounds takes the model's, different explicit ones are refused)::

        with prepare(self, model, x, seed=seed, threat=threat, norms=self.tags.norms,
                     no_grad=True) as call:
            res = self._certify(call.model, call.x0, call.labels(y), call.threat)

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from scrutiny.types import ThreatModel
    >>> net = TorchModel(nn.Linear(4, 3), bounds=(-1.0, 1.0))
    >>> x = torch.full((2, 4), -0.5)
    >>> with prepare(object(), net, x, threat=ThreatModel("linf", 0.1), norms=("linf",)) as call:
    ...     call.threat.bounds, tuple(call.logits.shape), call.x0 is x
    ((-1.0, 1.0), (2, 3), False)
    """
    name = type(method).__name__
    check_call_data(f"{name}.{entry}" if entry else name, data or {},
                    tuple(getattr(method, "call_data", ())) if accepted is None else accepted)
    if norms is not None:
        threat = check_threat(name, threat, norms)
    explicit = threat.bounds if isinstance(threat, ThreatModel) else None
    wrapped = (as_query_model(model, explicit, query, name) if query is not None
               else as_model(model, explicit))
    if isinstance(threat, ThreatModel):
        threat = threat.resolve(wrapped.bounds)
    check_x(x, wrapped.bounds, image=image)
    x0 = x.detach().to(wrapped.device).clone()
    q0, e0 = ((wrapped.queries, wrapped.evaluations) if isinstance(wrapped, QueryModel)
              else (0, 0))
    with contextlib.ExitStack() as stack:
        if isinstance(wrapped, TorchModel):
            stack.enter_context(wrapped.evaluating())
        stack.enter_context(seeded(seed, wrapped.device))
        if no_grad:
            stack.enter_context(torch.no_grad())
        logits = _clean_outputs(wrapped, x0, name) if clean else None
        yield Call(model=wrapped, x=x, x0=x0, logits=logits,
                   threat=threat if isinstance(threat, ThreatModel) else None,
                   queries_at_start=q0, evaluations_at_start=e0)
