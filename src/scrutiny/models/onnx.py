"""OnnxModel: an ONNX file run by onnxruntime, queried as a black box."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from scrutiny.errors import InputError
from scrutiny.models.query import OUTPUTS, QueryModel


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("OnnxModel needs onnxruntime; install it with "
                          "`pip install scrutiny[onnx]` (or `pip install onnxruntime`)") from e
    return onnxruntime


def scores_to(out: torch.Tensor, returns: str, output: str) -> torch.Tensor:
    """Convert what a model returns (``returns``) into what a query reveals (``output``).

    ``logits`` can become probabilities (softmax) or labels (argmax);
    ``probs`` can become labels; labels stay labels. Asking for more than the
    model returns (e.g. probabilities from a label-only model) is an error.
    """
    if returns == output:
        return out
    if output == "label":
        return out.argmax(dim=1)
    if returns == "logits" and output == "probs":
        return out.float().softmax(dim=1)
    raise InputError(f"a model that returns {returns!r} cannot reveal {output!r}")


class OnnxModel(QueryModel):
    """A classifier stored as an ONNX file, queried through onnxruntime.

    Gradients are unavailable: only :meth:`predict` (counted against the
    budget, as for every :class:`~scrutiny.models.query.QueryModel`).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file. Its first input takes a float batch ``(N, ...)``
        in the natural input range, its first output scores ``(N, K)`` (or
        labels ``(N,)`` with ``returns="label"``).
    returns : {"logits", "probs", "label"}
        What the graph outputs.
    output : {"logits", "probs", "label"}
        What a query reveals; derived from ``returns`` (softmax / argmax), so
        an ONNX file of logits can be attacked as a label-only black box.
    budget : int, optional
        Total number of inputs that may be queried.
    bounds : (float, float)
        Valid input range.
    batch_size : int
        Inputs per onnxruntime call. A graph exported with a fixed batch
        dimension is run in chunks of that size (the last one padded).
    providers : sequence of str, optional
        onnxruntime execution providers (default: CPU).
    num_classes : int, optional
        Number of classes; read from the graph's output shape when it is fixed.

    Examples
    --------
    >>> import tempfile, torch
    >>> from scrutiny.models import pretrained
    >>> net = pretrained("digits-cnn", progress=False).module.eval()
    >>> path = tempfile.mkdtemp() + "/digits.onnx"
    >>> torch.onnx.export(net, (torch.rand(1, 1, 8, 8),), path, dynamo=False,
    ...                   dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    >>> model = OnnxModel(path, output="label", budget=100)
    >>> model.predict(torch.rand(4, 1, 8, 8)).shape, model.queries
    (torch.Size([4]), 4)
    """

    def __init__(self, path: str | os.PathLike, *, returns: str = "logits", output: str = "logits",
                 budget: int | None = None, bounds: tuple[float, float] = (0.0, 1.0),
                 batch_size: int = 1024, providers: list[str] | None = None,
                 name: str | None = None, num_classes: int | None = None) -> None:
        for what, v in (("returns", returns), ("output", output)):
            if v not in OUTPUTS:
                raise InputError(f"unknown {what} {v!r}; accepted: {', '.join(OUTPUTS)}")
        scores_to(torch.zeros(1, 2), returns, output)  # rejects e.g. label -> probs early
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        p = os.fspath(path)
        if not os.path.isfile(p):
            raise InputError(f"no ONNX file at {p!r}")
        ort = _import_onnxruntime()
        try:
            self.session = ort.InferenceSession(p, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise InputError(f"onnxruntime cannot load {p!r}: {e}") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        first = inp.shape[0] if inp.shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        out_shape = self.session.get_outputs()[0].shape
        if num_classes is None and returns != "label" and len(out_shape) == 2 \
                and isinstance(out_shape[1], int):
            num_classes = out_shape[1]
        self.path = p
        self.returns = returns
        self.batch_size = batch_size
        super().__init__(self._run_session, output=output, budget=budget, bounds=bounds,
                         name=name or os.path.basename(p), num_classes=num_classes)

    def _run_session(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        n = len(arr)
        step = self.fixed_batch or self.batch_size
        outs = []
        for i in range(0, n, step):
            chunk = arr[i:i + step]
            m = len(chunk)
            if self.fixed_batch and m < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - m, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            try:
                res = self.session.run(None, {self.input_name: chunk})[0]
            except Exception as e:  # shape or dtype mismatch reported by onnxruntime
                raise InputError(f"onnxruntime rejected an input batch of shape "
                                 f"{tuple(chunk.shape)}: {e}") from e
            outs.append(np.asarray(res)[:m])
        if not outs:
            return torch.empty(0, dtype=torch.long) if self.returns == "label" else torch.empty(0, 0)
        out = torch.from_numpy(np.concatenate(outs))
        return scores_to(out, self.returns, self.output)
