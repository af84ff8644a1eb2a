"""BIM (Kurakin et al. 2016): the paper's schedule, inside the ball, stronger than FGSM."""

import pytest
import torch

from scrutiny.attacks import BIM, FGSM, PGD
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


@pytest.mark.parametrize("eps", [0.1, 0.15])
def test_lower_robust_accuracy_than_fgsm(digits_model, digits_test, eps):
    x, y = digits_test.x[:200], digits_test.y[:200]
    tm = ThreatModel("linf", eps)
    bim = BIM()(digits_model, x, y, threat=tm)
    fgsm = FGSM()(digits_model, x, y, threat=tm)
    assert bim.clean_accuracy() > 0.9
    assert bim.robust_accuracy() < fgsm.robust_accuracy() - 0.02
    assert tm.contains(x, bim.x_adv).all()


def test_paper_schedule():
    tm = ThreatModel("linf", 8 / 255, (0, 1))  # resolved, as the call preamble hands it on
    steps, alpha = BIM()._schedule(tm)
    assert steps == 10 and alpha == pytest.approx(1 / 255)  # min(8 + 4, 1.25 * 8)
    steps, _ = BIM()._schedule(tm.with_eps(32 / 255))
    assert steps == 36  # min(32 + 4, 40)
    # eps and alpha are relative to the input range
    steps, alpha = BIM()._schedule(ThreatModel("linf", 16 / 255 * 2, bounds=(-1, 1)))
    assert steps == 20 and alpha == pytest.approx(2 / 255)
    assert BIM(steps=7, step_size=0.01)._schedule(tm) == (7, 0.01)


def test_is_pgd_without_random_start(digits_model, digits_test):
    x, y = digits_test.x[:50], digits_test.y[:50]
    tm = ThreatModel("linf", 0.05)
    bim = BIM(steps=10, step_size=0.01)(digits_model, x, y, threat=tm)
    pgd = PGD(steps=10, rel_step_size=0.2, random_start=False)(digits_model, x, y, threat=tm)
    assert torch.allclose(bim.x_adv, pgd.x_adv)
    # deterministic: the seed does not matter
    again = BIM(steps=10, step_size=0.01)(digits_model, x, y, threat=tm, seed=5)
    assert torch.equal(bim.x_adv, again.x_adv)


def test_bad_parameters():
    with pytest.raises(InputError, match="step_size"):
        BIM(step_size=0.0)
    with pytest.raises(InputError, match="supports norms"):
        BIM()(torch.nn.Flatten(), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
              threat=ThreatModel("l2", 0.1))
