"""The digits CNN behind a real MLServer (Open Inference Protocol), queried and attacked
through HttpModel: the inputs the server's runtime counted equal what scrutiny reports.

MLServer is an optional test dependency (``pip install scrutiny[server]``; pinned in
requirements/dev.lock): without it the module is skipped. One server process serves the
logits model ``digits`` and the label-only ``digits-label`` for the whole module (start
about 7 s on a loaded 2-core machine, mostly imports).
"""

import importlib.util

import pytest
import torch

from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.models import HttpModel
from scrutiny.types import ThreatModel

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlserver") is None,
                                reason="mlserver not installed (optional: scrutiny[server])")


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    from tests.models.mlserver_process import start_mlserver

    server = start_mlserver(tmp_path_factory.mktemp("mlserver"),
                            {"digits": "logits", "digits-label": "label"})
    yield server
    server.close()


def test_metadata_answers_and_server_count(mlserver, digits_model, digits_test):
    hm = HttpModel(mlserver.url, budget=100)
    meta = hm.metadata()
    assert (meta.name, meta.inputs[0].name, meta.inputs[0].shape) == ("digits", "x", (-1, 1, 8, 8))
    assert hm.num_classes == 10  # from the output's metadata [-1, 10]
    x = digits_test.x[:70]
    before = mlserver.served()
    out = hm.predict(x)  # 64 + 6: two requests
    assert torch.allclose(out, digits_model(x), atol=1e-5)
    assert (hm.queries, hm.requests, mlserver.served() - before) == (70, 2, 70)
    # MLServer lists no binary tensor extension in GET /v2: binary="auto" spoke JSON
    assert hm.server_metadata()["extensions"] == [] and hm.binary_used is False
    with pytest.raises(QueryBudgetExceeded):  # refused before anything is sent
        hm.predict(x)
    with pytest.raises(InputError, match=r"takes inputs of shape \[-1, 1, 8, 8\]"):
        hm.predict(torch.rand(2, 1, 6, 6))
    assert (hm.queries, mlserver.served() - before) == (70, 70)
    with pytest.raises(InputError, match="HTTP 404.*no such model"):
        HttpModel(mlserver.url_of("nope")).predict(x[:1])


def test_score_based_attack_counts_match_the_server(mlserver, digits_test):
    from scrutiny.attacks.blackbox import Square

    x, y = digits_test.x[:6], digits_test.y[:6]
    hm = HttpModel(mlserver.url, budget=240, batch_size=16)
    before = mlserver.served()
    res = Square(max_queries=60)(hm, x, y, threat=ThreatModel("linf", 0.2), seed=0)
    served = mlserver.served() - before
    assert 0 < hm.queries == int(res.queries.sum()) <= 240
    # the server saw the attack's queries and the evaluator's two looks per sample, no more
    assert hm.evaluations == 2 * len(x)
    assert served == hm.queries + hm.evaluations
    assert res.success.any() and hm.retry_log == []


def test_decision_based_attack_on_a_label_only_endpoint(mlserver, digits_model, digits_test):
    from scrutiny.attacks.blackbox import HopSkipJump

    url = mlserver.url_of("digits-label")
    x = digits_test.x[:3]
    y = digits_model.predict(x)
    hm = HttpModel(url, output="label", num_classes=10, budget=600)
    before = mlserver.served("digits-label")
    res = HopSkipJump(steps=3, init_evals=10)(hm, x, y, threat=ThreatModel("l2", float("inf")))
    served = mlserver.served("digits-label") - before
    assert res.success.all()  # eps = inf: a decision-based attack always ends adversarial
    assert hm.queries == int(res.queries.sum()) <= 600
    assert served == hm.queries + hm.evaluations == hm.queries + 2 * len(x)


def test_an_explainer_through_mlserver_equals_in_process_and_the_counts(mlserver, digits_model,
                                                                        digits_test):
    from scrutiny.explain.perturbation import Occlusion

    x = digits_test.x[:3]
    hm = HttpModel(mlserver.url)
    before = mlserver.served()
    remote = Occlusion(window=2, stride=2)(hm, x)
    served = mlserver.served() - before
    local = Occlusion(window=2, stride=2)(digits_model, x)
    assert torch.allclose(remote.attributions, local.attributions, atol=1e-5)
    assert remote.meta["queries"] == hm.queries == 3 * 16 + 3  # 16 windows and x, per input
    assert served == hm.queries + hm.evaluations == hm.queries + 3


def test_audit_of_the_mlserver_endpoint_counts_match_the_server(mlserver, digits_test):
    from scrutiny.audit import AuditConfig, run_audit

    cfg = AuditConfig(n_samples=8, n_examples=2, explainers=("occlusion",),
                      params={"square": {"max_queries": 10}})
    hm = HttpModel(mlserver.url)
    before = mlserver.served()
    res = run_audit(hm, digits_test, cfg, progress=False)
    served = mlserver.served() - before
    # membership inference too: a loss from the answers, one query per member and nonmember
    assert list(res.sections) == ["queries", "explanations", "privacy", "verdict"]
    mi = res.sections["privacy"].data["membership_inference"]
    assert res.endpoint["queries"] == hm.queries == (res.queries["square"]["total_queries"]
                                                    + res.explanations["occlusion"]["queries"]
                                                    + mi["members"] + mi["nonmembers"])
    assert served == hm.queries + hm.evaluations
