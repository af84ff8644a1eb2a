"""The binary tensor data extension (Triton's and KServe's) between HttpModel and ``serve``:
the same answers as JSON, really binary on the wire, bounded by the same request size,
malformed binary answers retried like malformed JSON, JSON when the server does not list
the extension (MLServer: tests/models/test_mlserver.py)."""

import json
import urllib.request
import warnings

import numpy as np
import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.models import HttpModel, ModelUnavailableError, QueryModel, oip, serve
from tests.models.test_oip_faults import FAST, FlakyProxy


@pytest.fixture(scope="module")
def both(digits_model):
    """The digits CNN behind ``serve`` with the extension (the default) and without it."""
    counted = QueryModel(digits_model, output="logits")
    with serve(counted, name="digits", input_shape=(1, 8, 8)) as binary, \
            serve(digits_model, name="digits", input_shape=(1, 8, 8), binary=False) as plain:
        yield binary, plain, counted


def test_binary_answers_exactly_what_json_answers(both, digits_model, digits_test):
    binary, plain, _ = both
    x = digits_test.x[:130]  # 64 + 64 + 2: three requests each way
    hb = HttpModel(binary.url, batch_size=64)
    hj = HttpModel(binary.url, batch_size=64, binary=False)
    ha = HttpModel(plain.url, batch_size=64)  # auto: the server does not list it
    assert hb.binary_used is None and hj.binary_used is False
    before = dict(binary.infer_requests)
    out_b, out_j, out_a = hb.predict(x), hj.predict(x), ha.predict(x)
    assert (hb.binary_used, ha.binary_used, hb.usage()["binary"]) == (True, False, True)
    assert hb.server_metadata()["extensions"] == ["binary_tensor_data"]
    assert ha.server_metadata()["extensions"] == []
    # float32 both ways: the decimal text of JSON and the raw bytes carry the same values
    assert torch.equal(out_b, out_j) and torch.equal(out_b, out_a)
    assert torch.allclose(out_b, digits_model(x), atol=1e-5)
    seen = {k: binary.infer_requests[k] - before[k] for k in before}
    assert seen == {"json": 3, "binary": 3} and plain.infer_requests == {"json": 3, "binary": 0}
    assert (hb.queries, hb.requests, hj.queries) == (130, 3, 130)


def test_a_label_endpoint_answers_int64_bytes(digits_model, digits_test):
    x = digits_test.x[:9]
    with serve(QueryModel(digits_model, output="label"), name="digits") as server:
        hb = HttpModel(server.url, output="label", num_classes=10, binary=True)
        hj = HttpModel(server.url, output="label", num_classes=10, binary=False)
        assert torch.equal(hb.predict(x), digits_model.predict(x))
        assert torch.equal(hj.predict(x), hb.predict(x))
        assert server.infer_requests == {"json": 1, "binary": 2}


def test_the_request_is_binary_and_bounded_by_the_same_size(digits_test):
    x = digits_test.x[:64].numpy()
    data, n = oip.binary_request(x, input_name="input-0", output_name="logits")
    text = json.dumps(oip.infer_request(x, input_name="input-0", output_name="logits")).encode()
    assert len(data) - n == 64 * 64 * 4 and n < 300  # 4 bytes a float32 after a short header
    # the digits are multiples of 1/16 (short decimals): JSON 24275 bytes, binary 16574 (1.46x);
    # perturbed points (an attack's queries) print ~9 digits a value: 4.7x (x + U(0, 0.1))
    assert len(text) > 1.4 * len(data), (len(text), len(data))
    noisy = np.clip(x + np.random.default_rng(0).uniform(0, 0.1, x.shape), 0, 1)
    text = json.dumps(oip.infer_request(noisy, input_name="input-0")).encode()
    assert len(text) > 4 * len(oip.binary_request(noisy, input_name="input-0")[0])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with serve(net, name="m", max_request_bytes=20_000) as server:  # binary fits, JSON does not
        hb = HttpModel(server.url, batch_size=64)
        assert hb.predict(torch.from_numpy(x)).shape == (64, 10) and hb.binary_used
        with pytest.raises(InputError, match="HTTP 413"):
            HttpModel(server.url, batch_size=64, binary=False).predict(torch.from_numpy(x))
        with pytest.raises(InputError, match="HTTP 413"):  # the bound holds for binary too
            HttpModel(server.url, batch_size=128).predict(torch.rand(128, 64))
        assert server.infer_requests == {"json": 0, "binary": 1}


