"""CROWN (Zhang et al. 2018): sound, tighter than IBP, equal to a slow reference, below attacks."""

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from scrutiny.attacks import APGD, FMN
from scrutiny.certify import CROWN, IBP
from scrutiny.errors import InputError
from scrutiny.models import TorchModel
from scrutiny.types import ThreatModel
from tests.certify.helpers import assert_contains, extreme_points, points_in_ball, random_cnn, random_mlp


# ------------------------------------------------------------------ the slow reference
def reference_crown(model: TorchModel, x0: np.ndarray, eps: float, spec: np.ndarray,
                    relaxation: str = "adaptive", norm: str = "linf") -> np.ndarray:
    """CROWN for a Sequential MLP (Linear, ReLU, ..., Linear), one sample, written out with
    explicit loops over neurons in float64, from the paper's formulas. Lower bounds of
    ``spec @ logits`` (rows of ``spec``) over the ball intersected with [0, 1]."""
    lins = [m for m in model.module if isinstance(m, nn.Linear)]
    ws = [m.weight.detach().double().numpy() for m in lins]
    bs = [m.bias.detach().double().numpy() for m in lins]
    xl, xu = np.clip(x0 - eps, 0, 1), np.clip(x0 + eps, 0, 1)
    pre = []  # (l, u) of the pre-activation of each hidden layer

    def lower(c: np.ndarray, k: int) -> float:
        """Lower bound of c . z_k, z_k = W_k h_{k-1} + b_k (k = 0 is the first layer)."""
        lam, const = c.astype(np.float64), 0.0
        for j in range(k, -1, -1):
            w, b = ws[j], bs[j]
            const += sum(lam[i] * b[i] for i in range(len(b)))
            mu = np.array([sum(lam[i] * w[i, p] for i in range(w.shape[0]))
                           for p in range(w.shape[1])])
            if j == 0:
                box = sum(mu[p] * (xl[p] if mu[p] >= 0 else xu[p]) for p in range(len(mu)))
                if norm == "l2":
                    ball = sum(mu[p] * x0[p] for p in range(len(mu))) - eps * np.sqrt(
                        sum(m * m for m in mu))
                    box = max(box, ball)
                return const + box
            lo, up = pre[j - 1]
            lam = np.zeros(len(mu))
            for p in range(len(mu)):
                lp, upp = lo[p], up[p]
                if upp <= 0:
                    continue
                if lp >= 0:
                    lam[p] = mu[p]
                    continue
                s = upp / (upp - lp)
                a = s if relaxation == "fastlin" else (1.0 if upp >= -lp else 0.0)
                if mu[p] >= 0:
                    lam[p] = mu[p] * a
                else:
                    lam[p] = mu[p] * s
                    const += mu[p] * (-s * lp)
        raise AssertionError

    for k in range(len(ws) - 1):
        n = ws[k].shape[0]
        lo = np.array([lower(np.eye(n)[i], k) for i in range(n)])
        up = np.array([-lower(-np.eye(n)[i], k) for i in range(n)])
        pre.append((lo, up))
    return np.array([lower(row, len(ws) - 1) for row in spec])


