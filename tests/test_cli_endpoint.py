"""The command line against an Open Inference Protocol endpoint (scrutiny's own ``serve``):
black-box attacks and explainers through it, white-box ones refused, every query counted
(the server's own count equals scrutiny's), the credential never in any output."""

import json
import re

import pytest
import torch

from scrutiny.cli import main
from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.explain import Saliency
from scrutiny.explain.perturbation import Occlusion
from scrutiny.explain.surrogate.lime import Lime
from scrutiny.explain.surrogate.shap import KernelShap
from scrutiny.models import HttpModel, QueryModel, serve

TOKEN = "tok-3f9a-never-printed"


@pytest.fixture
def endpoint(digits_model):
    """The digits CNN served on 127.0.0.1; ``counter.queries``: the inputs the server ran."""
    counter = QueryModel(digits_model)
    with serve(counter, name="digits", input_shape=(1, 8, 8)) as server:
        server.counter = counter
        yield server


@pytest.mark.parametrize("explainer", [Occlusion(window=2), Lime(n_samples=40),
                                       KernelShap(n_samples=40)])
def test_black_box_explainers_through_the_protocol_equal_in_process(explainer, endpoint,
                                                                    digits_model, digits_test):
    x = digits_test.x[:3]
    hm = HttpModel(endpoint.url)
    local = explainer(digits_model, x, seed=1)
    remote = explainer(hm, x, seed=1)
    assert torch.equal(local.target, remote.target)
    assert torch.allclose(local.attributions, remote.attributions, atol=1e-6)
    # every perturbed input a query; the clean look (default target) the evaluator's
    assert remote.meta["queries"] == hm.queries > 0 and remote.meta["evaluator_queries"] == 3
    assert endpoint.counter.queries == hm.queries + hm.evaluations


def test_explainers_refuse_what_an_endpoint_cannot_give(endpoint, digits_test):
    x = digits_test.x[:2]
    with pytest.raises(InputError, match=r"Saliency needs the model's gradients.*kernel_shap, "
                                         r"lime, occlusion"):
        Saliency()(HttpModel(endpoint.url), x)
    label = QueryModel(lambda t: torch.zeros(len(t), dtype=torch.long), output="label",
                       num_classes=10)
    with pytest.raises(InputError, match="reveal 'probs'; this QueryModel answers only 'label'"):
        Occlusion()(label, x)
    hm = HttpModel(endpoint.url, budget=50)
    with pytest.raises(QueryBudgetExceeded):  # 2 x 64 occluded inputs: refused before sent
        Occlusion(window=1)(hm, x)
    assert hm.queries <= 50


def test_cli_attack_on_an_endpoint_counts_every_query(endpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCRUTINY_TOKEN", TOKEN)  # the default credential variable
    out = tmp_path / "adv.npz"
    assert main(["attack", "square", "--model", endpoint.url, "--n", "4", "--eps", "0.2",
                 "-p", "max_queries=30", "--budget", "200", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    rec = json.loads(out.with_suffix(".json").read_text())
    ep = rec["endpoint"]
    assert ep["url"] == endpoint.url and ep["authenticated"] and ep["budget"] == 200
    assert ep["queries"] == rec["queries_total"] <= 200 and ep["evaluations"] == 2 * 4
    assert endpoint.counter.queries == ep["queries"] + ep["evaluations"]  # the server's count
    assert ep["requests"] > 0 and ep["seconds_per_query"] > 0
    assert "seconds per query" in text and endpoint.url in text
    assert TOKEN not in text + out.with_suffix(".json").read_text()


def test_cli_explain_on_an_endpoint(endpoint, tmp_path, capsys):
    png = tmp_path / "lime.png"
    assert main(["explain", "lime", "--model", endpoint.url, "--n", "2", "-p", "n_samples=30",
                 "--out", str(png), "-q"]) == 0
    rec = json.loads(png.with_suffix(".json").read_text())
    assert rec["endpoint"]["queries"] == 2 * 30 and png.read_bytes()[:4] == b"\x89PNG"
    assert endpoint.counter.queries == rec["endpoint"]["queries"] + rec["endpoint"]["evaluations"]
    assert "60 queries" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["attack", "pgd"], "pgd is a white-box attack.*use a black-box attack \\(.*square"),
    (["explain", "saliency"], "saliency is a white-box explainer.*\\(kernel_shap, lime, "
                              "occlusion; 'scrutiny list explainer' marks them\\)"),
    (["attack", "square", "--data", "breast_cancer"],
     "--data breast_cancer does not fit the endpoint.*shape \\[-1, 1, 8, 8\\]"),
    (["attack", "square", "--mean", "0.5"], "--mean do not apply to an endpoint"),
    (["attack", "square", "--token-env", "NOT_SET_ANYWHERE"],
     "'NOT_SET_ANYWHERE' \\(token_env\\) is not set"),
])
def test_cli_endpoint_errors_are_one_line(argv, message, endpoint, capsys):
    assert main([*argv[:2], "--model", endpoint.url, *argv[2:], "-q"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert endpoint.counter.queries == 0  # refused before any query


def test_endpoint_options_need_an_endpoint(capsys):
    assert main(["attack", "square", "--output", "probs", "-q"]) == 2
    assert "--output: only for an endpoint" in capsys.readouterr().err
    assert main(["explain", "occlusion", "--rate-limit", "5", "--max-concurrency", "2", "-q"]) == 2
    assert "--rate-limit, --max-concurrency: only for an endpoint" in capsys.readouterr().err


def test_list_marks_black_box_methods(capsys):
    assert main(["list", "explainer"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.count("│") > 2}
    assert "black-box" in rows["explainer:occlusion"] and "white-box" in rows["explainer:saliency"]


def test_cli_limits_and_ca_bundle_reach_the_endpoint_and_the_record(digits_model, tmp_path,
                                                                    capsys):
    from tests.models.test_oip_faults import self_signed

    cert, key = self_signed(tmp_path)
    counter = QueryModel(digits_model)
    with serve(counter, name="digits", input_shape=(1, 8, 8), certfile=cert,
               keyfile=key) as server:
        png = tmp_path / "occ.png"
        argv = ["explain", "occlusion", "--model", server.url, "--n", "3", "-p", "window=4",
                "--out", str(png), "--rate-limit", "20", "--max-concurrency", "2", "-q"]
        assert main(argv) == 2  # the system's CAs do not know it
        err = capsys.readouterr().err
        assert "certificate verify failed" in err and "--ca-bundle" in err and err.count("\n") == 1
        assert main([*argv, "--ca-bundle", str(cert)]) == 0
        ep = json.loads(png.with_suffix(".json").read_text())["endpoint"]
        assert (ep["rate_limit"], ep["max_concurrency"]) == (20.0, 2)
        # the occluded inputs + the clean looks, in requests at most 20 a second
        assert ep["queries"] > 0 and counter.queries == ep["queries"] + ep["evaluations"]
        assert ep["seconds"] >= (ep["requests"] - 1) / 20 - 0.01
