"""Every audit setting reachable (CLI options, a TOML file) and recorded (config.toml,
the command that reproduces the run, versions, hashes, every method's parameters)."""

import json
import re
import shlex
import tomllib

import pytest

from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.config import config_values
from scrutiny.cli import main
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError


def test_toml_round_trip_keeps_every_field():
    cfg = AuditConfig(attacks=("pgd",), eps=(0.0, 0.1, 0.2), reference_eps=0.2, n_samples=40,
                      certifier=None, headline_attack=None, checks=False, metrics=(),
                      compare_samples=12,
                      params={"pgd": {"steps": 7, "loss": "margin"}}, sections=("robustness",))
    text = cfg.to_toml({"model": "digits-cnn"})
    values = tomllib.loads(text)
    assert values["model"] == "digits-cnn" and values["certifier"] == ""  # TOML has no null
    again, extra = AuditConfig.from_dict(values, extra=("model",))
    assert again == cfg and extra == {"model": "digits-cnn"} and again.compare_samples == 12
    with pytest.raises(InputError, match="compare_samples must be >= 1, got 0"):
        AuditConfig(compare_samples=0)


@pytest.mark.parametrize("values, msg", [
    ({"n_sampels": 3}, "unknown key 'n_sampels'"),
    ({"n_samples": "3"}, "n_samples must be int"),
    ({"eps": ["a"]}, "eps must be a list of numbers"),
    ({"params": {"pgd": 3}}, "one table per method"),
    ({"checks": 1}, "checks must be bool"),
])
def test_bad_values_name_the_key(values, msg):
    with pytest.raises(InputError, match=msg):
        config_values(values, "audit.toml")


def test_a_bad_key_in_the_config_file_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "audit.toml"
    bad.write_text('n_samples = 16\nattaks = ["pgd"]\n')
    assert main(["audit", "--config", str(bad), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.splitlines()) == 1
    assert "unknown key 'attaks'" in err and str(bad) in err and "attacks" in err
    bad.write_text("n_samples = \n")
    assert main(["audit", "--config", str(bad), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not valid TOML" in err and len(err.splitlines()) == 1


def test_config_file_drives_the_audit_and_the_recorded_command_reproduces_it(tmp_path):
    cfg_file = tmp_path / "audit.toml"
    cfg_file.write_text('attacks = ["fgsm", "pgd"]\neps = [0, 0.1]\nn_samples = 16\nseed = 3\n'
                        'sections = ["robustness"]\n\n[params.pgd]\nsteps = 3\nloss = "ce"\n')
    first = tmp_path / "first"
    # options override the file: the seed, and one pgd parameter beside the file's others
    assert main(["audit", "--config", str(cfg_file), "--seed", "1", "-p", "pgd.steps=4",
                 "--out", str(first), "-q"]) == 0
    result = json.loads((first / "result.json").read_text())
    cfg = result["config"]
    assert cfg["n_samples"] == 16 and cfg["eps"] == [0.0, 0.1] and cfg["seed"] == 1
    assert cfg["params"] == {"pgd": {"steps": 4, "loss": "ce"}}
    assert cfg["sections"] == ["robustness"]
    assert list(result["sections"]) == ["robustness", "verdict"]  # the verdict reads it
    rec = result["provenance"]
    assert set(rec["versions"]) >= {"scrutiny", "torch", "numpy", "python"}
    assert re.fullmatch(r"[0-9a-f]{64}", rec["model_sha256"])
    assert re.fullmatch(r"[0-9a-f]{64}", rec["data_sha256"])
    assert rec["samples"]["n_samples"] == {"requested": 16, "used": 16}
    methods = {m["method"]: m for m in rec["methods"]}
    assert set(methods) == {"attack:fgsm", "attack:pgd"}  # only what the sections that ran built
    pgd = methods["attack:pgd"]["params"]  # every hyperparameter, the defaults too
    assert pgd["steps"] == 4 and pgd["restarts"] == 1 and "random_start" in pgd
    html = (first / "report.html").read_text()
    assert "parameters: defaults" not in html and "random_start=True" in html
    assert rec["command"] in html.replace("&#39;", "'") and rec["model_sha256"] in html
    # the resolved configuration beside the report, and the command that reruns it
    written = tomllib.loads((first / "config.toml").read_text())
    assert written["seed"] == 1 and written["params"]["pgd"] == {"steps": 4, "loss": "ce"}
    argv = shlex.split(rec["command"])
    assert argv[:4] == ["scrutiny", "audit", "--config", str(first / "config.toml")]
    second = tmp_path / "second"
    argv[argv.index("--out") + 1] = str(second)  # a new folder: computed again, not resumed
    assert main([*argv[1:], "-q"]) == 0
    again = json.loads((second / "result.json").read_text())
    def numbers(res):  # every row of the curve but its time
        return {a: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
                for a, rows in res["robustness"].items()}

    assert numbers(again) == numbers(result) and again["config"] == cfg
    assert numbers(result)["worst case"][1]["robust_accuracy"] < 1  # the attacks did something
    assert again["clean_accuracy"] == result["clean_accuracy"]
    for k in ("model_sha256", "data_sha256", "methods"):
        assert again["provenance"][k] == rec[k]
    assert not any(s["resumed"] for s in again["sections"].values())


def test_fewer_samples_than_requested_are_said(digits_model, digits_test):
    small = ArrayDataset(digits_test.x[:12], digits_test.y[:12], digits_test.classes,
                         name="digits (12 rows)")
    cfg = AuditConfig(attacks=("fgsm",), eps=(0.0, 0.1), n_samples=30, sections=("robustness",))
    res = run_audit(digits_model, small, cfg, progress=False)
    assert res.n_samples == 12
    assert res.provenance["samples"]["n_samples"] == {"requested": 30, "used": 12}
    assert any("n_samples = 30 was requested" in n and "12 were used" in n for n in res.notes)
