"""Randomized smoothing (Cohen et al. 2019): radii below the true and attacked distances."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from scrutiny.certify import RandomizedSmoothing
from scrutiny.certify.smoothing import lower_confidence_bound
from scrutiny.errors import InputError
from scrutiny.models import TorchModel
from scrutiny.types import ThreatModel

#: The threat set of the tests that read radii: smoothing's radius does not depend on its eps.
L2 = ThreatModel("l2", 0.0)


class LinearBinary(nn.Module):
    """logits (0, w.x + b): class 1 iff w.x + b > 0; its smoothed classifier is itself."""

    def __init__(self, d: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(d, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, d, generator=g))
            self.lin.bias.fill_(-float(self.lin.weight.sum()) / 2)  # through the box's centre

    def forward(self, x):
        s = self.lin(x.flatten(1))
        return torch.cat([torch.zeros_like(s), s], dim=1)


def _linear_binary(d: int = 16) -> TorchModel:
    return TorchModel(LinearBinary(d), name="linear_binary")


class Coin(nn.Module):
    """Ignores its input and flips a fair coin between classes 0 and 1 (torch's RNG)."""

    def forward(self, x):
        coin = torch.rand(len(x), 1, device=x.device) < 0.5
        return torch.cat([coin.float(), (~coin).float(), torch.full_like(coin, -1.0, dtype=x.dtype)],
                         dim=1)


def test_radius_below_the_exact_distance_of_a_linear_classifier():
    model = _linear_binary()
    x = torch.rand((40, 16), generator=torch.Generator().manual_seed(1))
    w = model.module.lin.weight.detach()[0]
    score = model.logits(x)[:, 1]
    dist = score.abs() / w.norm()  # exact l2 distance to the decision boundary
    sigma = 0.5
    res = RandomizedSmoothing(sigma=sigma, n0=64, n=4000, batch_size=4096).certify(
        model, x, model.predict(x), L2, seed=0)
    ok = ~res.abstain
    assert (res.label[ok] == model.predict(x)[ok]).all()
    assert (res.radius <= dist + 1e-6).all()  # sound (holds w.p. 1 - alpha per sample)
    # and tight: the exact radius is sigma * Phi^-1(p_A), p_A = Phi(dist / sigma); the
    # Clopper-Pearson bound loses little with n = 4000 away from p_A = 1
    mid = ok & (dist < 2 * sigma)
    assert mid.sum() > 10
    assert (res.radius[mid] > dist[mid] - 0.25 * sigma).all()
    # abstains near the boundary, where p_A is close to 1/2
    near = dist < 0.01 * sigma
    assert res.abstain[near].all()


def test_abstains_on_a_coin_flip_classifier():
    model = TorchModel(Coin())
    x = torch.rand(6, 4)
    rs = RandomizedSmoothing(sigma=0.25, n0=50, n=1000, batch_size=500)
    res = rs.certify(model, x, torch.zeros(6, dtype=torch.long), L2, seed=0)
    assert res.abstain.all() and (res.label == -1).all() and (res.radius == 0).all()
    assert (res.meta["p_lower"] < 0.5).all()
    pred = rs.predict(model, x, seed=0)
    assert pred.abstain.all() and (pred.label == -1).all()


def test_predict_and_certify_agree_and_p_lower_is_clopper_pearson(digits_model, digits_test):
    x, y = digits_test.x[:6], digits_test.y[:6]
    rs = RandomizedSmoothing(sigma=0.1, n0=32, n=256, batch_size=512)
    res = rs.certify(digits_model, x, y, L2, seed=0)
    counts = res.meta["counts"]
    assert counts.sum(dim=1).eq(256).all()
    na = counts.gather(1, res.label.clamp_min(0)[:, None])[:, 0]
    want = torch.tensor([stats.beta.ppf(0.001, k, 256 - k + 1) for k in na.tolist()])
    assert torch.allclose(res.meta["p_lower"][~res.abstain], want[~res.abstain].double())
    r = 0.1 * torch.tensor(stats.norm.ppf(want.numpy())).float()
    assert torch.allclose(res.radius[~res.abstain], r[~res.abstain], atol=1e-6)
    pred = rs.predict(digits_model, x, seed=1)
    both = ~pred.abstain & ~res.abstain
    assert both.sum() >= 4 and (pred.label[both] == res.label[both]).all()
    assert res.certified_accuracy() >= 5 / 6
    assert float(lower_confidence_bound(torch.tensor([0]), 10, 0.01)) == 0.0


def test_same_seed_same_result(digits_model, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    rs = RandomizedSmoothing(sigma=0.5, n0=16, n=64, batch_size=50)
    a, b = rs.certify(digits_model, x, y, L2, seed=3), rs.certify(digits_model, x, y, L2, seed=3)
    assert torch.equal(a.meta["counts"], b.meta["counts"]) and torch.equal(a.radius, b.radius)
    c = rs.certify(digits_model, x, y, L2, seed=4)
    assert not torch.equal(a.meta["counts"], c.meta["counts"])
    state = torch.random.get_rng_state()
    rs.predict(digits_model, x, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched


def _smoothed_attack(model, x, y, eps, sigma, m=8, steps=10):
    """PGD-l2 on the smoothed soft classifier: the gradient of the CE loss averaged over m
    noise draws of the base classifier (batched), projected onto the eps-ball and the box."""
    threat = ThreatModel("l2", eps)
    xa = x.clone()
    alpha = 2.5 * eps / steps
    with model.evaluating():
        for _ in range(steps):
            xa.requires_grad_(True)
            noisy = xa.repeat_interleave(m, 0) + sigma * torch.randn((len(xa) * m, *x.shape[1:]))
            probs = torch.softmax(model(noisy), dim=1).view(len(xa), m, -1).mean(1)
            loss = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)
            (g,) = torch.autograd.grad(loss, xa)
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            xa = threat.project(x, xa.detach() + alpha * g)
    return xa.detach()


def test_radius_never_above_the_smallest_attacked_distance(digits_model, digits_test):
    """Attack the smoothed classifier at growing l2 radii; wherever its PREDICT returns a wrong
    class, that distance bounds the certified radius from above."""
    torch.manual_seed(0)
    x, y = digits_test.x[:12], digits_test.y[:12]
    sigma = 0.25
    rs = RandomizedSmoothing(sigma=sigma, n0=32, n=400, batch_size=4000)
    res = rs.certify(digits_model, x, y, L2, seed=0)
    ok = ~res.abstain & (res.label == y)
    assert ok.sum() >= 8
    judge = RandomizedSmoothing(sigma=sigma, n=200, batch_size=4000)
    broken_at = torch.full((len(x),), math.inf)
    for eps in (0.25, 0.5, 1.0, 1.5, 2.0, 3.0):
        left = ok & torch.isinf(broken_at)
        if not left.any():
            break
        xa = _smoothed_attack(digits_model, x[left], y[left], eps, sigma)
        pred = judge.predict(digits_model, xa, seed=1)
        wrong = ~pred.abstain & (pred.label != y[left])
        dist = (xa - x[left]).flatten(1).norm(dim=1)
        idx = left.nonzero()[:, 0][wrong]
        broken_at[idx] = dist[wrong]
    hit = torch.isfinite(broken_at)
    assert hit.sum() >= 4  # the attack does break the smoothed classifier on most samples
    assert (res.radius[hit] <= broken_at[hit]).all()


def test_bad_input():
    with pytest.raises(InputError, match="sigma"):
        RandomizedSmoothing(sigma=0)
    with pytest.raises(InputError, match="alpha"):
        RandomizedSmoothing(alpha=1.5)
    with pytest.raises(InputError, match="n0"):
        RandomizedSmoothing(n0=0)
    with pytest.raises(InputError, match="batch_size"):
        RandomizedSmoothing(batch_size=2.5)
    model = _linear_binary(4)
    with pytest.raises(InputError, match="outside"):
        RandomizedSmoothing(n0=2, n=4).certify(model, torch.full((2, 4), 3.0),
                                               torch.zeros(2, dtype=torch.long), L2)
    with pytest.raises(InputError, match="y"):
        RandomizedSmoothing(n0=2, n=4).certify(model, torch.rand(2, 4), torch.tensor([0, 5]), L2)
    with pytest.raises(InputError, match="supports norms l2"):
        RandomizedSmoothing(n0=2, n=4).certify(model, torch.rand(2, 4),
                                               torch.zeros(2, dtype=torch.long),
                                               ThreatModel("linf", 0.1))
