"""The audit of an endpoint (a model behind the Open Inference Protocol, scrutiny's
``serve``): only the sections that need queries run, the others are skipped with a note;
the report and result.json show the endpoint and the queries spent (the server's own count),
never the credential; a server that goes down stops the audit cleanly and it resumes."""

import json

import pytest
import torch

from scrutiny.audit import AuditConfig, run_audit, write_report
from scrutiny.cli import main
from scrutiny.errors import ModelUnavailableError
from scrutiny.models import HttpModel, QueryModel, serve

TOKEN = "tok-audit-7c1e-never-written"
FAST = ["--n", "12", "--n-examples", "2", "-p", "square.max_queries=20",
        "-p", "lime.n_samples=24", "-p", "kernel_shap.n_samples=24"]


@pytest.fixture
def endpoint(digits_model):
    counter = QueryModel(digits_model)  # counts the inputs the server ran
    with serve(counter, name="digits", input_shape=(1, 8, 8)) as server:
        server.counter = counter
        yield server


def test_cli_audit_of_an_endpoint_runs_the_black_box_parts(endpoint, digits_model, tmp_path,
                                                           monkeypatch, capsys):
    from scrutiny.attacks.privacy import membership_inference
    from scrutiny.data import load_digits

    monkeypatch.setenv("AUDIT_TOKEN", TOKEN)
    out = tmp_path / "report"
    assert main(["audit", "--model", endpoint.url, "--token-env", "AUDIT_TOKEN", *FAST,
                 "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "result.json").read_text())
    # queries only: the query attack, the black-box explainers (the endpoint's default),
    # membership inference (a loss from the answers; iDLG needs gradients)
    assert list(res["sections"]) == ["queries", "explanations", "privacy", "verdict"]
    assert set(res["explanations"]) == {"occlusion", "lime", "kernel_shap"}
    notes = " ".join(res["notes"])
    for section in ("robustness", "headline", "matrix", "trust", "learned"):
        assert f"section {section} was skipped: needs" in notes
    assert "section robustness was skipped: needs gradients: the model is an endpoint" in notes
    assert set(res["privacy"]) == {"membership_inference"}
    assert "gradient leakage (iDLG) was left out: it needs the gradient" in notes
    mi = res["privacy"]["membership_inference"]  # as in process, up to a loss at the threshold
    local = membership_inference(digits_model, load_digits(split="train"),
                                 nonmembers=load_digits(split="test"))
    assert (mi["members"], mi["nonmembers"]) == (len(local.member_scores),
                                                 len(local.nonmember_scores))
    assert abs(mi["advantage"] - local.advantage) <= 2 / mi["nonmembers"]
    ep = res["endpoint"]
    spent = res["queries"]["square"]["total_queries"] + sum(
        e["queries"] for e in res["explanations"].values()) + mi["members"] + mi["nonmembers"]
    assert ep["url"] == endpoint.url and ep["queries"] == spent > 0
    assert endpoint.counter.queries == ep["queries"] + ep["evaluations"]  # the server's count
    assert ep["seconds_per_query"] > 0 and res["provenance"]["model_sha256"] is None
    used = {m["method"] for m in res["provenance"]["methods"]}
    assert "privacy:membership_inference" in used and "privacy:idlg" not in used
    html = (out / "report.html").read_text()
    assert f"The model is an endpoint <code>{endpoint.url}</code>" in html
    assert f"this run sent it {ep['queries']} queries" in html and "ms per query" in html
    assert "queries" in text and endpoint.url in text
    for f in out.rglob("*"):  # the name of the variable, never its value
        assert not f.is_file() or TOKEN.encode() not in f.read_bytes(), f
    assert 'token_env = "AUDIT_TOKEN"' in (out / "config.toml").read_text()


def test_a_server_going_down_stops_the_audit_and_it_resumes(digits_model, digits_test,
                                                            tmp_path):
    state = {"left": None}

    def model(x):  # answers while state["left"] allows, then fails (HTTP 500)
        if state["left"] is not None:
            if state["left"] < len(x):
                raise RuntimeError("the server's model crashed")
            state["left"] -= len(x)
        with torch.no_grad():
            return digits_model(x)

    cfg = AuditConfig(n_samples=10, n_examples=2, sections=("queries", "explanations"),
                      explainers=("occlusion",), params={"square": {"max_queries": 10}})
    with serve(model, name="digits") as server:
        hm = HttpModel(server.url, retries=0)
        store = tmp_path / "state"
        first = run_audit(hm, digits_test, cfg, progress=False, state_dir=store)
        assert first.explanations["occlusion"]["queries"] > 0
        for f in store.glob("explanations-*"):  # as if the audit had been killed there
            f.unlink()
        state["left"] = 10  # the clean look of the 10 samples, then the server fails
        with pytest.raises(ModelUnavailableError, match=r"stopped in section 'explanations'"
                                                        r".*HTTP 500.*finished section\(s\) are "
                                                        r"saved in .*rerun"):
            run_audit(HttpModel(server.url, retries=0), digits_test, cfg, progress=False,
                      state_dir=store)
        state["left"] = None
        again = run_audit(HttpModel(server.url, retries=0), digits_test, cfg, progress=False,
                          state_dir=store)
    assert again.sections["queries"].resumed and not again.sections["explanations"].resumed
    assert again.queries["square"]["total_queries"] == first.queries["square"]["total_queries"] > 0
    assert again.explanations["occlusion"]["queries"] == first.explanations["occlusion"]["queries"]
    assert torch.equal(again.sections["explanations"].tensors["clean/occlusion"],
                       first.sections["explanations"].tensors["clean/occlusion"])
    path = write_report(again, tmp_path / "out")
    assert path.is_file()
