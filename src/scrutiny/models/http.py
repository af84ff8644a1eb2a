"""HttpModel: a classifier behind an Open Inference Protocol endpoint; serve: a small one.

The Open Inference Protocol (KServe v2 REST, :mod:`scrutiny.models.oip`) is what
KServe, Seldon's MLServer and NVIDIA Triton speak: :class:`HttpModel` reads a
model's metadata (``GET {base}/v2/models/{name}``) and queries it
(``POST .../infer``, up to ``batch_size`` inputs a request: raw tensor bytes
with the binary tensor data extension when the server lists it, JSON
otherwise) over urllib3, whose :class:`~urllib3.util.Retry` does the bounded retries (honouring
``Retry-After``). :func:`serve` exposes any model with the same protocol on
``127.0.0.1`` using only the standard library (tests, examples, a quick demo).
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch
import urllib3
from torch import nn
from urllib3.util import Retry

from scrutiny.errors import InputError, ModelUnavailableError, ScrutinyError
from scrutiny.models import oip
from scrutiny.models.query import OUTPUTS, QueryModel
from scrutiny.models.wrapper import as_model

#: Default bound on the size of one request body the server accepts (bytes).
MAX_REQUEST_BYTES = 16 * 2**20
#: Answers retried (with ``Retry-After`` honoured when the server sends it).
RETRY_STATUS = (429, 502, 503, 504)


class _Secret:
    """A credential: shown as ``<secret>`` by repr and str, read with :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # never pickled: the model reads it again where it runs
        raise TypeError("a credential is not pickled")


class _RateLimit:
    """At most ``rate`` request starts a second, shared by every thread of one model."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)


class _Retry(Retry):
    """urllib3's Retry, telling its model about each retry and pacing it by the rate limit."""

    owner: HttpModel | None = None

    def new(self, **kw: Any) -> _Retry:
        new = super().new(**kw)
        new.owner = self.owner
        return new

    def increment(self, method: str | None = None, url: str | None = None,
                  response: Any = None, error: Exception | None = None,
                  _pool: Any = None, _stacktrace: Any = None) -> _Retry:
        if isinstance(error, urllib3.exceptions.SSLError):  # a certificate does not heal
            raise urllib3.exceptions.MaxRetryError(_pool, url, error)
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.owner is not None:
            self.owner._retried(new, response, error)
        return new

    def parse_retry_after(self, retry_after: str) -> float:
        wait = super().parse_retry_after(retry_after)
        return wait if self.owner is None else min(wait, self.owner.max_wait)

    def sleep(self, response: Any = None) -> None:
        super().sleep(response)
        if self.owner is not None and self.owner._limit is not None:
            self.owner._limit.wait()


def _positive(value: Any, what: str, *, integer: bool = False, zero: bool = False) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
    if not ok or not (value >= 0 if zero else value > 0):
        kind = "an int" if integer else "a number"
        raise InputError(f"{what} must be {kind} {'>= 0' if zero else '> 0'}, got {value!r}")
    return value


