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

import torch

from scrutiny.models.data_method import DataMethod, DataResult

__all__ = ["BackdoorScan", "ScanResult", "precision_recall"]


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
