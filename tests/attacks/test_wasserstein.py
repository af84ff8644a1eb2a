"""Wasserstein adversarial examples (Wong et al. 2019): inside the ball by an independent LP."""

import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.optimize import linprog

from scrutiny.attacks.whitebox import WassersteinPGD
from scrutiny.attacks.whitebox.wasserstein import projected_sinkhorn, wasserstein_distance
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


def exact_w(x0, x, window=5, p=2.0):
    """Reference: dense LP over all pixel pairs (pairs beyond the window fixed to 0)."""
    h, w = x0.shape[-2:]
    pos = np.array([(i, j) for i in range(h) for j in range(w)], dtype=float)
    diff = np.abs(pos[:, None] - pos[None])
    cost = ((diff ** p).sum(-1) ** (1 / p)).ravel()
    ub = np.where((diff <= window // 2).all(-1).ravel(), None, 0.0)
    n = h * w
    v = np.arange(n * n)  # variable v = (source s, target t) = s * n + t
    a_eq = sparse.vstack([sparse.csr_matrix((np.ones(n * n), (v // n, v)), shape=(n, n * n)),
                          sparse.csr_matrix((np.ones(n * n), (v % n, v)), shape=(n, n * n))])
    out = []
    for a, b in zip(x0.double().flatten(1), x.double().flatten(1), strict=True):
        m = float(a.sum())
        assert abs(float(b.sum()) - m) <= 1e-5 * m, "mass changed"
        rhs = np.concatenate([a.numpy(), (b * a.sum() / b.sum()).numpy()]) / m
        res = linprog(cost, A_eq=a_eq, b_eq=rhs, bounds=list(zip([0.0] * n * n, ub, strict=True)),
                      method="highs", options={"presolve": False})
        assert res.status == 0
        out.append(res.fun)
    return torch.tensor(out, dtype=torch.float64)


def test_distance_matches_hand_computed_transport():
    x0 = torch.zeros(1, 1, 6, 6)
    x0[0, 0, 2, 2] = 1.0
    moves = {(2, 3): 1.0, (3, 3): 2 ** 0.5, (2, 4): 2.0, (4, 4): 8 ** 0.5}
    for (i, j), c in moves.items():
        x = torch.zeros_like(x0)
        x[0, 0, 2, 2], x[0, 0, i, j] = 0.5, 0.5  # half the mass moves
        assert torch.allclose(wasserstein_distance(x0, x), torch.tensor([0.5 * c]), atol=1e-6)
    far = torch.zeros_like(x0)
    far[0, 0, 2, 5] = 1.0  # three pixels away: outside the 5 x 5 window, no local plan
    assert torch.isinf(wasserstein_distance(x0, far)).all()
    assert torch.allclose(wasserstein_distance(x0, far, kernel_size=7), torch.tensor([3.0]))
    assert torch.isinf(wasserstein_distance(x0, 0.5 * x0)).all()  # mass not conserved
    tm = ThreatModel("wasserstein", 0.6)
    assert tm.contains(x0, x).tolist() == [False] and tm.contains(x0, x0).tolist() == [True]


def test_projection_is_in_the_ball_conserves_mass_and_moves_towards_the_point(digits_test):
    x0 = digits_test.x[:3]
    w = (x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    mass = x0.flatten(1).sum(1)
    gaps = []
    for eps in (0.05, 0.2):
        z = projected_sinkhorn(x0, w, eps, (0.0, 1.0), iters=30)
        assert (z >= 0).all() and (z <= 1).all()
        assert torch.allclose(z.flatten(1).sum(1), mass, rtol=1e-5)
        d = exact_w(x0, z)
        assert (d <= eps * (1 + 1e-4)).all() and d.max() > 0.8 * eps  # on the boundary
        assert torch.allclose(wasserstein_distance(x0, z).double(), d, atol=1e-5)
        gaps.append((z - w).flatten(1).norm(dim=1))
    # a larger ball gets closer to the projected point
    assert (gaps[1] < gaps[0]).all() and (gaps[0] < (x0 - w).flatten(1).norm(dim=1)).all()
    # ThreatModel.project keeps points already inside
    tm = ThreatModel("wasserstein", 0.2)
    assert torch.equal(tm.project(x0, z), z)


def test_attack_lowers_accuracy_inside_the_ball(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    tm = ThreatModel("wasserstein", 0.2)
    res = WassersteinPGD(steps=10, sinkhorn_steps=15, eps_init=None)(digits_model, x, y,
                                                                      threat=tm)
    assert res.clean_accuracy() > 0.9 and res.robust_accuracy() < res.clean_accuracy() - 0.5
    assert torch.allclose(res.x_adv.flatten(1).sum(1), x.flatten(1).sum(1), rtol=1e-5)
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    d = exact_w(x[:6], res.x_adv[:6])
    assert (d <= 0.2 * (1 + 1e-4)).all()
    assert torch.allclose(res.norms[:6].double(), d, atol=1e-5)
    # the paper's schedule: the radius starts at eps_init and grows 1.1x every 10 steps
    sched = WassersteinPGD(steps=11, sinkhorn_steps=15, eps_init=0.05)(digits_model, x, y,
                                                                       threat=tm)
    assert (sched.norms <= 0.055 * (1 + 1e-4)).all()
    assert sched.robust_accuracy() > res.robust_accuracy()
    ok = sched.success
    assert (sched.meta["eps_reached"][ok] <= 0.0551).all()


def test_clear_errors(digits_model, digits_test):
    with pytest.raises(InputError, match="low >= 0"):
        ThreatModel("wasserstein", 0.1, bounds=(-1.0, 1.0))
    with pytest.raises(InputError, match="mask"):
        ThreatModel("wasserstein", 0.1, mask=torch.ones(1, 8, 8))
    with pytest.raises(InputError, match="odd integer"):
        ThreatModel("wasserstein", 0.1, wasserstein_kernel=4)
    with pytest.raises(InputError, match="eps_factor"):
        WassersteinPGD(eps_factor=0.5)
    with pytest.raises(InputError, match="images"):
        WassersteinPGD()(digits_model, digits_test.x[:2].flatten(1), digits_test.y[:2],
                         threat=ThreatModel("wasserstein", 0.1))
    with pytest.raises(InputError, match="supports norms"):
        WassersteinPGD()(digits_model, digits_test.x[:2], digits_test.y[:2],
                         threat=ThreatModel("linf", 0.1))
    assert ThreatModel("wasserstein", 0.1).with_eps(0.2).wasserstein_kernel == 5