@pytest.mark.parametrize("hidden", [(8,), (7, 6)])
@pytest.mark.parametrize("relaxation", ["adaptive", "fastlin"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.15), ("l2", 0.4)])
def test_equals_the_slow_reference(hidden, relaxation, norm, eps):
    model = random_mlp(seed=2, d=6, hidden=hidden, k=3, dtype=torch.float64)
    x0 = torch.rand((2, 6), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = model.predict(x0)
    b = CROWN(relaxation=relaxation, intersect_ibp=False).bounds(model, x0, eps, y=y, norm=norm)
    for i in range(2):
        eye = np.eye(3)
        spec = np.concatenate([eye, -eye, eye[y[i]] - eye, eye - eye[y[i]]])
        ref = reference_crown(model, x0[i].numpy(), eps, spec, relaxation, norm)
        got = torch.cat([b.logits_lower[i], -b.logits_upper[i], b.margin_lower[i],
                         -b.margin_upper[i]]).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_below_the_exact_lp_of_the_triangle_relaxation():
    """For one hidden layer the LP over the triangle relaxation is the tightest bound using the
    same pre-activation bounds; CROWN's lines lie inside the triangle, so CROWN <= LP,
    and LP <= every sampled output."""
    model = random_mlp(seed=5, d=5, hidden=(10,), k=3, dtype=torch.float64)
    x0 = torch.rand((1, 5), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 0.2
    b = CROWN(intersect_ibp=False).bounds(model, x0, eps)
    w1, b1 = model.module[0].weight.detach().numpy(), model.module[0].bias.detach().numpy()
    w2, b2 = model.module[2].weight.detach().numpy(), model.module[2].bias.detach().numpy()
    xl, xu = np.clip(x0[0].numpy() - eps, 0, 1), np.clip(x0[0].numpy() + eps, 0, 1)
    mid, rad = (xl + xu) / 2, (xu - xl) / 2
    lo, up = w1 @ mid + b1 - np.abs(w1) @ rad, w1 @ mid + b1 + np.abs(w1) @ rad
    d, h = 5, 10
    gaps = []
    for j in range(3):
        # variables [x (d), a (h)]; z = W1 x + b1 is substituted
        c = np.concatenate([np.zeros(d), w2[j]])
        a_ub, b_ub, bounds = [], [], [(xl[p], xu[p]) for p in range(d)]
        for i in range(h):
            row = np.zeros(d + h)
            if up[i] <= 0:
                bounds.append((0, 0))
            elif lo[i] >= 0:  # a = z
                bounds.append((None, None))
                row[:d], row[d + i] = -w1[i], 1
                a_ub += [row, -row]
                b_ub += [b1[i], -b1[i]]
            else:  # a >= 0, a >= z, a <= u (z - l) / (u - l)
                bounds.append((0, None))
                s = up[i] / (up[i] - lo[i])
                r1 = np.zeros(d + h)
                r1[:d], r1[d + i] = w1[i], -1
                r2 = np.zeros(d + h)
                r2[:d], r2[d + i] = -s * w1[i], 1
                a_ub += [r1, r2]
                b_ub += [-b1[i], s * (b1[i] - lo[i])]
        lp = linprog(c, A_ub=np.array(a_ub), b_ub=np.array(b_ub), bounds=bounds, method="highs")
        assert lp.status == 0
        lp_low = lp.fun + b2[j]
        assert b.logits_lower[0, j].item() <= lp_low + 1e-7
        gaps.append(lp_low - b.logits_lower[0, j].item())
    pts = points_in_ball(x0, eps, "linf", 500)
    with torch.no_grad():
        z = model(pts.reshape(-1, 5)).min(dim=0).values
    assert (z.numpy() >= np.array(gaps) * 0 + b.logits_lower[0].numpy() - 1e-9).all()


@pytest.mark.parametrize("make, shape", [(random_mlp, (12,)), (random_cnn, (1, 8, 8))])
@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("linf", 0.3), ("l2", 0.5)])
@pytest.mark.parametrize("params", [{}, {"intersect_ibp": False}, {"relaxation": "fastlin"},
                                    {"rebound": "unstable"}])
def test_bounds_contain_random_and_pgd_points(make, shape, norm, eps, params):
    model = make(seed=1)
    x0 = torch.rand((3, *shape), generator=torch.Generator().manual_seed(0))
    y = model.predict(x0)
    b = CROWN(**params).bounds(model, x0, eps, y=y, norm=norm)
    pts = torch.cat([points_in_ball(x0, eps, norm, 200), extreme_points(model, x0, eps, norm, 15)])
    assert_contains(b, model, pts, y)


