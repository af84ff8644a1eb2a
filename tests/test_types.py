"""ThreatModel: projection, containment and distances (hypothesis properties)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _kkt_multiplier_interval(d, v, lo, hi, tol):
    """The multipliers ``lam >= 0`` for which ``d_i = clip(soft(v_i, lam), lo_i, hi_i)`` holds
    at every coordinate (stationarity of min ||d - v||^2 + 2 lam ||d||_1 over the box),
    as an interval ``(low, high)``; empty when ``low > high``."""
    low, high = 0.0, np.inf
    for di, vi, l, h in zip(d, v, lo, hi, strict=True):
        if abs(di) <= tol:  # soft-thresholded to zero: |v_i| <= lam
            low = max(low, abs(vi))
        elif di >= h - tol:  # at the upper box limit: v_i - lam >= hi_i
            assert vi > 0
            high = min(high, vi - h)
        elif di <= l + tol:  # at the lower box limit: v_i + lam <= lo_i
            assert vi < 0
            high = min(high, l - vi)
        else:  # free coordinate: d_i = v_i - sign(v_i) lam exactly
            assert np.sign(di) == np.sign(vi)
            lam = abs(vi) - abs(di)
            low, high = max(low, lam), min(high, lam)
    return low, high


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), eps=st.floats(0.05, 4), scale=st.floats(0.1, 2))
def test_l1_projection_satisfies_the_kkt_conditions(seed, eps, scale):
    """The l1-ball-and-box projection is the exact solution of min ||d - v||^2: feasible, and
    one multiplier lam >= 0 makes every coordinate stationary, with lam = 0 unless the l1
    budget is spent (complementary slackness). The problem is convex, so these conditions
    are necessary and sufficient."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=16) * scale
    x0 = rng.uniform(0, 1, size=16)
    lo, hi = -x0, 1 - x0
    d = project_l1_box(torch.tensor(v[None]), torch.tensor([eps], dtype=torch.float64),
                       torch.tensor(lo[None]),
                       torch.tensor(hi[None]))[0].numpy()
    tol = 1e-9 * max(1.0, np.abs(v).max())
    assert np.abs(d).sum() <= eps + tol and (d >= lo).all() and (d <= hi).all()
    low, high = _kkt_multiplier_interval(d, v, lo, hi, tol)
    assert low <= high + 1e-7, (low, high)  # some multiplier makes all coordinates stationary
    if low > 1e-7:  # the ball constraint is active: its budget is spent
        assert abs(np.abs(d).sum() - eps) <= 1e-7
    else:  # lam = 0: d is the plain box clip of v
        assert np.allclose(d, np.clip(v, lo, hi), atol=1e-7)


def test_kkt_check_rejects_a_feasible_point_that_is_not_the_projection():
    """The check above can fail: rescaling the box clip onto the l1 sphere is feasible but
    not stationary (no single multiplier fits every coordinate)."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=16)
    lo, hi = np.full(16, -0.5), np.full(16, 0.5)
    c = np.clip(v, lo, hi)
    d = c * 1.0 / np.abs(c).sum()
    low, high = _kkt_multiplier_interval(d, v, lo, hi, 1e-12)
    assert low > high + 1e-3


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


def test_robust_needs_the_clean_input_classified_correctly():
    from scrutiny.types import AttackResult

    t = torch.tensor
    # sample 2 is a clean error that the perturbation happened to fix
    res = AttackResult(x_adv=torch.zeros(3, 1), success=t([True, False, False]),
                       norms=torch.zeros(3), logits=torch.zeros(3, 2),
                       clean_correct=t([True, True, False]), adv_correct=t([False, True, True]),
                       y=t([0, 0, 0]))
    assert res.robust.tolist() == [False, True, False]
    assert res.robust_accuracy() == pytest.approx(1 / 3)
    assert res.robust_accuracy() <= res.clean_accuracy()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_threat_model_on_an_empty_batch(norm):
    tm = ThreatModel(norm, 0.1)
    x0 = torch.zeros(0, 1, 4, 4)
    assert tm.distance(x0, x0).shape == (0,) and tm.contains(x0, x0).shape == (0,)
    assert tm.project(x0, x0 + 1).shape == (0, 1, 4, 4)


def test_bounds_are_the_models_until_given():
    tm = ThreatModel("linf", 0.1)
    assert tm.bounds is None and tm.box == (0.0, 1.0)  # standalone: a module without bounds
    x0 = torch.full((1, 4), 0.95)
    assert torch.allclose(tm.project(x0, x0 + 1), torch.ones(1, 4))
    r = tm.resolve((-1, 1))
    assert r.bounds == (-1.0, 1.0) and r.resolve((-1.0, 1.0)) is r and tm.bounds is None
    assert torch.allclose(r.project(x0, x0 + 1), torch.full((1, 4), 1.0))
    assert torch.allclose(r.project(x0 - 1, x0 - 2), torch.full((1, 4), -0.15))  # below 0
    with pytest.raises(InputError, match=r"bounds \[-1, 1\] differ from the model's bounds \[0, 2\]"):
        r.resolve((0, 2))
    with pytest.raises(InputError, match="low >= 0"):
        ThreatModel("wasserstein", 0.1).resolve((-1, 1))
