"""The Explainer base class: owns the invariants, a subclass writes ``_explain``."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from scrutiny import registry
from scrutiny.base import Method, grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.calls import as_batch, check_call_data, prepare
from scrutiny.models.hooks import capture  # noqa: F401  (re-exported: explainers import it from here)
from scrutiny.models.memory import retry_smaller
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import Explanation, Tags


class Explainer(Method):
    """Base class of local explanation methods.

    ``explain`` (also ``__call__``) validates the inputs, evaluates the model
    in eval mode with frozen parameters (restored afterwards, even on error),
    seeds the RNG, resolves the target (default: the predicted class), calls
    ``_explain`` and packs an :class:`~scrutiny.types.Explanation`. Inputs are
    never modified.

    A method that needs only forward passes (``tags.white_box=False``: LIME,
    KernelSHAP, occlusion) also explains a :class:`~scrutiny.models.QueryModel`
    (e.g. an :class:`~scrutiny.models.HttpModel` endpoint) as a black-box attack
    queries one: every perturbed input is a query (counted, within the budget;
    ``meta["queries"]``), the clean look that picks the default target is the
    evaluator's (``meta["evaluator_queries"]``). The QueryModel must reveal scores;
    one that reveals probabilities is explained through their logarithm (a softmax
    gives the probabilities back; an explained "logit" is the log-probability).
    A white-box method refuses a QueryModel with an :class:`InputError`.
    """

    kind = "explainer"
    tags = Tags()
    #: Names of call-time data keywords ``explain`` forwards to ``_explain``
    #: (e.g. ``("background",)``); data, not hyperparameters, so not in ``__init__``.
    call_data: ClassVar[tuple[str, ...]] = ()

    def explain(self, model, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                seed: int | None = 0, **data: Any) -> Explanation:
        """Explain the model's output for ``target`` at each input of ``x``.

        Parameters
        ----------
        model : nn.Module, TorchModel or QueryModel
            A QueryModel (only queries) for a method with ``tags.white_box=False``.
        x : Tensor or DataLoader
            Inputs ``(N, ...)`` within the model's bounds; not modified. A
            DataLoader (any iterable of ``(x, y)`` batches or of input
            tensors) is gathered into one batch
            (:func:`scrutiny.models.calls.as_batch`); its labels are not the
            target (give ``target=`` to explain them).
        target : Tensor or int, optional
            Class to explain per sample; default the predicted class.
        seed : int, optional
            Seeds any randomness (noise baselines, sampling).
        **data
            Call-time data the method declares in ``call_data`` (for example
            ``background=`` rows for the surrogate explainers).
        """
        data = {**self._bound_data, **data}
        x, _ = as_batch(x)
        queried = isinstance(model, QueryModel)
        if queried and self.tags.white_box:
            raise InputError(
                f"{type(self).__name__} needs the model's gradients or layers (white-box); a "
                f"QueryModel (an endpoint) only answers queries: use a black-box explainer "
                f"({', '.join(black_box_explainers())})")
        with prepare(self, model, x, seed=seed, data=data, entry="explain",
                     image=self.tags.image_only, query="probs" if queried else None) as call:
            logits, target = call.logits, call.target(target)
            subject = QueryScores(call.model) if queried else call.model
            if queried:  # every try would spend queries; the QueryModel splits its forwards
                attr, extra = self._explain(subject, call.x0, target, **data)
            else:  # out of memory: again at a smaller batch_size
                attr, extra = retry_smaller(self, lambda m: m._explain(subject, call.x0, target,
                                                                       **data), seed=seed)
            if queried:
                extra["queries"] = call.model.queries - call.queries_at_start
                extra["evaluator_queries"] = call.model.evaluations - call.evaluations_at_start
        delta = extra.pop("delta", None)
        return Explanation(
            attributions=attr.detach().to(x.device),
            target=target.cpu(),
            outputs=logits.gather(1, target[:, None])[:, 0].cpu(),
            delta=None if delta is None else delta.detach().cpu(),
            location=extra.pop("location", "input"),
            meta={"explainer": self.name, **extra})

    __call__ = explain

    #: Call-time data bound by :meth:`with_data` (empty, and shared read-only, for an
    #: explainer built directly; a bound copy gets its own dict).
    _bound_data: dict[str, Any] = {}

    def with_data(self, **data: Any) -> Explainer:
        """This explainer with call-time data bound: every ``explain`` call passes ``data``.

        A copy (this instance is unchanged); the keywords must be ones the
        class declares in ``call_data``. Keywords given to ``explain`` itself
        take precedence. A metric that re-explains (at perturbed inputs, for a
        randomized model) judges ``explainer.with_data(background=rows)``, so
        the data reaches each of its calls.

        Examples
        --------
        >>> import torch
        >>> from scrutiny.explain import Saliency
        >>> from scrutiny.explain.surrogate.lime import Lime
        >>> lime = Lime().with_data(background=torch.rand(50, 4))
        >>> sorted(lime._bound_data), Lime()._bound_data
        (['background'], {})
        >>> Saliency().with_data(background=torch.zeros(1, 4))
        Traceback (most recent call last):
        ...
        scrutiny.errors.InputError: Saliency.explain does not accept 'background'; ...
        """
        check_call_data(f"{type(self).__name__}.explain", data, self.call_data)
        bound = copy.copy(self)
        bound._bound_data = {**self._bound_data, **data}
        return bound

    def _explain(self, model: TorchModel, x: torch.Tensor, target: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError


def black_box_explainers() -> list[str]:
    """Names of the registered explainers that need only queries (``tags.white_box=False``)."""
    return [s.split(":", 1)[1] for s in registry.list_methods("explainer")
            if not registry.get(s).cls.tags.white_box]


class QueryScores:
    """A QueryModel as a black-box explainer's ``_explain`` sees it: ``model(x)`` gives scores.

    Each call is a query (:meth:`QueryModel.predict`: counted, within the budget).
    The scores are the logits, or the log-probabilities of a QueryModel revealing
    probabilities (their softmax is the probabilities). ``bounds``, ``device`` and
    ``num_classes`` are the QueryModel's.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> qm = QueryModel(nn.Linear(4, 3), output="probs")
    >>> scores = QueryScores(qm)(torch.rand(2, 4))
    >>> torch.allclose(scores.exp().sum(1), torch.ones(2)), qm.queries
    (True, 2)
    """

    def __init__(self, model: QueryModel) -> None:
        if not model.reveals("probs"):
            raise InputError(f"explaining needs scores; this QueryModel answers only "
                             f"{model.output!r}")
        self.model = model
        self.bounds = model.bounds
        self.device = model.device

    @property
    def num_classes(self) -> int | None:
        return self.model.num_classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.predict(x)
        if self.model.output == "probs":
            out = out.clamp_min(torch.finfo(out.dtype).tiny).log()
        return out


def target_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d z_target / dx, z_target)`` for a batch: one forward and one backward."""
    x = x.detach().requires_grad_(True)
    out = model(x).gather(1, target[:, None])[:, 0]
    return grad_wrt(out, x), out.detach()


def function_twin(cls: type[Explainer], name: str):
    """The quick-use function of an explainer class.

    ``twin(model, x, target=None, *, seed=0, **kw)`` builds ``cls`` from the
    hyperparameters in ``kw`` and passes its declared call-time data
    (``cls.call_data``, e.g. ``background``) to ``explain``.
    """

    def twin(model, x, target=None, *, seed: int | None = 0, **kw: Any):
        data = {k: kw.pop(k) for k in cls.call_data if k in kw}
        return cls(**kw).explain(model, x, target, seed=seed, **data)

    twin.__name__ = twin.__qualname__ = name
    twin.__doc__ = (f"Function twin of :class:`{cls.__name__}`: "
                    f"``{name}(model, x, target, seed=0, **hyperparameters_and_data)``.")
    return twin