def test_tighter_than_ibp_on_random_nets():
    gaps = {}
    for make, shape in [(random_mlp, (12,)), (random_cnn, (1, 8, 8))]:
        for seed in range(3):
            model = make(seed=seed)
            x0 = torch.rand((4, *shape), generator=torch.Generator().manual_seed(seed))
            for eps in (0.02, 0.1):
                i = IBP().bounds(model, x0, eps)
                c = CROWN().bounds(model, x0, eps)
                p = CROWN(intersect_ibp=False).bounds(model, x0, eps)
                # the default (intersected) is never looser than IBP, anywhere
                assert (c.margin_lower >= i.margin_lower - 1e-5).all()
                assert (c.margin_upper <= i.margin_upper + 1e-5).all()
                assert (c.logits_lower >= i.logits_lower - 1e-5).all()
                assert (c.logits_upper <= i.logits_upper + 1e-5).all()
                # and never looser than pure CROWN either
                assert (c.margin_lower >= p.margin_lower - 1e-5).all()
                for name, b in (("ibp", i), ("crown", c), ("pure", p)):
                    gaps.setdefault(name, []).append((b.margin_upper - b.margin_lower).mean())
    ibp, crown, pure = (torch.stack(gaps[k]).mean() for k in ("ibp", "crown", "pure"))
    # strictly tighter on average, pure CROWN included
    assert crown < 0.8 * ibp and pure < 0.8 * ibp


def test_digits_cnn_contains_and_is_tighter(digits_model, digits_test):
    x, y = digits_test.x[:3], digits_test.y[:3]
    c = CROWN().bounds(digits_model, x, 0.01, y=y)
    i = IBP().bounds(digits_model, x, 0.01, y=y)
    pts = torch.cat([points_in_ball(x, 0.01, "linf", 100),
                     extreme_points(digits_model, x, 0.01, "linf", steps=10)])
    assert_contains(c, digits_model, pts, y)
    off = ~torch.nn.functional.one_hot(y, 10).bool()
    gap_c = (c.margin_upper - c.margin_lower)[off].mean()
    gap_i = (i.margin_upper - i.margin_lower)[off].mean()
    assert gap_c < 0.2 * gap_i  # about 2 vs 35 at linf 0.01 (see docs)
    assert c.certified().all() and not i.certified().any()


def test_rebound_unstable_keeps_the_interval_bounds_before_max_pooling(digits_model, digits_test):
    # without max pooling only unstable neurons are re-bounded in either mode: the same bounds
    mlp = random_mlp(seed=2)
    x0 = torch.rand((4, 12), generator=torch.Generator().manual_seed(0))
    a, b = CROWN().bounds(mlp, x0, 0.1), CROWN(rebound="unstable").bounds(mlp, x0, 0.1)
    assert torch.equal(a.margin_lower, b.margin_lower) and torch.equal(a.logits_upper, b.logits_upper)
    # the digits CNN max-pools after its second ReLU: the active neurons there keep their
    # interval bounds, so the result is sound, never looser than IBP, and looser than "live"
    x, y = digits_test.x[:3], digits_test.y[:3]
    live = CROWN().bounds(digits_model, x, 0.01, y=y)
    unst = CROWN(rebound="unstable").bounds(digits_model, x, 0.01, y=y)
    ibp = IBP().bounds(digits_model, x, 0.01, y=y)
    pts = torch.cat([points_in_ball(x, 0.01, "linf", 100),
                     extreme_points(digits_model, x, 0.01, "linf", steps=10)])
    assert_contains(unst, digits_model, pts, y)
    assert (unst.margin_lower >= ibp.margin_lower - 1e-5).all()
    assert (unst.margin_lower <= live.margin_lower + 1e-4).all()
    assert (live.margin_lower - unst.margin_lower).max() > 0.5  # measured 1.31
    with pytest.raises(InputError, match="intersect_ibp"):
        CROWN(rebound="unstable", intersect_ibp=False)


