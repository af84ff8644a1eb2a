"""The shared call preamble (scrutiny.models.calls) and the one owner of input bounds (the model)."""

import pytest
import torch

from scrutiny.attacks import PGD
from scrutiny.attacks.blackbox import Square
from scrutiny.errors import InputError
from scrutiny.explain.surrogate.lime import Lime
from scrutiny.metrics import Deletion, MaxSensitivity, deletion
from scrutiny.models import QueryModel, TorchModel
from scrutiny.models.calls import prepare
from scrutiny.types import ThreatModel


def _rescaled(digits_model):
    """The digits CNN on inputs in [-1, 1]: the same function of ``2 x - 1``."""
    return TorchModel(digits_model.module, bounds=(-1.0, 1.0), mean=[-1.0], std=[2.0])


def test_a_threat_model_without_bounds_takes_the_models(digits_model, digits_test):
    model = _rescaled(digits_model)
    x, y = digits_test.x[:64], digits_test.y[:64]
    res = PGD(steps=10)(model, x * 2 - 1, y, threat=ThreatModel("linf", 0.1))
    assert res.threat.bounds == (-1.0, 1.0)
    assert float(res.x_adv.min()) < 0  # blank pixels (-1) can only rise to -0.9: outside [0, 1]
    assert float(res.x_adv.min()) >= -1 and float(res.x_adv.max()) <= 1
    assert res.threat.contains(x * 2 - 1, res.x_adv).all()
    # the same problem as eps 0.05 on [0, 1] inputs: PGD's steps are relative to eps, so its
    # iterates are the rescaled ones. Measured on the shipped weights and
    # SCRUTINY_RETRAIN_SEED=1..4: x_adv within 2.4e-7 of 2 x_adv' - 1, identical robust masks
    # (robust accuracy 0.78, 0.81, 0.81, 0.72, 0.73)
    ref = PGD(steps=10)(digits_model, x, y, threat=ThreatModel("linf", 0.05))
    assert ref.threat.bounds == (0.0, 1.0)
    assert float((res.x_adv - (ref.x_adv * 2 - 1)).abs().max()) < 1e-5
    assert torch.equal(res.robust, ref.robust)


def test_explicit_bounds_that_differ_from_the_models_are_one_clear_error(digits_model, digits_test):
    model = _rescaled(digits_model)
    x, y = digits_test.x[:4] * 2 - 1, digits_test.y[:4]
    msg = r"threat model's bounds \[0, 1\] differ from the model's bounds \[-1, 1\]"
    with pytest.raises(InputError, match=msg):
        PGD(steps=2)(model, x, y, threat=ThreatModel("linf", 0.1, (0.0, 1.0)))
    with pytest.raises(InputError, match=msg):  # the black-box path: the QueryModel's bounds
        Square(max_queries=10)(QueryModel(model, output="probs"), x, y,
                               threat=ThreatModel("linf", 0.1, (0.0, 1.0)))
    with pytest.raises(InputError, match=r"differ from the model's bounds \(-1.0, 1.0\)"):
        QueryModel(model, bounds=(0.0, 1.0))
    # the same bounds, explicit, are fine; so is x inside [-1, 1] but outside [0, 1]
    res = PGD(steps=2)(model, x, y, threat=ThreatModel("linf", 0.1, (-1.0, 1.0)))
    assert res.threat.bounds == (-1.0, 1.0)


def test_black_box_attacks_take_the_query_models_bounds(digits_model, digits_test):
    model = _rescaled(digits_model)
    x, y = digits_test.x[:16] * 2 - 1, digits_test.y[:16]
    qm = QueryModel(model, output="probs", budget=400)
    assert qm.bounds == (-1.0, 1.0)
    res = Square(max_queries=20)(qm, x, y, threat=ThreatModel("linf", 0.2))
    assert res.threat.bounds == (-1.0, 1.0) and float(res.x_adv.min()) < 0
    assert res.threat.contains(x, res.x_adv).all()
    assert res.meta["evaluator_queries"] == 2 * len(x)  # the clean look and the check


def test_explicit_bounds_declare_a_plain_modules(digits_model, digits_test):
    lo, hi = 0.2, 0.9
    x, y = digits_test.x[:8] * (hi - lo) + lo, digits_test.y[:8]
    res = PGD(steps=2)(digits_model.module, x, y, threat=ThreatModel("linf", 0.3, (lo, hi)))
    assert res.threat.bounds == (lo, hi)
    assert float(res.x_adv.min()) >= lo and float(res.x_adv.max()) <= hi
    with pytest.raises(InputError, match=r"outside the model's bounds \[0, 1\]"):
        PGD(steps=2)(digits_model.module, x - 0.5, y, threat=ThreatModel("linf", 0.1))


def test_prepare_restores_state_and_never_touches_x(digits_model, digits_test):
    x = digits_test.x[:4].clone()
    before = x.clone()
    digits_model.train()
    rng = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="the body fails"):
        with prepare(PGD(), digits_model, x, seed=3) as call:
            assert not digits_model.training and call.x0 is not x
            assert not any(p.requires_grad for p in digits_model.parameters())
            call.x0.add_(1)
            torch.rand(3)  # the forked RNG: the caller's is untouched
            raise RuntimeError("the body fails")
    assert digits_model.training and all(p.requires_grad for p in digits_model.parameters())
    assert torch.equal(x, before) and torch.equal(torch.get_rng_state(), rng)
    digits_model.eval()
    with pytest.raises(InputError, match=r"PGD does not accept 'guide'; accepted data keywords: none"):
        with prepare(PGD(), digits_model, x, data={"guide": x}):
            pass


def _tabular():
    from scrutiny.data import load_breast_cancer
    from scrutiny.models import pretrained

    return pretrained("breast-cancer-mlp", progress=False), load_breast_cancer(split="train")


def test_metrics_pass_the_explainers_call_data_to_every_explanation():
    model, data = _tabular()
    x = data.x[:6]
    lime = Lime(n_samples=300)
    bg_a, bg_b = data.x[:200], data.x[200:260] * 0.5  # another distribution: other quartiles
    with pytest.raises(InputError, match="pass explain\\(model, x, background="):
        Deletion(steps=5)(model, x, explainer=lime)  # accepted now, but LIME needs it
    with pytest.raises(InputError, match="does not accept 'masks'; accepted data keywords: "
                                         "background"):
        Deletion(steps=5)(model, x, explainer=lime, masks=x)

    def scores(bg):
        return Deletion(steps=5)(model, x, explainer=lime, background=bg).scores

    # the metric's explanation is the one LIME gives with that background (same seed); the
    # other background moves some deletion score by 0.41..0.63 and every max-sensitivity
    # score by >= 0.08 (measured on the shipped weights and SCRUTINY_RETRAIN_SEED=1..4)
    given = Deletion(steps=5)(model, x, attributions=lime.explain(model, x, background=bg_a))
    assert torch.equal(scores(bg_a), given.scores)
    assert torch.equal(deletion(model, x, explainer=lime, background=bg_a, steps=5).scores,
                       given.scores)  # the function twin routes the explainer's data too
    assert float((scores(bg_a) - scores(bg_b)).abs().max()) > 0.1
    # a metric that re-explains at every neighbour gets the background at every call
    sens = [MaxSensitivity(n_samples=3, radius=0.05)(model, x[:3], explainer=lime, background=bg)
            .scores for bg in (bg_a, bg_b)]
    assert torch.isfinite(sens[0]).all() and bool(((sens[0] - sens[1]).abs() > 0.02).all())
    assert lime._bound_data == {}  # the judged explainer itself is left as it was
