"""beta-CROWN branch and bound (Wang et al. 2021): complete on a tiny MLP, against an exact MILP."""

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds as LPBounds
from scipy.optimize import LinearConstraint, milp

from scrutiny import registry
from scrutiny.certify import CROWN, AlphaCROWN, BaBResult, BetaCROWN
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel
from tests.certify.helpers import random_cnn, random_mlp


def milp_robust(model, x0: torch.Tensor, y: int, eps: float) -> bool:
    """Exact linf robustness of a Linear-ReLU chain at ``x0`` by a big-M MILP per margin
    (scipy's HiGHS): ``min z_y - z_j`` over the box, a binary per unstable ReLU, the interval
    bounds as M."""
    layers = [m for m in model.module if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().double().numpy() for m in layers]
    bs = [m.bias.detach().double().numpy() for m in layers]
    lo = np.clip(x0.double().numpy() - eps, 0, 1)
    hi = np.clip(x0.double().numpy() + eps, 0, 1)
    # variables: x, then per hidden layer (pre-activation z, post a, binary d)
    n_in = len(lo)
    sizes = [w.shape[0] for w in ws[:-1]]
    nv = n_in + 3 * sum(sizes)
    vlo, vhi, integ = list(lo), list(hi), [0] * n_in
    rows, rlo, rhi = [], [], []
    prev, plo, phi, off = list(range(n_in)), lo, hi, n_in
    for w, b, h in zip(ws[:-1], bs[:-1], sizes, strict=True):
        wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
        zl, zu = wp @ plo + wn @ phi + b, wp @ phi + wn @ plo + b
        z, a, d = off, off + h, off + 2 * h
        vlo += list(zl) + [0.0] * h + [0.0] * h
        vhi += list(zu) + list(np.clip(zu, 0, None)) + [1.0] * h
        integ += [0] * (2 * h) + [1] * h
        for i in range(h):
            r = np.zeros(nv)
            r[z + i] = 1
            r[prev] -= w[i]
            rows.append(r), rlo.append(b[i]), rhi.append(b[i])  # z = W a_prev + b
            r = np.zeros(nv)
            r[a + i], r[z + i] = 1, -1
            rows.append(r), rlo.append(0), rhi.append(np.inf)  # a >= z
            r = np.zeros(nv)
            r[a + i], r[z + i], r[d + i] = 1, -1, -zl[i]
            rows.append(r), rlo.append(-np.inf), rhi.append(-zl[i])  # a <= z - l (1 - d)
            r = np.zeros(nv)
            r[a + i], r[d + i] = 1, -max(zu[i], 0)
            rows.append(r), rlo.append(-np.inf), rhi.append(0)  # a <= u d
        prev, plo, phi, off = list(range(a, a + h)), np.clip(zl, 0, None), np.clip(zu, 0, None), \
            off + 3 * h
    cons = LinearConstraint(np.array(rows), rlo, rhi)
    for j in range(ws[-1].shape[0]):
        if j == y:
            continue
        c = np.zeros(nv)
        c[prev] = ws[-1][y] - ws[-1][j]
        res = milp(c, constraints=cons, integrality=np.array(integ),
                   bounds=LPBounds(vlo, vhi))
        assert res.status == 0, res.message
        if res.fun + bs[-1][y] - bs[-1][j] <= 0:
            return False
    return True


@pytest.fixture(scope="module")
def tiny():
    model = random_mlp(seed=6, d=4, hidden=(8, 8), k=3)  # predicts 2, 0, 2, 2, 0, 2
    x = torch.rand((6, 4), generator=torch.Generator().manual_seed(1))
    return model, x, model.predict(x)


def test_agrees_with_the_exact_milp_on_every_sample(tiny):
    model, x, y = tiny
    cert = BetaCROWN(iterations=20, max_domains=200, time_budget=30.0)
    seen, branched = set(), 0
    for eps in EPS:
        res = cert.certify(model, x, y, ThreatModel("linf", eps))
        assert isinstance(res, BaBResult)
        exact = [milp_robust(model, x[i], int(y[i]), eps) for i in range(len(x))]
        assert list(res.status) == ["certified" if e else "falsified" for e in exact], eps
        seen |= set(res.status)
        fals = res.falsified_mask()
        cex = res.counterexample[fals]
        assert ((cex - x[fals]).abs().amax(dim=1) <= eps + 1e-6).all()  # inside the ball
        assert (model.predict(cex) != y[fals]).all()  # and misclassified
        assert torch.equal(res.certified, torch.tensor(exact))
        branched += int(res.domains.sum())
    assert seen == {"certified", "falsified"}
    assert branched > 0  # at 0.25 CROWN misses sample 0, which the MILP finds robust


#: MILP: robust samples 5, 3 and 1 of 6; CROWN certifies all at 0.05 and 0.1, none at 0.25
EPS = (0.05, 0.1, 0.25)


def test_never_below_alpha_crown_and_sound_against_pgd(tiny):
    model, x, y = tiny
    threat = ThreatModel("linf", 0.25)
    res = BetaCROWN(iterations=10, max_domains=100).certify(model, x, y, threat)
    crown = CROWN().certify(model, x, y, threat)
    assert (res.certified >= crown.certified).all()
    assert res.certified.sum() > crown.certified.sum()
    b = BetaCROWN(iterations=5).bounds(model, x, 0.25, y=y)  # alpha-CROWN's bounds
    a = AlphaCROWN(iterations=5).bounds(model, x, 0.25, y=y)
    assert torch.allclose(b.margin_lower, a.margin_lower)


def test_registered_refuses_max_pooling_and_bad_parameters():
    cert = registry.create("beta_crown", kind="certifier", max_domains=10, time_budget=1.0)
    assert isinstance(cert, BetaCROWN) and cert.tags.norms == ("linf", "l2")
    model = random_cnn(seed=0)
    x = torch.rand((1, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="max pooling"):
        cert.certify(model, x, model.predict(x), ThreatModel("linf", 0.01))
    for bad in ({"max_domains": 0}, {"time_budget": 0}, {"lr_beta": -1}):
        with pytest.raises(InputError, match=next(iter(bad))):
            BetaCROWN(**bad)
