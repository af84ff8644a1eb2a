"""The Explainer base class: owns the invariants, a subclass writes ``_explain``."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import nn

from scrutiny.base import Method, grad_wrt
from scrutiny.models.calls import as_batch, check_call_data, prepare
from scrutiny.models.hooks import capture  # noqa: F401  (re-exported: explainers import it from here)
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import Explanation, Tags


class Explainer(Method):
    """Base class of local explanation methods.

    ``explain`` (also ``__call__``) validates the inputs, evaluates the model
    in eval mode with frozen parameters (restored afterwards, even on error),
    seeds the RNG, resolves the target (default: the predicted class), calls
    ``_explain`` and packs an :class:`~scrutiny.types.Explanation`. Inputs are
    never modified.
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
        model : nn.Module or TorchModel
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
        with prepare(self, model, x, seed=seed, data=data, entry="explain",
                     image=self.tags.image_only) as call:
            logits, target = call.logits, call.target(target)
            attr, extra = self._explain(call.model, call.x0, target, **data)
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
