"""DeepFool (Moosavi-Dezfooli et al. 2016): exact on affine classifiers, small norms on a CNN."""

import pytest
import torch
from torch import nn

from scrutiny.attacks import DeepFool
from scrutiny.errors import InputError
from scrutiny.models import TorchModel
from scrutiny.types import ThreatModel

BOUNDS = (-10.0, 10.0)  # wide, so the minimal perturbation stays inside the box


def _affine(k: int, d: int = 36, seed: int = 0) -> TorchModel:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g, dtype=torch.float64))
    return TorchModel(nn.Sequential(nn.Flatten(), lin), bounds=BOUNDS)


def _inputs(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, 1, 6, 6), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def test_binary_affine_classifier_gets_the_exact_minimal_perturbation():
    model = _affine(2)
    x = _inputs()
    y = model.predict(x)
    lin = model.module[1]
    w = (lin.weight[1] - lin.weight[0]).detach()
    f = (model.logits(x) @ torch.tensor([-1.0, 1.0], dtype=torch.float64))  # f = z_1 - z_0
    r = -f[:, None] * w[None] / w.pow(2).sum()
    res = DeepFool(overshoot=0.02)(model, x, y, threat=ThreatModel("l2", float("inf"), BOUNDS))
    assert res.success.all()
    torch.testing.assert_close((res.x_adv - x).flatten(1), 1.02 * r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_multiclass_affine_classifier_gets_the_closed_form_minimum(norm):
    k = 5
    model = _affine(k, seed=2)
    x = _inputs(20, seed=3)
    y = model.predict(x)
    W, b = model.module[1].weight.detach(), model.module[1].bias.detach()
    xf = x.flatten(1)
    z = xf @ W.T + b
    wk = W[None] - W[y][:, None]                          # (n, K, d)
    fk = z - z.gather(1, y[:, None])                      # (n, K)
    qn = wk.norm(dim=2) if norm == "l2" else wk.abs().sum(dim=2)
    dist = (fk.abs() / qn).scatter(1, y[:, None], float("inf"))
    lbest = dist.argmin(dim=1)
    rows = torch.arange(len(x))
    wl, fl = wk[rows, lbest], fk[rows, lbest].abs()
    if norm == "l2":
        r = (fl / wl.pow(2).sum(1))[:, None] * wl
    else:
        r = (fl / wl.abs().sum(1))[:, None] * wl.sign()
    res = DeepFool(candidates=k, overshoot=0.02)(model, x, y,
                                                 threat=ThreatModel(norm, float("inf"), BOUNDS))
    assert res.success.all()
    torch.testing.assert_close((res.x_adv - x).flatten(1), 1.02 * r, atol=1e-5, rtol=0)
    # the minimal distance is the closed form one, not that of another class
    torch.testing.assert_close(res.norms, 1.02 * dist.min(dim=1).values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm, max_median", [("l2", 0.7), ("linf", 0.15)])
def test_fools_the_digits_cnn_with_small_perturbations(digits_model, digits_test, norm, max_median):
    x, y = digits_test.x[:100], digits_test.y[:100]
    res = DeepFool()(digits_model, x, y, threat=ThreatModel(norm, float("inf")))
    assert res.success_rate() >= 0.99
    ok = res.success & res.clean_correct
    assert res.norms[ok].median() < max_median
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    # one unbounded run gives the robust-accuracy curve
    curve = [res.robust_accuracy_at(e) for e in (0.0, max_median / 2, max_median * 2)]
    assert curve[0] == res.clean_accuracy() and curve[0] > curve[1] > curve[2]


def test_finite_eps_means_success_within_eps(digits_model, digits_test):
    x, y = digits_test.x[:64], digits_test.y[:64]
    tm = ThreatModel("l2", 0.3)
    res = DeepFool()(digits_model, x, y, threat=tm)
    assert tm.contains(x, res.x_adv).all()
    free = DeepFool()(digits_model, x, y, threat=tm.with_eps(float("inf")))
    # samples whose minimal perturbation fits in the ball keep their success
    fits = free.success & (free.norms <= 0.3)
    assert (res.success[fits]).all()


def test_bad_parameters():
    with pytest.raises(InputError, match="candidates"):
        DeepFool(candidates=1)
    with pytest.raises(InputError, match="overshoot"):
        DeepFool(overshoot=-0.1)
