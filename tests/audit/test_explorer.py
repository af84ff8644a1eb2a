"""The report's per-sample explorer: its payload agrees with the audit's inputs, predictions,
explainers and certificates, and the page holds its data and selectors."""

import pytest
import torch

from scrutiny import registry
from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.context import build_context
from scrutiny.audit.report import render_html
from scrutiny.audit.sections.explorer import Explorer, _certificate, example_order

EPS = 0.1
EXPLAINERS = ("saliency", "integrated_gradients")
PARAMS = {"integrated_gradients": {"steps": 16}}


@pytest.fixture(scope="module")
def audit(digits_model, digits_test):
    cfg = AuditConfig(n_samples=16, explore_samples=4, eps=(0.0, EPS), attacks=("fgsm",),
                      headline_attack=None, explainers=EXPLAINERS, params=PARAMS,
                      certifier="ibp", cert_samples=16, checks=False,
                      sections=("explorer", "certification"))
    res = run_audit(digits_model, digits_test, cfg, progress=False)
    payload = next(f for f in res.figures if f.name == "explorer").data
    return res, payload, build_context(digits_model, digits_test, res.config)


def _t(nested):
    return torch.tensor(nested, dtype=torch.float64)


def test_samples_follow_the_example_order_and_come_from_the_data(audit, digits_test):
    res, payload, ctx = audit
    examples = res.sections["examples"].tensors
    x_adv, pred_adv = examples["x_adv"], examples["pred_adv"]
    samples = payload["samples"]
    assert len(samples) == 4 and res.sections["explorer"].data["samples"] == 4
    for s in samples:
        x = digits_test.x[s["index"]]
        assert s["true"] == int(digits_test.y[s["index"]])
        assert torch.allclose(_t(s["clean"]), x[0].double(), atol=6e-5)  # 4 decimals
        assert torch.allclose(_t(s["adversarial_image"]), x_adv[s["position"]][0].double(),
                              atol=6e-5)
        assert s["index"] == int(ctx.idx[s["position"]])
        assert (s["pred"], s["adv"]) == (int(ctx.pred[s["position"]]),
                                         int(pred_adv[s["position"]]))
    # the first explored samples in the examples' order: correct-and-broken first
    assert [s["position"] for s in samples] == \
        example_order(ctx.pred, pred_adv, ctx.y)[:4].tolist()
    broken = [s["status"] == "broken" for s in samples]
    assert broken == sorted(broken, reverse=True)


def test_the_difference_is_adversarial_minus_clean_and_within_eps(audit):
    _, payload, _ = audit
    for s in payload["samples"]:
        clean, adv, diff = _t(s["clean"]), _t(s["adversarial_image"]), _t(s["difference"])
        assert clean.shape == adv.shape == diff.shape == (8, 8)  # digits: grey 8x8
        assert 0 <= clean.min() and clean.max() <= 1 and 0 <= adv.min() and adv.max() <= 1
        assert torch.allclose(adv - clean, diff, atol=2e-4)  # each rounded to 4 decimals
        assert diff.abs().max() <= EPS + 2e-4
        assert s["perturbation_norm"] <= EPS + 1e-5
        assert s["perturbation_norm"] == pytest.approx(float(diff.abs().max()), abs=2e-4)


def test_probabilities_rank_the_predictions_first(audit, digits_model, digits_test):
    _, payload, _ = audit
    for s in payload["samples"]:
        top = s["top"]
        assert len(top["classes"]) == len(set(top["classes"])) >= 5
        for which, pred in (("clean", s["pred"]), ("adversarial", s["adv"])):
            p = _t(top[which])
            assert 0 <= p.min() and p.max() <= 1 and p.sum() <= 1 + 1e-3
            assert top["classes"][int(p.argmax())] == pred
        assert top["classes"][0] == s["pred"]  # sorted by the clean probability
        with torch.no_grad():
            want = digits_model.logits(digits_test.x[s["index"]][None]).softmax(1)[0]
        assert torch.allclose(_t(top["clean"]), want[top["classes"]].double(), atol=6e-5)


def test_each_sample_shows_its_true_predicted_and_adversarial_class_once(audit):
    _, payload, _ = audit
    assert payload["explainers"] == list(EXPLAINERS)
    for s in payload["samples"]:
        classes = [c["class"] for c in s["classes"]]
        assert len(classes) == len(set(classes)) <= 3
        roles = {r: c["class"] for c in s["classes"] for r in c["roles"]}
        assert roles == {"true": s["true"], "predicted": s["pred"], "adversarial": s["adv"]}
        for e in EXPLAINERS:
            for kind in ("clean", "adversarial"):
                assert len(s["maps"][e][kind]) == len(classes)