def test_certified_accuracy_never_above_attack(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    accs = {}
    for eps in (0.005, 0.03):
        threat = ThreatModel("linf", eps)
        cert = CROWN().certify(digits_model, x, y, threat)
        adv = APGD(steps=20)(digits_model, x, y, threat=threat)
        accs[eps] = cert.certified_accuracy()
        assert not (cert.certified & ~adv.adv_correct).any()
        assert accs[eps] <= adv.robust_accuracy()
    # CROWN certifies the digits CNN at tiny eps (IBP certifies nothing at 0.01), less at 0.03
    assert accs[0.005] >= 0.8 and accs[0.03] < accs[0.005]


def test_certified_accuracy_api(digits_mlp, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    accs = CROWN().certified_accuracy(digits_mlp, x, y, [0.0, 0.01, 0.05])
    clean = (digits_mlp.predict(x) == y).float().mean().item()
    assert accs[0.0] == pytest.approx(clean)
    assert accs[0.0] >= accs[0.01] >= accs[0.05]
    res = CROWN().certify(digits_mlp, x, y, ThreatModel("linf", 0.01))
    assert res.certified_accuracy() == accs[0.01]
    assert res.certified_accuracy(0.005) == accs[0.01]  # certified at 0.01 => at 0.005
    with pytest.raises(InputError, match="above"):
        res.certified_accuracy(0.02)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certified_radius_below_fmn_minimal_eps(digits_mlp, digits_test, norm):
    x, y = digits_test.x[:24], digits_test.y[:24]
    crown = CROWN(radius_steps=10)
    res = crown.certified_radius(digits_mlp, x, y, norm=norm)
    adv = FMN(steps=100)(digits_mlp, x, y, threat=ThreatModel(norm, float("inf")))
    found = adv.success & adv.clean_correct
    assert found.sum() >= 0.75 * adv.clean_correct.sum()
    assert (res.radius[found] <= adv.norms[found] * (1 + 1e-6)).all()
    assert (res.radius[~adv.clean_correct] == 0).all()
    assert (res.radius[found] > 0).float().mean() > 0.8
    # a certified radius is certified; CROWN's radii are at least IBP's
    ok = res.radius > 0
    assert crown.bounds(digits_mlp, x[ok], res.radius[ok], y=y[ok], norm=norm).certified().all()
    ibp = IBP(radius_steps=10).certified_radius(digits_mlp, x, y, norm=norm)
    assert (res.radius >= ibp.radius - res.meta["resolution"]).all()
    assert res.radius.mean() > 1.5 * ibp.radius.mean()


def test_reads_a_custom_module_like_the_zoo_cnn():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(2)
            self.head = nn.Linear(12, 2)

        def forward(self, x):
            return self.head(torch.flatten(torch.relu(self.pool(self.features(x))), 1))

    model = TorchModel(Net().eval())
    x = torch.rand(2, 1, 6, 6)
    b = CROWN().bounds(model, x, 0.05)
    assert_contains(b, model, points_in_ball(x, 0.05, "linf", 100), b.y)


def test_bad_input():
    x = torch.rand(2, 12)
    model = random_mlp()
    with pytest.raises(InputError, match="eps"):
        CROWN().bounds(model, x, -0.01)
    with pytest.raises(InputError, match="relaxation"):
        CROWN(relaxation="alpha")
    with pytest.raises(InputError, match="intersect_ibp"):
        CROWN(intersect_ibp="yes")
    sig = TorchModel(nn.Sequential(nn.Linear(12, 4), nn.Sigmoid(), nn.Linear(4, 2)))
    with pytest.raises(InputError, match=r"'1' \(Sigmoid\)"):
        CROWN().bounds(sig, x, 0.1)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(12, 12)
            self.b = nn.Linear(12, 2)

        def forward(self, x):
            return self.b(x + torch.relu(self.a(x)))

    with pytest.raises(InputError, match="residual"):
        CROWN().bounds(TorchModel(Residual()), x, 0.1)
    odd = TorchModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                   nn.Linear(32, 2)))
    with pytest.raises(InputError, match="integer ratio"):
        CROWN().bounds(odd, torch.rand(1, 1, 7, 7), 0.1)
