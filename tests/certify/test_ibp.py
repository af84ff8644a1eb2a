"""Interval bound propagation (Gowal et al. 2018): bounds contain every perturbed output."""

import pytest
import torch
from torch import nn

from scrutiny.attacks import APGD
from scrutiny.certify import IBP, CertResult
from scrutiny.errors import InputError
from scrutiny.models import TorchModel
from scrutiny.testing.models import tiny_linear
from scrutiny.types import ThreatModel
from tests.certify.helpers import assert_contains, extreme_points, points_in_ball, random_cnn, random_mlp


@pytest.mark.parametrize("make, shape", [(random_mlp, (12,)), (random_cnn, (1, 8, 8))])
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("linf", 0.3), ("l2", 0.5)])
def test_bounds_contain_random_and_pgd_points(make, shape, norm, eps):
    model = make(seed=1)
    x0 = torch.rand((3, *shape), generator=torch.Generator().manual_seed(0))
    y = model.predict(x0)
    b = IBP().bounds(model, x0, eps, y=y, norm=norm)
    pts = torch.cat([points_in_ball(x0, eps, norm, 200), extreme_points(model, x0, eps, norm, 15)])
    assert_contains(b, model, pts, y)
    # the bounds are not vacuous either: the clean output is inside and the width is finite
    assert torch.isfinite(b.logits_upper - b.logits_lower).all()


def test_bounds_contain_digits_cnn_outputs(digits_model, digits_test):
    x, y = digits_test.x[:3], digits_test.y[:3]
    b = IBP().bounds(digits_model, x, 0.01, y=y)
    pts = torch.cat([points_in_ball(x, 0.01, "linf", 100),
                     extreme_points(digits_model, x, 0.01, "linf", steps=10)])
    assert_contains(b, digits_model, pts, y)


def test_exact_on_a_linear_model():
    """For ``W x + b`` on a box, interval arithmetic is exact: each bound is attained at a corner."""
    model = tiny_linear(seed=3, shape=(1, 4, 4), num_classes=3)
    x0 = torch.rand((2, 1, 4, 4), generator=torch.Generator().manual_seed(1)) * 0.6 + 0.2
    eps = 0.1
    b = IBP().bounds(model, x0, eps)
    w = model.module[1].weight.detach()
    for j in range(3):
        corner_hi = x0 + eps * w[j].view(1, 1, 4, 4).sign()
        corner_lo = x0 - eps * w[j].view(1, 1, 4, 4).sign()
        torch.testing.assert_close(b.logits_upper[:, j], model.logits(corner_hi)[:, j], atol=1e-5,
                                   rtol=0)
        torch.testing.assert_close(b.logits_lower[:, j], model.logits(corner_lo)[:, j], atol=1e-5,
                                   rtol=0)
    # the margin bound uses C W directly: exact too, tighter than subtracting logit bounds
    y = b.y
    for j in range(3):
        d = (w[y] - w[j]).view(2, 1, 4, 4).sign()
        want = model.logits(x0 - eps * d)
        exact = want.gather(1, y[:, None])[:, 0] - want[:, j]
        torch.testing.assert_close(b.margin_lower[:, j], exact, atol=1e-5, rtol=0)
    naive = b.logits_lower.gather(1, y[:, None]) - b.logits_upper
    assert (b.margin_lower >= naive - 1e-6).all()


