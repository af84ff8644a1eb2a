"""Spectral signatures: poison shows along the top singular direction of its class (Tran et al. 2018)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scrutiny.data import ArrayDataset
from scrutiny.defenses.backdoor.base import BackdoorScan, ScanResult, anomaly_threshold, mad_anomaly_index
from scrutiny.defenses.backdoor.clustering import representations
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["SpectralResult", "SpectralSignatures", "spectral_signatures"]

_PAPER = "Tran, Li, Madry. Spectral Signatures in Backdoor Attacks. NeurIPS 2018"


@dataclass(repr=False)
class SpectralResult(ScanResult):
    """Spectral signatures' verdict.

    Attributes
    ----------
    scores : torch.Tensor
        ``(N,)`` outlier score of each training point: its squared projection on the top
        singular direction of its class's centred representations.
    classes : list of int
        The classes analysed, in the order of the arrays below.
    top_share : numpy.ndarray
        ``(K,)`` share of the class's variance along its top singular direction.
    anomaly_index : numpy.ndarray
        ``(K,)`` MAD anomaly index of ``top_share`` across the classes (how the classes
        are flagged).
    """

    scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    classes: list[int] = field(default_factory=list)
    top_share: np.ndarray = field(default_factory=lambda: np.zeros(0))
    anomaly_index: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict[str, Any]:
        """The numbers, flagged classes and suspicious indices, JSON-ready (no tensors)."""
        return {"method": self.meta.get("method"), "flagged": [int(k) for k in self.flagged],
                "classes": [int(k) for k in self.classes],
                "top_share": [float(v) for v in self.top_share],
                "anomaly_index": [float(v) for v in self.anomaly_index],
                "n_suspicious": len(self.suspicious),
                "suspicious": [int(i) for i in self.suspicious]}


@register("backdoor_scan", "spectral_signatures", paper=_PAPER, test_params={"eps": 0.2})
class SpectralSignatures(BackdoorScan):
    """Spectral signatures: remove each class's top outliers along its top singular direction.

    Tran et al. observe that a backdoor leaves a trace in the representations the network
    learns: within the target class, the poison points and the clean points differ along
    one direction, strongly enough to show in the class's top singular vector. For each
    class (by the training label), the representations ``R`` of its ``n`` training points
    (:func:`~scrutiny.defenses.backdoor.clustering.representations`; by default the last
    hidden layer) are centred, ``v`` is the top right singular vector of the centred
    matrix, and each point's outlier score is its squared projection ``<R_i - mean, v>^2``.
    The ``round(1.5 * eps * n)`` highest scores of every class are flagged
    (``suspicious``; the paper removes them and retrains), ``eps`` being an upper bound on
    the share of a class that is poison.

    The paper flags points in every class and no class as such. Here ``flagged`` lists
    the classes whose top direction stands out: the share of the class's variance along
    ``v`` has a MAD anomaly index (as in Neural Cleanse) above the threshold, above the
    median across classes; the threshold is chosen, as Neural Cleanse's, for the number
    of classes so that a model whose shares are normally distributed has a class flagged
    with probability ``false_positive_rate``
    (:func:`~scrutiny.defenses.backdoor.base.anomaly_threshold`), unless
    ``anomaly_threshold`` sets it. With ``only_flagged=True`` only the points of those
    classes are ``suspicious``. The spectral signature is provably there when the poison
    is a small share of its class; when it makes up about half of the class, the scores
    of both halves are alike and the top scores mix them.

    Call ``scan(model, data, *, seed)`` with ``data`` the training set the model was
    trained on.

    Parameters
    ----------
    layer : str, optional
        The layer whose output is analysed (flattened); None reads the input of the last
        ``nn.Linear`` (the last hidden layer).
    eps : float
        Upper bound on the poison's share of a class: ``1.5 * eps`` of each class is flagged.
    anomaly_threshold : float, optional
        Anomaly index of a class's top variance share above which the class is flagged;
        None chooses it from the number of classes and ``false_positive_rate``.
    false_positive_rate : float
        With ``anomaly_threshold=None``: the probability that a class of a model whose
        classes' shares are normally distributed (no backdoor) is flagged.
    only_flagged : bool
        Keep as ``suspicious`` only the top-scored points of the flagged classes (the
        paper's algorithm: False, every class).

    References
    ----------
    .. [1] Tran, Li, Madry. Spectral Signatures in Backdoor Attacks. NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import pretrained
    >>> r = SpectralSignatures(eps=0.05)(pretrained("digits-cnn", progress=False),
    ...                                  load_digits(split="train"), seed=0)
    >>> r.scores.shape, len(r.suspicious)
    (torch.Size([1347]), 100)
    """

    layer: str | None = param(None, kind=str)
    eps: float = param(0.1, between=(0.0, 2 / 3), interval="(]")
    anomaly_threshold: float | None = param(None, positive=True)
    false_positive_rate: float = param(0.05, between=(0.0, 1.0), interval="()")
    only_flagged: bool = param(False, kind=bool)

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None) -> SpectralResult:
        if data is None:
            raise InputError("SpectralSignatures needs the training set: scan(model, data)")
        feats = representations(model, data.x, layer=self.layer)
        scores = torch.zeros(len(data), dtype=torch.float64)
        classes, share, tops = [], [], []
        for k in sorted(set(data.y.tolist())):
            idx = torch.nonzero(data.y == k).flatten()
            if len(idx) < 2:
                continue
            centred = feats[idx] - feats[idx].mean(0)
            _, s, vh = torch.linalg.svd(centred, full_matrices=False)
            sc = (centred @ vh[0]) ** 2
            scores[idx] = sc
            total = float((s ** 2).sum())
            classes.append(int(k))
            share.append(float(s[0] ** 2) / total if total > 0 else 0.0)
            n_top = round(1.5 * self.eps * len(idx))
            tops.append(idx[torch.argsort(sc, descending=True, stable=True)[:n_top]])
        share_a = np.array(share)
        index = mad_anomaly_index(share_a) if len(share_a) else np.zeros(0)
        med = float(np.median(share_a)) if len(share_a) else math.nan
        limit = (float(self.anomaly_threshold) if self.anomaly_threshold is not None
                 else anomaly_threshold(len(classes), self.false_positive_rate))
        flagged = [k for k, v, a in zip(classes, share_a, index, strict=True)
                   if v > med and a > limit]
        keep = [t for k, t in zip(classes, tops, strict=True)
                if not self.only_flagged or k in flagged]
        sus = torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)
        return SpectralResult(flagged=flagged, suspicious=sus, scores=scores, classes=classes,
                              top_share=share_a, anomaly_index=index,
                              meta={"method": self.name, **self.get_params()})


def spectral_signatures(model: Any, data: ArrayDataset, *, seed: int | None = 0,
                        **params: Any) -> SpectralResult:
    """Function form of :class:`SpectralSignatures`: ``spectral_signatures(model, train, eps=0.1)``."""
    return SpectralSignatures(**params)(model, data, seed=seed)
