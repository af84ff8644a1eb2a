"""The audit as registered sections: order, selection, every sample broken, resumption."""

import json
import os
import signal
import subprocess
import sys
import time
from importlib import resources

import pytest

from scrutiny.audit import SECTIONS
from scrutiny.audit.sections import GROUPS, resolve, run_order
from scrutiny.cli import main
from scrutiny.errors import InputError


def test_every_section_has_a_template_piece_and_runs_after_what_it_reads():
    templates = resources.files("scrutiny.audit") / "templates" / "sections"
    order = run_order()
    assert sorted(order) == sorted(SECTIONS)
    for name, cls in SECTIONS.items():
        assert (templates / f"{name}.html").is_file(), name
        assert cls.group in GROUPS
        for dep in (*cls.needs, *cls.uses):
            assert order.index(dep) < order.index(name), (dep, name)


def test_selection_adds_what_is_needed_and_refuses_to_skip_it():
    assert resolve(("trust",), ()) == ["robustness", "examples", "explanations", "trust",
                                       "verdict"]
    assert "matrix" not in resolve(None, ("matrix",))
    with pytest.raises(InputError, match="needs it"):
        resolve(("trust",), ("examples",))
    with pytest.raises(InputError, match="unknown audit section"):
        resolve(("robustnes",), ())


def test_the_verdict_runs_whenever_a_section_it_reads_runs_unless_skipped():
    assert SECTIONS["verdict"].always
    for chosen in (("robustness",), ("certification",), ("queries", "checks")):
        assert resolve(chosen, ())[-1] == "verdict"
        assert "verdict" not in resolve(chosen, ("verdict",))
    assert resolve(("verdict",), ()) == ["verdict"]  # chosen alone: what it reads is optional
    assert not any(c.always for n, c in SECTIONS.items() if n != "verdict")


def test_audit_where_every_sample_falls_at_the_first_attack_writes_a_report(tmp_path, capsys):
    """An untrained (seeded) MLP at eps 0.3: FGSM and PGD break every sample, so nothing is
    left for the headline attack (an empty batch)."""
    out = tmp_path / "rep"
    assert main(["audit", "--model", "tests.models.factories:seeded_digits_mlp", "--n", "16",
                 "--eps", "0,0.3", "--defenses", "", "--certifier", "", "--explainers",
                 "saliency", "--out", str(out), "-q"]) == 0
    def strict(const):
        raise AssertionError(f"result.json holds {const}, which strict JSON parsers reject")

    result = json.loads((out / "result.json").read_text(), parse_constant=strict)
    assert result["headline"]["robust_accuracy"] == 0.0
    assert result["headline"]["strong_attack"]["samples_attacked"] == 0
    assert any("had nothing to attack" in n for n in result["notes"])
    assert (out / "report.html").read_text().count("<h2>") >= 3
    # robust never above clean: the eps-0 column is the clean accuracy
    assert result["robustness"]["worst case"][0]["robust_accuracy"] == result["clean_accuracy"]


def test_sections_and_skip_from_the_command_line(tmp_path):
    out = tmp_path / "rep"
    assert main(["audit", "--n", "16", "--eps", "0,0.1", "--sections", "robustness,queries",
                 "--skip", "headline", "--out", str(out), "-q"]) == 0
    result = json.loads((out / "result.json").read_text())
    # the verdict reads them, so it runs too, unless skipped
    assert set(result["sections"]) == {"robustness", "queries", "verdict"}
    assert result["verdict"]["robust_accuracy"] == result["headline"]["robust_accuracy"]
    assert result["matrix"] is None and result["explanations"] == {}
    assert main(["audit", "--skip", "robustness", "--out", str(out), "-q"]) == 2


def test_output_path_is_checked_before_any_work(tmp_path, capsys):
    f = tmp_path / "a-file"
    f.write_text("x")
    t = time.perf_counter()
    assert main(["audit", "--out", str(f), "-q"]) == 2
    assert main(["audit", "--out", str(f / "below"), "-q"]) == 2
    assert time.perf_counter() - t < 5  # refused at once, not after an audit
    assert "is a file" in capsys.readouterr().err


_ARGS = ["audit", "--n", "24", "--eps", "0,0.1", "--attacks", "fgsm,pgd", "-p", "pgd.steps=5",
         "--defenses", "bit_depth", "--certifier", "ibp", "--explainers", "saliency",
         "--explore-samples", "2", "--skip", "learned,backdoor,privacy", "-q"]


def test_a_killed_audit_resumes_with_the_same_numbers(tmp_path):
    """kill -9 after the first sections are saved; the rerun loads them and computes the rest."""
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    code = f"import sys; from scrutiny.cli import main; sys.exit(main({_ARGS + ['--out', str(killed)]!r}))"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    state = killed / ".audit-state"
    deadline = time.time() + 600
    while time.time() < deadline and not list(state.glob("robustness-*.json")):
        time.sleep(0.1)
        assert proc.poll() is None, "the audit ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "robustness" in {p.name.split("-")[0] for p in state.glob("*.json")}
    assert not (killed / "result.json").exists()
    assert main(_ARGS + ["--out", str(killed)]) == 0
    assert main(_ARGS + ["--out", str(clean)]) == 0
    a = json.loads((killed / "result.json").read_text())
    b = json.loads((clean / "result.json").read_text())
    assert a["sections"]["robustness"]["resumed"] and not b["sections"]["robustness"]["resumed"]
    for key in ("robustness", "headline", "matrix", "certification", "queries", "trust",
                "clean_accuracy", "flags"):
        assert _numbers(a[key]) == _numbers(b[key]), key
    # a third run resumes everything
    assert main(_ARGS + ["--out", str(killed)]) == 0
    c = json.loads((killed / "result.json").read_text())
    assert all(s["resumed"] for s in c["sections"].values())
    assert _numbers(c["headline"]) == _numbers(b["headline"])


def _numbers(d):
    """Everything but wall-clock times."""
    if isinstance(d, dict):
        return {k: _numbers(v) for k, v in d.items() if "seconds" not in k}
    if isinstance(d, list):
        return [_numbers(v) for v in d]
    return d


def test_result_json_is_strict_and_undefined_values_are_null():
    import math

    from scrutiny.audit.report import _pct, strict_json

    obj = strict_json({"a": float("nan"), "b": [1.0, float("inf"), (2, None)], 3: True})
    assert obj == {"a": None, "b": [1.0, None, [2, None]], "3": True}
    json.dumps(obj, allow_nan=False)
    assert _pct(float("nan")) == "n/a" and _pct(0.5) == "50.0%" and not math.isnan(0.5)


def test_a_test_split_with_some_of_the_classes_is_audited(digits_model, digits_test):
    """Classes 0-2 of the ten the model predicts: valid data, not a mismatch."""
    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.data import ArrayDataset

    keep = digits_test.y < 3
    sub = ArrayDataset(x=digits_test.x[keep], y=digits_test.y[keep], classes=("0", "1", "2"),
                       name="digits-0-2")
    cfg = AuditConfig(n_samples=24, eps=(0.0, 0.1), explainers=("saliency",), metrics=(),
                      sections=("robustness", "examples", "explanations"))
    res = run_audit(digits_model, sub, cfg, progress=False)
    assert res.clean_accuracy > 0.8 and {"adversarial_examples", "explanations"} <= {
        f.name for f in res.figures}
    bad = ArrayDataset(x=digits_test.x[:8], y=digits_test.y[:8] % 3 + 10, classes=tuple(
        str(i) for i in range(13)), name="too-many")
    with pytest.raises(InputError, match="labels up to"):
        run_audit(digits_model, bad, cfg, progress=False)