@pytest.mark.parametrize("explainer", EXPLAINERS)
def test_maps_equal_the_explainer_called_on_the_sample(audit, explainer, digits_model,
                                                       digits_test):
    res, payload, _ = audit
    exp = registry.create(f"explainer:{explainer}", **PARAMS.get(explainer, {}))
    x_adv = res.sections["examples"].tensors["x_adv"]
    for s in payload["samples"]:  # the true class, and the adversarial one (another target)
        for j, c in enumerate(s["classes"]):
            if not {"true", "adversarial"} & set(c["roles"]):
                continue
            target = torch.tensor([c["class"]])
            for kind, x in (("clean", digits_test.x[s["index"]]),
                            ("adversarial", x_adv[s["position"]])):
                want = exp(digits_model, x[None], target, seed=res.config.seed).pixel_map()[0]
                got = _t(s["maps"][explainer][kind][j])
                # rounded to 4 significant digits of the map's largest magnitude
                assert torch.allclose(got, want.double(), atol=1e-3 * float(want.abs().max())), \
                    (explainer, kind, c)


def test_certificates_agree_with_the_certification_section(audit):
    res, payload, _ = audit
    certified = res.sections["certification"].tensors["certified"]
    radii = [row["eps"] for row in res.sections["certification"].data["rows"]]
    for s in payload["samples"]:
        cert = s["certificate"]
        assert cert["radii"] == radii == [EPS]
        assert cert["certified"] == certified[:, s["position"]].tolist()
        assert cert["text"].startswith("ibp: eps 0.1: ")


def test_certificate_says_why_there_is_none():
    mask = torch.tensor([[True, False], [False, False]])
    assert _certificate(0, None, None, [], None)["text"] == "certification did not run"
    beyond = _certificate(5, object(), mask, [0.05, 0.1], "crown")
    assert beyond["text"] == "not certified: sample beyond the first 2" and not beyond["certified"]
    first = _certificate(0, object(), mask, [0.05, 0.1], "crown")
    assert first["certified"] == [True, False]
    assert first["text"] == "crown: eps 0.05: certified; eps 0.1: not certified"


def test_one_progress_step_per_explainer_and_the_same_payload_again(audit):
    """Rerun on the audit's results: the seeded payload is the same; the bar names each
    explainer's step before it runs and advances once after it."""
    res, payload, ctx = audit
    section = Explorer()
    assert section.steps(ctx) == len(EXPLAINERS) and section.skip_reason(ctx) is None

    class Bar:
        def __init__(self):
            self.calls = []

        def advance(self, status=None, n=1):
            self.calls.append(("advance", status))

        def step(self, text):
            self.calls.append(("step", text))

    bar = Bar()
    again = section.run(ctx, res.sections, bar)
    assert again.figures[0].data == payload
    assert [c[0] for c in bar.calls] == ["step", "advance"] * len(EXPLAINERS)
    assert all(e in text for e, (_, text) in zip(EXPLAINERS, bar.calls[::2], strict=True))


def test_the_example_order_puts_correct_and_broken_samples_first():
    y = torch.tensor([0, 1, 2, 3, 4])
    pred = torch.tensor([0, 1, 9, 3, 4])      # sample 2 wrong already
    pred_adv = torch.tensor([0, 7, 9, 3, 8])  # 1 and 4 broken
    assert example_order(pred, pred_adv, y).tolist() == [1, 4, 0, 2, 3]


def test_the_report_holds_the_explorer_data_and_selectors(audit):
    res, payload, _ = audit
    html = render_html(res)
    assert '<script type="application/json" id="data-explorer">' in html
    for sel in ("explorer-sample", "explorer-class", "explorer-input", "explorer-title"):
        assert f'id="{sel}"' in html
    for s in payload["samples"]:
        assert f">{s['option'].replace('>', '&gt;')}</option>" in html
    assert "Plotly.react" in html and "window.Plotly" in html
    assert 'href="#section-explorer">Sample explorer</a>' in html


def test_skipped_on_tabular_data():
    from scrutiny.data import load_breast_cancer
    from scrutiny.models import pretrained

    cfg = AuditConfig(n_samples=16, eps=(0.0, 0.1), attacks=("fgsm",), headline_attack=None,
                      explainers=("saliency",), certifier=None, checks=False,
                      sections=("explorer",))
    res = run_audit(pretrained("breast-cancer-mlp", progress=False),
                    load_breast_cancer(split="test"), cfg, progress=False)
    assert "explorer" not in res.sections and "examples" in res.sections
    assert "section explorer was skipped: the explorer shows images" in res.notes
    assert not any(f.name == "explorer" for f in res.figures)


def test_explore_samples_must_be_positive():
    from scrutiny.errors import InputError

    with pytest.raises(InputError, match="explore_samples must be >= 1, got 0"):
        AuditConfig(explore_samples=0)
