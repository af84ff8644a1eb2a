"""The command line: every command end to end, and one-line errors."""

import json
import re

import pytest

from scrutiny.cli import main


@pytest.fixture(autouse=True)
def _trained(digits_model):
    """The zoo model is trained once (session fixture) before the CLI loads it."""


def test_list(capsys):
    assert main(["list"]) == 0
    assert "attack:pgd" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["pgd", "attack:pgd"])
def test_list_one_method_shows_its_parameters_tags_and_paper(name, capsys):
    assert main(["list", name]) == 0
    text = capsys.readouterr().out
    assert re.search(r"\bsteps\W+40\W+int > 0\W+Iterations per restart", text)  # name, default,
    assert re.search(r"\bloss\W+'ce'\W+one of 'ce', 'margin'", text)           # constraint, text
    assert "kind: attack" in text and "scrutiny.attacks.whitebox.pgd.PGD" in text
    assert "Madry" in text and "norms linf, l2, l1" in text and "targeted" in text
    assert "progress" not in text
    assert main(["list", "pgd", "--markdown"]) == 0
    assert "| `steps` | `40` | int > 0 | Iterations per restart. |" in capsys.readouterr().out


def test_list_of_a_kind_and_an_unknown_name(capsys):
    assert main(["list", "certifier"]) == 0
    text = capsys.readouterr().out
    assert "certifier:ibp" in text and "attack:pgd" not in text
    assert main(["list", "nope"]) == 2
    assert "unknown kind or method 'nope'" in capsys.readouterr().err


