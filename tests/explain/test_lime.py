"""LIME recovers a linear black box and reports its local fidelity (Ribeiro et al. 2016)."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import Lime, lime
from scrutiny.models.wrapper import TorchModel


def _linear_model(d: int, seed: int = 0) -> tuple[TorchModel, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(2, d, generator=g) * 3)
        lin.bias.copy_(torch.randn(2, generator=g))
    return TorchModel(lin), lin.weight.detach().clone()


def test_recovers_linear_black_box_tabular():
    d = 8
    model, w = _linear_model(d)
    g = torch.Generator().manual_seed(1)
    scale = torch.linspace(0.05, 0.3, d)  # features with different spreads
    background = (0.5 + (torch.rand(500, d, generator=g) - 0.5) * scale * 3).clamp(0, 1)
    x = background[:4]
    target = torch.tensor([0, 1, 0, 1])
    e = lime(model, x, target, background=background, discretize=None, output="logit",
             n_samples=2000)
    std = background.std(0, unbiased=False)
    expected = w[target] * std  # slope per background standard deviation
    rel = (e.attributions - expected).norm(dim=1) / expected.norm(dim=1)
    assert (rel < 0.05).all(), rel
    assert torch.equal(e.attributions.sign(), expected.sign())
    assert torch.equal(e.attributions.argsort(dim=1), expected.argsort(dim=1))
    assert (e.meta["r2"] > 0.999).all()


def test_nonlinear_black_box_has_lower_fidelity():
    """R^2 is a real fidelity measure: it drops for a strongly nonlinear model."""
    d = 6
    g = torch.Generator().manual_seed(0)
    background = torch.rand(300, d, generator=g)
    x = background[:3]

    class Wavy(nn.Module):
        def forward(self, z):
            s = torch.sin(12 * z).sum(1, keepdim=True)
            return torch.cat([s, -s], dim=1)

    lin, _ = _linear_model(d)
    kw = dict(background=background, discretize=None, output="logit", n_samples=1000)
    r2_lin = lime(lin, x, 0, **kw).meta["r2"]
    r2_wavy = lime(TorchModel(Wavy()), x, 0, **kw).meta["r2"]
    assert (r2_wavy < 0.5).all() and (r2_lin > 0.99).all()


def test_top_superpixel_covers_the_evidence():
    """A model that only looks at the top-left quadrant: its cells rank first."""
    class Quadrant(nn.Module):
        def forward(self, z):
            s = 4 * (z[:, 0, :4, :4].sum((1, 2)) - 4)
            return torch.stack([s, -s], dim=1)

    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    e = lime(TorchModel(Quadrant()), x, 0, segmenter="grid", n_segments=16, fill="zero",
             output="logit", n_samples=500)
    seg = e.meta["segments"]
    feats = e.meta["features"]
    inside = torch.zeros(16, dtype=torch.bool)
    inside[seg[0, :4, :4].unique()] = True
    for i in range(len(x)):
        top = feats[i].argsort(descending=True)[:4]
        assert inside[top].all()
        assert feats[i][~inside].abs().max() < 0.02 * feats[i].abs().max()  # ridge leakage only
    assert (e.meta["r2"] > 0.999).all()


def test_images_default_slic_on_digits(digits_model, digits_test):
    x = digits_test.x[:3]
    e = Lime(n_samples=400)(digits_model, x)
    assert e.attributions.shape == (3, 8, 8)
    assert ((e.meta["r2"] > 0) & (e.meta["r2"] <= 1)).all()
    assert (e.meta["n_features"] >= 4).all()
    # pixels of one superpixel share one value
    seg, a = e.meta["segments"][0], e.attributions[0]
    for k in seg.unique():
        assert a[seg == k].unique().numel() == 1


def test_tabular_discretized_needs_background():
    model, _ = _linear_model(5)
    x = torch.rand(2, 5)
    with pytest.raises(InputError, match="background"):
        lime(model, x)
    bg = torch.rand(100, 5, generator=torch.Generator().manual_seed(0))
    e = lime(model, x, background=bg, n_samples=500)
    assert e.attributions.shape == (2, 5) and torch.isfinite(e.attributions).all()
    assert ((e.meta["r2"] > 0) & (e.meta["r2"] <= 1)).all()
    with pytest.raises(InputError, match="does not accept"):
        Lime(n_samples=10).explain(model, x, backgrund=bg)
