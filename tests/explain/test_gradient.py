"""Saliency (Simonyan et al.) and Integrated Gradients (Sundararajan et al.)."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import IntegratedGradients, Saliency, integrated_gradients, saliency
from scrutiny.models import TorchModel
from scrutiny.testing import tiny_images, tiny_linear


def test_saliency_is_max_abs_gradient_over_channels():
    model = tiny_linear(0, shape=(3, 5, 5))
    x = tiny_images(4, shape=(3, 5, 5))
    t = torch.tensor([0, 1, 2, 1])
    e = saliency(model, x, t)
    w = model.module[1].weight[t].reshape(4, 3, 5, 5)
    assert e.attributions.shape == (4, 5, 5)
    assert torch.allclose(e.attributions, w.abs().amax(1))


def _smooth_net(seed=0):
    torch.manual_seed(seed)
    return TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(),
                                    nn.Linear(16, 3)))


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_ig_completeness_on_a_smooth_model(rule):
    model, x = _smooth_net(), tiny_images(5)
    e = IntegratedGradients(steps=64, rule=rule)(model, x)
    span = (e.outputs - e.meta["baseline_output"]).abs()
    assert (e.delta.abs() <= 1e-3 * span + 1e-6).all()
    assert torch.allclose(e.attributions.flatten(1).sum(1),
                          e.outputs - e.meta["baseline_output"], atol=1e-3)


def test_ig_completeness_on_the_trained_cnn(digits_model, digits_test):
    """ReLU networks have kinks along the path; enough steps still give 1e-3."""
    x = digits_test.x[:16]
    e = IntegratedGradients(steps=1024, rule="riemann_trapezoid")(digits_model, x)
    span = (e.outputs - e.meta["baseline_output"]).abs()
    assert (e.delta.abs() / span).mean() < 1e-3
    # the error shrinks with the number of steps
    coarse = IntegratedGradients(steps=16, rule="riemann_trapezoid")(digits_model, x)
    assert coarse.delta.abs().mean() > e.delta.abs().mean()


def test_ig_baselines():
    model, x = _smooth_net(), tiny_images(3)
    for b in ("zero", "blur", "uniform", 0.5, torch.full((1, 6, 6), 0.3)):
        e = integrated_gradients(model, x, baseline=b, steps=32)
        span = (e.outputs - e.meta["baseline_output"]).abs()
        assert (e.delta.abs() <= 1e-3 * span + 1e-5).all()
    with pytest.raises(InputError, match="unknown baseline"):
        IntegratedGradients(baseline="gray")
    with pytest.raises(InputError, match="does not broadcast"):
        integrated_gradients(model, x, baseline=torch.zeros(2, 2))
    with pytest.raises(InputError, match="unknown rule"):
        IntegratedGradients(rule="simpson")


def test_target_out_of_range_is_one_clear_error():
    with pytest.raises(InputError, match="3 classes"):
        Saliency()(tiny_linear(0), tiny_images(2), 5)
