"""Layer attribution of the gradient family: layer IG and layer gradient x activation."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import Gradient, InputXGradient, IntegratedGradients
from scrutiny.models import TorchModel
from scrutiny.testing import tiny_cnn, tiny_images


def _with_identity(model: TorchModel) -> TorchModel:
    """The same classifier with an identity layer "0" in front: its output is the input."""
    return TorchModel(nn.Sequential(nn.Identity(), model.module), bounds=model.bounds)


@pytest.mark.parametrize("layer", ["features.0", "features.1", "features.4", "features"])
@pytest.mark.parametrize("rule", ["adaptive", "gausslegendre"])
def test_layer_ig_is_complete(digits_model, digits_test, layer, rule):
    """sum of the layer's attributions = f(x) - f(baseline input), up to the quadrature error.

    Measured max |sum - (f(x) - f(0))| / |f(x) - f(0)| over these 8 samples and the four
    layers: shipped weights 0.0009 (adaptive) / 0.0097 (gausslegendre, 128 nodes); seeds
    1-4 at most 0.00094 / 0.0048. Tolerance 0.02.
    """
    x = digits_test.x[:8]
    e = IntegratedGradients(layer=layer, rule=rule)(digits_model, x)
    assert e.location == layer
    assert e.attributions.shape[0] == 8 and e.attributions.shape[1:] != x.shape[1:]
    with torch.no_grad():
        fx = digits_model(x).gather(1, e.target[:, None])[:, 0]
        f0 = digits_model(torch.zeros_like(x)).gather(1, e.target[:, None])[:, 0]
    err = e.attributions.flatten(1).sum(1) - (fx - f0)
    assert (err.abs() <= 0.02 * (fx - f0).abs()).all(), (err / (fx - f0)).abs().max()
    assert torch.allclose(e.delta, err, atol=1e-4)  # the reported delta is that error


def test_layer_ig_at_an_identity_layer_is_input_ig(digits_model, digits_test):
    x = digits_test.x[:6]
    ident = _with_identity(digits_model)
    for rule in ("adaptive", "riemann_middle"):
        ig = IntegratedGradients(rule=rule, steps=32)
        plain = ig(digits_model, x)
        layer = IntegratedGradients(rule=rule, steps=32, layer="0")(ident, x)
        assert layer.location == "0" and plain.location == "input"
        assert torch.allclose(layer.attributions, plain.attributions, atol=1e-5)
        assert torch.allclose(layer.delta, plain.delta, atol=1e-5)


def test_layer_ig_with_another_baseline_starts_from_its_activations():
    """The path starts at the baseline input's activations: completeness with f(b)."""
    model, x = tiny_cnn(0), tiny_images(5)
    e = IntegratedGradients(layer="2", baseline=0.5, rule="gausslegendre", steps=64)(model, x)
    with torch.no_grad():
        fx = model(x).gather(1, e.target[:, None])[:, 0]
        fb = model(torch.full_like(x, 0.5)).gather(1, e.target[:, None])[:, 0]
    assert torch.allclose(e.meta["baseline_output"], fb, atol=1e-5)
    assert torch.allclose(e.attributions.flatten(1).sum(1), fx - fb, atol=2e-2 * float(
        (fx - fb).abs().max()))


def test_layer_gradient_x_activation_is_activation_times_its_gradient():
    model, x = tiny_cnn(0), tiny_images(4)
    t = torch.tensor([0, 1, 2, 0])
    e = InputXGradient(layer="1")(model, x, t)
    # by hand: split the network at the layer and differentiate the head
    net = model.module
    a = net[1](net[0](x)).detach().requires_grad_(True)
    out = nn.Sequential(*list(net)[2:])(a).gather(1, t[:, None]).sum()
    (g,) = torch.autograd.grad(out, a)
    assert e.location == "1" and e.attributions.shape == a.shape
    assert torch.allclose(e.attributions, a * g, atol=1e-6)
    assert torch.allclose(Gradient(layer="1")(model, x, t).attributions, g, atol=1e-6)
    # at an identity layer: input x gradient
    ident = _with_identity(model)
    assert torch.allclose(InputXGradient(layer="0")(ident, x, t).attributions,
                          InputXGradient()(model, x, t).attributions, atol=1e-6)


def test_layer_attribution_of_an_empty_batch_and_a_bad_layer():
    model = tiny_cnn(0)
    e = IntegratedGradients(layer="2", steps=8)(model, tiny_images(0))
    assert e.attributions.shape == (0, 6, 6, 6) and e.delta.shape == (0,)
    assert InputXGradient(layer="2")(model, tiny_images(0)).attributions.shape == (0, 6, 6, 6)
    with pytest.raises(InputError, match="no layer 'nope'.*layers:"):
        IntegratedGradients(layer="nope")(model, tiny_images(2))
