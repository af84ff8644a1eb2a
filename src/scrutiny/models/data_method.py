"""The base of the methods called on a model and a dataset, whose results are dataclasses.

Attacks and explainers take a batch of inputs and return one tensor per input. Other
families take a model and a whole :class:`~scrutiny.data.ArrayDataset`: what has the
model learned (kind ``"learned"``), poisoning and backdoor attacks on training (kind
``"poisoning"``), privacy attacks (kind ``"privacy"``) and backdoor scans (kind
``"backdoor_scan"``). Their inputs and outputs differ; what they share is what
:class:`DataMethod` owns:

- hyperparameters in the constructor (declared with :func:`~scrutiny.params.param`),
  data at call time, a dataclass result (a subclass of :class:`DataResult`);
- the call (:meth:`DataMethod.__call__`) wraps the model (:func:`~scrutiny.models.wrapper.as_model`),
  puts it in eval mode with frozen parameters for the duration (restored afterwards, also
  on error), seeds torch's RNG from ``seed`` (the caller's RNG is left as it was), checks
  that a given :class:`~scrutiny.data.ArrayDataset` holds finite values, never modifies the
  caller's tensors or model (a method that trains works on a copy), and hands the rest to
  :meth:`DataMethod._run`;
- the common test suite calls every registered method through its
  :meth:`DataMethod.common_call` on a tiny model and dataset, and checks the constructor
  contract, that inputs are not modified, that the model's mode, ``requires_grad`` and hooks
  are restored and no weight gradient is left behind, and that the same seed gives the same
  result (:func:`same_result`).

A method that needs no classifier (a beta-VAE trained on data, an SVM poisoning attack)
declares ``needs_model = False`` and is called with ``model=None``.

Examples
--------
>>> import torch
>>> from dataclasses import dataclass
>>> from scrutiny.models.data_method import DataMethod, DataResult, same_result
>>> @dataclass
... class Mean(DataResult):
...     mean: torch.Tensor
>>> class MeanLogit(DataMethod):            # a toy method: the mean logit over the data
...     def _run(self, model, data, **call):
...         return Mean(mean=model(data.x).mean(0), meta={})
>>> from scrutiny.models import pretrained
>>> from scrutiny.data import load_digits
>>> r = MeanLogit()(pretrained("digits-cnn", progress=False), load_digits(split="test"), seed=0)
>>> tuple(r.mean.shape), same_result(r, r)
((10,), True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from scrutiny.base import Method, seeded
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import Tags

__all__ = ["DataMethod", "DataResult", "same_result"]


@dataclass
class DataResult:
    """Base of the results of the methods called on a model and a dataset: a subclass adds
    its fields (tensors, indices, fitted estimators, scores); ``meta`` holds the method's
    name and the settings the result depends on."""

    meta: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor | np.ndarray):
                parts.append(f"{f.name}={type(v).__name__}{tuple(v.shape)}")
            elif isinstance(v, ArrayDataset):
                parts.append(f"{f.name}=ArrayDataset({v.name!r}, n={len(v)})")
            elif isinstance(v, torch.nn.Module):
                parts.append(f"{f.name}={type(v).__name__}(...)")
            elif f.name != "meta":
                text = repr(v)
                parts.append(f"{f.name}={text if len(text) <= 40 else text[:37] + '...'}")
        return f"{type(self).__name__}({', '.join(parts)})"


def same_result(a: Any, b: Any) -> bool:
    """Whether two results are equal field by field (tensors and arrays exactly, dataclasses,
    dicts, lists and tuples recursively, modules by their state, fitted scikit-learn
    estimators by their learned arrays, datasets by their tensors, other values by ``==``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
    if isinstance(a, ArrayDataset):
        return same_result(a.x, b.x) and same_result(a.y, b.y) and a.classes == b.classes
    if dataclasses.is_dataclass(a):
        return all(same_result(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_result(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same_result(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if hasattr(a, "get_params") and hasattr(a, "fit"):  # a fitted scikit-learn estimator
        learned = [k for k in vars(a) if k.endswith("_") and not k.startswith("_")]
        return a.get_params() == b.get_params() and all(
            same_result(getattr(a, k), getattr(b, k)) for k in learned)
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


class DataMethod(Method):
    """Base of the methods called as ``method(model, data, *, seed, **call)``.

    A subclass sets ``kind`` (through its family's base), declares its hyperparameters,
    implements :meth:`_run` (the call's work, on a
    :class:`~scrutiny.models.wrapper.TorchModel` in eval mode with frozen parameters, under
    the seed) and :meth:`common_call` (how the common test suite calls it on a tiny
    problem), and returns a :class:`DataResult`.
    """

    tags = Tags()
    #: False for a method that works from data alone (called with ``model=None``).
    needs_model: ClassVar[bool] = True

    def __call__(self, model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
                 **call: Any) -> DataResult:
        """Run the method on ``model`` (an ``nn.Module`` or TorchModel; None when
        ``needs_model`` is False) and ``data`` (an :class:`~scrutiny.data.ArrayDataset`,
        for the methods that read data; never modified); ``seed`` seeds every random
        choice; ``call`` holds the method's other call-time data (see its ``_run``)."""
        if data is not None:
            check_dataset(type(self).__name__, data)
        if model is None:
            if self.needs_model:
                raise InputError(f"{type(self).__name__} needs a model")
            with seeded(seed):
                return self._run(None, data, seed=seed, **call)
        tm = as_model(model)
        with tm.evaluating(), seeded(seed, tm.device):
            return self._run(tm, data, seed=seed, **call)

    def _run(self, model: TorchModel | None, data: ArrayDataset | None, *, seed: int | None,
             **call: Any) -> DataResult:
        raise NotImplementedError

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        """Call ``method`` the way the common test suite does, on ``model`` (a tiny CNN over
        ``(1, 6, 6)`` images with 3 classes, first conv layer ``"0"``) and ``data`` (20
        labelled tiny images). Override with the method's call-time arguments."""
        return method(model if cls.needs_model else None, data, seed=seed)


def check_dataset(who: str, data: Any, what: str = "data") -> ArrayDataset:
    """``data`` if it is an :class:`~scrutiny.data.ArrayDataset` of finite values, else a
    clear :class:`~scrutiny.errors.InputError` naming ``who`` and ``what``."""
    if not isinstance(data, ArrayDataset):
        raise InputError(f"{who}: {what} must be an ArrayDataset, got {type(data).__name__}")
    if data.x.is_floating_point() and not bool(torch.isfinite(data.x).all()):
        raise InputError(f"{who}: the {what} holds NaN or infinite values")
    return data
