"""The gradient-masking checks flag a masked model and pass a plain one."""

import pytest
import torch
from torch import nn

from scrutiny.audit.checks import (
    check_certified,
    check_monotone,
    gradient_masking_checks,
)
from scrutiny.types import ThreatModel


class Quantize(nn.Module):
    """A front end that rounds inputs to 4 levels: zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 3) / 3)


@pytest.fixture(scope="module")
def batch(digits_test):
    return digits_test.x[:48], digits_test.y[:48]


def test_plain_model_raises_no_flag(digits_model, batch):
    x, y = batch
    flags = gradient_masking_checks(digits_model, x, y, ThreatModel("linf", 0.1), black_box=None,
                                    curves={"pgd": [(0.0, 0.97), (0.1, 0.3)]})
    assert {f.check for f in flags} >= {"zero or non-finite gradients",
                                        "unbounded attack below 100%",
                                        "large variance across seeds",
                                        "success not monotone in eps"}
    assert not [f.message for f in flags if f.flagged]


def test_quantizing_front_end_is_flagged(digits_model, batch):
    x, y = batch
    flags = {f.check: f for f in gradient_masking_checks(Quantize(digits_model.module), x, y,
                                                         ThreatModel("linf", 0.1), black_box=None)}
    g = flags["zero or non-finite gradients"]
    assert g.flagged and g.details["share_zero"] > 0.9
    assert "BPDA" in g.message


def test_monotone_and_certified_checks():
    ok = check_monotone({"a": [(0.0, 1.0), (0.1, 0.5), (0.2, 0.5)]}, n=100)
    bad = check_monotone({"a": [(0.0, 1.0), (0.1, 0.3), (0.2, 0.6)]}, n=100)
    assert not ok.flagged and bad.flagged and bad.details["violations"][0]["eps"] == (0.1, 0.2)
    assert check_certified(0.6, 0.5, 0.1).flagged
    assert not check_certified(0.4, 0.5, 0.1).flagged


def test_declared_quantizer_is_flagged_and_broken_by_the_adaptive_attack(digits_model, batch):
    """A bit-depth front end zeroes the gradients (flagged); the attack base's BPDA breaks it."""
    from scrutiny.attacks import PGD
    from scrutiny.defenses import BitDepthReduction

    x, y = batch
    defended = BitDepthReduction(bits=1).wrap(digits_model)
    threat = ThreatModel("linf", 0.3)
    flags = {f.check: f for f in gradient_masking_checks(defended, x, y, threat, black_box=None)}
    assert flags["zero or non-finite gradients"].flagged
    res = PGD(steps=20)(defended, x, y, threat=threat)
    assert res.meta["adaptive"] == "BPDA"
    clean = float((defended.predict(x) == y).float().mean())
    assert clean > 0.8 and res.robust_accuracy() < 0.4


def test_black_box_flag_read_off_the_ensemble_stages():
    from scrutiny.audit.checks import black_box_from_stages

    stages = [{"name": "apgd", "robust_accuracy": 0.5}, {"name": "apgd_t", "robust_accuracy": 0.4},
              {"name": "square", "robust_accuracy": 0.1}]
    flag = black_box_from_stages(stages, attacked=100, n=200, final_robust=0.05)
    assert flag.flagged and flag.details["black_box_extra_broken"] == 30
    quiet = black_box_from_stages(stages[:2] + [{"name": "square", "robust_accuracy": 0.4}],
                                  attacked=100, n=200, final_robust=0.2)
    assert not quiet.flagged
    assert black_box_from_stages(stages[:2], attacked=100, n=200, final_robust=0.2) is None
