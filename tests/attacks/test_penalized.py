"""Penalised attacks (course slides): the trade-off curve is monotone in lambda."""

import pytest
import torch

from scrutiny.attacks import Penalized
from scrutiny.attacks.whitebox.penalized import prox_norm
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel

INF = float("inf")


@pytest.mark.parametrize("norm, lams, targeted", [
    ("l2", (0.3, 1.0, 3.0, 10.0), False),
    ("l2", (0.3, 1.0, 3.0, 10.0), True),
    ("l1", (0.01, 0.03, 0.1, 0.3), False),
])
def test_tradeoff_curve_is_monotone_in_lambda(digits_model, digits_test, norm, lams, targeted):
    x, y = digits_test.x[:32], digits_test.y[:32]
    t = (y + 1) % 10 if targeted else None
    runs = [Penalized(lam=lam, steps=60)(digits_model, x, y, threat=ThreatModel(norm, INF),
                                         target=t) for lam in lams]
    norms = [float(r.norms.mean()) for r in runs]
    success = [r.success_rate() for r in runs]
    assert all(a > b for a, b in zip(norms, norms[1:], strict=False)), norms
    assert all(a >= b for a, b in zip(success, success[1:], strict=False)), success
    assert success[0] > success[-1] + 0.1, success
    for r in runs:
        assert ((r.x_adv >= 0) & (r.x_adv <= 1)).all()


def test_prox_operators_solve_their_problems():
    v = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    tau = 0.3
    for norm in ("l1", "l2", "linf"):
        p = prox_norm(v, tau, norm)

        def obj(d, norm=norm):
            return tau * torch.linalg.vector_norm(d, ord={"l1": 1, "l2": 2, "linf": INF}[norm],
                                                  dim=1) + 0.5 * (d - v).pow(2).sum(1)

        base = obj(p)
        for _ in range(20):  # no nearby point does better
            q = p + 1e-2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(_))
            assert (obj(q) >= base - 1e-6).all()


def test_zero_lambda_and_mask(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    mask = torch.zeros(1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    res = Penalized(lam=0.0, steps=20)(digits_model, x, y, threat=ThreatModel("linf", INF, mask=mask),
                                       target=(y + 1) % 10)
    assert ((res.x_adv - x).abs() * (1 - mask) == 0).all()
    assert res.success_rate() > 0.5


def test_bad_parameters():
    with pytest.raises(InputError, match="lam"):
        Penalized(lam=-1.0)
    with pytest.raises(InputError, match="step_size"):
        Penalized(step_size=0)
