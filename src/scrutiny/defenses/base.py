"""What every defense shares: the Defense and Detector bases, input transforms and the
preprocessed model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scrutiny.base import Method
from scrutiny.errors import InputError, UnsupportedModelError
from scrutiny.models.adaptive import StraightThrough, Transform  # noqa: F401  (re-exported)
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import AttackResult


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


@dataclass
class DetectionReport:
    """How a detector fares: false positives on clean data, detections per attack.

    Attributes
    ----------
    threshold : float
        The detector's threshold (score > threshold means "adversarial").
    false_positive_rate : float
        Fraction of the clean inputs flagged.
    detection_rate : dict
        Per attack: fraction of its *successful* adversarial examples flagged
        (the paper's detection rate).
    detection_rate_all : dict
        Per attack: fraction of all its outputs flagged.
    roc_auc : dict
        Per attack: ROC-AUC of the score, successful adversarial examples
        against the clean inputs (threshold-free).
    n_successful : dict
        Per attack: number of successful adversarial examples.
    """

    threshold: float
    false_positive_rate: float
    detection_rate: dict[str, float] = field(default_factory=dict)
    detection_rate_all: dict[str, float] = field(default_factory=dict)
    roc_auc: dict[str, float] = field(default_factory=dict)
    n_successful: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"threshold": self.threshold, "false_positive_rate": self.false_positive_rate,
                "detection_rate": dict(self.detection_rate),
                "detection_rate_all": dict(self.detection_rate_all),
                "roc_auc": dict(self.roc_auc), "n_successful": dict(self.n_successful)}


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """ROC-AUC = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney)."""
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).double().mean() + 0.5 * (diff == 0).double().mean())


class Detector(Defense):
    """Base class of detectors: flag adversarial inputs rather than change predictions.

    A detector is recognised by this type (the audit's game matrix calibrates
    it on clean inputs and reports detection rates instead of robust
    accuracy), never by the presence of a ``detect`` attribute.
    :meth:`fit` calibrates it on clean inputs and sets the fitted threshold
    ``threshold_``; a subclass writes ``fit`` and :meth:`score`. The base
    gives :meth:`detect` (``score(x) > threshold_``), :meth:`report` and
    :meth:`wrap` (the model unchanged).
    """

    def score(self, x: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """Detector score per input ``(N,)``: larger is more suspicious."""
        raise NotImplementedError

    def detect(self, x: Any) -> torch.Tensor:
        """bool (N,): the input is flagged as adversarial (``score(x) > threshold_``)."""
        self._check_fitted("threshold_")
        return self.score(x) > self.threshold_

    def report(self, clean: Any, attacks: Mapping[str, AttackResult] | Sequence[AttackResult]
               ) -> DetectionReport:
        """False-positive rate on ``clean`` and detection rates of each attack's outputs.

        ``attacks`` maps a name to an :class:`AttackResult` (a sequence is
        named by each result's ``meta["attack"]``).
        """
        if not isinstance(attacks, Mapping):
            attacks = {f"{r.meta.get('attack', 'attack')}#{i}": r for i, r in enumerate(attacks)}
        clean_scores = self.score(clean)
        rep = DetectionReport(threshold=float(self.threshold_),
                              false_positive_rate=float((clean_scores > self.threshold_)
                                                        .float().mean()))
        for name, res in attacks.items():
            if not isinstance(res, AttackResult):
                raise InputError(f"attacks[{name!r}] must be an AttackResult, got "
                                 f"{type(res).__name__}")
            s = self.score(res.x_adv)
            flagged = s > self.threshold_
            ok = res.success
            rep.n_successful[name] = int(ok.sum())
            rep.detection_rate[name] = float(flagged[ok].float().mean()) if ok.any() else float("nan")
            rep.detection_rate_all[name] = float(flagged.float().mean())
            rep.roc_auc[name] = _auc(s[ok], clean_scores)
        return rep

    def wrap(self, model: Any) -> TorchModel:
        """The model unchanged: a detector flags inputs (:meth:`detect`), it does not
        change predictions."""
        return as_model(model)


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
        t = self.transform(x)
        if t.shape[1:] == x.shape[1:]:
            return self.model(t)
        try:
            return self.model(t)
        except RuntimeError as e:
            raise UnsupportedModelError(
                f"{type(self.transform).__name__} feeds inputs of shape {tuple(t.shape[1:])} "
                f"(not {tuple(x.shape[1:])}) to {self.model.name}, which does not accept them "
                f"({e}); a model of fixed input size (position embeddings, a flattening "
                "classifier) needs a transform that keeps the size (random_resize_pad: "
                "resize_back=True)") from e


def preprocessed(transform: Transform, model: Any, name: str) -> TorchModel:
    """Wrap ``model`` (nn.Module or TorchModel) with ``transform`` in front, as a TorchModel."""
    model = as_model(model)
    transform.bounds = model.bounds
    return TorchModel(Preprocessed(transform, model), bounds=model.bounds,
                      num_classes=model.num_classes, name=f"{name}({model.name})")
