"""The base of the backdoor scans (registry kind ``"backdoor_scan"``).

A backdoor scan tells a user whether a model they were handed, or the training set it was
trained on, carries a backdoor. Model scans (Neural Cleanse) need only the model and a
little clean data; training-set scans (activation clustering, spectral signatures) read
the model's representations of its training points and flag the poisoned ones. Both are
called as ``scan(model, data, *, seed)`` and return a :class:`ScanResult`: the labels
they judge infected (``flagged``) and, for the training-set scans, the points they flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from scrutiny.models.data_method import DataMethod, DataResult

__all__ = ["MAD_CONSISTENCY", "BackdoorScan", "ScanResult", "anomaly_threshold", "mad_anomaly_index",
           "precision_recall"]

#: The MAD's consistency constant for normally distributed values (Wang et al. 2019).
MAD_CONSISTENCY = 1.4826
#: Largest number of normal values drawn at once by :func:`anomaly_threshold`.
_DRAW_BUDGET = 2_000_000


@dataclass(repr=False)
class ScanResult(DataResult):
    """A scan's verdict.

    Attributes
    ----------
    flagged : list of int
        The labels judged infected (the backdoor's target labels, or the classes whose
        training points hold a poisoned cluster); empty when the scan finds nothing.
    suspicious : torch.Tensor
        ``int64`` indices of the flagged training points (training-set scans; empty for
        model scans).
    """

    flagged: list[int] = field(default_factory=list)
    suspicious: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


class BackdoorScan(DataMethod):
    """Base of the methods of kind ``"backdoor_scan"``: a subclass declares its
    hyperparameters, implements ``_run(model, data, *, seed)`` and returns a
    :class:`ScanResult` (or a subclass)."""

    kind = "backdoor_scan"


def precision_recall(suspicious: torch.Tensor, poisoned: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of the flagged points ``suspicious`` against the true poison
    points ``poisoned`` (indices into the same training set); NaN where undefined."""
    s = set(suspicious.tolist())
    p = set(poisoned.tolist())
    hit = len(s & p)
    return (hit / len(s) if s else float("nan"), hit / len(p) if p else float("nan"))


def mad_anomaly_index(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """The anomaly index of each value: ``|v - median| / (1.4826 * median(|v - median|))``.

    The robust z-score Neural Cleanse computes on the labels' trigger norms (and spectral
    signatures, here, on the classes' variance shares); a value equal to the median has
    index 0, and every other value has index ``inf`` when the MAD is 0.

    Examples
    --------
    >>> mad_anomaly_index(np.array([10.0, 11.0, 9.0, 10.0, 2.0])).round(2).tolist()
    [0.0, 0.67, 0.67, 0.0, 5.4]
    """
    v = np.asarray(values, dtype=np.float64)
    dev = np.abs(v - np.median(v))
    mad = MAD_CONSISTENCY * np.median(dev)
    if mad == 0:
        return np.where(dev > 0, np.inf, 0.0)
    return dev / mad


@lru_cache(maxsize=128)
def anomaly_threshold(n: int, false_positive_rate: float = 0.05, *, draws: int = 200_000) -> float:
    """The anomaly index one of ``n`` clean values exceeds, on one side, with probability
    ``false_positive_rate``.

    Neural Cleanse flags a label whose anomaly index (:func:`mad_anomaly_index`) exceeds 2
    on the small side: for one normally distributed value that is a one-sided 2.3% test,
    but a scan tests all ``n`` labels at once and estimates the median and the MAD from the
    same ``n`` values, so a model without a backdoor is flagged far more often: 33% of the
    time for 10 normal labels (28% for 5, 64% for 43). This threshold is the
    ``1 - false_positive_rate`` quantile of the largest one-sided anomaly index of ``n``
    independent standard normal values (a seeded Monte Carlo estimate, the same on every
    machine up to its sampling error, about 0.02 for ``n = 10``), so that a scan of a
    clean model whose norms are normal flags a label with probability
    ``false_positive_rate``. Infinite below 3 values (the MAD of two values says nothing).

    Parameters
    ----------
    n : int
        How many values are compared (labels or classes).
    false_positive_rate : float
        Probability, under the null, that some value is flagged.
    draws : int
        Monte Carlo draws of ``n`` values (fewer when ``n`` is large, at most 2 million
        values in all).

    Examples
    --------
    >>> round(anomaly_threshold(10), 1)
    3.9
    """
    if n < 3:
        return float("inf")
    if not 0 < false_positive_rate < 1:
        raise ValueError(f"false_positive_rate must be in (0, 1), got {false_positive_rate}")
    rows = max(1000, min(draws, _DRAW_BUDGET // n))
    v = np.random.default_rng(0).standard_normal((rows, n))
    med = np.median(v, axis=1, keepdims=True)
    mad = MAD_CONSISTENCY * np.median(np.abs(v - med), axis=1, keepdims=True)
    largest = ((med - v) / mad).max(axis=1)
    return float(np.quantile(largest, 1 - false_positive_rate))
