"""The Explainer base class: owns the invariants, a subclass writes ``_explain``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from scrutiny.base import Method, grad_wrt, seeded
from scrutiny.errors import InputError
from scrutiny.models.hooks import capture  # noqa: F401  (re-exported: explainers import it from here)
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import Explanation, Tags
from scrutiny.validation import check_labels, check_outputs, check_positive, check_x


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
        x : Tensor
            Inputs ``(N, ...)`` within the model's bounds; not modified.
        target : Tensor or int, optional
            Class to explain per sample; default the predicted class.
        seed : int, optional
            Seeds any randomness (noise baselines, sampling).
        **data
            Call-time data the method declares in ``call_data`` (for example
            ``background=`` rows for the surrogate explainers).
        """
        unknown = [k for k in data if k not in self.call_data]
        if unknown:
            raise InputError(f"{type(self).__name__}.explain does not accept "
                             f"{', '.join(map(repr, unknown))}; accepted data keywords: "
                             f"{', '.join(self.call_data) or 'none'}")
        model = as_model(model)
        check_x(x, model.bounds, image=self.tags.image_only)
        dev = model.device
        x0 = x.detach().to(dev).clone()
        with model.evaluating(), seeded(seed, dev):
            with torch.no_grad():
                logits = check_outputs(model(x0), len(x0))
            if target is None:
                target = logits.argmax(dim=1)
            target = check_labels(target, len(x0), logits.shape[1], "target").to(dev)
            attr, extra = self._explain(model, x0, target, **data)
        delta = extra.pop("delta", None)
        return Explanation(
            attributions=attr.detach().to(x.device),
            target=target.cpu(),
            outputs=logits.gather(1, target[:, None])[:, 0].cpu(),
            delta=None if delta is None else delta.detach().cpu(),
            meta={"explainer": self.name, **extra})

    __call__ = explain

    def _explain(self, model: TorchModel, x: torch.Tensor, target: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError


def check_batch_size(batch_size: int) -> None:
    check_positive("batch_size", batch_size, integer=True)


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
