"""L-BFGS attack (Szegedy et al. ICLR 2014): minimal c by line search, box respected."""

import pytest
import torch

from scrutiny.attacks import LBFGS
from scrutiny.attacks.whitebox.lbfgs import lbfgs_minimize
from scrutiny.errors import InputError
from scrutiny.models import TorchModel
from scrutiny.types import ThreatModel

INF = float("inf")
SMALL = {"search_steps": 8, "steps": 60}


def _fooled(model, xa, label, targeted):
    pred = model.predict(xa)
    return pred == label if targeted else pred != label


@pytest.mark.parametrize("targeted", [True, False])
def test_search_finds_the_minimal_const(digits_model, digits_test, targeted):
    x, y = digits_test.x[:16], digits_test.y[:16]
    t = (y + 1) % 10 if targeted else None
    res = LBFGS(**SMALL)(digits_model, x, y, threat=ThreatModel("l2", INF), target=t)
    assert res.success_rate() == 1.0
    c, c_fail = res.meta["const"], res.meta["const_failed"]
    both = ~torch.isnan(c_fail)
    assert both.float().mean() >= 0.9
    assert (c[both] > c_fail[both]).all() and (c[both] <= 2 * c_fail[both] + 1e-12).all()
    # independently: the minimiser succeeds at c and fails at half of it, for most samples
    label = t if targeted else y
    with digits_model.evaluating():
        at_c = lbfgs_minimize(digits_model, x, label, c.float(), targeted=targeted,
                              bounds=(0.0, 1.0), steps=SMALL["steps"])
        at_half = lbfgs_minimize(digits_model, x, label, c.float() / 2, targeted=targeted,
                                 bounds=(0.0, 1.0), steps=SMALL["steps"])
    assert _fooled(digits_model, at_c, label, targeted).float().mean() >= 0.8
    assert (~_fooled(digits_model, at_half, label, targeted)).float().mean() >= 0.8


def test_box_and_mask_respected_by_the_minimiser(digits_model, digits_test):
    lo, hi = 0.2, 0.9
    model = TorchModel(digits_model.module, bounds=(lo, hi))
    x = digits_test.x[:8] * (hi - lo) + lo
    y = digits_test.y[:8]
    mask = torch.ones(1, 8, 8)
    mask[..., :3] = 0
    with model.evaluating():
        xa = lbfgs_minimize(model, x, (y + 1) % 10, torch.full((8,), 10.0), targeted=True,
                            bounds=(lo, hi), mask=mask, steps=30)
    assert ((xa >= lo) & (xa <= hi)).all()
    assert torch.equal(xa[..., :3], x[..., :3])
    assert ((xa - x).abs().amax(dim=(1, 2, 3)) > 0.05).all()  # it did move (bounds active)
    assert ((xa == lo) | (xa == hi)).any()
    res = LBFGS(**SMALL)(model, x, y,
                                             threat=ThreatModel("l2", INF, (lo, hi), mask=mask))
    assert res.success_rate() >= 0.75
    assert torch.equal(res.x_adv[..., :3], x[..., :3])


def test_bad_parameters():
    with pytest.raises(InputError, match="search_steps"):
        LBFGS(search_steps=0)
    with pytest.raises(InputError, match="initial_const"):
        LBFGS(initial_const=0.0)