def _post(url, data, header_length):
    req = urllib.request.Request(url + "/infer", data=data, method="POST",
                                 headers={oip.HEADER_LENGTH: str(header_length)})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    return e.value.code, json.loads(e.value.read())["error"]


def test_the_server_refuses_malformed_binary_requests(both, digits_test):
    binary, plain, counted = both
    data, n = oip.binary_request(digits_test.x[:2].numpy(), input_name="input-0")
    before = counted.queries
    assert _post(binary.url, data[:-4], n) == (
        400, f"not an infer request: the binary tensors' sizes add up to 512 bytes, the body "
             f"holds 508 after its {n}-byte JSON header")
    code, err = _post(binary.url, data, len(data) + 1)
    assert code == 400 and "Inference-Header-Content-Length" in err
    code, err = _post(binary.url, data, n - 1)  # the header cut short: not JSON
    assert code == 400 and "JSON header is malformed" in err
    head = json.loads(data[:n])
    head["inputs"][0]["datatype"] = "BYTES"
    bad = json.dumps(head).encode()
    code, err = _post(binary.url, bad + data[n:], len(bad))
    assert code == 400 and "'BYTES', not a number type" in err
    code, err = _post(plain.url, data, n)  # binary=False: refused, named
    assert code == 400 and "does not take the binary tensor data extension" in err
    assert counted.queries == before  # nothing reached the model
    with pytest.raises(InputError, match="HTTP 400.*binary tensor data extension"):
        HttpModel(plain.url, binary=True).predict(digits_test.x[:1])


def test_malformed_binary_answers_are_retried_like_malformed_json(both, digits_model,
                                                                  digits_test):
    binary, _, counted = both
    proxy = FlakyProxy(binary.url, {0: "badsize", 2: "badheader", 4: "garbage"})
    x = digits_test.x[:12]
    hm = HttpModel(proxy.url, batch_size=4, **FAST)  # three requests, each failing once
    before = counted.queries
    with pytest.warns(RuntimeWarning, match=r"retry 1/3"):
        out = hm.predict(x)
    assert hm.binary_used and torch.allclose(out, digits_model(x), atol=1e-5)
    assert (hm.queries, hm.requests, len(hm.retry_log)) == (12, 3, 3)
    assert counted.queries - before == 12  # the faults came before the model: nothing twice
    assert "sizes add up to 40 bytes, the body holds 36" in hm.retry_log[0]
    assert "Inference-Header-Content-Length" in hm.retry_log[1]
    assert "not JSON" in hm.retry_log[2]
    proxy.schedule = {k: "badsize" for k in range(proxy.posts, proxy.posts + 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ModelUnavailableError, match="after 4 attempt.*sizes add up"):
            hm.predict(x[:2])
    assert hm.queries == 14 and counted.queries - before == 12
    proxy.close()


def test_bad_binary_argument():
    with pytest.raises(InputError, match="binary must be 'auto', True or False, got 'yes'"):
        HttpModel("http://127.0.0.1:1/v2/models/m", binary="yes")
    with pytest.raises(InputError, match="got 1"):
        HttpModel("http://127.0.0.1:1/v2/models/m", binary=1)


def test_a_server_without_server_metadata_is_spoken_json(both, digits_test):
    binary, _, _ = both
    proxy = FlakyProxy(binary.url)
    proxy.hide = {"/v2"}  # GET /v2 answers 404 (a gateway routing the models only)
    hm = HttpModel(proxy.url)
    assert hm.predict(digits_test.x[:2]).shape == (2, 10)
    assert hm.server_metadata() == {} and hm.binary_used is False and hm.retry_log == []
    proxy.close()
