"""Grad-CAM (Selvaraju et al.): equals CAM on a GAP + linear network, up to scale."""

import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.explain import GradCAM, grad_cam
from scrutiny.testing import tiny_images, tiny_linear


def test_gradcam_equals_cam_on_gap_linear(digits_model, digits_test):
    x = digits_test.x[:8]
    net = digits_model.module
    t = digits_model.predict(x)
    e = GradCAM(layer="features.6", relu=False)(digits_model, x, t)  # ReLU output before GAP
    with torch.no_grad():
        a = net.features(x)
        w = net.classifier.weight[t]
        cam = (w[:, :, None, None] * a).sum(1)
    h, wd = a.shape[-2:]
    assert torch.allclose(e.meta["layer_map"], cam / (h * wd), atol=1e-5)
    assert e.attributions.shape == (8, 8, 8)


def test_default_layer_is_last_conv_and_bad_layer_lists_choices(digits_model, digits_test):
    e = grad_cam(digits_model, digits_test.x[:2])
    assert e.meta["layer"] == "features.5"
    with pytest.raises(InputError, match="layers: features, features.0"):
        GradCAM(layer="nope")(digits_model, digits_test.x[:2])


def test_gradcam_needs_images_and_convolutions():
    with pytest.raises(InputError, match="no Conv2d"):
        GradCAM()(tiny_linear(0), tiny_images(2))
    with pytest.raises(InputError, match="needs images"):
        GradCAM()(tiny_linear(0, shape=(36,)), torch.rand(2, 36))
