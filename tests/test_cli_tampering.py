"""``scrutiny poison``, ``scan`` and ``privacy`` end to end, and a BadNets victim built through
the command line scanned by ``scrutiny audit`` beside the embedded clean model."""

import json
from pathlib import Path

import numpy as np
import pytest

from scrutiny.cli import main
from scrutiny.cli.tampering import poison_defaults


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
    assert rec["params"]["size"] == 2  # the patch sized to the 8x8 digits (poison_defaults)
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
    # the target's reversed trigger is the smallest (the command's 2x2 victims, target 0, 30
    # epochs, seeds 0..4: 0.44-0.54 of the median, the clean labels >= 0.65); flagging it is
    # not reliable at 8x8 (index 2.5-5.7, flagged for 2 of 5, threshold 3.88: docs/poisoning.md)
    assert int(np.argmin(rec["norms"])) == 3
    text = capsys.readouterr().out
    assert ("flagged labels" in text) == bool(rec["flagged"])
    out = tmp_path / "ss"
    assert main(["scan", "spectral_signatures", "--model", str(victim / "victim.safetensors"),
                 "--data", str(victim / "poisoned.npz"), "--out", str(out), "-q"]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["n_poisoned"] == round(0.1 * 1347) and 0 <= rec["precision"] <= 1
    assert "precision" in capsys.readouterr().out


def test_audit_scans_the_cli_victim_and_the_embedded_model(tmp_path):
    """Issue 14's done-when: the audit's backdoor section (K-Arm's symmetric check) flags
    the CLI-built victim's target (3) and nothing on the embedded clean model; the verdict's
    flag follows the flagged labels. The victim is the file ``scrutiny poison badnets -p
    target=3 -p epochs=20`` wrote, shipped in tests/fixture_weights (weights trained on
    another CPU differ). Measured (docs/poisoning.md, scan seeds 0-2, 1 torch thread): the
    score (symmetric ratio x shortcut factor) of the smallest trigger's label is 13.7 / 8.8 /
    8.3 on this victim (label 3), 7.0-15.7 on 12 other CLI victims (training seeds 0-9,
    targets 0 and 7), 3.2 / 4.5 / 3.6 on the embedded CNN (label 5, a natural shortcut) and
    1.3-4.8 on 9 clean models of the same recipe retrained at seeds 1-9; bound 5.7."""
    shipped = Path(__file__).parent / "fixture_weights" / "cli-badnets-victim.safetensors"
    for model in (str(shipped), "digits-cnn"):
        out = tmp_path / model.replace("/", "_")
        assert main(["audit", "--model", model, "--sections", "backdoor", "--out", str(out),
                     "-q"]) == 0
        result = json.loads((out / "result.json").read_text())
        d = result["backdoor"]
        if model == "digits-cnn":
            assert d["flagged"] == [] and d["score"][0] < d["score_bound"]
        else:
            assert int(np.argmin(d["norms"])) == 3 and d["flagged"] == [3]
        verdict = [it["check"] for it in result["verdict"]["items"] if it["kind"] == "flag"]
        assert ("backdoor suspected" in verdict) == bool(d["flagged"])
        assert (out / "report.html").read_text().count("Reversed triggers") >= 1


def test_poison_sizes_the_trigger_to_the_image_unless_given(tmp_path):
    """A seventh of the side, at least 2 pixels (Neural Cleanse's 4x4 on 28x28 MNIST);
    ``-p size=`` wins."""
    assert poison_defaults("badnets", (1, 8, 8)) == {"size": 2}
    assert poison_defaults("backdoor_embedding", (3, 32, 32)) == {"size": 5}
    assert poison_defaults("badnets", (30,)) == {} and poison_defaults("dba", (1, 8, 8)) == {}
    assert main(["poison", "badnets", "-p", "size=3", "-p", "epochs=1", "--out", str(tmp_path),
                 "-q"]) == 0
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["params"]["size"] == 3


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
