"""The audit's "What has the model learned?" section: each part agrees with its method called
directly, picks what it says it picks, and leaves out what the data cannot give."""

from __future__ import annotations

import pytest
import torch

from scrutiny import registry
from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.sections import learned as section
from scrutiny.audit.sections import resolve
from scrutiny.data import load_breast_cancer, load_digits
from scrutiny.explain.influence import last_linear
from scrutiny.models import pretrained

#: Cheap settings: the parts' numbers, not their quality, are checked here (the methods'
#: own tests assert their papers' properties).
PARAMS = {"class_prototype": {"steps": 20}, "counterfactual": {"steps": 10, "lambda_steps": 3}}


@pytest.fixture(scope="module")
def train_subset():
    return load_digits(split="train").subset(range(300))


@pytest.fixture(scope="module")
def audited(digits_model, digits_test, train_subset):
    """One audit of the section alone on 24 samples, the training split cut to 300 points."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(section, "training_data", lambda ctx: train_subset)
        cfg = AuditConfig(n_samples=24, n_examples=4, eps=(0.0, 0.1), sections=("learned",),
                          params=PARAMS)
        return run_audit(digits_model, digits_test, cfg, progress=False)


def test_every_part_runs_on_digits_with_its_figure(audited):
    s = audited.sections["learned"]
    assert set(s.data) == set(section.PARTS)
    assert {f.name for f in s.figures} >= {"prototypes", "dataset_examples", "influence",
                                           "self_influence", "counterfactuals"}
    assert not s.notes
    assert "learned" in resolve(None, ()) and "learned" not in resolve(None, ("learned",))


def test_influence_part_equals_the_method_called_directly(audited, digits_model, train_subset):
    """Misclassified samples come first, and helpful/harmful/suspicious points are those the
    registered method gives for the same samples and layer."""
    d = audited.sections["learned"].data["influence"]
    x, y, pred = audited_samples(audited, digits_model)
    picked = d["test_samples"]
    wrong = (pred != y).nonzero()[:, 0].tolist()
    assert d["misclassified"] == [i in wrong for i in picked]
    assert d["misclassified"] == sorted(d["misclassified"], reverse=True)  # wrong ones first
    r = registry.create("learned:influence", layers=(last_linear(digits_model),),
                        top_k=section.TOP)(digits_model, train_subset, x_test=x[picked],
                                           y_test=y[picked], self_influence=True)
    assert d["helpful"] == r.helpful.tolist() and d["harmful"] == r.harmful.tolist()
    assert d["suspicious"] == torch.argsort(r.self_influence, stable=True)[:2 * section.TOP].tolist()


def test_surrogate_and_counterfactual_numbers_are_the_methods(audited, digits_model, train_subset):
    d = audited.sections["learned"].data
    for name in ("surrogate_tree", "surrogate_linear"):
        r = registry.create(f"learned:{name}")(digits_model, train_subset, seed=0)
        assert d["surrogates"]["rows"][name]["fidelity"] == pytest.approx(r.fidelity)
    cf = d["counterfactual"]
    assert cf["samples"] == 4 and 0 <= cf["success"] <= 4
    assert all(q == pytest.approx(a / b) for q, a, b in
               zip(cf["ratio_to_nearest"], cf["distance"], cf["nearest_distance"], strict=True))


def test_prototypes_count_is_what_the_model_says(audited, digits_model):
    p = audited.sections["learned"].data["class_prototype"]
    proto = registry.create("learned:class_prototype", **PARAMS["class_prototype"])(
        digits_model, load_digits(split="test"), seed=0)
    assert p["classified_as_own"] == int((digits_model.predict(proto.images) == proto.classes).sum())


def test_tabular_data_keeps_the_parts_that_fit_and_unknown_splits_are_said():
    model = pretrained("breast-cancer-mlp", progress=False)
    data = load_breast_cancer(split="test")
    cfg = AuditConfig(n_samples=16, n_examples=2, eps=(0.0, 0.1), sections=("learned",),
                      params={"counterfactual": {"steps": 10}})
    s = run_audit(model, data, cfg, progress=False).sections["learned"]
    assert "class_prototype" not in s.data and "dataset_examples" not in s.data
    assert {"surrogates", "counterfactual", "influence"} <= set(s.data)
    renamed = type(data)(x=data.x, y=data.y, classes=data.classes, name="my-table",
                         feature_names=data.feature_names)
    s = run_audit(model, renamed, cfg, progress=False).sections["learned"]
    assert "influence" not in s.data
    assert any("training split" in n for n in s.notes)
    assert s.data["surrogates"]["fitted_on"] == "test rows not attacked"


def audited_samples(result, model):
    """The audited samples of ``result`` (the seeded permutation the context draws)."""
    data = load_digits(split="test")
    g = torch.Generator().manual_seed(result.config.seed)
    idx = torch.randperm(len(data), generator=g)[:result.n_samples]
    x, y = data.x[idx], data.y[idx]
    return x, y, model.predict(x).cpu()
