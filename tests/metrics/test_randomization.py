"""Sanity checks (Adebayo et al., NeurIPS 2018): gradient and Grad-CAM maps decorrelate
under model-parameter and data randomization; an edge detector does not and is flagged."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer
from scrutiny.metrics import DataRandomization, ModelRandomization, model_randomization, similarity


class Sobel(Explainer):
    """An "explanation" computed from the input alone: the Sobel edge magnitude of x."""

    name = "sobel"

    def __init__(self):
        pass

    def _explain(self, model, x, target):
        k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], device=x.device)[None, None]
        gx, gy = F.conv2d(x, k, padding=1), F.conv2d(x, k.transpose(2, 3), padding=1)
        return (gx.square() + gy.square()).sqrt()[:, 0], {}


# after the last step, on 64 digits: gradient 0.09 on the shipped CNN, at most 0.12 on CNNs
# retrained with seeds 1-4; Grad-CAM (a coarse 4x4 map upsampled) 0.05 and from -0.22 to 0.25
@pytest.mark.parametrize("explainer, below", [("gradient", 0.3), ("grad_cam", 0.4)])
def test_maps_decorrelate_under_cascading_randomization(digits_model, digits_test, explainer, below):
    x = digits_test.x[:64]
    res = ModelRandomization()(digits_model, x, explainer=explainer)
    assert res.steps == ["classifier", "features.5", "features.2", "features.0"]  # top first
    assert res.per_step["spearman_abs"].shape == (4, 64)
    assert res.maps.shape == (4, 64, 8, 8) and res.original_maps.shape == (64, 8, 8)
    assert res.aggregate < below and not res.flag
    assert torch.allclose(res.scores, res.per_step["spearman_abs"][-1], equal_nan=True)
    # a NaN score never comes without its reason (Grad-CAM: a randomized model's map can be 0)
    assert (res.undefined is None) == (not torch.isnan(res.scores).any())
    assert res.curve("ssim")[-1] < 0.3


def test_an_edge_detector_is_flagged(digits_model, digits_test):
    x = digits_test.x[:16]
    for mode in ("cascading", "independent"):
        res = ModelRandomization(mode=mode, measures=("spearman_abs", "ssim", "hog"))(
            digits_model, x, explainer=Sobel())
        assert res.flag and res.aggregate > 0.99
        assert torch.allclose(res.curve("hog"), torch.ones(4, dtype=torch.float64))


def test_cascading_is_cumulative_and_the_model_is_untouched(digits_model, digits_test):
    x = digits_test.x[:8]
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    casc = ModelRandomization(measures=("spearman_abs",))(digits_model, x, explainer="gradient")
    ind = model_randomization(digits_model, x, explainer="gradient", mode="independent",
                              measures=("spearman_abs",))
    after = digits_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # step 0 randomizes the same (top) layer with the same seed in both modes ...
    assert torch.equal(casc.maps[0], ind.maps[0])
    # ... later steps differ: cascading keeps the layers above random
    assert not torch.allclose(casc.maps[2], ind.maps[2])
    # same seed, same re-initialisation; another seed, another one
    top = ModelRandomization(layers=("classifier",), measures=("spearman_abs",))
    again = top(digits_model, x, explainer="gradient")
    other = top(digits_model, x, explainer="gradient", seed=1)
    assert torch.equal(casc.maps[0], again.maps[0]) and not torch.equal(casc.maps[0], other.maps[0])


def test_similarity_measures():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, 8, generator=g), torch.randn(5, 8, 8, generator=g)
    ref = [spearmanr(p.flatten(), q.flatten()).statistic for p, q in zip(a, b, strict=True)]
    assert np.allclose(similarity("spearman", a, b).numpy(), ref)
    assert torch.allclose(similarity("spearman", a, -a), -torch.ones(5, dtype=torch.float64))
    assert torch.allclose(similarity("spearman_abs", a, -a), torch.ones(5, dtype=torch.float64))
    assert torch.allclose(similarity("ssim", a, 3 * a), torch.ones(5, dtype=torch.float64))
    assert (similarity("ssim", a, b) < 0.5).all()
    assert torch.isnan(similarity("spearman", a, torch.zeros_like(a))).all()  # no ranking


@pytest.fixture(scope="module")
def digits_mlp(digits_test):
    """A small MLP on digits (93% test accuracy in a fraction of a second), so that its
    random-label twin trains fast."""
    from scrutiny.data import load_digits
    from tests.fixture_models import fixture_model

    train_data = load_digits()
    model = fixture_model("randomization-mlp")
    assert (model.predict(digits_test.x) == digits_test.y).float().mean() > 0.9
    sub = ArrayDataset(x=train_data.x[:256], y=train_data.y[:256], classes=train_data.classes,
                       name="digits-256")
    return model, sub


def test_data_randomization_changes_gradient_maps(digits_mlp, digits_test):
    model, sub = digits_mlp
    x = digits_test.x[:16]
    res = DataRandomization(epochs=60, lr=3e-2)(model, x, explainer="gradient", train_data=sub)
    # the permuted-label model memorised part of its training set (measured 0.72; chance 0.11)
    assert res.extra["train_accuracy"] > 2 * res.extra["chance_accuracy"]
    assert res.extra["accuracy_on_x"] < 0.4  # it learned nothing about digits
    assert res.steps == ["labels"] and res.per_step["spearman_abs"].shape == (1, 16)
    assert res.aggregate < 0.5 and not res.flag  # measured 0.27
    edge = DataRandomization(epochs=1)(model, x, explainer=Sobel(), train_data=sub)
    assert edge.flag and edge.aggregate > 0.99


def test_clear_errors(digits_model, digits_test):
    x = digits_test.x[:4]
    with pytest.raises(InputError, match="needs explainer="):
        ModelRandomization()(digits_model, x, attributions=torch.zeros(4, 8, 8))
    with pytest.raises(InputError, match="needs explainer="):
        ModelRandomization()(digits_model, x)
    with pytest.raises(InputError, match="no layer"):
        ModelRandomization(layers=("nope",))(digits_model, x, explainer="gradient")
    with pytest.raises(InputError, match="owns no parameters"):
        ModelRandomization(layers=("features.1",))(digits_model, x, explainer="gradient")
    with pytest.raises(InputError, match="unknown explainer|unknown method"):
        ModelRandomization()(digits_model, x, explainer="not_an_explainer")
    with pytest.raises(InputError, match="mode must be one of"):
        ModelRandomization(mode="top-down")
    with pytest.raises(InputError, match="spearman_abs"):
        ModelRandomization(measures=("ssim",))
    with pytest.raises(InputError, match="unknown measure"):
        ModelRandomization(measures=("spearman_abs", "l2"))
    with pytest.raises(InputError, match="train_data="):
        DataRandomization()(digits_model, x, explainer="gradient")
    with pytest.raises(InputError, match="does not accept 'masks'"):
        DataRandomization()(digits_model, x, explainer="gradient", masks=None)


class FirstBlank(Explainer):
    """The input itself (which no randomization changes), all zero for the first sample."""

    name = "first_blank"

    def __init__(self):
        pass

    def _explain(self, model, x, target):
        out = x.clone()
        out[:1] = 0
        return out, {}


def test_an_all_zero_map_is_undefined_with_its_reason_not_a_silent_nan(digits_test):
    """Behind a 4-level input quantizer the input gradient is exactly zero, so every saliency
    map is all zero (64 of 64 test digits on the shipped CNN and on seeds 1-4): no ranking to
    correlate, so the check is undefined, says why, and is neither passed nor flagged."""
    from scrutiny.testing.models import quantized_cnn

    x = digits_test.x[:8]
    for mode in ("cascading", "independent"):
        res = ModelRandomization(mode=mode, measures=("spearman_abs",))(
            quantized_cnn(), x, explainer="saliency")
        assert torch.isnan(res.scores).all() and math.isnan(res.aggregate)
        assert res.flag is None
        assert "the trained model's map is all zero for 8 of 8 samples" in res.undefined
        assert "masked" in res.undefined
        summary = res.to_dict()
        assert summary["aggregate"] is None and summary["undefined"] == res.undefined
        json.dumps(summary, allow_nan=False)


def test_a_partly_undefined_check_counts_the_defined_samples_and_says_which_are_not(
        digits_model, digits_test):
    x = digits_test.x[:4]
    res = ModelRandomization(measures=("spearman_abs",))(digits_model, x, explainer=FirstBlank())
    assert math.isnan(res.scores[0]) and torch.allclose(res.scores[1:], torch.ones(3, dtype=torch.float64))
    assert res.aggregate == pytest.approx(1.0) and res.flag is True
    assert "all zero for 1 of 4 samples" in res.undefined
    assert res.to_dict()["aggregate"] == pytest.approx(1.0)
