"""Detectors: feature squeezing (Xu, Evans, Qi. NDSS 2018)."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import DetectionReport, Detector  # noqa: F401  (re-exported)
from scrutiny.defenses.preprocess import BitDepth, Median
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import AttackResult
from scrutiny.validation import check_x


@register("defense", "feature_squeezing", paper="Xu, Evans, Qi. Feature squeezing: detecting "
          "adversarial examples in deep neural networks. NDSS 2018")
class FeatureSqueezing(Detector):
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

    bits: int | None = param(1, integer=True, between=(1, 16), optional=True)
    median_size: int | None = param(2, integer=True, positive=True, optional=True)
    fpr: float = param(0.05, between=(0, 1), interval="()")
    batch_size: int = param(1024, integer=True, positive=True)

    def _post_init(self) -> None:
        if self.bits is None and self.median_size is None:
            raise InputError("give at least one squeezer: bits or median_size")

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