class HttpModel(QueryModel):
    """A black box behind an Open Inference Protocol (KServe v2) endpoint; every input counted.

    Parameters
    ----------
    url : str
        The model's URL, ``http(s)://host:port/v2/models/NAME`` (optionally
        ``/versions/V``): a KServe InferenceService, an MLServer or Triton
        model, or :func:`serve`. Credentials never go into it.
    output : {"logits", "probs", "label"}
        What the endpoint's output tensor holds: scores ``(N, K)`` or labels ``(N,)``.
    budget : int, optional
        Total number of inputs that may be queried (see Notes for what counts).
    bounds : (float, float)
        Valid input range.
    name : str, optional
        Shown in reports (default: the url).
    num_classes : int, optional
        Number of classes; read from the metadata of a score output of known
        width, needed for a label-only endpoint.
    batch_size : int
        Most inputs sent in one request (a query of more is split).
    timeout : float
        Seconds to wait for an answer once connected (read timeout).
    connect_timeout : float
        Seconds to wait for a connection.
    retries : int
        Further attempts after a refused or broken connection, a timeout, an
        answer 429, 502, 503 or 504, or a malformed answer: urllib3's
        :class:`~urllib3.util.Retry` retries at once, then after ``backoff *
        2**k`` seconds, or after the server's ``Retry-After`` (both at most
        ``max_wait``). Each retry is reported (a :class:`RuntimeWarning` and
        :attr:`retry_log`); when all fail, :class:`ModelUnavailableError`.
    backoff : float
        Backoff factor of the retries, in seconds.
    max_wait : float
        Longest wait before one retry (caps ``Retry-After``), in seconds.
    token_env : str, optional
        Name of an environment variable holding the credential (e.g. a bearer
        token); read when the model is made, never shown.
    token_file : str or Path, optional
        A file holding the credential (its first line); or use ``token_env``.
    auth_header : str
        Header carrying the credential (``"Authorization"``, or e.g. ``"X-API-Key"``).
    auth_scheme : str, optional
        Written before the credential (``"Bearer"``); None sends it as it is.
    ca_bundle : str or Path, optional
        CA certificates to verify an https server with (default: the system's).
        TLS certificates are always verified.
    rate_limit : float, optional
        Most requests started per second (retries included).
    max_concurrency : int
        Most requests in flight at once (a query split into several requests
        sends them in parallel up to this).
    input_name, output_name, datatype : str, optional
        The input tensor's name and OIP datatype and the output tensor read;
        by default from the model's metadata (``"input-0"``, ``"FP32"`` and
        the only output when it declares none).
    binary : {"auto", True, False}
        Send the tensors as raw little-endian bytes after a JSON header and
        ask the output back the same way (the binary tensor data extension
        of Triton and KServe: about 4 bytes a float32 instead of its decimal
        text). ``"auto"`` uses it when the server's metadata (``GET
        {base}/v2``, read once, not a query) lists ``"binary_tensor_data"``
        in its ``extensions`` and JSON otherwise (also when that request is
        refused with a 4xx or its answer is not JSON); True always, False never.
        Either way the answers are the same numbers (see :attr:`binary_used`).

    Attributes
    ----------
    queries, evaluations : int
        As :class:`QueryModel`: inputs the attacker asked, and the evaluator's looks.
    requests : int
        Infer requests answered (not counting retried attempts).
    seconds : float
        Wall time spent in infer requests, retries and waits included.
    retry_log : list of str
        One line per retry: what failed and how long it waited.
    binary_used : bool or None
        Whether the infer requests use the binary extension (None until the
        first one decides it).

    Notes
    -----
    An input counts once in :attr:`queries` when it is asked for, before it
    is sent, whatever the retries, and also when the server never answers
    it: the budget is checked before anything is sent, so it is never
    exceeded. A server can compute an input twice when its answer was lost
    and the request retried (a read timeout, a dropped connection): the
    server's own count is then above ``queries + evaluations``. Metadata
    requests are not queries. The credential is read once, kept out of repr,
    warnings, errors and the retry log, and never pickled (a copy reads it
    again from ``token_env`` / ``token_file``); redirects are not followed,
    so it is sent only to ``url``'s server.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> server = serve(pretrained("digits-cnn", progress=False), name="digits")
    >>> model = HttpModel(server.url, output="logits", budget=10)
    >>> model.predict(torch.rand(3, 1, 8, 8)).shape, model.queries, model.num_classes
    (torch.Size([3, 10]), 3, 10)
    >>> server.close()
    """

    def __init__(self, url: str, *, output: str = "logits", budget: int | None = None,
                 bounds: tuple[float, float] = (0.0, 1.0), name: str | None = None,
                 num_classes: int | None = None, batch_size: int = 64, timeout: float = 10.0,
                 connect_timeout: float = 3.0, retries: int = 5, backoff: float = 0.5,
                 max_wait: float = 60.0, token_env: str | None = None,
                 token_file: str | Path | None = None, auth_header: str = "Authorization",
                 auth_scheme: str | None = "Bearer", ca_bundle: str | Path | None = None,
                 rate_limit: float | None = None, max_concurrency: int = 1,
                 input_name: str | None = None, output_name: str | None = None,
                 datatype: str | None = None, binary: bool | str = "auto") -> None:
        self.base = oip.parse_url(url)[0]
        if not (binary == "auto" or isinstance(binary, bool)):
            raise InputError(f"binary must be 'auto', True or False, got {binary!r}")
        _positive(batch_size, "batch_size", integer=True)
        _positive(timeout, "timeout")
        _positive(connect_timeout, "connect_timeout")
        _positive(retries, "retries", integer=True, zero=True)
        _positive(backoff, "backoff", zero=True)
        _positive(max_wait, "max_wait", zero=True)
        _positive(max_concurrency, "max_concurrency", integer=True)
        if rate_limit is not None:
            _positive(rate_limit, "rate_limit")
        if token_env is not None and token_file is not None:
            raise InputError("give the credential with token_env= or token_file=, not both")
        if datatype is not None and datatype not in oip.DATATYPES:
            raise InputError(f"unknown datatype {datatype!r}; accepted: {', '.join(oip.DATATYPES)}")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            raise InputError(f"ca_bundle {str(ca_bundle)!r} is not a file")
        self.url = url.rstrip("/")
        self.batch_size = batch_size
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.token_env = token_env
        self.token_file = None if token_file is None else str(token_file)
        self.auth_header = auth_header
        self.auth_scheme = auth_scheme
        self.ca_bundle = None if ca_bundle is None else str(ca_bundle)
        self.rate_limit = rate_limit
        self.max_concurrency = max_concurrency
        self.input_name = input_name
        self.output_name = output_name
        self.datatype = datatype
        self.binary = binary
        self.requests = 0
        self.seconds = 0.0
        #: One line per retried attempt: what failed and how long we waited.
        self.retry_log: list[str] = []
        self._secret = self._read_secret()
        self._setup()
        super().__init__(self._infer_all, output=output, budget=budget, bounds=bounds,
                         name=name or self.url, num_classes=num_classes)

    # ------------------------------------------------------------------ plumbing
    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._limit = None if self.rate_limit is None else _RateLimit(float(self.rate_limit))
        self._pool: urllib3.PoolManager | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._meta: oip.ModelMetadata | None = None
        self._server_meta: dict[str, Any] | None = None
        self.binary_used: bool | None = None if self.binary == "auto" else bool(self.binary)

    def _read_secret(self) -> _Secret | None:
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if not value:
                raise InputError(f"the environment variable {self.token_env!r} (token_env) is "
                                 "not set or empty")
            return _Secret(value.strip())
        if self.token_file is not None:
            try:
                lines = Path(self.token_file).read_text().strip().splitlines()
            except OSError as e:
                raise InputError(f"cannot read token_file {self.token_file!r}: "
                                 f"{e.strerror or type(e).__name__}") from None
            if not lines or not lines[0].strip():
                raise InputError(f"token_file {self.token_file!r} is empty")
            return _Secret(lines[0].strip())
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for k in ("_lock", "_limit", "_pool", "_executor", "_secret", "_meta", "_server_meta",
                  "binary_used"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._secret = self._read_secret()
        self._setup()

    def __repr__(self) -> str:
        auth = (f", token_env={self.token_env!r}" if self.token_env else
                f", token_file={self.token_file!r}" if self.token_file else "")
        return (f"HttpModel(url={self.url!r}, output={self.output!r}, budget={self.budget!r}"
                f"{auth}, queries={self.queries})")

    def usage(self) -> dict[str, Any]:
        """What the endpoint was asked, for a report or ``result.json`` (never the credential).

        ``url``, ``output``, ``budget``, ``queries`` and ``evaluations`` (inputs
        sent), ``requests`` (infer requests answered), ``retries``, ``seconds``
        (wall time of the requests), ``seconds_per_query``: ``seconds`` per
        input sent (queries and evaluations), None before the first, the
        limits set (``rate_limit``, ``max_concurrency``, ``batch_size``) and
        ``binary``: whether the binary tensor extension carried the tensors
        (None before the first request).
        """
        sent = self.queries + self.evaluations
        return {"url": self.url, "output": self.output, "budget": self.budget,
                "queries": self.queries, "evaluations": self.evaluations,
                "requests": self.requests, "retries": len(self.retry_log),
                "seconds": self.seconds,
                "seconds_per_query": self.seconds / sent if sent else None,
                "authenticated": self._secret is not None, "rate_limit": self.rate_limit,
                "max_concurrency": self.max_concurrency, "batch_size": self.batch_size,
                "binary": self.binary_used}

    def close(self) -> None:
        """Close the connections (a later query opens new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.clear()
            self._pool = None

    def _manager(self) -> urllib3.PoolManager:
        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    num_pools=2, maxsize=self.max_concurrency, block=True,
                    cert_reqs="CERT_REQUIRED", ca_certs=self.ca_bundle)
            return self._pool

    def _headers(self, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self._secret is not None:
            token = self._secret.reveal()
            headers[self.auth_header] = f"{self.auth_scheme} {token}" if self.auth_scheme else token
        return headers

    def _scrub(self, text: str) -> str:
        """``text`` with the credential blanked out (a server could echo it back)."""
        if self._secret is not None and self._secret.reveal():
            text = text.replace(self._secret.reveal(), "<secret>")
        return text

    def _retried(self, new: Retry, response: Any, error: Exception | None) -> None:
        if response is not None:
            cause = f"HTTP {response.status}"
            after = response.headers.get("Retry-After")
            wait = new.get_retry_after(response) if after is not None else None
            if after is not None:
                cause += f" (Retry-After: {after})"
            if wait is None:
                wait = new.get_backoff_time()
        else:
            cause = f"{type(error).__name__}: {error}"
            wait = new.get_backoff_time()
        msg = self._scrub(f"{self.url}: {cause}; retry {len(new.history)}/{self.retries} "
                          f"after {wait:.2f}s")
        self.retry_log.append(msg)
        warnings.warn(f"HttpModel {msg}", RuntimeWarning, stacklevel=2)

    def _send(self, method: str, url: str, body: bytes | None,
              decode: Callable[[Any], Any], *, header_length: int | None = None,
              raw: bool = False) -> Any:
        """One request with the retries; the answer through ``decode``.

        ``decode`` gets the answer's JSON, binary tensors filled in
        (:func:`~scrutiny.models.oip.decode_body`), or with ``raw`` its bytes.
        ``header_length`` sends ``body`` as a binary-extension request. An
        answer that is not JSON, whose binary sizes do not add up, or on which
        ``decode`` raises :class:`~scrutiny.models.oip.ProtocolError` counts as
        a failed attempt and is retried.
        """
        retry: Retry = _Retry(
            total=self.retries, backoff_factor=self.backoff, backoff_max=self.max_wait,
            status_forcelist=RETRY_STATUS,
            allowed_methods=None, raise_on_status=False, redirect=False,
            respect_retry_after_header=True)
        retry.owner = self
        headers = self._headers(body is not None)
        if header_length is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers[oip.HEADER_LENGTH] = str(header_length)
        timeout = urllib3.Timeout(connect=self.connect_timeout, read=self.timeout)
        pool = self._manager()
        if self._limit is not None:
            self._limit.wait()
        while True:
            try:
                resp = pool.request(method, url, body=body, headers=headers, retries=retry,
                                    timeout=timeout, redirect=False)
            except urllib3.exceptions.MaxRetryError as e:
                if isinstance(e.reason, urllib3.exceptions.SSLError):
                    raise self._tls_error(e.reason) from None
                raise ModelUnavailableError(self._down(e.reason)) from e
            except urllib3.exceptions.HTTPError as e:
                raise ModelUnavailableError(self._down(e)) from e
            if resp.status != 200:
                raise self._status_error(resp.status, resp.data, method)
            try:
                return decode(resp.data if raw else
                              oip.decode_body(resp.data, resp.headers.get(oip.HEADER_LENGTH)))
            except (ValueError, KeyError, TypeError) as e:
                what = e if isinstance(e, oip.ProtocolError) else oip.ProtocolError(
                    f"malformed answer ({type(e).__name__}): {resp.data[:120]!r}")
                try:
                    retry = (resp.retries or retry).increment(method, url, error=what)
                except urllib3.exceptions.MaxRetryError as e2:
                    raise ModelUnavailableError(self._down(what)) from e2
                retry.sleep()

    def _down(self, reason: Any) -> str:
        return self._scrub(
            f"the model server at {self.url} did not answer after {self.retries + 1} "
            f"attempt(s) (connect timeout {self.connect_timeout:g}s, read timeout "
            f"{self.timeout:g}s): {type(reason).__name__}: {reason}")

    def _tls_error(self, reason: Exception) -> InputError:
        """The one-line error of a TLS handshake that failed (not retried)."""
        text = str(reason)
        hint = (f"check that ca_bundle {self.ca_bundle!r} holds the CA that signed the server's "
                "certificate" if self.ca_bundle is not None else
                "give the CA that signed the server's certificate with ca_bundle= "
                "(--ca-bundle PATH)")
        what = ("certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text
                or "certificate verify failed" in text else "TLS handshake failed")
        return InputError(self._scrub(f"the model server at {self.url}: {what} ({text}); "
                                      f"{hint}; verification is never switched off"))

    def _status_error(self, status: int, data: bytes, method: str) -> ScrutinyError:
        try:
            detail = str(json.loads(data).get("error", ""))
        except Exception:  # not JSON: the start of the body
            detail = data[:200].decode("utf-8", "replace")
        head = f"the model server at {self.url} answered HTTP {status} to {method}"
        if status in RETRY_STATUS:
            return ModelUnavailableError(self._scrub(
                f"{head} after {self.retries + 1} attempt(s): {detail}"))
        if status in (401, 403):
            hint = ("none given: use token_env= or token_file=" if self._secret is None
                    else "check token_env= / token_file=")
            return InputError(self._scrub(f"{head}: the credentials were refused ({hint}): "
                                          f"{detail}"))
        if 300 <= status < 400:
            return InputError(self._scrub(f"{head}: a redirect, not followed (the credential "
                                          "stays with url's server); give the final URL"))
        if status == 404:
            return InputError(self._scrub(f"{head}: no such model (check the name in the url): "
                                          f"{detail}"))
        err = InputError if status < 500 else ModelUnavailableError
        return err(self._scrub(f"{head}: {detail}"))

    # ------------------------------------------------------------------ the protocol
    def metadata(self) -> oip.ModelMetadata:
        """The model's metadata (``GET url``; read once, not a query)."""
        if self._meta is None:
            meta = self._send("GET", self.url, None, oip.parse_metadata)
            if len(meta.inputs) > 1 and self.input_name is None:
                raise InputError(f"the model at {self.url} takes {len(meta.inputs)} inputs "
                                 f"({', '.join(t.name for t in meta.inputs)}); scrutiny sends "
                                 "one: give input_name=")
            if len(meta.outputs) > 1 and self.output_name is None:
                raise InputError(f"the model at {self.url} has {len(meta.outputs)} outputs "
                                 f"({', '.join(t.name for t in meta.outputs)}): give "
                                 "output_name=")
            out = self._spec(meta.outputs, self.output_name)
            if (self._num_classes is None and self.output != "label" and out is not None
                    and len(out.shape) == 2 and out.shape[1] > 0):
                self._num_classes = int(out.shape[1])
            self._meta = meta
        return self._meta

    def server_metadata(self) -> dict[str, Any]:
        """The server's metadata (``GET {base}/v2``: ``name``, ``version``, ``extensions``;
        read once, not a query); ``{}`` when the server refuses it (4xx) or answers no JSON
        object."""
        if self._server_meta is None:
            def lenient(data: bytes) -> dict[str, Any]:
                try:
                    payload = json.loads(data)
                except ValueError:
                    return {}
                return payload if isinstance(payload, dict) else {}

            try:
                self._server_meta = self._send("GET", self.base + "/v2", None, lenient, raw=True)
            except InputError:
                self._server_meta = {}
        return self._server_meta

    def _use_binary(self) -> bool:
        if self.binary_used is None:
            ext = self.server_metadata().get("extensions")
            self.binary_used = isinstance(ext, list) and oip.BINARY_EXTENSION in ext
        return self.binary_used

    @staticmethod
    def _spec(specs: tuple[oip.TensorSpec, ...], name: str | None) -> oip.TensorSpec | None:
        if name is not None:
            return next((t for t in specs if t.name == name), None)
        return specs[0] if len(specs) == 1 else None

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        spec = self._spec(self.metadata().inputs, self.input_name)
        if spec is None or not spec.shape:
            return
        want = spec.shape
        if len(want) != len(shape) or any(w >= 0 and w != s for w, s in zip(want, shape, strict=True)):
            raise InputError(f"the model at {self.url} takes inputs of shape "
                             f"{list(want)} (-1: any), got {list(shape)}")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Query a batch (see :meth:`QueryModel.predict`); the shape is checked first,
        against the metadata, before anything is counted."""
        if isinstance(x, torch.Tensor):
            self._check_shape(tuple(x.shape))
        return super().predict(x)

    def _infer_all(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy()
        chunks = [arr[i:i + self.batch_size] for i in range(0, len(arr), self.batch_size)]
        if not chunks:
            return torch.empty(0, dtype=torch.long) if self.output == "label" else torch.empty(0, 0)
        if self.max_concurrency > 1 and len(chunks) > 1:
            self.metadata()  # read once, before the requests go out in parallel
            self._use_binary()
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.max_concurrency,
                                                        thread_name_prefix="scrutiny-http")
            outs = list(self._executor.map(self._infer, chunks))
        else:
            outs = [self._infer(c) for c in chunks]
        return torch.from_numpy(np.concatenate(outs))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        meta = self.metadata()
        spec_in = self._spec(meta.inputs, self.input_name)
        spec_out = self._spec(meta.outputs, self.output_name)
        name = self.input_name or (spec_in.name if spec_in else "input-0")
        dtype = self.datatype or (spec_in.datatype if spec_in else "FP32")
        want = self.output_name or (spec_out.name if spec_out else None)
        header_length = None
        if self._use_binary():
            body, header_length = oip.binary_request(x, input_name=name, datatype=dtype,
                                                     output_name=want)
        else:
            body = json.dumps(oip.infer_request(x, input_name=name, datatype=dtype,
                                                output_name=self.output_name)).encode()

        def decode(payload: Any) -> np.ndarray:
            out = oip.decode_output(payload, want)
            if self.output == "label" and out.ndim == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != (1 if self.output == "label" else 2) or len(out) != len(x):
                raise oip.ProtocolError(f"the answer's output has shape {list(out.shape)} for "
                                        f"{len(x)} inputs")
            return out.astype(np.int64 if self.output == "label" else np.float32)

        t0 = time.perf_counter()
        try:
            out = self._send("POST", self.url + "/infer", body, decode,
                             header_length=header_length)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - t0
        with self._lock:
            self.requests += 1
        return out


class ModelServer:
    """A running :func:`serve` server: ``url`` (the model's OIP URL), ``close()``; a context manager.

    ``infer_requests`` counts the infer requests answered, by encoding (``"json"``,
    ``"binary"``: the binary tensor data extension).
    """

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread, name: str,
                 scheme: str = "http", infer_requests: dict[str, int] | None = None) -> None:
        self.infer_requests = infer_requests if infer_requests is not None else {
            "json": 0, "binary": 0}
        self.server = server
        self.thread = thread
        host, port = server.server_address[:2]
        self.host, self.port = str(host), int(port)
        self.name = name
        self.url = f"{scheme}://{self.host}:{self.port}/v2/models/{name}"

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


def _as_predict(model: Any, output: str | None
                ) -> tuple[Callable[[torch.Tensor], torch.Tensor], str, int | None]:
    if isinstance(model, QueryModel):
        if output not in (None, model.output):
            raise InputError(f"the QueryModel reveals {model.output!r}; cannot serve {output!r}")
        return model.predict, model.output, model.num_classes
    out = output or "logits"
    if out not in OUTPUTS:
        raise InputError(f"unknown output {out!r}; accepted: {', '.join(OUTPUTS)}")
    if isinstance(model, nn.Module):
        qm = QueryModel(as_model(model), output=out)
        return qm.predict, out, qm.num_classes
    if callable(model):
        return (lambda x: torch.as_tensor(np.asarray(model(x)))), out, None
    raise InputError(f"model must be an nn.Module, a QueryModel or a callable, got "
                     f"{type(model).__name__}")


def serve(model: Any, *, host: str = "127.0.0.1", port: int = 0, output: str | None = None,
          name: str = "model", max_request_bytes: int = MAX_REQUEST_BYTES,
          input_shape: tuple[int, ...] | None = None, certfile: str | Path | None = None,
          keyfile: str | Path | None = None, binary: bool = True) -> ModelServer:
    """Serve ``model`` with the Open Inference Protocol from a background thread.

    Endpoints: ``GET /v2/health/live`` and ``/v2/health/ready``, ``GET /v2``
    (server metadata; ``extensions`` lists ``"binary_tensor_data"`` unless
    ``binary=False``), ``GET /v2/models/{name}`` (model metadata: the input
    ``input-0`` FP32 ``[-1, *input_shape]`` when ``input_shape`` is given,
    the output named after ``output``), ``GET /v2/models/{name}/ready`` and
    ``POST /v2/models/{name}/infer`` (the first input tensor is the batch).
    Errors answer ``{"error": "..."}`` with a 4xx/5xx status.

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
    name : str
        The model's name in the URLs.
    max_request_bytes : int
        Larger request bodies (JSON or binary) are refused with HTTP 413
        without being read.
    input_shape : tuple of int, optional
        Shape of one input; other shapes are refused with HTTP 400.
    certfile, keyfile : str or Path, optional
        A PEM certificate (chain) and its private key (default: in ``certfile``):
        serve over TLS (``https://``); a client verifies the certificate with
        ``HttpModel(..., ca_bundle=...)`` when no system CA signed it.
    binary : bool
        Speak the binary tensor data extension (Triton's and KServe's): take
        requests with an ``Inference-Header-Content-Length`` header (a JSON
        header, then each input's ``binary_data_size`` raw little-endian
        bytes) and answer the output as bytes when it is asked for with
        ``parameters.binary_data`` (or the request's
        ``binary_data_output``). False: JSON only, as MLServer 1.7 (a binary
        request is refused with HTTP 400).

    Returns
    -------
    ModelServer
        With ``url`` (``http(s)://host:port/v2/models/{name}``, what
        :class:`HttpModel` takes) and ``close()``.

    Examples
    --------
    >>> from torch import nn
    >>> with serve(nn.Linear(4, 3), output="label") as server:
    ...     HttpModel(server.url, output="label").predict(torch.rand(2, 4)).shape
    torch.Size([2])
    """
    from scrutiny import __version__

    predict, out_kind, k = _as_predict(model, output)
    _positive(max_request_bytes, "max_request_bytes", integer=True)
    if not isinstance(name, str) or not name or "/" in name:
        raise InputError(f"name must be a non-empty string without '/', got {name!r}")
    shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
    label = out_kind == "label"
    meta = oip.ModelMetadata(
        name=name, platform="scrutiny",
        inputs=(oip.TensorSpec("input-0", "FP32", (-1, *shape)),) if shape else (),
        outputs=(oip.TensorSpec(out_kind, "INT64" if label else "FP32",
                                (-1,) if label else (-1, k or -1)),))
    prefix = f"/v2/models/{name}"
    lock = threading.Lock()
    counts = {"json": 0, "binary": 0}
    extensions = [oip.BINARY_EXTENSION] if binary else []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave at once (no 40 ms stall)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, code: int, payload: dict[str, Any] | tuple[bytes, int]) -> None:
            if isinstance(payload, tuple):  # a binary-extension answer and its header's length
                body, n = payload
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header(oip.HEADER_LENGTH, str(n))
            else:
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
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v2/health/live":
                return self._send(200, {"live": True})
            if path in ("/v2/health/ready", prefix + "/ready"):
                return self._send(200, {"ready": True, **({"name": name} if "models" in path else {})})
            if path == "/v2":
                return self._send(200, {"name": "scrutiny", "version": __version__,
                                        "extensions": extensions})
            if path == prefix:
                return self._send(200, meta.to_dict())
            self._send(404, {"error": f"no model or endpoint at {path}; this server has {prefix}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.split("?", 1)[0].rstrip("/") != prefix + "/infer":
                self.close_connection = True
                return self._send(404, {"error": f"POST {prefix}/infer, not {self.path}"})
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                return self._send(411, {"error": "a Content-Length header is required"})
            if int(length) > max_request_bytes:
                return self._send(413, {"error": f"request of {length} bytes is above the "
                                                  f"limit of {max_request_bytes}"})
            header_length = self.headers.get(oip.HEADER_LENGTH)
            if header_length is not None and not binary:
                self.close_connection = True  # the body is left unread
                return self._send(400, {"error": "this server does not take the binary tensor "
                                                 f"data extension ({oip.HEADER_LENGTH}): send JSON"})
            try:
                payload = oip.decode_body(self.rfile.read(int(length)), header_length)
                x = next(iter(oip.decode_inputs(payload).values())).astype(np.float32)
            except (ValueError, TypeError) as e:  # oip.ProtocolError is a ValueError
                return self._send(400, {"error": f"not an infer request: {e}"})
            outs = [o for o in payload.get("outputs") or () if isinstance(o, dict)]
            asked = [o.get("name") for o in outs]
            params = payload.get("parameters")
            answer_binary = binary and (
                isinstance(params, dict) and params.get("binary_data_output") is True
                or any(isinstance(o.get("parameters"), dict)
                       and o["parameters"].get("binary_data") is True for o in outs))
            if any(a != out_kind for a in asked):
                return self._send(400, {"error": f"unknown output {asked}; this model has "
                                                  f"[{out_kind!r}]"})
            if x.ndim < 2 or not np.isfinite(x).all():
                return self._send(400, {"error": f"inputs must be a finite batch (N, ...), got "
                                                  f"shape {list(x.shape)}"})
            if shape is not None and tuple(x.shape[1:]) != shape:
                return self._send(400, {"error": f"each input must have shape {list(shape)}, got "
                                                  f"{list(x.shape[1:])}"})
            try:
                with lock:
                    res = predict(torch.from_numpy(x)).detach().cpu().numpy()
            except ScrutinyError as e:
                return self._send(400, {"error": str(e)})
            except Exception as e:  # the model failed: a server error
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            dt = "INT64" if label else "FP32"
            with lock:
                counts["binary" if header_length is not None else "json"] += 1
            if answer_binary:
                head, raw = oip.binary_tensor(out_kind, res, dt)
                return self._send(200, oip.encode_binary(
                    {"model_name": name, "outputs": [head]}, [raw]))
            self._send(200, {"model_name": name, "outputs": [oip.encode_tensor(out_kind, res, dt)]})

    if keyfile is not None and certfile is None:
        raise InputError("keyfile= needs certfile= (the certificate it is the key of)")
    tls = None
    if certfile is not None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as e:
            raise InputError(f"cannot load the certificate {str(certfile)!r} / key "
                             f"{None if keyfile is None else str(keyfile)!r}: {e}") from None
    server = ThreadingHTTPServer((host, port), Handler)
    if tls is not None:  # the handshake in each request's thread (a failed one ends it alone)
        server.socket = tls.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
        default = server.handle_error

        def handle_error(request: Any, address: Any) -> None:  # a client refusing the
            if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):  # certificate
                default(request, address)                                   # is no server error

        server.handle_error = handle_error  # type: ignore[method-assign]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="scrutiny-serve", daemon=True)
    thread.start()
    return ModelServer(server, thread, name, "https" if tls is not None else "http", counts)
