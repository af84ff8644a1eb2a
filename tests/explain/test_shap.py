"""KernelSHAP: efficiency and agreement with exact Shapley values (Lundberg & Lee 2017)."""

import itertools
import math

import torch
from torch import nn

from scrutiny.explain import KernelShap, kernel_shap
from scrutiny.explain.surrogate.shap import shapley_coalitions
from scrutiny.models.wrapper import TorchModel


def _mlp(d: int, seed: int = 0) -> TorchModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 3)).double()
    return TorchModel(net)


def _exact_shapley(model, x, t, background):
    """Slow reference: the Shapley formula over all 2^M coalitions, value = E_bg f."""
    m = x.numel()

    def value(subset):
        z = torch.zeros(m, dtype=torch.bool)
        z[list(subset)] = True
        rows = torch.where(z, x, background)
        with torch.no_grad():
            return model(rows)[:, t].mean().item()

    phi = torch.zeros(m, dtype=torch.float64)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for s in range(m):
            for sub in itertools.combinations(others, s):
                w = math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
                phi[j] += w * (value(sub + (j,)) - value(sub))
    return phi


def test_matches_exact_shapley_values():
    d = 6
    model = _mlp(d)
    g = torch.Generator().manual_seed(0)
    background = torch.rand(5, d, generator=g, dtype=torch.float64)
    x = torch.rand(3, d, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    e = kernel_shap(model, x, t, background=background)  # budget covers all 2^6 - 2
    for i in range(len(x)):
        ref = _exact_shapley(model, x[i], int(t[i]), background)
        assert torch.allclose(e.attributions[i], ref, atol=1e-8), (e.attributions[i], ref)


def test_efficiency_exact_with_sampled_coalitions():
    d = 20
    model = _mlp(d, seed=1)
    g = torch.Generator().manual_seed(1)
    background = torch.rand(8, d, generator=g, dtype=torch.float64)
    x = torch.rand(4, d, generator=g, dtype=torch.float64)
    e = KernelShap(n_samples=200)(model, x, background=background)
    with torch.no_grad():
        fx = model(x).gather(1, e.target[:, None])[:, 0]
        ef = model(background)[:, e.target].mean(0)
    assert torch.allclose(e.attributions.sum(1), fx - ef, atol=1e-5, rtol=0)
    assert (e.delta.abs() < 1e-5).all()
    assert torch.allclose(e.meta["expected_value"], ef)


def test_sampled_estimate_is_close_to_exact():
    """With a budget below 2^M the paired sampling still approximates the values."""
    d = 8
    model = _mlp(d, seed=2)
    g = torch.Generator().manual_seed(2)
    background = torch.rand(4, d, generator=g, dtype=torch.float64)
    x = torch.rand(1, d, generator=g, dtype=torch.float64)
    e = KernelShap(n_samples=120)(model, x, 0, background=background)
    ref = _exact_shapley(model, x[0], 0, background)
    assert (e.attributions[0] - ref).norm() < 0.1 * ref.norm()


def test_coalitions_enumerate_small_sizes():
    """Sizes 1 and M-1 fully enumerated once the budget holds them; weights sum to 1."""
    z, w = shapley_coalitions(10, 100, __import__("numpy").random.default_rng(0))
    assert len(z) == 100 and abs(w.sum() - 1) < 1e-12
    sizes = z.sum(1)
    assert (sizes == 1).sum() == 10 and (sizes == 9).sum() == 10
    full, wf = shapley_coalitions(5, 10**6, __import__("numpy").random.default_rng(0))
    assert len(full) == 2**5 - 2 and len({r.tobytes() for r in full}) == 30


def test_images_superpixels_efficiency(digits_model, digits_test):
    x = digits_test.x[:3]
    e = kernel_shap(digits_model, x, n_samples=300)
    assert e.attributions.shape == (3, 8, 8)
    with torch.no_grad():
        base = digits_model(torch.zeros_like(x)).gather(1, e.target[:, None])[:, 0]
    feats = e.meta["features"].sum(1)
    assert torch.allclose(feats, (e.outputs - base).double(), atol=1e-4)
