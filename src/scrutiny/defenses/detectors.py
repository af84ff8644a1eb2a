"""Detectors: feature squeezing (Xu, Evans, Qi. NDSS 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import Defense
from scrutiny.defenses.preprocess import BitDepth, Median
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.registry import register
from scrutiny.types import AttackResult
from scrutiny.validation import check_positive, check_x


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


@register("defense", "feature_squeezing", paper="Xu, Evans, Qi. Feature squeezing: detecting "
          "adversarial examples in deep neural networks. NDSS 2018")
class FeatureSqueezing(Defense):
    """Feature-squeezing detector: flag inputs whose prediction moves when squeezed.

    The score of ``x`` is the joint detector's
    ``max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` over the squeezers
    ``s`` (bit-depth reduction to ``bits`` bits and ``median_size`` x
    ``median_size`` median smoothing); ``x`` is flagged when the score
    exceeds a threshold chosen on clean inputs for the false-positive rate
    ``fpr``.

    Parameters
    ----------
    bits : int, optional
        Bit depth of the bit-depth squeezer (None: no such squeezer). The
        paper uses 1 for MNIST; on the 8x8 digits (17 grey levels) 1 bit costs
        about 10 points of accuracy, so ``bits=2`` keeps the squeezed
        accuracy near the clean one there.
    median_size : int, optional
        Window of the median squeezer (None: none). The paper: 2 for MNIST.
    fpr : float
        Target false-positive rate on the clean calibration data (paper: 5%).
    batch_size : int
        Rows per forward (the input and its squeezed versions go in one batch).

    References
    ----------
    .. [1] Xu, Evans, Qi. "Feature squeezing: detecting adversarial examples in
       deep neural networks". NDSS 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.attacks import FGSM
    >>> from scrutiny.types import ThreatModel
    >>> model, test = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> det = FeatureSqueezing(bits=2, median_size=None).fit(model, load_digits(split="train"))
    >>> adv = FGSM()(model, test.x, test.y, threat=ThreatModel("linf", 0.1))
    >>> rep = det.report(test.x, {"fgsm": adv})
    >>> rep.detection_rate["fgsm"] > rep.false_positive_rate
    True
    """

    def __init__(self, *, bits: int | None = 1, median_size: int | None = 2, fpr: float = 0.05,
                 batch_size: int = 1024) -> None:
        if bits is None and median_size is None:
            raise InputError("give at least one squeezer: bits or median_size")
        if bits is not None:
            check_positive("bits", bits, integer=True)
            if bits > 16:
                raise InputError(f"bits must be between 1 and 16, got {bits!r}")
        if median_size is not None:
            check_positive("median_size", median_size, integer=True)
        if not 0 < fpr < 1:
            raise InputError(f"fpr must be in (0, 1), got {fpr!r}")
        check_positive("batch_size", batch_size, integer=True)
        self.bits = bits
        self.median_size = median_size
        self.fpr = fpr
        self.batch_size = batch_size

    def squeezers(self, bounds: tuple[float, float] = (0.0, 1.0)) -> list[torch.nn.Module]:
        """The squeezing transforms, in order (bit depth, then median)."""
        out: list[torch.nn.Module] = []
        if self.bits is not None:
            out.append(BitDepth(self.bits, bounds))
        if self.median_size is not None:
            out.append(Median(self.median_size, bounds))
        return out

    def _scores(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        """(N, S) L1 distances between the softmax of x and of each squeezed x."""
        sq = self.squeezers(model.bounds)
        per = max(1, self.batch_size // (len(sq) + 1))
        dev = model.device
        out = []
        with model.evaluating(), torch.no_grad():
            for i in range(0, len(x), per):
                xb = x[i:i + per].to(dev)
                p = F.softmax(model(torch.cat([xb] + [s(xb) for s in sq])), dim=1)
                p = p.reshape(len(sq) + 1, len(xb), -1)
                out.append((p[1:] - p[0]).abs().sum(-1).T.cpu())
        return torch.cat(out) if out else torch.empty(0, len(sq))

    def _inputs(self, data: Any, bounds: tuple[float, float]) -> torch.Tensor:
        if isinstance(data, ArrayDataset):
            data = data.x
        if isinstance(data, AttackResult):
            data = data.x_adv
        return check_x(data, bounds, image=self.median_size is not None)

    def fit(self, model: Any, data: Any = None) -> FeatureSqueezing:
        """Calibrate the threshold on clean inputs ``data`` (tensor or ArrayDataset).

        The threshold is the smallest score value such that at most a fraction
        ``fpr`` of the calibration scores lie strictly above it.
        """
        model = as_model(model)
        x = self._inputs(data, model.bounds)
        if len(x) < 2:
            raise InputError("fit needs at least 2 clean inputs to calibrate the threshold")
        scores = self._scores(model, x).amax(dim=1)
        k = int(self.fpr * len(scores))  # number of calibration inputs allowed above
        self.threshold_: float | None = float(scores.sort(descending=True).values[k])
        self.model_: TorchModel | None = model
        return self

    def score(self, x: Any) -> torch.Tensor:
        """Joint detector score per input (N,): the largest squeezing distance."""
        self._check_fitted("model_")
        return self._scores(self.model_, self._inputs(x, self.model_.bounds)).amax(dim=1)

    def detect(self, x: Any) -> torch.Tensor:
        """bool (N,): the input is flagged as adversarial."""
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
