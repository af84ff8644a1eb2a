"""Robust accuracy follows AutoAttack's convention: a clean error is never robust.

A sample counts as robust only if it is classified correctly clean *and* the
attack fails on it; a perturbation that happens to fix a clean error must not
raise the robust accuracy above the clean accuracy.
"""

import torch
from torch import nn

from scrutiny.attacks import Attack, WorstCase
from scrutiny.attacks.blackbox.transfer import NoiseAttack
from scrutiny.types import ThreatModel


class FlipsBack(nn.Module):
    """Two classes; class 1 exactly at ``x = 0.5`` everywhere, class 0 elsewhere.

    ``z0 = 1000 * ||x - 0.5||_1 - 1``, ``z1 = 0``: the all-0.5 image is classified 1, and any
    perturbation of l1 size above 0.001 makes it class 0.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0 = 1000 * (x - 0.5).abs().flatten(1).sum(1) - 1
        return torch.stack([z0, torch.zeros_like(z0)], dim=1)


class Shift(Attack):
    """Adds ``+eps`` to every pixel: deterministic, blind to the model."""

    def __init__(self) -> None:
        pass

    def _run(self, model, x, y, threat, target):
        return x + threat.eps


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # sample 0: misclassified (class 1) clean, fixed to class 0 by any perturbation;
    # sample 1: classified correctly, and far from 0.5, so eps=0.1 keeps it class 0
    x = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.9)])
    return x, torch.tensor([0, 0])


def test_an_attack_that_fixes_a_clean_error_does_not_count_it_as_robust():
    x, y = _batch()
    tm = ThreatModel("linf", 0.05)
    for attack in (Shift(), NoiseAttack()):
        res = attack(FlipsBack(), x, y, threat=tm)
        assert res.clean_correct.tolist() == [False, True]
        assert res.adv_correct.tolist() == [True, True]  # the perturbation fixed sample 0
        assert res.robust.tolist() == [False, True]
        assert res.clean_accuracy() == 0.5
        # the old mean of adv_correct reported 1.0, above the clean accuracy
        assert res.robust_accuracy() == 0.5 == res.robust_accuracy_at(0.05)
        assert res.to_dict()["robust_accuracy"] == 0.5


def test_worst_case_of_such_an_attack_is_honest_too():
    x, y = _batch()
    res = WorstCase(attacks=(Shift(), "noise"))(FlipsBack(), x, y, threat=ThreatModel("linf", 0.05))
    assert res.robust.tolist() == [False, True] and res.robust_accuracy() == 0.5
    assert res.meta["stages"][-1]["robust_accuracy"] == 0.5
