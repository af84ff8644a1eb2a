"""CAM (Zhou et al.) and Grad-CAM++ (Chattopadhay et al.) on the GAP + linear digits CNN."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import CAM, GradCAM, cam
from scrutiny.models import TorchModel
from scrutiny.testing import tiny_images


def _features(digits_model, x, t):
    net = digits_model.module
    with torch.no_grad():
        return net.features(x), net.classifier.weight[t], net.classifier.bias[t]


def test_cam_is_the_class_weighted_sum_of_the_last_conv_maps(digits_model, digits_test):
    x = digits_test.x[:8]
    t = digits_test.y[:8]
    e = CAM()(digits_model, x, t)
    a, w, b = _features(digits_model, x, t)
    expected = (w[:, :, None, None] * a).sum(1)
    assert torch.allclose(e.meta["layer_map"], expected, atol=1e-5)
    assert e.attributions.shape == (8, 8, 8)
    assert e.meta["classifier"] == "classifier"
    # the logit is the spatial mean of the map plus the bias (the GAP + linear identity)
    assert torch.allclose(e.meta["layer_map"].mean((1, 2)) + b, e.outputs, atol=1e-4)
    # naming the layers explicitly gives the same map
    named = cam(digits_model, x, t, layer="features.6", classifier="classifier")
    assert torch.allclose(named.meta["layer_map"], e.meta["layer_map"], atol=1e-6)


def test_cam_refuses_a_network_without_a_gap_linear_head():
    flat = TorchModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(32, 3)))
    with pytest.raises(InputError, match="pass layer= .* and classifier="):
        CAM()(flat, tiny_images(2))
    with pytest.raises(InputError, match="must be an nn.Linear"):
        CAM(layer="0", classifier="1")(flat, tiny_images(2))
    with pytest.raises(InputError, match="takes 32 features"):
        CAM(layer="0", classifier="3")(flat, tiny_images(2))


def test_gradcam_plus_plus_closed_form_on_gap_linear(digits_model, digits_test):
    """On GAP + linear, dS/dA = w_k / Z is constant in space, so the paper's alpha is
    ``1 / (2 + (w_k / Z) sum_ab A_k)`` and the weight ``Z alpha relu(w_k / Z)``."""
    x = digits_test.x[:8]
    t = digits_test.y[:8]
    e = GradCAM(layer="features.6", variant="gradcam++", relu=False)(digits_model, x, t)
    a, w, _ = _features(digits_model, x, t)
    z = a.shape[2] * a.shape[3]
    g = w / z
    alpha = g**2 / (2 * g**2 + g**3 * a.sum((2, 3)))
    weight = z * alpha * torch.relu(g)
    expected = (weight[:, :, None, None] * a).sum(1)
    assert torch.allclose(e.meta["layer_map"], expected, atol=1e-5)
    # it differs from Grad-CAM, whose weights are the plain means w_k / Z
    plain = GradCAM(layer="features.6", relu=False)(digits_model, x, t).meta["layer_map"]
    assert not torch.allclose(plain, expected, atol=1e-3)
    with pytest.raises(InputError, match="variant must be one of"):
        GradCAM(variant="gradcam+++")
