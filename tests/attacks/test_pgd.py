"""PGD (Madry et al.): inside the ball, stronger than FGSM, targeted, all three norms."""

import pytest
import torch

from scrutiny.attacks import FGSM, PGD
from scrutiny.errors import InputError, NotDifferentiableError
from scrutiny.models import QueryModel
from scrutiny.types import ThreatModel


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_beats_fgsm_on_a_trained_model(digits_model, digits_test, norm, eps):
    x, y = digits_test.x[:300], digits_test.y[:300]
    tm = ThreatModel(norm, eps)
    pgd = PGD(steps=20)(digits_model, x, y, threat=tm)
    fgsm = FGSM()(digits_model, x, y, threat=tm)
    assert pgd.clean_accuracy() > 0.9
    assert pgd.robust_accuracy() < fgsm.robust_accuracy() - 0.03
    assert tm.contains(x, pgd.x_adv).all()


def test_l1_pgd_stays_in_the_l1_ball_and_strengthens_with_eps(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    accs = []
    for eps in (0.5, 1.0, 2.0):
        res = PGD(steps=20)(digits_model, x, y, threat=ThreatModel("l1", eps))
        assert (res.norms <= eps * (1 + 1e-5)).all()
        accs.append(res.robust_accuracy())
    assert accs[0] > accs[1] > accs[2]


def test_targeted_reaches_the_target(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    t = (y + 1) % 10
    res = PGD(steps=50, loss="margin")(digits_model, x, y, threat=ThreatModel("linf", 0.5),
                                       target=t)
    assert res.success_rate() > 0.95
    # the slides' loss-difference form (CE) also reaches the target, less often
    ce = PGD(steps=50)(digits_model, x, y, threat=ThreatModel("linf", 0.5), target=t)
    assert 0.4 < ce.success_rate() <= res.success_rate()


def test_restarts_never_hurt_and_seed_matters(digits_model, digits_test):
    x, y = digits_test.x[:200], digits_test.y[:200]
    tm = ThreatModel("linf", 0.08)
    one = PGD(steps=10)(digits_model, x, y, threat=tm, seed=0)
    three = PGD(steps=10, restarts=3)(digits_model, x, y, threat=tm, seed=0)
    # restart 1 is the same run, later restarts attack only survivors
    assert (three.adv_correct <= one.adv_correct).all()
    other = PGD(steps=10)(digits_model, x, y, threat=tm, seed=1)
    assert not torch.equal(one.x_adv, other.x_adv)


def test_early_stop_off_keeps_optimising(digits_model, digits_test):
    x, y = digits_test.x[:100], digits_test.y[:100]
    tm = ThreatModel("linf", 0.2)
    res = PGD(steps=20, early_stop=False)(digits_model, x, y, threat=tm)
    assert res.robust_accuracy() <= PGD(steps=20)(digits_model, x, y, threat=tm).robust_accuracy() + 0.02


def test_clear_errors(digits_model, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    with pytest.raises(InputError, match="outside the model's bounds"):
        PGD()(digits_model, x + 2, y, threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="shape"):
        PGD()(digits_model, x, y[:2], threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="supports norms"):
        FGSM()(digits_model, x, y, threat=ThreatModel("l1", 0.1))
    with pytest.raises(NotDifferentiableError, match="black-box"):
        PGD()(QueryModel(digits_model), x, y, threat=ThreatModel("linf", 0.1))


def test_a_model_without_gradients_is_refused(digits_test):
    class Argmaxed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x.flatten(1)[:, :10].argmax(1), 10).float()

    with pytest.raises(NotDifferentiableError, match="differentiabl"):
        PGD()(Argmaxed(), digits_test.x[:4], digits_test.y[:4], threat=ThreatModel("linf", 0.1))


def test_without_early_stop_pgd_returns_the_last_iterate(digits_model, digits_test):
    """Madry's PGD: from the same (deterministic) start, x_adv is the K-th iterate."""
    x, y = digits_test.x[:50], digits_test.y[:50]
    tm = ThreatModel("linf", 0.1)
    res = PGD(steps=5, random_start=False, early_stop=False)(digits_model, x, y, threat=tm)
    xa = x.clone()
    alpha = 0.1 * 2.5 / 5
    with digits_model.evaluating():
        for _ in range(5):
            xa.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(digits_model(xa), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xa)
            xa = tm.project(x, xa.detach() + alpha * g.sign())
    assert torch.allclose(res.x_adv, xa, atol=1e-6)
