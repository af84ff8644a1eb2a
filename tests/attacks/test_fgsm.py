"""FGSM / fast gradient: the perturbation is exactly eps * sign(grad) (Goodfellow et al.)."""

import torch
from torch.nn import functional as F

from scrutiny.attacks import FGSM
from scrutiny.testing import tiny_cnn, tiny_images
from scrutiny.types import ThreatModel


def _grad(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


def test_linf_step_is_eps_sign_grad_clipped():
    model, x = tiny_cnn(0), tiny_images(6)
    y = model.predict(x)
    eps = 0.05
    res = FGSM()(model, x, y, threat=ThreatModel("linf", eps))
    expected = (x + eps * _grad(model, x, y).sign()).clamp(0, 1)
    assert torch.allclose(res.x_adv, expected, atol=1e-7)


def test_l2_step_is_eps_normalised_grad():
    model = tiny_cnn(0)
    x = tiny_images(6) * 0.2 + 0.4  # far from the bounds: no clipping
    y = model.predict(x)
    eps = 0.3
    res = FGSM()(model, x, y, threat=ThreatModel("l2", eps))
    g = _grad(model, x, y)
    expected = x + eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(res.x_adv, expected, atol=1e-6)
    assert torch.allclose(res.norms, torch.full((6,), eps), atol=1e-5)


def test_targeted_moves_towards_the_target(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    t = (y + 1) % 10
    res = FGSM()(digits_model, x, y, threat=ThreatModel("linf", 0.1), target=t)
    with torch.no_grad():
        before = F.cross_entropy(digits_model(x), t)
        after = F.cross_entropy(digits_model(res.x_adv), t)
    assert after < before
