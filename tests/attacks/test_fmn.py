"""FMN (Pintor et al. 2021): always succeeds unbounded; one run gives the robustness curve."""

import pytest
import torch

from scrutiny.attacks import FMN, PGD
from scrutiny.types import ThreatModel

INF = float("inf")


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_unbounded_fmn_always_succeeds(digits_model, digits_test, norm):
    x, y = digits_test.x[:150], digits_test.y[:150]
    res = FMN(steps=50)(digits_model, x, y, threat=ThreatModel(norm, INF))
    assert res.success_rate() >= 0.99
    assert torch.equal(res.success, digits_model.predict(res.x_adv) != y)
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()


def test_one_run_gives_the_pgd_robustness_curve(digits_model, digits_test):
    x, y = digits_test.x[:250], digits_test.y[:250]
    curve = FMN()(digits_model, x, y, threat=ThreatModel("l2", INF))
    for eps in (0.25, 0.5, 0.75):
        pgd = PGD(steps=40)(digits_model, x, y, threat=ThreatModel("l2", eps)).robust_accuracy()
        fmn = curve.robust_accuracy_at(eps)
        # FMN converges to a local minimum norm: a few points above PGD at most
        assert abs(fmn - pgd) <= 0.05, (eps, fmn, pgd)


def test_smaller_l2_norms_than_pgd_needs(digits_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    res = FMN()(digits_model, x, y, threat=ThreatModel("l2", INF))
    # per sample, the smallest eps of a grid at which PGD-l2 succeeds
    grid = [0.1 * k for k in range(1, 13)]
    needed = torch.full((len(x),), INF)
    for eps in reversed(grid):
        pgd = PGD(steps=20)(digits_model, x, y, threat=ThreatModel("l2", eps))
        needed = torch.where(pgd.success, torch.tensor(eps), needed)
    both = res.success & torch.isfinite(needed) & res.clean_correct
    assert both.float().mean() > 0.9
    assert res.norms[both].median() < needed[both].median()
    assert (res.norms[both] <= needed[both] + 1e-6).float().mean() > 0.7


def test_finite_eps_means_success_within_eps(digits_model, digits_test):
    x, y = digits_test.x[:150], digits_test.y[:150]
    curve = FMN(steps=50)(digits_model, x, y, threat=ThreatModel("l2", INF))
    within = FMN(steps=50)(digits_model, x, y, threat=ThreatModel("l2", 0.5))
    assert (within.norms <= 0.5 + 1e-5).all()
    # the same optimisation: every success of norm <= 0.5 is kept, larger ones are projected
    assert within.robust_accuracy() <= curve.robust_accuracy_at(0.5)
    assert within.robust_accuracy() >= curve.robust_accuracy_at(0.5) - 0.05


def test_targeted_reaches_the_target(digits_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    t = (y + 3) % 10
    res = FMN(steps=50)(digits_model, x, y, threat=ThreatModel("l2", INF), target=t)
    assert res.success_rate() >= 0.95
    untargeted = FMN(steps=50)(digits_model, x, y, threat=ThreatModel("l2", INF))
    # reaching a given class costs more than leaving the true one
    assert res.norms.median() > untargeted.norms.median()
