"""Decision-based attacks (boundary, HopSkipJump, OPT, Sign-OPT): labels only, distance
shrinks with queries, success, budget honoured, early stop inside a finite eps."""

import pytest
import torch

from scrutiny.attacks.blackbox import OPT, BoundaryAttack, HopSkipJump, SignOPT
from scrutiny.attacks.blackbox.decision import LabelOracle, g_local
from scrutiny.errors import InputError
from scrutiny.models import QueryModel
from scrutiny.types import ThreatModel

INF = float("inf")
N = 6

# cheap settings; the budget, not the steps, ends each run of the schedule test
ATTACKS = {
    "boundary": (lambda: BoundaryAttack(steps=10_000), "l2", 100),
    "hsja-l2": (lambda: HopSkipJump(steps=100, init_evals=20), "l2", 100),
    "hsja-linf": (lambda: HopSkipJump(steps=100, init_evals=20), "linf", 100),
    "opt": (lambda: OPT(steps=100, init_directions=10), "l2", 300),
    "sign_opt": (lambda: SignOPT(steps=100, n_samples=50, init_directions=10), "l2", 300),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Thousands of tiny label queries: one thread avoids the intra-op sync overhead."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _label_only(model, budget=None):
    """A black box that can only answer labels: a callable, no torch model behind the door."""
    return QueryModel(lambda x: model.predict(x), output="label", budget=budget, num_classes=10)


@pytest.fixture(scope="module")
def mlp(digits_test):
    """A small digits MLP (cheap queries), trained for a few seeded epochs (~89% accuracy)."""
    from tests.fixture_models import fixture_model

    model = fixture_model("decision-mlp")
    assert (model.predict(digits_test.x) == digits_test.y).float().mean() > 0.8
    return model


def _correct(model, data, n=N):
    x, y = data.x[:40], data.y[:40]
    ok = model.predict(x) == y
    return x[ok][:n], y[ok][:n]


@pytest.fixture(scope="module")
def problem(mlp, digits_test):
    return _correct(mlp, digits_test)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_distance_shrinks_with_queries_using_labels_only(mlp, problem, name):
    make, norm, per_sample = ATTACKS[name]
    x, y = problem
    norms = []
    for budget in (per_sample * N, 3 * per_sample * N, 10 * per_sample * N):
        qm = _label_only(mlp, budget)
        res = make()(qm, x, y, threat=ThreatModel(norm, INF))
        assert qm.queries <= budget  # budget honoured ...
        assert int(res.queries.sum()) == qm.queries  # ... and every query charged to a sample
        assert res.success.all()  # every run ends at an adversarial point
        norms.append(res.norms)
    # same seed: a larger budget continues the same run, so no sample gets farther
    for a, b in zip(norms, norms[1:], strict=False):
        assert (b <= a * (1 + 1e-6)).all()
    assert norms[-1].median() < 0.75 * norms[0].median()


def test_hsja_reaches_small_perturbations(digits_model, digits_test):
    """On the 8x8 digits CNN, HopSkipJump (l2) gets within ~1.5x of a white-box PGD's radius."""
    from scrutiny.attacks import PGD

    x, y = _correct(digits_model, digits_test)
    res = HopSkipJump(steps=25, init_evals=50)(_label_only(digits_model), x, y,
                                               threat=ThreatModel("l2", INF))
    assert res.success.all()
    eps = float(res.norms.median())
    pgd = PGD(steps=40)(digits_model, x, y, threat=ThreatModel("l2", eps / 1.5))
    # a white-box attack at two thirds of the radius still fails on some samples
    assert pgd.success_rate() < 1.0


@pytest.mark.parametrize("cls", [BoundaryAttack, HopSkipJump])
def test_finite_eps_stops_early(mlp, problem, cls):
    x, y = problem
    free = cls(steps=30)(_label_only(mlp), x, y, threat=ThreatModel("l2", INF))
    eps = float(free.norms.max()) * 1.5
    qm = _label_only(mlp)
    res = cls(steps=30)(qm, x, y, threat=ThreatModel("l2", eps))
    assert res.success.all() and (res.norms <= eps).all()
    assert qm.queries < 0.5 * int(free.queries.sum())


@pytest.mark.parametrize("cls", [BoundaryAttack, HopSkipJump, SignOPT])
def test_targeted_reaches_the_target(mlp, problem, digits_test, cls):
    x, y = problem
    t = (y + 1) % 10
    # starting points of the target class: test images the model puts in that class
    pool = digits_test.x[100:400]
    pred = mlp.predict(pool)
    start = torch.stack([pool[(pred == c).nonzero()[0, 0]] for c in t.tolist()])
    kw = {"n_samples": 30, "init_directions": 5} if cls is SignOPT else {}
    res = cls(steps=20, **kw)(_label_only(mlp), x, y, target=t, threat=ThreatModel("l2", INF),
                              starting_points=start)
    assert res.success.all()
    assert (res.norms < (start - x).flatten(1).norm(dim=1)).all()


def test_budget_too_small_returns_clean_points(mlp, problem):
    x, y = problem
    qm = _label_only(mlp, budget=3)
    res = HopSkipJump()(qm, x, y, threat=ThreatModel("l2", INF))
    assert qm.queries == 0 and res.meta["stopped_by_budget"]  # N > 3: not even one query fits
    assert not res.success.any() and torch.equal(res.x_adv, x)
    assert res.budget_exhausted.all() and res.to_dict()["budget_exhausted"] == len(x)


def test_g_local_finds_the_boundary_of_a_linear_rule():
    """OPT's g(theta) on f = 1[x_0 > 0.5]: along e_0 from x_0 = 0.2 the boundary is at 0.3."""
    y = torch.zeros(3, dtype=torch.long)

    def labels(xq, rows):
        return (xq[:, 0] > 0.5).long()

    oracle = LabelOracle(labels, y)
    x0 = torch.full((3, 4), 0.2)
    theta = torch.zeros(3, 4)
    theta[:, 0] = 1.0
    theta[2] = torch.tensor([-1.0, 0, 0, 0])  # away from the boundary: none within reach
    g = g_local(oracle, x0, theta, torch.arange(3), torch.tensor([0.25, 0.45, 0.3]),
                torch.full((3,), 1e-6), (0.0, 1.0), lam_max=2.0)
    assert torch.allclose(g[:2], torch.full((2,), 0.3), atol=1e-5)
    assert g[2] == INF


def test_bad_input(mlp, problem):
    x, y = problem
    with pytest.raises(InputError, match="step_adaptation"):
        BoundaryAttack(step_adaptation=1.0)
    with pytest.raises(InputError, match="init_evals"):
        HopSkipJump(init_evals=0)
    with pytest.raises(InputError, match="supports norms"):
        OPT()(_label_only(mlp), x, y, threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="starting_points"):
        HopSkipJump(steps=1)(_label_only(mlp), x, y, threat=ThreatModel("l2", INF),
                             starting_points=x[:2])
