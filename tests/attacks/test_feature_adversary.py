"""Feature adversaries (Sabour et al. 2016): the representation of x' is close to the guide's."""

import pytest
import torch

from scrutiny.attacks.whitebox import FeatureAdversary
from scrutiny.attacks.whitebox.feature import default_feature_layer, default_guides
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


def _features(model, layer, x):
    out = {}
    h = model.layer(layer).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return out["o"].flatten(1)


def test_representation_moves_to_the_guide_inside_the_ball(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    g, yg = digits_test.x[100:116], digits_test.y[100:116]
    tm = ThreatModel("linf", 0.3)
    res = FeatureAdversary(steps=30)(digits_model, x, y, threat=tm, guide=g)
    assert res.meta["layer"] == "features.5"  # the last convolution
    assert tm.contains(x, res.x_adv).all() and (res.norms <= 0.3 + 1e-6).all()
    # recomputed independently with a hook: ||phi(x') - phi(g)|| / ||phi(x) - phi(g)||
    fa, fg, fx = (_features(digits_model, "features.5", t) for t in (res.x_adv, g, x))
    rel = (fa - fg).norm(dim=1) / (fx - fg).norm(dim=1)
    assert torch.allclose(rel, res.meta["relative_distance"], atol=1e-4)
    differ = y != yg
    assert (rel[differ] < 0.5).float().mean() >= 0.8
    # x' is now represented more like the guide than like its own source image
    assert ((fa - fg).norm(dim=1) < (fa - fx).norm(dim=1)).float().mean() >= 0.8
    # and the classifier follows the representation: mostly the guide's label
    assert (res.logits.argmax(1)[differ] == yg[differ]).float().mean() >= 0.6
    # a small ball cannot get there: the distance shrinks with eps
    small = FeatureAdversary(steps=30)(digits_model, x, y, threat=tm.with_eps(0.05), guide=g)
    assert small.meta["relative_distance"].median() > rel.median() + 0.2


def test_default_guides_have_another_label_and_layer_can_be_chosen(digits_model, digits_test):
    x, y = digits_test.x[:10], digits_test.y[:10]
    g = default_guides(x, y)
    idx = [int(((digits_test.x[:10] == gi).flatten(1).all(1)).nonzero()[0]) for gi in g]
    assert all(y[j] != y[i] for i, j in enumerate(idx))
    res = FeatureAdversary(layer="flatten", steps=15)(digits_model, x, y,
                                                         threat=ThreatModel("linf", 0.3))
    assert res.meta["layer"] == "flatten"
    assert (res.meta["relative_distance"] < 0.5).float().mean() >= 0.8
    assert default_feature_layer(digits_model) == "features.5"


def test_clear_errors(digits_model, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    tm = ThreatModel("linf", 0.1)
    with pytest.raises(InputError, match="no layer 'nope'.*features.5"):
        FeatureAdversary(layer="nope")(digits_model, x, y, threat=tm)
    with pytest.raises(InputError, match="guide must have shape"):
        FeatureAdversary()(digits_model, x, y, threat=tm, guide=x[:, :, :4])
    with pytest.raises(InputError, match="outside the model's bounds"):
        FeatureAdversary()(digits_model, x, y, threat=tm, guide=x + 5)
    with pytest.raises(InputError, match="pass guide="):
        FeatureAdversary()(digits_model, x[:1], y[:1], threat=tm)
    with pytest.raises(InputError, match="supports norms"):
        FeatureAdversary()(digits_model, x, y, threat=ThreatModel("l2", 1.0))
    with pytest.raises(InputError, match="steps"):
        FeatureAdversary(steps=0)
    with pytest.raises(InputError, match="does not accept 'guidance'"):
        FeatureAdversary()(digits_model, x, y, threat=tm, guidance=x)
