"""Explanations that say nothing are flagged, undefined trust measures say why, and no report
file holds a NaN: on a digits CNN behind a 4-level input quantizer (a plain nn.Module, not one
of scrutiny's defenses) whose input gradient is exactly zero."""

import json
import re

import pytest

from scrutiny import registry
from scrutiny.audit.interactive import plotly_js
from scrutiny.audit.sections.explanations import degenerate_flag
from scrutiny.testing.models import quantized_cnn


@pytest.fixture(scope="module")
def quantized():
    return quantized_cnn()


# 64 of 64 test digits: every saliency / IG / gradient map of the quantized CNN is all zero,
# no Grad-CAM map is, and no map of the plain CNN is (shipped weights and seeds 1-4)
@pytest.mark.parametrize("explainer", ["saliency", "integrated_gradients", "grad_cam"])
def test_all_zero_maps_are_flagged_on_the_masked_model_only(explainer, quantized, digits_model,
                                                            digits_test):
    x, y = digits_test.x[:12], digits_test.y[:12]
    exp = registry.create(explainer, kind="explainer")
    for model in (digits_model, quantized):
        counts, flag = degenerate_flag(explainer, model, x, y, exp(model, x, y).attributions)
        assert counts["maps"] == 12
        if model is quantized and explainer != "grad_cam":
            assert counts["zero"] == 12 and counts["zero_input_gradient"] == 12
            assert flag.flagged and flag.check == f"degenerate explanations: {explainer}"
            assert flag.message.startswith("12 of 12 maps are all zero: the model's input gradient")
            assert "says nothing" in flag.message
        else:
            assert flag is None and counts["zero"] == counts["constant"] == 0


def _strict(const):
    raise AssertionError(f"result.json holds {const}, which strict JSON parsers reject")


def test_audit_of_the_masked_model_flags_and_never_prints_nan(quantized, digits_test, tmp_path):
    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.audit.report import write_report

    cfg = AuditConfig(n_samples=8, n_examples=2, eps=(0.0, 0.1), attacks=("fgsm",),
                      headline_attack=None, explainers=("saliency", "grad_cam"),
                      metrics=("model_randomization", "deletion"), trust_samples=4,
                      sections=("trust",), checks=False, certifier=None,
                      params={"square": {"max_queries": 10}, "deletion": {"steps": 4}})
    res = run_audit(quantized, digits_test, cfg, progress=False)
    html = write_report(res, tmp_path).read_text()
    result = json.loads((tmp_path / "result.json").read_text(), parse_constant=_strict)

    # the gallery flags the all-zero saliency maps (2 examples, clean and adversarial), not Grad-CAM
    sal = result["explanations"]["saliency"]["degenerate"]
    assert sal["zero"] == sal["maps"] == 4
    assert result["explanations"]["grad_cam"]["degenerate"]["zero"] == 0
    checks = {f["check"]: f for f in result["flags"]}
    assert checks["degenerate explanations: saliency"]["flagged"]
    assert "degenerate explanations: grad_cam" not in checks
    assert "saliency: 4 of 4 maps are all zero" in html

    # the randomization check is undefined with its reason: null in JSON, spelled out in HTML
    rand = result["trust"]["saliency"]["model_randomization"]
    assert rand["value"] is None and rand["flag"] is None
    assert "all zero for 4 of 4 samples" in rand["undefined"]
    assert "undefined (the trained model&#39;s map is all zero" in html
    assert result["trust"]["grad_cam"]["model_randomization"]["value"] is not None

    # all-zero maps order the pixels as the random order does (ties broken by the same seed):
    # no better than chance, flagged, and the verdict lists it with both numbers
    chance = result["trust"]["random order"]["deletion"]["value"]
    assert result["trust"]["saliency"]["deletion"] == {"value": chance, "undefined": None,
                                                       "flag": True}
    item = next(it for it in result["verdict"]["items"] if it["check"] == "deletion: saliency")
    assert "random order" in item["sentence"] and item["anchor"] == "section-trust"
    assert item["measured"] == f"deletion {chance:.2f}, random order {chance:.2f}"

    # the inlined Plotly bundle aside (its code says NaN; the figures' specs stay checked),
    # and the pictures' bytes
    text = re.sub(r"data:image/png;base64,[^\"]*", "", html.replace(plotly_js(), ""))
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)


def test_report_filters_print_n_a_for_undefined_numbers():
    from scrutiny.audit.report import _num, _pct, _sci

    for f in (_pct, _num, _sci):
        assert f(None) == f(float("nan")) == "n/a"
    assert _pct(0.25) == "25.0%" and _num(0.25) == "0.250" and _sci(2.5e-4) == "2.50e-04"
    assert _num(float("inf")) == "inf"


def test_integrated_gradients_beats_the_random_order(digits_model, digits_test, tmp_path):
    """The trust table's random-order row: deletion and insertion with the pixels in a
    seeded random order, once per audit. Integrated gradients on the digits CNN beats it on
    16 samples: random minus IG deletion 0.35, 0.35, 0.24, 0.32, 0.33 and IG minus random
    insertion 0.12, 0.19, 0.16, 0.10, 0.16 (shipped weights, SCRUTINY_RETRAIN_SEED=1..4)."""
    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.audit.report import write_report

    cfg = AuditConfig(n_samples=16, n_examples=1, eps=(0.0, 0.1), attacks=("fgsm",),
                      headline_attack=None, explainers=("integrated_gradients",),
                      metrics=("deletion", "insertion"), trust_samples=16, sections=("trust",))
    res = run_audit(digits_model, digits_test, cfg, progress=False)
    ig, chance = res.trust["integrated_gradients"], res.trust["random order"]
    assert chance["deletion"]["value"] - ig["deletion"]["value"] > 0.12
    assert ig["insertion"]["value"] - chance["insertion"]["value"] > 0.05
    assert ig["deletion"]["flag"] is False and ig["insertion"]["flag"] is False
    assert not [it for it in res.verdict["items"] if it["section"] == "trust"]
    html = write_report(res, tmp_path).read_text()
    assert "<i>random order</i> (chance)" in html and "must beat it" in html
