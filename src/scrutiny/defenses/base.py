"""What every defense shares: the Defense base, input transforms and the preprocessed model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scrutiny.base import Method
from scrutiny.errors import InputError
from scrutiny.models.adaptive import StraightThrough, Transform  # noqa: F401  (re-exported)
from scrutiny.models.wrapper import TorchModel, as_model


class Defense(Method):
    """Base class of defenses: ``fit(model, data) -> self`` then ``wrap(model)``.

    Constructor = hyperparameters (stored verbatim); the model and the data
    come to :meth:`fit` and :meth:`wrap`. Fitted state lives in attributes
    ending with ``_`` (scikit-learn style), never in the parameters.
    """

    kind = "defense"

    def fit(self, model: Any, data: Any = None) -> Defense:
        """Fit the defense to ``model`` (and ``data``); a no-op unless overridden."""
        return self

    def wrap(self, model: Any) -> TorchModel:  # pragma: no cover - abstract
        """The defended model."""
        raise NotImplementedError

    def _check_fitted(self, attr: str) -> None:
        if getattr(self, attr, None) is None:
            raise InputError(f"{type(self).__name__} is not fitted; call fit(model, data) first")


class Preprocessed(nn.Module):
    """``model(transform(x))``: a defended classifier with a front end.

    Parameters
    ----------
    transform : nn.Module
        Input transform (usually a :class:`Transform`).
    model : TorchModel
        The classifier behind it (it keeps its own normalisation).
    """

    def __init__(self, transform: nn.Module, model: TorchModel) -> None:
        super().__init__()
        self.transform = transform
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.transform(x))


def preprocessed(transform: Transform, model: Any, name: str) -> TorchModel:
    """Wrap ``model`` (nn.Module or TorchModel) with ``transform`` in front, as a TorchModel."""
    model = as_model(model)
    transform.bounds = model.bounds
    return TorchModel(Preprocessed(transform, model), bounds=model.bounds,
                      num_classes=model.num_classes, name=f"{name}({model.name})")