def test_attack_and_save(tmp_path, capsys):
    out = tmp_path / "adv.npz"
    assert main(["attack", "pgd", "--eps", "0.1", "--n", "64", "-p", "steps=10", "--out",
                 str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "robust_accuracy" in text and out.is_file()


def test_explain(tmp_path, capsys):
    png = tmp_path / "ig.png"
    assert main(["explain", "integrated_gradients", "--n", "3", "--out", str(png), "-q"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and png.with_suffix(".npz").is_file()
    assert "completeness error" in capsys.readouterr().out


def test_audit_writes_report(tmp_path, capsys):
    assert main(["audit", "--n", "48", "--eps", "0,0.1", "--attacks", "fgsm,pgd", "-p",
                 "pgd.steps=5", "--defenses", "bit_depth,feature_squeezing", "--certifier", "ibp",
                 "--explore-samples", "4", "-p", "class_prototype.steps=20",
                 "-p", "counterfactual.lambda_steps=3", "-p", "neural_cleanse.epochs=2",
                 "-p", "idlg.iterations=2", "--out", str(tmp_path), "-q"]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "Robust accuracy" in html
    figs = json.loads((tmp_path / "figures.json").read_text())
    assert {"robustness_curve", "adversarial_examples", "explanations", "gallery",
            "query_curves"} <= set(figs)
    assert "Can the explanations be trusted?" in html and "symptoms of obfuscated gradients" in html
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["trust"]["saliency"]) == {"deletion", "insertion", "model_randomization"}
    assert result["matrix"]["defenses"] == ["none", "bit_depth", "feature_squeezing"]
    assert "Attacks against defenses" in html and "What can be proven" in html
    assert "What has the model learned?" in html and "Sample explorer" in html
    assert {"prototypes", "influence", "counterfactuals", "explorer"} <= set(figs)
    assert "Was it tampered with" in html and {"reversed_triggers", "gradient_leakage"} <= set(figs)
    assert isinstance(result["backdoor"]["flagged"], list) and len(result["backdoor"]["norms"]) == 10
    assert -1 <= result["privacy"]["membership_inference"]["advantage"] <= 1
    sq = result["queries"]["square"]
    assert 0 < sq["success_rate"] <= 1 and sq["curve"][-1][1] == sq["success_rate"]
    rows = result["certification"]["rows"]
    assert [r["eps"] for r in rows] == [0.1] and rows[0]["certified_accuracy"] <= rows[0][
        "robust_accuracy"]
    text = capsys.readouterr().out
    assert "worst case" in text and "checks (model probe, gradient masking, explanations):" in text


def test_audit_on_tabular_binary_data(tmp_path, capsys):
    """Two classes (DLR stages fall back to CE) and a table (image-only methods skipped)."""
    assert main(["audit", "--data", "breast_cancer", "--n", "32", "--eps", "0,0.1",
                 "--certifier", "ibp", "--out", str(tmp_path), "-q"]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    names = [s["name"] for s in result["headline"]["strong_attack"]["stages"]]
    assert "apgd_t (ce: 2 classes)" in names and "square (skipped: needs images)" in names
    assert any("square needs images" in n for n in result["notes"])
    assert "worst case" in capsys.readouterr().out


def test_trust(capsys):
    assert main(["trust", "deletion", "--explainer", "saliency", "--n", "8", "-q"]) == 0
    assert "aggregate" in capsys.readouterr().out
    # data randomization retrains on the training split the CLI loads
    assert main(["trust", "data_randomization", "--n", "4", "-p", "epochs=1", "-q"]) == 0
    assert "aggregate" in capsys.readouterr().out


def test_reprogram(capsys):
    assert main(["reprogram", "-p", "steps=5", "-p", "labels_per_class=1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "majority-class rate" in text


def test_certify(capsys):
    assert main(["certify", "ibp", "--n", "8", "--eps", "0.001,0.2", "-q"]) == 0
    text = capsys.readouterr().out
    assert "certified accuracy" in text and "0.001" in text


def test_user_model_via_factory_and_weights(tmp_path, capsys):
    w = tmp_path / "mlp.safetensors"
    assert main(["train", "--model", "tests.models.factories:digits_mlp", "--data", "digits",
                 "--epochs", "3", "--out", str(w), "-q"]) == 0
    assert main(["attack", "fgsm", "--model", "tests.models.factories:digits_mlp", "--weights",
                 str(w), "--n", "32", "-q"]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["attack", "pgd", "--eps", "-1"], "eps must be"),
    (["certify", "crown", "--model", "http://127.0.0.1:9/v2/models/m"], "an endpoint only answers"),
    (["attack", "nope"], "unknown method"),
    (["attack", "pgd", "-p", "stepz=3"], "accepted: steps"),
    (["attack", "pgd", "--data", "/no/such/file.npz"], "no such dataset or path"),
    (["attack", "pgd", "--model", "tests.models.factories:digits_mlp", "--data", "synthetic"],
     "fails on inputs"),
    (["attack", "pgd", "--model", "scrutiny.models.zoo:SmallCNN", "--weights", "/no.safetensors"],
     "not found"),
    (["explain", "grad_cam", "--model", "digits-mlp"], "no Conv2d"),
    (["audit", "--norm", "l7"], "unknown norm"),
    (["trust", "pointing_game"], "ground-truth masks"),
    (["trust", "deletion", "--explainer", "nope"], "unknown method"),
    (["certify", "smoothing", "--norm", "linf"], "use --norm l2"),
    (["certify", "ibp", "--eps", "x"], "comma-separated numbers"),
    (["audit", "--n", "0"], "must be >= 1"),
])
def test_bad_input_is_one_line(argv, msg, capsys):
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert msg in last and last.startswith("error:") and "Traceback" not in err


def test_docs_method_table_matches_the_registry():
    from pathlib import Path

    from scrutiny.cli import methods_markdown

    doc = (Path(__file__).parents[1] / "docs" / "methods.md").read_text()
    assert methods_markdown() in doc, "regenerate docs/methods.md with 'scrutiny list --markdown'"


def test_untrained_warning_only_for_a_randomly_initialised_factory(capsys):
    args = ["attack", "fgsm", "--n", "4", "-q", "--model"]
    assert main([*args, "tests.models.factories:digits_mlp"]) == 0
    assert "untrained" in capsys.readouterr().err
    assert main([*args, "tests.models.factories:seeded_digits_mlp"]) == 0
    assert "untrained" not in capsys.readouterr().err


def test_a_factory_that_raises_is_one_error_line(capsys):
    assert main(["attack", "fgsm", "--n", "4", "-q", "--model",
                 "tests.models.factories:broken_factory"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "cannot find my checkpoint" in err and len(err.splitlines()) == 1


def test_attack_with_an_infinite_eps_is_one_error_line(capsys):
    assert main(["attack", "pgd", "--eps", "inf", "--n", "4", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "finite eps" in err and len(err.splitlines()) == 1
    assert main(["audit", "--eps", "0,inf", "-q"]) == 2
    assert "finite" in capsys.readouterr().err


def test_attack_under_a_query_budget_says_how_many_samples_it_cut(capsys):
    assert main(["attack", "square", "--n", "16", "--budget", "1", "-p", "max_queries=20",
                 "-q"]) == 0
    text = capsys.readouterr().out
    cut = int(re.search(r"budget_exhausted\W+(\d+)", text).group(1))
    assert cut > 0 and re.search(r"stopped_by_budget\W+True", text)
    assert re.search(r"evaluator_queries\W+32\b", text)  # clean and final checks, 2 per sample
    assert f"cut the attack short on {cut} of 16 samples" in text
    assert main(["attack", "square", "--n", "16", "-p", "max_queries=20", "-q"]) == 0
    assert re.search(r"budget_exhausted\W+0\b", capsys.readouterr().out)
    assert main(["attack", "pgd", "--budget", "5", "--n", "4", "-q"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_explain_npz_holds_the_inputs_and_the_figure_is_labelled(tmp_path, capsys, monkeypatch):
    """--out f.npz: x, y, pred and the maps in f.npz, the figure in f.png, its inputs titled
    true -> predicted (confidence%), its maps with colour bars, the method as its title."""
    import numpy as np

    from scrutiny import plot
    from scrutiny.data import load_digits

    drawn = []
    real = plot.explanation
    monkeypatch.setattr(plot, "explanation", lambda *a, **k: drawn.append(real(*a, **k))
                        or drawn[-1])
    out = tmp_path / "ig.npz"
    assert main(["explain", "integrated_gradients", "--n", "3", "--out", str(out), "-q"]) == 0
    said = "".join(capsys.readouterr().out.split())  # rich wraps long paths anywhere
    assert f"saved{out.with_suffix('.png')},{out}and{out.with_suffix('.json')}" in said
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    arrays = np.load(out)
    data = load_digits(split="test")
    assert np.array_equal(arrays["x"], data.x[:3].numpy()) and arrays["x"].shape == (3, 1, 8, 8)
    assert np.array_equal(arrays["y"], data.y[:3].numpy())
    assert arrays["pred"].shape == arrays["confidence"].shape == (3,)
    assert np.array_equal(arrays["pred"], arrays["target"])  # the predicted class explained
    assert arrays["map"].shape == (3, 8, 8) and arrays["attributions"].shape == (3, 1, 8, 8)
    (fig,) = drawn
    titles = [a.get_title() for a in fig.axes[:3]]
    assert all(re.fullmatch(r"\d -> \d \(\d+%\)", t) for t in titles), titles
    assert [t.split(" -> ")[0] for t in titles] == [str(int(v)) for v in arrays["y"]]
    assert [a.get_label() for a in fig.axes].count("<colorbar>") == 3
    assert fig._suptitle.get_text() == "integrated_gradients"
    assert main(["explain", "saliency", "--out", str(tmp_path / "ig.txt"), "-q"]) == 2
    assert "must end in .png or .npz" in capsys.readouterr().err


def test_audit_takes_compare_samples(tmp_path, capsys):
    """Every AuditConfig field is an audit option: --compare-samples too, checked at once."""
    assert main(["audit", "--compare-samples", "0", "--out", str(tmp_path / "r"), "-q"]) == 2
    assert "compare_samples must be >= 1, got 0" in capsys.readouterr().err


@pytest.fixture
def drawn_rows(monkeypatch):
    """The rows of every figure the learned command draws: [(label, images, titles), ...]."""
    from scrutiny.audit import figures

    rows = []
    real = figures.image_rows
    monkeypatch.setattr(figures, "image_rows",
                        lambda r, *a, **k: rows.append(r) or real(r, *a, **k))
    return rows


def test_learned_class_prototype_writes_one_labelled_image_per_class(tmp_path, capsys,
                                                                     drawn_rows):
    import numpy as np

    out = tmp_path / "proto.png"
    assert main(["learned", "class_prototype", "-p", "steps=20", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    a = np.load(out.with_suffix(".npz"))
    assert a["images"].shape == (10, 1, 8, 8) and a["classes"].tolist() == list(range(10))
    assert a["images"].min() >= 0 and a["images"].max() <= 1  # inside the model's bounds
    own = int((a["predicted"] == a["classes"]).sum())
    assert f"classified as their class: {own} of 10" in text
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out.with_suffix(".json").read_text())["params"]["steps"] == 20
    ((label, images, titles),) = drawn_rows[0]
    assert label == "prototype" and len(images) == len(titles) == 10
    assert all(re.fullmatch(r"\d -> \d \(\d+%\)", t) for t in titles), titles
    assert [t.split(" -> ")[0] for t in titles] == [str(c) for c in range(10)]
    assert [int(t.split(" -> ")[1][0]) for t in titles] == a["predicted"].tolist()


def test_learned_counterfactual_moves_each_sample_to_its_second_class(tmp_path, capsys):
    import numpy as np
    import torch

    from scrutiny.models import pretrained

    out = tmp_path / "cf.npz"
    assert main(["learned", "counterfactual", "--n", "3", "-p", "steps=20", "--out", str(out),
                 "-q"]) == 0
    a = np.load(out)
    assert a["x"].shape == a["x_cf"].shape == (3, 1, 8, 8)
    model = pretrained("digits-cnn", progress=False)
    with torch.no_grad():
        logits = model(torch.from_numpy(a["x"]))
        pred_cf = model(torch.from_numpy(a["x_cf"])).argmax(1).numpy()
    assert a["desired"].tolist() == logits.topk(2, dim=1).indices[:, 1].tolist()
    ok = a["success"]
    # 3 of 3 found on the shipped weights and SCRUTINY_RETRAIN_SEED=1..4, each closer than the
    # nearest training example of its class: largest ratio 0.24, 0.38, 0.24, 0.32, 0.27
    assert ok.all() and (pred_cf == a["desired"]).all() and (a["pred_cf"] == pred_cf).all()
    assert (a["distance"] < a["nearest_distance"]).all()
    assert "counterfactuals found: 3 of 3" in capsys.readouterr().out
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_learned_influence_lists_the_top_training_points_of_each_test_input(tmp_path, capsys):
    import numpy as np

    from scrutiny.data import load_digits

    out = tmp_path / "inf.png"
    assert main(["learned", "influence", "--n", "2", "-p", "top_k=5", "--out", str(out),
                 "-q"]) == 0
    text = capsys.readouterr().out
    a = np.load(out.with_suffix(".npz"))
    n_train = len(load_digits(split="train"))
    assert a["up_loss"].shape == (2, n_train) and a["helpful"].shape == a["harmful"].shape == (2, 5)
    assert (a["helpful"][:, 0] == a["up_loss"].argmin(1)).all()  # most negative: most helpful
    assert (a["harmful"][:, 0] == a["up_loss"].argmax(1)).all()
    assert f"{n_train} training points" in text and "most helpful" in text
    assert json.loads(out.with_suffix(".json").read_text())["layers"] == ["classifier"]


def test_learned_surrogate_tree_prints_its_fidelity_and_the_tree(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "tree.json"
    assert main(["learned", "surrogate_tree", "-p", "max_depth=2", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert re.search(rf"fidelity \(held out\)\W+{100 * record['fidelity']:.1f}%", text)
    assert "|--- x[0," in text and record["text"].count("class:") == 4  # depth 2: 4 leaves
    a = np.load(out.with_suffix(".npz"))
    assert len(a["train_index"]) + len(a["test_index"]) == len(a["predictions"])
    assert not out.with_suffix(".png").exists()


def test_learned_beta_vae_on_factor_data_prints_the_mig(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "vae.png"
    assert main(["learned", "beta_vae", "--data", "factors", "-p", "epochs=1", "-p",
                 "hidden=16", "-p", "latent_dim=3", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    a = np.load(out.with_suffix(".npz"))
    assert a["traversals"].shape == (3, 7, 1, 16, 16) and a["kl"].shape == (3,)
    assert f"MIG {float(a['mig']):.3f}" in text and "z2" in text
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_learned_shows_a_bar_that_quiet_silences(tmp_path, monkeypatch, capsys):
    import io

    from rich.console import Console

    from scrutiny import progress

    buf = io.StringIO()
    monkeypatch.setattr(progress, "_console",
                        lambda: Console(file=buf, force_terminal=True, width=200))
    args = ["learned", "dataset_examples", "--unit", "3", "--out", str(tmp_path / "d.png")]
    assert main(args) == 0
    assert "learned" in buf.getvalue() and "dataset_examples on digits" in buf.getvalue()
    buf.truncate(0)
    buf.seek(0)
    assert main([*args, "-q"]) == 0
    assert buf.getvalue() == ""
    assert re.search(r"unit\W+\d", capsys.readouterr().out)  # the table, without the bar


@pytest.mark.parametrize("argv, msg", [
    (["learned", "nope"], "unknown method 'learned:nope'; registered: learned:"),
    (["learned", "attack:pgd"], "not of kind learned"),
    (["learned", "dataset_examples", "--unit", "99"],
     "--unit 99 is out of range: layer 'features.5' has 64 channels"),
    (["learned", "class_prototype", "--data", "breast_cancer"], "works on images"),
    (["learned", "surrogate_tree", "--unit", "2"], "--unit is not read by surrogate_tree"),
    (["learned", "counterfactual", "--desired", "10"], "--desired 10 is out of range"),
])
def test_learned_bad_input_is_one_line(argv, msg, capsys):
    assert main(argv + ["-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and msg in err and len(err.splitlines()) == 1
