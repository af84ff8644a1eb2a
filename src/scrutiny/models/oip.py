"""The Open Inference Protocol (KServe v2 REST) as data: URLs, metadata, JSON tensors.

The protocol that KServe, Seldon's MLServer and NVIDIA Triton speak
(https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/):
``GET {base}/v2/models/{name}[/versions/{v}]`` answers the model's metadata
(its input and output tensors: name, datatype, shape with ``-1`` for a
variable dimension), ``POST .../infer`` takes ``{"inputs": [{"name", "shape",
"datatype", "data"}]}`` (``data`` flat, row-major) and answers
``{"outputs": [...]}`` in the same form; errors answer ``{"error": "..."}``.

The binary tensor data extension (Triton's ``binary_tensor_data``, also
KServe's; a server lists it in the ``extensions`` of ``GET {base}/v2``) sends
the same JSON without ``data`` as a header, followed by each tensor's raw
bytes (little-endian, row-major, no padding) in the order of the tensors: the
header's length is the HTTP header ``Inference-Header-Content-Length``, each
binary tensor's byte count its ``parameters.binary_data_size``, and a
requested output with ``parameters.binary_data: true`` (or the request's
``parameters.binary_data_output: true``) is answered the same way
(:func:`encode_binary`, :func:`decode_body`; ``BYTES`` tensors are not used).
This module only encodes and decodes (no network): the client is
:class:`scrutiny.models.HttpModel`, a small server :func:`scrutiny.models.serve`.

References
----------
.. [1] KServe, "Open Inference Protocol (V2 Inference Protocol)" and its "Binary
   Tensor Data Extension"; NVIDIA Triton Inference Server, "Binary Tensor Data
   Extension" (docs/protocol/extension_binary_data.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scrutiny.errors import InputError, ScrutinyError

#: OIP datatypes and their numpy types (``BYTES`` is not used for tensors here).
DATATYPES: dict[str, type] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
#: The extension's name in a server's metadata and its HTTP header.
BINARY_EXTENSION = "binary_tensor_data"
HEADER_LENGTH = "Inference-Header-Content-Length"
_URL = re.compile(r"^(?P<base>https?://[^/?#]+(?:/[^?#]*?)?)/v2/models/(?P<name>[^/?#]+)"
                  r"(?:/versions/(?P<version>[^/?#]+))?/?$")


class ProtocolError(ScrutinyError, ValueError):
    """A message that does not follow the protocol (malformed JSON, tensor or metadata)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: ``name``, ``datatype``, ``shape`` (-1: any)."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelMetadata:
    """What ``GET /v2/models/{name}`` answers (the fields scrutiny uses)."""

    name: str
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    versions: tuple[str, ...] = ()
    platform: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "versions": list(self.versions), "platform": self.platform,
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}


def parse_url(url: str) -> tuple[str, str, str | None]:
    """``(base, name, version)`` of a model URL ``http(s)://host[:port][/prefix]/v2/models/NAME``.

    Examples
    --------
    >>> parse_url("http://127.0.0.1:8080/v2/models/digits")
    ('http://127.0.0.1:8080', 'digits', None)
    >>> parse_url("https://kserve.example.com/v2/models/digits/versions/2")
    ('https://kserve.example.com', 'digits', '2')
    """
    if not isinstance(url, str):
        raise InputError(f"url must be a string, got {type(url).__name__}")
    m = _URL.match(url)
    if m is None:
        raise InputError(f"url must be an Open Inference Protocol model URL "
                         f"http(s)://host:port/v2/models/NAME[/versions/V], got {url!r}")
    if "@" in m["base"].split("//", 1)[1].split("/", 1)[0]:
        raise InputError("the url holds credentials (user:password@host): give them with "
                         "token_env= or token_file= instead, never in the URL")
    return m["base"], m["name"], m["version"]


def _spec(d: Any) -> TensorSpec:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise ProtocolError(f"a tensor's metadata needs a name: {d!r}"[:300])
    dt = str(d.get("datatype", "FP32")).upper()
    try:
        shape = tuple(int(s) for s in d.get("shape") or ())
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"tensor {d['name']!r} has a bad shape {d.get('shape')!r}") from e
    return TensorSpec(d["name"], dt, shape)


