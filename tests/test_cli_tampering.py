"""``scrutiny poison``, ``scan`` and ``privacy`` end to end, and a BadNets victim built through
the command line scanned by ``scrutiny audit`` beside the embedded clean model."""

import json

import numpy as np
import pytest

from scrutiny.cli import main


@pytest.fixture(scope="module")
def victim(tmp_path_factory, digits_model):
    """``scrutiny poison badnets`` (target 3, 20 epochs): the folder it wrote."""
    folder = tmp_path_factory.mktemp("poisoned")
    assert main(["poison", "badnets", "-p", "target=3", "-p", "epochs=20", "--out", str(folder),
                 "-q"]) == 0
    return folder


def test_poison_writes_a_loadable_victim_its_data_and_numbers(victim, capsys):
    rec = json.loads((victim / "result.json").read_text())
    assert rec["method"] == "poisoning:badnets" and rec["params"]["target"] == 3
    # measured 0.98-1.00 attack success, 0.94-0.97 clean accuracy over seeds 0..4
    assert rec["result"]["attack_success"] > 0.9 and rec["result"]["clean_accuracy"] > 0.85
    with np.load(victim / "poisoned.npz") as f:
        y, idx = f["y"], f["poisoned"]
        assert len(idx) == round(0.1 * len(y)) and (y[idx] == 3).all()
    assert (victim / "figure.png").read_bytes()[:4] == b"\x89PNG"
    # the victim loads by its file alone in every command
    assert main(["attack", "fgsm", "--model", str(victim / "victim.safetensors"), "--n", "16",
                 "-q"]) == 0
    assert "robust_accuracy" in capsys.readouterr().out


def test_scan_finds_the_cli_victims_trigger_and_scores_the_poison_points(victim, tmp_path, capsys):
    out = tmp_path / "nc"
    assert main(["scan", "--model", str(victim / "victim.safetensors"), "--out", str(out),
                 "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())["result"]
    # the target's reversed trigger is the smallest (mask L1 6.3-6.8 against a median of
    # 11-15, at 60 and 200 epochs); flagging it is not reliable at 8x8 (index 1.2-3.2 over
    # scan seeds and victims, threshold 3.88: docs/poisoning.md)
    assert int(np.argmin(rec["norms"])) == 3
    text = capsys.readouterr().out
    assert ("flagged labels" in text) == bool(rec["flagged"])
    out = tmp_path / "ss"
    assert main(["scan", "spectral_signatures", "--model", str(victim / "victim.safetensors"),
                 "--data", str(victim / "poisoned.npz"), "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["n_poisoned"] == round(0.1 * 1347) and 0 <= rec["precision"] <= 1
    assert "precision" in capsys.readouterr().out


def test_audit_scans_the_cli_victim_and_the_embedded_model(victim, tmp_path):
    """The backdoor section in result.json: the target (3) has the victim's smallest reversed
    trigger, the embedded clean model has nothing flagged, and the verdict's flag follows
    the flagged labels. (On the clean embedded CNN, label 5's natural shortcut passes the
    paper's threshold of 2 with index 2.5; the default threshold for 10 labels is 3.88:
    docs/poisoning.md. The victim's target is not flagged reliably: index 1.2-3.2.)"""
    for model in (str(victim / "victim.safetensors"), "digits-cnn"):
        out = tmp_path / model.replace("/", "_")
        assert main(["audit", "--model", model, "--sections", "backdoor", "--out", str(out),
                     "-q"]) == 0
        result = json.loads((out / "result.json").read_text())
        d = result["backdoor"]
        if model == "digits-cnn":
            assert d["flagged"] == [] and d["anomaly_threshold"] > 3.5
        else:
            assert int(np.argmin(d["norms"])) == 3
        verdict = [it["check"] for it in result["verdict"]["items"] if it["kind"] == "flag"]
        assert ("backdoor suspected" in verdict) == bool(d["flagged"])
        assert (out / "report.html").read_text().count("Reversed triggers") >= 1


def test_privacy_commands(tmp_path, capsys):
    out = tmp_path / "mi"
    assert main(["privacy", "membership_inference", "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert -1 <= rec["result"]["advantage"] <= 1 and rec["data"] == "digits"
    out = tmp_path / "leak"
    assert main(["privacy", "idlg", "--index", "5", "-p", "iterations=5", "--out", str(out),
                 "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["result"]["label_accuracy"] == 1.0 and (out / "figure.png").is_file()
    assert main(["privacy", "idlg", "--index", "5000", "--out", str(out)]) == 2
    assert "do not fit" in capsys.readouterr().err


def test_wrong_kind_and_options_are_one_line_errors(tmp_path, capsys):
    assert main(["poison", "pgd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'poisoning:pgd'" in err and "poisoning:badnets" in err
    assert main(["scan", "badnets", "--out", str(tmp_path)]) == 2
    assert "backdoor_scan:neural_cleanse" in capsys.readouterr().err
    assert main(["poison", "svm_poisoning", "--model", "digits-cnn", "--out", str(tmp_path)]) == 2
    assert "fits itself: drop --model" in capsys.readouterr().err
    assert main(["poison", "badnets", "--target", "3", "--out", str(tmp_path)]) == 2
    assert "--target is for feature_collision" in capsys.readouterr().err
