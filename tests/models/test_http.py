"""HttpModel + serve over the Open Inference Protocol: a real local server, counted queries,
retries and a clear error when down (faults: test_oip_faults.py; MLServer: test_mlserver.py)."""

import json
import socket
import urllib.request

import numpy as np
import pytest
import torch

from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.models import HttpModel, ModelUnavailableError, QueryModel, serve
from scrutiny.testing.models import tiny_cnn, tiny_images


@pytest.fixture(scope="module")
def served():
    model = tiny_cnn(0)
    with serve(model, input_shape=(1, 6, 6), max_request_bytes=200_000) as server:
        yield model, server


def test_answers_like_the_model_and_counts(served):
    model, server = served
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v2/models/model")
    x = tiny_images(5)
    hm = HttpModel(server.url, budget=12, batch_size=2)  # three requests
    assert torch.allclose(hm.predict(x), model.logits(x), atol=1e-6)
    assert hm.queries == 5 and hm.retry_log == []
    with pytest.raises(QueryBudgetExceeded):
        hm.predict(torch.cat([x, x]))
    assert hm.queries == 5


def test_label_server_and_server_side_counter():
    model = tiny_cnn(1)
    qm = QueryModel(model, output="label")
    x = tiny_images(4)
    with serve(qm) as server:
        hm = HttpModel(server.url, output="label")
        assert torch.equal(hm.predict(x), model.predict(x))
        info = json.loads(urllib.request.urlopen(server.url, timeout=5).read())  # OIP metadata
    assert info["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]}]
    assert qm.queries == 4 == hm.queries


def test_server_refuses_bad_requests(served):
    _, server = served
    hm = HttpModel(server.url)
    with pytest.raises(InputError, match=r"takes inputs of shape \[-1, 1, 6, 6\].*\[2, 1, 5, 5\]"):
        hm.predict(torch.rand(2, 1, 5, 5))  # checked against the metadata, before counting
    assert hm.queries == 0
    with pytest.raises(InputError, match="HTTP 400.*shape"):  # the server checks too
        HttpModel(server.url, input_name="x", datatype="FP32")._infer(np.zeros((2, 1, 5, 5)))
    with pytest.raises(InputError, match="HTTP 413"):
        HttpModel(server.url, batch_size=4000).predict(torch.rand(2000, 1, 6, 6))  # ~1 MB
    req = urllib.request.Request(server.url + "/infer", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400


def test_server_down_gives_a_clear_error_after_reported_retries():
    server = serve(tiny_cnn(0))
    url = server.url
    server.close()
    hm = HttpModel(url, retries=2, backoff=0.01, timeout=2)
    with pytest.warns(RuntimeWarning, match=r"retry [12]/2"):
        with pytest.raises(ModelUnavailableError, match="did not answer after 3 attempt"):
            hm.predict(tiny_images(2))
    assert len(hm.retry_log) == 2


def test_timeout_is_bounded():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v2/models/m"
        hm = HttpModel(url, retries=0, timeout=0.3)
        with pytest.raises(ModelUnavailableError, match="timed out|Timeout"):
            hm.predict(tiny_images(1))
    finally:
        sock.close()


def test_bad_arguments():
    with pytest.raises(InputError, match="url"):
        HttpModel("localhost:80")
    with pytest.raises(InputError, match="timeout"):
        HttpModel("http://127.0.0.1:1/v2/models/m", timeout=0)
    with pytest.raises(InputError, match="retries"):
        HttpModel("http://127.0.0.1:1/v2/models/m", retries=-1)
    with pytest.raises(InputError, match="v2/models/NAME"):
        HttpModel("http://127.0.0.1:1/predict")  # scrutiny's former protocol
    with pytest.raises(InputError, match="credentials") as e:
        HttpModel("http://user:hunter2@127.0.0.1:1/v2/models/m")
    assert "hunter2" not in str(e.value)
    with pytest.raises(InputError, match="output"):
        serve(tiny_cnn(0), output="scores")


def test_a_decision_based_attack_through_the_server(digits_model, digits_test):
    from scrutiny.attacks.blackbox import HopSkipJump
    from scrutiny.types import ThreatModel

    served_qm = QueryModel(digits_model, output="label")  # server-side count
    x = digits_test.x[:4]
    y = digits_model.predict(x)
    with serve(served_qm) as server:
        hm = HttpModel(server.url, output="label", num_classes=10, budget=2000)
        res = HopSkipJump(steps=3, init_evals=10)(hm, x, y, threat=ThreatModel("l2", float("inf")))
    assert res.success.all()
    assert hm.queries <= 2000 and int(res.queries.sum()) == hm.queries
    # the attack's result is verified by the evaluator through the same endpoint, uncounted
    # by the client; the server saw the attack's queries plus those two evaluations
    assert served_qm.queries == hm.queries + 2 * len(x)
