"""Carlini-Wagner L2 (S&P 2017): smaller perturbations than PGD-L2 at 100% success."""

import pytest
import torch

from scrutiny.attacks import PGD, CarliniWagnerL2
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel

INF = float("inf")
# Few iterations, so a larger Adam step than the paper's 0.01: pixels on a bound sit at
# atanh(+-0.999999) in tanh space and need many small steps to move.
SMALL = {"search_steps": 5, "steps": 80, "initial_const": 0.1,
         "lr": 0.1}
TINY = {"search_steps": 3, "steps": 50, "initial_const": 0.1,
        "lr": 0.1}


def _pgd_min_eps(model, x, y, grid):
    """Per sample, the smallest eps of ``grid`` at which PGD-L2 (50 steps) succeeds."""
    best = torch.full((len(x),), INF)
    for eps in grid:
        live = (best == INF).nonzero()[:, 0]
        if not len(live):
            break
        res = PGD(steps=50, random_start=False)(model, x[live], y[live],
                                                threat=ThreatModel("l2", float(eps)))
        best[live[res.success]] = float(eps)
    return best


def test_smaller_median_l2_than_pgd_at_full_success(digits_model, digits_test):
    x, y = digits_test.x[:32], digits_test.y[:32]
    keep = digits_model.predict(x) == y
    x, y = x[keep], y[keep]
    cw = CarliniWagnerL2(**SMALL)(digits_model, x, y, threat=ThreatModel("l2", INF))
    assert cw.success.all()
    pgd = _pgd_min_eps(digits_model, x, y, torch.arange(1, 25) * 0.05)
    assert (pgd < INF).all()
    # per sample C&W needs less than the smallest grid eps at which PGD succeeds
    assert (cw.norms - pgd).median() < 0
    assert (cw.norms < pgd).float().mean() >= 0.75
    # Not asserted: the marginal median. PGD's grid overestimates its minimum by up to 0.05 and
    # C&W's tanh variables barely move pixels saturated at 0 (most of a digit), so on the full
    # test split C&W's median L2 (0.461) is not below PGD's grid median (0.450): a documented
    # shortfall against the paper's MNIST figures (see the CarliniWagnerL2 docstring).


def test_targeted_reaches_every_target_and_keeps_the_box(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    t = (y + 3) % 10
    res = CarliniWagnerL2(**SMALL)(
        digits_model, x, y, threat=ThreatModel("l2", INF), target=t)
    assert res.success.all()
    assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    assert torch.isfinite(res.meta["const"]).all()


def test_confidence_buys_a_margin_at_a_larger_norm(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    tm = ThreatModel("l2", INF)
    plain = CarliniWagnerL2(**TINY)(digits_model, x, y, threat=tm)
    sure = CarliniWagnerL2(**TINY, confidence=5.0)(digits_model, x, y, threat=tm)
    ok = plain.success & sure.success
    z = sure.logits[ok]
    zy = z.gather(1, y[ok][:, None])[:, 0]
    other = z.scatter(1, y[ok][:, None], -INF).amax(1)
    assert (other - zy >= 5.0 - 1e-3).all()
    assert sure.norms[ok].median() > plain.norms[ok].median()


def test_finite_eps_projects_and_mask_is_respected(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1
    tm = ThreatModel("l2", 0.5, mask=mask)
    res = CarliniWagnerL2(search_steps=2, steps=20)(digits_model, x, y, threat=tm)
    assert tm.contains(x, res.x_adv).all()
    assert torch.equal(res.x_adv[..., 4:], x[..., 4:])


def test_bad_parameters():
    with pytest.raises(InputError, match="search_steps"):
        CarliniWagnerL2(search_steps=0)
    with pytest.raises(InputError, match="confidence"):
        CarliniWagnerL2(confidence=-1.0)
