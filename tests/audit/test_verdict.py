"""The verdict the report opens with, and the headline's AutoAttack-style stage log."""

import json
import re
import warnings

import pytest
from scipy.stats import binomtest

from scrutiny.audit import AuditConfig, run_audit, write_report
from scrutiny.audit.sections.verdict import clopper_pearson
from scrutiny.data import load_digits
from scrutiny.errors import InputError
from scrutiny.models import pretrained
from scrutiny.testing.models import quantized_cnn

#: A worst-case ensemble cheap enough for tests, its black-box stage named "square" (so the
#: checks read it off the stages instead of running Square a second time).
CHEAP_ENSEMBLE = {"attacks": (("apgd", {"steps": 10}), ("apgd_t", {"steps": 10, "targets": 2}),
                              ("fmn", {"steps": 10}))}


@pytest.fixture(scope="module")
def digits():
    return load_digits(split="test")


@pytest.fixture(scope="module")
def plain(digits, tmp_path_factory):
    """A small audit of the shipped digits CNN with the checks, and its written report."""
    cfg = AuditConfig(n_samples=32, eps=(0.0, 0.05, 0.1), sections=("headline", "checks",
                                                                     "verdict"),
                      params={"pgd": {"steps": 10}, "worst_case": CHEAP_ENSEMBLE},
                      black_box=None)
    res = run_audit(pretrained("digits-cnn", progress=False), digits, cfg, progress=False)
    out = tmp_path_factory.mktemp("verdict")
    write_report(res, out)
    return res, out


def test_clopper_pearson_matches_closed_forms_and_scipy():
    lo, hi = clopper_pearson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)  # the textbook interval
    assert clopper_pearson(0, 20) == (0.0, pytest.approx(1 - 0.025 ** (1 / 20)))
    assert clopper_pearson(20, 20) == (pytest.approx(0.025 ** (1 / 20)), 1.0)
    for k, n in ((3, 32), (17, 48), (449, 450)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == (pytest.approx(ci.low), pytest.approx(ci.high))
    with pytest.raises(InputError, match="k=11"):
        clopper_pearson(11, 10)


def test_verdict_interval_is_that_of_the_robust_count(plain):
    res, out = plain
    v = res.verdict
    k, n = v["robust_samples"], v["n_samples"]
    assert n == 32 and k == round(res.headline["robust_accuracy"] * n)
    assert v["robust_accuracy"] == res.headline["robust_accuracy"] == k / n
    assert v["interval"] == list(clopper_pearson(k, n))
    assert v["interval"][0] <= v["robust_accuracy"] <= v["interval"][1]
    assert v["interval_method"].startswith("Clopper-Pearson")
    # result.json carries it, in strict JSON (no NaN)
    saved = json.loads((out / "result.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"result.json holds {c}"))
    assert saved["verdict"]["interval"] == v["interval"]
    assert v["lines"][0].startswith(f"Robust accuracy {100 * k / n:.1f}% ({k}/{n}")


def test_plain_audit_raises_no_false_alarm(plain):
    """Measured on the shipped weights and SCRUTINY_RETRAIN_SEED=1..4: no check near its
    threshold (PGD over seeds spreads by 0 to 1 sample of 32, the flag needs more than 3;
    the unbounded attack breaks 100%, the flag needs below 95%; 0% zero gradients)."""
    res, out = plain
    v = res.verdict
    assert v["trust"] == "no flag" and v["trust_reasons"] == []
    assert not [it for it in v["items"] if it["kind"] == "flag"]
    assert not any("cannot be trusted" in line or "FLAGGED" in line for line in v["lines"])
    html = (out / "report.html").read_text()
    assert html.index('id="section-verdict"') < html.index('id="section-headline"')
    assert "cannot be trusted" not in html


def test_stage_log_is_overall_robust_accuracy_ending_at_the_headline(plain):
    res, _ = plain
    h = res.headline
    st = h["strong_attack"]
    n = res.n_samples
    ref = res.config.reference_eps
    curve = next(r["robust_accuracy"] for r in
                 res.sections["robustness"].data["rows"]["worst case"] if r["eps"] == ref)
    assert st["overall_before"] == st["samples_attacked"] / n == curve  # the curve's level
    levels = [st["overall_before"]] + [s["overall_robust_accuracy"] for s in st["stages"]]
    assert all(b <= a for a, b in zip(levels, levels[1:], strict=False)), levels
    assert levels[-1] == h["robust_accuracy"]
    assert [s["robust_samples"] for s in st["stages"]] == \
        [round(s["overall_robust_accuracy"] * n) for s in st["stages"]]
    assert all(s["seconds"] >= 0 for s in st["stages"])
    mp = h["max_perturbation"]
    assert mp["within_eps"] and 0 < mp["value"] <= ref + 1e-5 and mp["norm"] == "linf"


def test_masked_model_cannot_be_trusted_and_links_the_checks(digits, tmp_path):
    """The 4-level quantized CNN: the probe finds masked gradients (BPDA is applied), so the
    verdict says the number cannot be trusted as it stands and links to the checks."""
    cfg = AuditConfig(n_samples=16, eps=(0.0, 0.1), sections=("checks", "verdict"),
                      params={"pgd": {"steps": 5}, "square": {"max_queries": 20}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_audit(quantized_cnn(), digits, cfg, progress=False)
    v = res.verdict
    assert v["trust"] == "flagged" and "masked gradients (probe)" in v["trust_reasons"]
    assert any("cannot be trusted" in line for line in v["lines"])
    probe = next(it for it in v["items"] if it["check"] == "masked gradients (probe)")
    assert probe["anchor"] == "section-checks" and "BPDA" in probe["sentence"]
    assert any("declare" in step for step in v["next_steps"])
    html = (write_report(res, tmp_path)).read_text()
    verdict = html[html.index('id="section-verdict"'):html.index('id="section-checks"')]
    assert "cannot be trusted" in verdict and 'href="#section-checks"' in verdict
    # every link of the verdict leads to an anchor of the page
    ids = set(re.findall(r'id="([^"]+)"', html))
    assert set(re.findall(r'href="#([^"]+)"', verdict)) <= ids


def test_verdict_lists_fewer_samples_than_requested(digits):
    """A 12-row test split with n_samples=30 and trust_samples=20: only `robustness` and
    `trust` chosen, the verdict runs too and lists both sample counts that fell short."""
    from scrutiny.data import ArrayDataset

    small = ArrayDataset(digits.x[:12], digits.y[:12], digits.classes, name="digits (12 rows)")
    model = pretrained("digits-cnn", progress=False)
    cfg = AuditConfig(attacks=("fgsm",), eps=(0.0, 0.1), n_samples=30, headline_attack=None,
                      explainers=("saliency",), metrics=("deletion",), trust_samples=20,
                      params={"deletion": {"steps": 4}}, sections=("robustness", "trust"))
    res = run_audit(model, small, cfg, progress=False)
    v = res.verdict
    assert "verdict" in res.sections and v["robust_samples"] is not None
    assert v["samples"]["n_samples"] == {"requested": 30, "used": 12}
    assert v["samples"]["trust_samples"] == {"requested": 20, "used": 12}
    notes = [it for it in v["items"] if it["kind"] == "note"]
    head = "Fewer samples than requested: "
    assert f"{head}n_samples = 30 was requested; the data has 12 test samples, so 12 were " \
           "used." in [it["sentence"] for it in notes]
    assert any(it["sentence"].startswith(f"{head}trust_samples = 20 was requested; 12 samples "
                                         "were audited") for it in notes)
    assert any(line.startswith(f"Note: {head}n_samples = 30") for line in v["lines"])
