"""The certifier protocol: one API for IBP, CROWN and smoothing, owned by the base class."""

import pytest
import torch

from scrutiny.certify import CROWN, IBP, RandomizedSmoothing
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


def test_smoothing_answers_every_radius_from_one_certify(digits_model, digits_test, monkeypatch):
    x, y = digits_test.x[:8], digits_test.y[:8]
    rs = RandomizedSmoothing(sigma=0.25, n0=16, n=200, batch_size=2000)
    drawn = []
    real = RandomizedSmoothing.counts
    monkeypatch.setattr(RandomizedSmoothing, "counts",
                        lambda self, m, xx, num: (drawn.append(num), real(self, m, xx, num))[1])
    acc = rs.certified_accuracy(digits_model, x, y, [0.0, 0.1, 0.25, 0.5])
    assert drawn == [16, 200]  # one CERTIFY: n0 then n noisy copies
    res = rs.certify(digits_model, x, y, ThreatModel("l2", 0.25))
    assert res.max_radius is None  # smoothing's radius holds at every eps
    assert acc == {r: res.certified_accuracy(r) for r in (0.0, 0.1, 0.25, 0.5)}
    assert acc[0.0] >= acc[0.1] >= acc[0.25] >= acc[0.5]
    # certified at the threat's eps: the right class with a radius >= eps
    assert torch.equal(res.certified, (res.label == y) & (res.radius >= 0.25))
    assert torch.equal(res.certified, res.certified_at())
    # its radius API is the same as the bound methods': the radius of one CERTIFY
    rad = rs.certified_radius(digits_model, x, y)
    assert torch.equal(rad.radius, res.radius) and rad.eps is None
    capped = rs.certified_radius(digits_model, x, y, max_eps=0.1)
    assert torch.equal(capped.radius, res.radius.clamp(max=0.1)) and capped.max_radius == 0.1
    with pytest.raises(InputError, match="above"):
        capped.certified_accuracy(0.2)


def test_bound_methods_certify_each_eps_and_know_only_that_one(digits_mlp, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    ibp = IBP()
    masks = ibp.certified_at(digits_mlp, x, y, [0.005, 0.02])
    for e in (0.005, 0.02):
        res = ibp.certify(digits_mlp, x, y, ThreatModel("linf", e))
        assert torch.equal(masks[e], res.certified) and res.max_radius == e
        assert torch.equal(res.radius, torch.where(res.certified, e, 0.0).float())
    # certified at 0.02 implies at 0.005 (IBP is inclusion-monotone); and some only at 0.005
    assert not (masks[0.02] & ~masks[0.005]).any() and (masks[0.005] & ~masks[0.02]).any()
    rad = ibp.certified_radius(digits_mlp, x, y, max_eps=0.1)
    assert rad.max_radius == 0.1 and rad.eps is None
    assert (rad.radius[masks[0.005]] >= 0.005).all()


def test_classify_is_the_classifier_the_certificate_is_about(digits_model, digits_test):
    x = digits_test.x[:6]
    assert torch.equal(IBP().classify(digits_model, x), digits_model.predict(x))
    rs = RandomizedSmoothing(sigma=0.25, n=100, batch_size=600)
    assert torch.equal(rs.classify(digits_model, x, seed=2), rs.predict(digits_model, x, seed=2).label)


def test_the_base_refuses_bad_calls_with_one_clear_error(digits_mlp, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    crown = CROWN()
    with pytest.raises(InputError, match="threat must be a ThreatModel"):
        crown.certify(digits_mlp, x, y, 0.1)
    with pytest.raises(InputError, match="not both"):
        crown.certified_accuracy(digits_mlp, x, y, ThreatModel("linf", 0.1), norm="l2")
    with pytest.raises(InputError, match="list of numbers"):
        crown.certified_accuracy(digits_mlp, x, y, ["0.1"])
    with pytest.raises(InputError, match="masked"):
        crown.certify(digits_mlp, x, y, ThreatModel("linf", 0.1, mask=torch.ones(1, 8, 8)))
    with pytest.raises(InputError, match="max_eps"):
        crown.certified_radius(digits_mlp, x, y, max_eps=0)
    with pytest.raises(InputError, match="supports norms linf, l2; got 'l1'"):
        crown.certified_accuracy(digits_mlp, x, y, [0.1], norm="l1")
    with pytest.raises(InputError, match="y must have shape"):
        crown.certify(digits_mlp, x, y[:3], ThreatModel("linf", 0.1))
    assert crown.certified_accuracy(digits_mlp, x, y, []) == {}
