"""HttpModel: a classifier behind an HTTP endpoint (JSON in, JSON out), and a tiny server.

Protocol: ``POST <url>`` with the body ``{"inputs": [...]}`` (a nested list of
shape ``(N, ...)``, inputs in their natural range) answers
``{"outputs": [...]}``: scores ``(N, K)`` or labels ``(N,)``. Errors answer a
4xx/5xx status with ``{"error": "..."}``. :func:`serve` exposes any model this
way on ``127.0.0.1`` using only the standard library.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch
from torch import nn

from scrutiny.errors import InputError, ModelUnavailableError, ScrutinyError
from scrutiny.models.query import OUTPUTS, QueryModel
from scrutiny.models.wrapper import as_model

#: Default bound on the size of one request body the server accepts (bytes).
MAX_REQUEST_BYTES = 16 * 2**20
_RETRY_STATUS = (502, 503, 504)


class HttpModel(QueryModel):
    """A black box behind an HTTP endpoint; every queried input counted.

    Parameters
    ----------
    url : str
        Endpoint answering ``POST {"inputs": [...]}`` with ``{"outputs": [...]}``
        (e.g. the ``url`` of :func:`serve`).
    output : {"logits", "probs", "label"}
        What the endpoint returns.
    budget : int, optional
        Total number of inputs that may be queried (counted when asked, so
        inputs of a request that fails count too).
    bounds : (float, float)
        Valid input range.
    timeout : float
        Seconds to wait for one answer.
    retries : int
        Further attempts after a connection error, a timeout or a 502/503/504
        answer; each waits ``backoff * 2**k`` seconds first and is reported
        with a :class:`RuntimeWarning` and in :attr:`retry_log`. When all fail,
        :class:`ModelUnavailableError` is raised.
    backoff : float
        First wait between attempts, in seconds (doubled each time).
    batch_size : int
        Inputs per request (keeps requests below the server's size bound).
    headers : dict, optional
        Extra HTTP headers (e.g. an authorisation token).
    num_classes : int, optional
        Number of classes (needed to report attacks on a label-only endpoint).

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> server = serve(pretrained("digits-cnn", progress=False))
    >>> model = HttpModel(server.url, output="logits", budget=10)
    >>> model.predict(torch.rand(3, 1, 8, 8)).shape, model.queries
    (torch.Size([3, 10]), 3)
    >>> server.close()
    """

    def __init__(self, url: str, *, output: str = "logits", budget: int | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), timeout: float = 10.0,
                 retries: int = 3, backoff: float = 0.2, batch_size: int = 256,
                 headers: dict[str, str] | None = None, name: str | None = None,
                 num_classes: int | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InputError(f"url must start with http:// or https://, got {url!r}")
        if not timeout > 0:
            raise InputError(f"timeout must be > 0 seconds, got {timeout!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"retries must be an int >= 0, got {retries!r}")
        if not backoff >= 0:
            raise InputError(f"backoff must be >= 0 seconds, got {backoff!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.url = url
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.batch_size = batch_size
        self.headers = dict(headers or {})
        #: One line per retried attempt: what failed and how long we waited.
        self.retry_log: list[str] = []
        super().__init__(self._post_all, output=output, budget=budget, bounds=bounds,
                         name=name or url, num_classes=num_classes)

    def _post_all(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._post(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not outs:
            return torch.empty(0, dtype=torch.long) if self.output == "label" else torch.empty(0, 0)
        return torch.cat(outs)

    def _post(self, x: torch.Tensor) -> torch.Tensor:
        body = json.dumps({"inputs": x.detach().cpu().float().tolist()}).encode()
        headers = {"Content-Type": "application/json", **self.headers}
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                wait = self.backoff * 2 ** (attempt - 1)
                msg = f"{self.url}: {last}; retry {attempt}/{self.retries} after {wait:.2f}s"
                self.retry_log.append(msg)
                warnings.warn(f"HttpModel {msg}", RuntimeWarning, stacklevel=4)
                time.sleep(wait)
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                if e.code in _RETRY_STATUS:
                    last = f"HTTP {e.code} {detail}"
                    continue
                err = InputError if e.code < 500 else ModelUnavailableError
                raise err(f"the model server at {self.url} answered HTTP {e.code}: "
                          f"{detail}") from e
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
                continue
            try:
                data = json.loads(payload)
                out = data["outputs"]
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"the model server at {self.url} answered something other "
                                 f"than JSON with an 'outputs' field: {payload[:200]!r}") from e
            return torch.as_tensor(np.asarray(out, dtype=np.int64 if self.output == "label"
                                              else np.float32))
        raise ModelUnavailableError(
            f"the model server at {self.url} did not answer after {self.retries + 1} attempt(s) "
            f"(timeout {self.timeout:g}s): {last}")


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(e.read()).get("error", e.reason))
    except Exception:  # not JSON: use the status text
        return str(e.reason)


class ModelServer:
    """A running :func:`serve` server: ``url``, ``close()``; a context manager."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)
        self.url = f"http://{self.host}:{self.port}/predict"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelServer(url={self.url!r})"


def _as_predict(model: Any, output: str | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    if isinstance(model, QueryModel):
        if output not in (None, model.output):
            raise InputError(f"the QueryModel reveals {model.output!r}; cannot serve {output!r}")
        return model.predict, model.output
    out = output or "logits"
    if out not in OUTPUTS:
        raise InputError(f"unknown output {out!r}; accepted: {', '.join(OUTPUTS)}")
    if isinstance(model, nn.Module):
        qm = QueryModel(as_model(model), output=out)
        return qm.predict, out
    if callable(model):
        return (lambda x: torch.as_tensor(np.asarray(model(x)))), out
    raise InputError(f"model must be an nn.Module, a QueryModel or a callable, got "
                     f"{type(model).__name__}")


def serve(model: Any, *, host: str = "127.0.0.1", port: int = 0, output: str | None = None,
          max_request_bytes: int = MAX_REQUEST_BYTES,
          input_shape: tuple[int, ...] | None = None) -> ModelServer:
    """Serve ``model`` over HTTP (JSON in/out) from a background thread.

    Parameters
    ----------
    model : nn.Module, TorchModel, QueryModel or callable
        What answers the queries; a QueryModel keeps counting (server side).
    host : str
        Interface to bind; the loopback interface by default, so nothing
        outside the machine can reach it.
    port : int
        0 picks a free port (see ``ModelServer.port``).
    output : {"logits", "probs", "label"}, optional
        What the server reveals (default: logits, or what a QueryModel reveals).
    max_request_bytes : int
        Larger request bodies are refused with HTTP 413 without being read.
    input_shape : tuple of int, optional
        Shape of one input; other shapes are refused with HTTP 400.

    Returns
    -------
    ModelServer
        With ``url`` (``http://host:port/predict``) and ``close()``.

    Examples
    --------
    >>> from torch import nn
    >>> with serve(nn.Linear(4, 3), output="label") as server:
    ...     HttpModel(server.url, output="label").predict(torch.rand(2, 4)).shape
    torch.Size([2])
    """
    predict, out_kind = _as_predict(model, output)
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) \
            or max_request_bytes < 1:
        raise InputError(f"max_request_bytes must be an int >= 1, got {max_request_bytes!r}")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code >= 400:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._send(200, {"output": out_kind, "max_request_bytes": max_request_bytes,
                             "input_shape": list(shape) if shape else None})

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._send(411, {"error": "a Content-Length header is required"})
            if int(length) > max_request_bytes:
                return self._send(413, {"error": f"request of {length} bytes is above the "
                                                  f"limit of {max_request_bytes}"})
            try:
                data = json.loads(self.rfile.read(int(length)))
                x = np.asarray(data["inputs"], dtype=np.float32)
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": f"expected JSON {{\"inputs\": [[...], ...]}}: {e}"})
            if x.ndim < 2 or not np.isfinite(x).all():
                return self._send(400, {"error": f"inputs must be a finite batch (N, ...), got "
                                                  f"shape {list(x.shape)}"})
            if shape is not None and tuple(x.shape[1:]) != shape:
                return self._send(400, {"error": f"each input must have shape {list(shape)}, got "
                                                  f"{list(x.shape[1:])}"})
            try:
                with lock:
                    res = predict(torch.from_numpy(x))
            except ScrutinyError as e:
                return self._send(400, {"error": str(e)})
            except Exception as e:  # the model failed: a server error
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            self._send(200, {"outputs": res.tolist()})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="scrutiny-serve", daemon=True)
    thread.start()
    return ModelServer(server, thread)