def test_bounds_skip_the_clean_pass_and_certify_labels_come_from_its_one_pass(digits_test):
    """``bounds`` never runs the model on the batch (only the compiled network's one-row
    check); ``certify`` and ``certified_radius`` run it once (the preamble) and report that
    pass's predictions as labels, also where the label asked about is not the prediction."""
    model = random_cnn(seed=2)
    x = digits_test.x[:6]
    pred = model.predict(x)
    IBP().bounds(model, x, 0.05, y=pred)  # compiles the network (a forward on the batch)
    rows = []
    hook = model.module.register_forward_hook(lambda m, a, o: rows.append(len(a[0])))
    try:
        IBP().bounds(model, x, 0.05, y=pred)
        assert sum(rows) <= 1
        wrong = (pred + 1) % 3
        for call in (lambda: IBP().certify(model, x, wrong, ThreatModel("linf", 0.0)),
                     lambda: IBP().certify(model, x, pred, ThreatModel("linf", 0.001)),
                     lambda: IBP(radius_steps=2).certified_radius(model, x, wrong, max_eps=0.1)):
            rows.clear()
            res = call()
            assert sum(rows) <= len(x) + 1
            assert torch.equal(res.label, pred)
        assert not res.certified.any()  # wrong labels: none certified, labels still the model's
    finally:
        hook.remove()


def test_input_box_and_normalisation():
    """eps is in input units (normalisation is the first layer) and the box is clipped to bounds."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    with torch.no_grad():
        net[1].weight.fill_(1.0)
        net[1].bias.zero_()
    model = TorchModel(net, mean=[0.5], std=[0.25])
    x0 = torch.tensor([[1.0, 1.0, 0.0, 0.5]])
    b = IBP().bounds(model, x0, 0.1)
    # (x - 0.5) / 0.25 summed: x in [[0.9,1],[0.9,1],[0,0.1],[0.4,0.6]]
    assert b.logits_lower.item() == pytest.approx((0.9 + 0.9 + 0 + 0.4 - 2.0) / 0.25, abs=1e-5)
    assert b.logits_upper.item() == pytest.approx((1 + 1 + 0.1 + 0.6 - 2.0) / 0.25, abs=1e-5)


def test_certified_accuracy_never_above_attack(digits_model, digits_test):
    x, y = digits_test.x[:48], digits_test.y[:48]
    for eps in (0.002, 0.01):
        threat = ThreatModel("linf", eps)
        cert = IBP().certify(digits_model, x, y, threat)
        adv = APGD(steps=20)(digits_model, x, y, threat=threat)
        assert isinstance(cert, CertResult)
        # a certified sample is never broken by the attack
        assert not (cert.certified & ~adv.adv_correct).any()
        assert cert.certified_accuracy() <= adv.robust_accuracy()
    # IBP is loose on a normally trained CNN: it certifies most samples at 0.002, none at 0.01
    accs = IBP().certified_accuracy(digits_model, x, y, [0.0, 0.002, 0.01])
    assert accs[0.0] > 0.9 and accs[0.002] > 0.5 and accs[0.01] < 0.2


def test_certified_radius_is_certified_and_below_a_failing_eps(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    ibp = IBP(radius_steps=8)
    res = ibp.certified_radius(digits_model, x, y)
    ok = res.radius > 0
    assert ok.any()
    again = ibp.bounds(digits_model, x[ok], res.radius[ok], y=y[ok])
    assert again.certified().all()
    # the radius plus the search resolution is no longer certified (IBP is inclusion-monotone)
    above = ibp.bounds(digits_model, x[ok], res.radius[ok] + res.meta["resolution"] * 1.01, y=y[ok])
    assert not above.certified().any()


def test_bad_input():
    model = random_mlp()
    x = torch.rand(2, 12)
    with pytest.raises(InputError, match="eps"):
        IBP().bounds(model, x, -0.1)
    with pytest.raises(InputError, match="eps"):
        ThreatModel("linf", -1.0)
    with pytest.raises(InputError, match="norms"):
        IBP().certify(model, x, torch.zeros(2, dtype=torch.long), ThreatModel("l1", 0.1))
    tanh = TorchModel(nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2)))
    with pytest.raises(InputError, match=r"'1' \(Tanh\)"):
        IBP().bounds(tanh, x, 0.1)
    with pytest.raises(InputError, match="batch_size"):
        IBP(batch_size=0)
    with pytest.raises(InputError, match="outside"):
        IBP().bounds(model, x + 2, 0.1)
