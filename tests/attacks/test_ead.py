"""EAD (Chen et al. AAAI 2018): sparser adversarial examples than C&W at similar success."""

import pytest
import torch

from scrutiny.attacks import CarliniWagnerL2, ElasticNet
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel

INF = float("inf")
STEPS = {"search_steps": 5, "steps": 80, "initial_const": 1.0}


def _sparsity(res, x):
    d = (res.x_adv - x).flatten(1)
    ok = res.success
    return d.abs().sum(1)[ok].median(), (d.abs() > 1e-3).sum(1)[ok].float().median()


def test_sparser_than_cw_at_similar_success(digits_model, digits_test):
    x, y = digits_test.x[:24], digits_test.y[:24]
    cw = CarliniWagnerL2(lr=0.1, **STEPS)(digits_model, x, y,
                                                     threat=ThreatModel("l2", INF))
    assert cw.success_rate() >= 0.95
    cw_l1, cw_changed = _sparsity(cw, x)
    for rule in ("EN", "L1"):
        ead = ElasticNet(beta=1e-2, decision_rule=rule, **STEPS)(digits_model, x, y,
                                                                 threat=ThreatModel("l1", INF))
        assert ead.success_rate() >= 0.95
        assert abs(ead.success_rate() - cw.success_rate()) <= 0.05
        ead_l1, ead_changed = _sparsity(ead, x)
        assert ead_l1 < 0.9 * cw_l1
        assert ead_changed < 0.75 * cw_changed
        assert ((ead.x_adv >= 0) & (ead.x_adv <= 1)).all()


def test_larger_beta_gives_sparser_examples(digits_model, digits_test):
    x, y = digits_test.x[:12], digits_test.y[:12]
    tm = ThreatModel("l1", INF)
    runs = [ElasticNet(beta=b, decision_rule="L1", **STEPS)(digits_model, x, y, threat=tm)
            for b in (1e-3, 5e-2)]
    assert all(r.success_rate() >= 0.9 for r in runs)
    assert _sparsity(runs[1], x)[1] < _sparsity(runs[0], x)[1]


def test_targeted_and_masked(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    t = (y + 1) % 10
    mask = torch.ones(1, 8, 8)
    mask[:, :2] = 0
    tm = ThreatModel("l2", INF, mask=mask)
    res = ElasticNet(**STEPS)(digits_model, x, y, threat=tm, target=t)
    assert res.success_rate() >= 0.75
    assert torch.equal(res.x_adv[:, :, :2], x[:, :, :2])


def test_bad_parameters():
    with pytest.raises(InputError, match="decision_rule"):
        ElasticNet(decision_rule="L2")
    with pytest.raises(InputError, match="beta"):
        ElasticNet(beta=-1.0)