def parse_metadata(payload: Any) -> ModelMetadata:
    """A :class:`ModelMetadata` from the JSON answer of the metadata endpoint."""
    if not isinstance(payload, dict) or "name" not in payload:
        raise ProtocolError(f"model metadata must be a JSON object with a name: {payload!r}"[:300])
    known = {"name", "inputs", "outputs", "versions", "platform"}
    return ModelMetadata(
        name=str(payload["name"]), inputs=tuple(_spec(d) for d in payload.get("inputs") or ()),
        outputs=tuple(_spec(d) for d in payload.get("outputs") or ()),
        versions=tuple(str(v) for v in payload.get("versions") or ()),
        platform=str(payload.get("platform") or ""),
        extra={k: v for k, v in payload.items() if k not in known})


def encode_tensor(name: str, x: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    """One tensor as the protocol's JSON (``data`` flat, row-major, cast to ``datatype``)."""
    if datatype not in DATATYPES:
        raise InputError(f"unknown datatype {datatype!r}; accepted: {', '.join(DATATYPES)}")
    arr = np.ascontiguousarray(x, dtype=DATATYPES[datatype])
    return {"name": name, "shape": list(arr.shape), "datatype": datatype,
            "data": arr.reshape(-1).tolist()}


def infer_request(x: np.ndarray, *, input_name: str, datatype: str = "FP32",
                  output_name: str | None = None) -> dict[str, Any]:
    """The body of ``POST .../infer`` for one batch ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> body = infer_request(np.zeros((2, 3)), input_name="x", output_name="logits")
    >>> body["inputs"][0]["shape"], body["inputs"][0]["data"], body["outputs"]
    ([2, 3], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [{'name': 'logits'}])
    """
    body: dict[str, Any] = {"inputs": [encode_tensor(input_name, x, datatype)]}
    if output_name is not None:
        body["outputs"] = [{"name": output_name}]
    return body


def binary_request(x: np.ndarray, *, input_name: str, datatype: str = "FP32",
                   output_name: str | None = None) -> tuple[bytes, int]:
    """:func:`infer_request` with the binary tensor data extension: the request's bytes
    and the length of their JSON header; the output is asked for as binary too.

    Examples
    --------
    >>> import numpy as np
    >>> data, n = binary_request(np.zeros((2, 3)), input_name="x")
    >>> len(data) - n  # 6 float32 values after the header
    24
    >>> json.loads(data[:n])  # doctest: +NORMALIZE_WHITESPACE
    {'inputs': [{'name': 'x', 'shape': [2, 3], 'datatype': 'FP32',
                 'parameters': {'binary_data_size': 24}}],
     'parameters': {'binary_data_output': True}}
    """
    header, raw = binary_tensor(input_name, x, datatype)
    body: dict[str, Any] = {"inputs": [header]}
    if output_name is not None:
        body["outputs"] = [{"name": output_name, "parameters": {"binary_data": True}}]
    else:
        body["parameters"] = {"binary_data_output": True}
    return encode_binary(body, [raw])


def binary_tensor(name: str, x: np.ndarray, datatype: str = "FP32") -> tuple[dict[str, Any], bytes]:
    """One tensor for the binary extension: its JSON (no ``data``) and its little-endian bytes."""
    if datatype not in DATATYPES:
        raise InputError(f"unknown datatype {datatype!r}; accepted: {', '.join(DATATYPES)}")
    arr = np.ascontiguousarray(x, dtype=np.dtype(DATATYPES[datatype]).newbyteorder("<"))
    raw = arr.tobytes()
    return ({"name": name, "shape": list(arr.shape), "datatype": datatype,
             "parameters": {"binary_data_size": len(raw)}}, raw)


def encode_binary(header: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, int]:
    """A binary-extension body: the JSON ``header`` then ``blobs`` in order; and the header's
    length (the ``Inference-Header-Content-Length`` to send with it)."""
    head = json.dumps(header).encode()
    return b"".join([head, *blobs]), len(head)


def decode_body(data: bytes, header_length: str | int | None = None) -> dict[str, Any]:
    """A request or response body as its JSON, binary tensors' ``data`` filled in.

    ``header_length`` is the ``Inference-Header-Content-Length`` HTTP header
    (None: the whole body is JSON). The binary tensors (those, among
    ``inputs`` then ``outputs``, with ``parameters.binary_data_size``) take the
    bytes after the header in order, and those sizes must add up to exactly
    the bytes there are; :class:`ProtocolError` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> data, n = binary_request(np.arange(4.0).reshape(2, 2), input_name="x")
    >>> decode_inputs(decode_body(data, n))["x"]
    array([[0., 1.],
           [2., 3.]], dtype=float32)
    >>> decode_body(data[:-1], n)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    scrutiny.models.oip.ProtocolError: the binary tensors' sizes add up to 16 bytes, ...
    """
    if header_length is None:
        try:
            return json.loads(data)
        except ValueError as e:
            raise ProtocolError(f"malformed body (not JSON: {e}): {bytes(data[:120])!r}") from None
    try:
        n = int(header_length)
    except (TypeError, ValueError):
        n = -1
    if not 0 <= n <= len(data):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a length within the "
                            f"body's {len(data)} bytes")
    try:
        payload = json.loads(data[:n])
    except ValueError as e:
        raise ProtocolError(f"the binary body's JSON header is malformed ({e}): "
                            f"{bytes(data[:min(n, 120)])!r}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"the binary body's header is not a JSON object: {str(payload)[:200]}")
    tensors = [t for key in ("inputs", "outputs") if isinstance(payload.get(key), list)
               for t in payload[key] if isinstance(t, dict)]
    sizes: list[tuple[dict[str, Any], int]] = []
    for t in tensors:
        params = t.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(f"tensor {t.get('name')!r} has binary_data_size {size!r}, not "
                                "a length")
        if "data" in t:
            raise ProtocolError(f"tensor {t.get('name')!r} has both data and binary_data_size")
        sizes.append((t, size))
    total = sum(s for _, s in sizes)
    if total != len(data) - n:
        raise ProtocolError(f"the binary tensors' sizes add up to {total} bytes, the body "
                            f"holds {len(data) - n} after its {n}-byte JSON header")
    at = n
    for t, size in sizes:
        dt = str(t.get("datatype", "")).upper()
        if dt not in DATATYPES:
            raise ProtocolError(f"binary tensor {t.get('name')!r} has datatype {dt!r}, not a "
                                "number type")
        item = np.dtype(DATATYPES[dt]).newbyteorder("<")
        if size % item.itemsize:
            raise ProtocolError(f"binary tensor {t.get('name')!r}: {size} bytes is not a whole "
                                f"number of {dt} values")
        t["data"] = np.frombuffer(data, dtype=item, count=size // item.itemsize, offset=at)
        at += size
    return payload


def decode_tensor(t: Any) -> np.ndarray:
    """A protocol tensor (JSON) as a numpy array, checked against its shape and datatype."""
    if not isinstance(t, dict) or not {"shape", "datatype", "data"} <= set(t):
        raise ProtocolError(f"a tensor needs shape, datatype and data: {str(t)[:200]}")
    dt = str(t["datatype"]).upper()
    if dt not in DATATYPES:
        raise ProtocolError(f"tensor {t.get('name')!r} has datatype {dt!r}, not a number type")
    try:
        shape = [int(s) for s in t["shape"]]
        arr = np.asarray(t["data"], dtype=DATATYPES[dt])
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"tensor {t.get('name')!r}: {e}") from e
    if arr.size != math.prod(shape):
        raise ProtocolError(f"tensor {t.get('name')!r} holds {arr.size} values for shape {shape}")
    return arr.reshape(shape)


def decode_inputs(payload: Any) -> dict[str, np.ndarray]:
    """The input tensors of an infer request, by name (the server's side)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list) \
            or not payload["inputs"]:
        raise ProtocolError('an infer request is {"inputs": [{"name", "shape", "datatype", '
                            '"data"}, ...]}')
    return {str(t.get("name")) if isinstance(t, dict) else "": decode_tensor(t)
            for t in payload["inputs"]}


def decode_output(payload: Any, name: str | None = None) -> np.ndarray:
    """The output tensor ``name`` (default: the first) of an infer response."""
    if not isinstance(payload, dict) or not isinstance(payload.get("outputs"), list) \
            or not payload["outputs"]:
        raise ProtocolError(f"an infer response has a non-empty 'outputs' list: {str(payload)[:200]}")
    outs = payload["outputs"]
    if name is None:
        return decode_tensor(outs[0])
    for t in outs:
        if isinstance(t, dict) and t.get("name") == name:
            return decode_tensor(t)
    names = [t.get("name") for t in outs if isinstance(t, dict)]
    raise ProtocolError(f"the response has no output {name!r}; it has {names}")
