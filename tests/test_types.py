"""ThreatModel: projection, containment and distances (hypothesis properties)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from scrutiny.errors import InputError
from scrutiny.types import ThreatModel, project_l1_box

norms = st.sampled_from(["linf", "l2", "l1"])


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=st.floats(0, 5), seed=st.integers(0, 10_000), scale=st.floats(0.01, 10),
       lo=st.floats(-1, 0.4))
def test_project_lands_inside_and_is_idempotent(norm, eps, seed, scale, lo):
    g = torch.Generator().manual_seed(seed)
    hi = lo + 1
    x0 = torch.rand(3, 2, 4, 4, generator=g) + lo
    x = x0 + scale * torch.randn(3, 2, 4, 4, generator=g)
    tm = ThreatModel(norm, eps, (lo, hi))
    p = tm.project(x0, x)
    assert tm.contains(x0, p).all()
    assert torch.allclose(tm.project(x0, p), p, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(norm=norms, eps=st.floats(0.1, 3), seed=st.integers(0, 10_000))
def test_points_inside_are_unchanged(norm, eps, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(4, 10, generator=g) * 0.5 + 0.25
    d = torch.randn(4, 10, generator=g)
    tm = ThreatModel(norm, eps)
    d = d / tm.distance(torch.zeros_like(d), d)[:, None] * eps * 0.5  # half-way inside the ball
    x = (x0 + d).clamp(0, 1)
    assert torch.allclose(tm.project(x0, x), x, atol=1e-6)


def test_l1_projection_is_exact_against_a_solver():
    """The l1-ball-and-box projection solves min ||d - v||^2 (checked by SLSQP)."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = rng.normal(size=8) * 0.8
        x0 = rng.uniform(0, 1, size=8)
        eps = 1.0
        lo, hi = -x0, 1 - x0
        cons = [{"type": "ineq", "fun": lambda d, eps=eps: eps - np.abs(d).sum()}]
        ref = minimize(lambda d, v=v: ((d - v) ** 2).sum(), np.zeros(8), method="SLSQP",
                       bounds=list(zip(lo, hi, strict=True)), constraints=cons,
                       options={"ftol": 1e-12, "maxiter": 500}).x
        got = project_l1_box(torch.tensor(v[None]), torch.tensor([eps]), torch.tensor(lo[None]),
                             torch.tensor(hi[None]))[0].numpy()
        assert np.abs(got).sum() <= eps + 1e-9 and (got >= lo - 1e-12).all() and (got <= hi + 1e-12).all()
        # as good as the solver's optimum (SLSQP is only accurate to ~1e-4 on |d|)
        assert ((got - v) ** 2).sum() <= ((ref - v) ** 2).sum() + 1e-9
        assert np.allclose(got, ref, atol=1e-3)


def test_mask_keeps_outside_pixels():
    mask = torch.zeros(1, 4, 4)
    mask[:, :2] = 1
    tm = ThreatModel("linf", 0.3, mask=mask)
    x0 = torch.full((2, 1, 4, 4), 0.5)
    p = tm.project(x0, torch.rand(2, 1, 4, 4))
    assert torch.equal(p[:, :, 2:], x0[:, :, 2:])
    assert tm.contains(x0, p).all()
    assert not tm.contains(x0, x0 + 0.1).any()


def test_distance_per_norm():
    x0 = torch.zeros(1, 4)
    x = torch.tensor([[3.0, -4.0, 0.0, 0.0]])
    assert ThreatModel("linf", 1).distance(x0, x).item() == 4
    assert ThreatModel("l2", 1).distance(x0, x).item() == 5
    assert ThreatModel("l1", 1).distance(x0, x).item() == 7


@pytest.mark.parametrize("kwargs, msg", [
    ({"norm": "l3", "eps": 0.1}, "unknown norm"),
    ({"norm": "linf", "eps": -0.1}, "eps must be"),
    ({"norm": "linf", "eps": float("nan")}, "eps must be"),
    ({"norm": "linf", "eps": 0.1, "bounds": (1, 0)}, "bounds"),
    ({"norm": "linf", "eps": 0.1, "mask": torch.full((1, 2, 2), 0.5)}, "mask"),
])
def test_bad_threat_models(kwargs, msg):
    with pytest.raises(InputError, match=msg):
        ThreatModel(**kwargs)


def test_robust_accuracy_at_smaller_eps():
    from scrutiny.types import AttackResult

    t = torch.tensor
    res = AttackResult(x_adv=torch.zeros(4, 1), success=t([True, True, False, True]),
                       norms=t([0.1, 0.5, 0.0, 0.0]), logits=torch.zeros(4, 2),
                       clean_correct=t([True, True, True, False]),
                       adv_correct=t([False, False, True, False]), y=t([0, 0, 0, 0]),
                       threat=ThreatModel("l2", float("inf")))
    assert res.robust_accuracy_at(0.2) == 0.5  # sample 0 broken, sample 3 wrong already
    assert res.robust_accuracy_at(1.0) == res.robust_accuracy() == 0.25
