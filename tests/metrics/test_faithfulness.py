"""Faithfulness: deletion / insertion AUC (Petsiuk et al., RISE) and infidelity /
max-sensitivity (Yeh et al., NeurIPS 2019)."""

import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.explain import IntegratedGradients
from scrutiny.explain.base import Explainer
from scrutiny.metrics import Deletion, Infidelity, Insertion, MaxSensitivity, deletion, infidelity
from scrutiny.models import TorchModel
from scrutiny.testing.models import Failing, tiny_cnn, tiny_images, tiny_linear


class Constant(Explainer):
    """The same map whatever the input and the model."""

    name = "constant"

    def __init__(self):
        pass

    def _explain(self, model, x, target):
        return torch.ones_like(x), {}


def test_ig_beats_a_random_attribution_on_deletion_and_insertion(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    ig = IntegratedGradients(steps=16, rule="gausslegendre")
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    d_ig, d_rand = (Deletion()(digits_model, x, y, explainer=ig),
                    Deletion()(digits_model, x, y, attributions=rand))
    i_ig, i_rand = (Insertion()(digits_model, x, y, explainer=ig),
                    Insertion()(digits_model, x, y, attributions=rand))
    # measured: deletion 0.06 vs 0.38 (lower is better), insertion 0.75 vs 0.64
    assert d_ig.aggregate < d_rand.aggregate - 0.15
    assert i_ig.aggregate > i_rand.aggregate + 0.05
    assert d_ig.curves.shape == (16, 9) and torch.equal(d_ig.fractions, torch.arange(9) / 8)


def test_curves_run_from_the_input_to_the_baseline(digits_model, digits_test):
    x, y = digits_test.x[:6], digits_test.y[:6]
    attr = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    p = digits_model.logits(x).softmax(1)[torch.arange(6), y]
    p0 = digits_model.logits(torch.zeros_like(x)).softmax(1)[torch.arange(6), y]
    d = Deletion(steps=5)(digits_model, x, y, attributions=attr)
    assert torch.allclose(d.curves[:, 0], p, atol=1e-5) and torch.allclose(d.curves[:, -1], p0,
                                                                          atol=1e-5)
    ins = Insertion(steps=5, baseline="zero")(digits_model, x, y, attributions=attr)
    assert torch.allclose(ins.curves[:, 0], p0, atol=1e-5)
    assert torch.allclose(ins.curves[:, -1], p, atol=1e-5)
    assert torch.allclose(d.scores, torch.trapezoid(d.curves, d.fractions, dim=1).float())
    # 64 pixels in 5 steps of 13; the batches of (sample, step) images do not change anything
    assert torch.allclose(d.fractions, torch.tensor([0, 13, 26, 39, 52, 64]) / 64)
    small = deletion(digits_model, x, y, attributions=attr, steps=5, batch_size=4)
    assert torch.allclose(small.curves, d.curves, atol=1e-6)
    # the logit variant, and the ranking of the units: deleting the most relevant pixel first
    one_hot = torch.zeros_like(x)
    one_hot[:, 0, 3, 4] = 1
    d1 = Deletion(steps=64, output="logit")(digits_model, x, y, attributions=one_hot)
    z = digits_model.logits(torch.where(one_hot.bool(), 0.0, x))[torch.arange(6), y]
    assert torch.allclose(d1.curves[:, 1], z, atol=1e-4)


def test_infidelity_is_zero_for_exact_linear_attributions():
    model, x = tiny_linear(0), tiny_images(8)
    for pert in ("gaussian", "noisy_baseline", "square"):
        for scaling in (False, True):
            # the gradient w predicts f(x) - f(x - I) = w.I exactly for any I
            grad = Infidelity(perturbation=pert, optimal_scaling=scaling, n_samples=20)
            assert grad(model, x, explainer="gradient").scores.abs().max() < 1e-6
    # IG (x - 0) * w: exact for removal to the zero baseline, with the fraction-removed product
    ig = infidelity(model, x, explainer="integrated_gradients", perturbation="square",
                    multiply_by_inputs=True, optimal_scaling=False)
    assert ig.scores.abs().max() < 1e-6 and torch.allclose(ig.beta, torch.ones(8,
                                                                                dtype=ig.beta.dtype))
    rand = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert (Infidelity()(model, x, attributions=rand).scores > 0.1).all()
    # optimal scaling makes the score invariant to the map's scale
    half = Infidelity(n_samples=20)(model, x, attributions=0.5 * rand)
    full = Infidelity(n_samples=20)(model, x, attributions=rand)
    assert torch.allclose(half.scores, full.scores) and torch.allclose(half.beta, 2 * full.beta)


def test_square_removal_can_enumerate_every_square():
    model, x = tiny_linear(0), tiny_images(2)  # 6x6 images
    phi = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    res = Infidelity(perturbation="square", n_samples=None, square_sizes=(1, 2),
                     optimal_scaling=False)(model, x, 0, attributions=phi)
    assert res.meta["n_samples"] == 36 + 25
    # slow reference: f is linear, so f(x) - f(x0) = w . (x * square) for removal to 0
    w = model.module[1].weight[0].reshape(1, 6, 6).detach()
    ref = []
    for n in range(2):
        errs = [((x[n] * (phi[n] - w))[:, t:t + s, u:u + s].sum()) ** 2
                for s in (1, 2) for t in range(7 - s) for u in range(7 - s)]
        ref.append(torch.stack(errs).mean())
    assert torch.allclose(res.scores.float(), torch.stack(ref), rtol=1e-4)
    with pytest.raises(InputError, match="every square"):
        Infidelity(n_samples=None)


def test_max_sensitivity(digits_model, digits_test):
    x = digits_test.x[:4]
    const = MaxSensitivity(n_samples=5)(digits_model, x, explainer=Constant())
    assert torch.equal(const.scores, torch.zeros(4, dtype=const.scores.dtype))
    grad = MaxSensitivity(n_samples=5)(digits_model, x, explainer="gradient")
    assert (grad.scores > 0.01).all() and grad.samples.shape == (4, 5)  # measured 0.07 to 0.2
    assert torch.equal(grad.scores, grad.samples.amax(dim=1))
    bigger = MaxSensitivity(n_samples=5, radius=0.2)(digits_model, x, explainer="gradient")
    assert bigger.aggregate > grad.aggregate
    # the gradient of a linear model is the same everywhere
    lin = MaxSensitivity(n_samples=5)(tiny_linear(0), tiny_images(3), explainer="gradient")
    assert lin.scores.abs().max() < 1e-6


def test_max_sensitivity_of_an_all_zero_explanation_is_undefined_not_perfect(digits_test):
    """Behind a 4-level quantizer every gradient map is all zero, at x and around it: the
    relative change is 0 / 0 (undefined, with the reason), not 0 (perfectly stable)."""
    import json
    import math

    from scrutiny.testing.models import quantized_cnn

    x, q = digits_test.x[:3], quantized_cnn()
    res = MaxSensitivity(n_samples=2)(q, x, explainer="gradient")
    assert torch.isnan(res.scores).all() and math.isnan(res.aggregate)
    assert "all zero at x and at every neighbour for 3 of 3 samples" in res.undefined
    assert res.to_dict()["aggregate"] is None and json.dumps(res.to_dict(), allow_nan=False)
    # the absolute change is defined: zero
    absolute = MaxSensitivity(n_samples=2, normalize=False)(q, x, explainer="gradient")
    assert torch.equal(absolute.scores, torch.zeros(3, dtype=absolute.scores.dtype))
    assert absolute.undefined is None


def test_clear_errors(digits_model, digits_test):
    x = digits_test.x[:4]
    with pytest.raises(InputError, match="do not fit"):
        Deletion()(digits_model, x, attributions=torch.zeros(4, 64))
    with pytest.raises(InputError, match="NaN"):
        Insertion()(digits_model, x, attributions=torch.full((4, 8, 8), float("nan")))
    with pytest.raises(InputError, match="explainer= .* or attributions="):
        Deletion()(digits_model, x)
    with pytest.raises(InputError, match="not both"):
        Deletion()(digits_model, x, explainer="saliency", attributions=torch.zeros(4, 8, 8))
    with pytest.raises(InputError, match="needs explainer="):
        MaxSensitivity()(digits_model, x, attributions=torch.zeros(4, 8, 8))
    with pytest.raises(InputError, match="outside the model's bounds"):
        Deletion()(digits_model, x + 2, attributions=torch.zeros(4, 8, 8))
    with pytest.raises(InputError, match="classes"):
        Deletion()(digits_model, x, torch.full((4,), 12), attributions=torch.zeros(4, 8, 8))
    with pytest.raises(InputError, match="needs images"):
        Infidelity(perturbation="square")(tiny_linear(0, shape=(6,)), torch.rand(3, 6),
                                          attributions=torch.zeros(3, 6))
    with pytest.raises(InputError, match="perturbation must be one of"):
        Infidelity(perturbation="uniform")
    with pytest.raises(InputError, match="square_sizes"):
        Infidelity(square_sizes=(3, 1))
    with pytest.raises(InputError, match="unknown baseline"):
        Deletion(baseline="black")
    with pytest.raises(InputError, match="steps"):
        Insertion(steps=0)
    with pytest.raises(InputError, match="radius"):
        MaxSensitivity(radius=0)


@pytest.mark.parametrize("metric", [Deletion(steps=3), Infidelity(n_samples=3)])
def test_state_restored_and_inputs_untouched(metric):
    """Mode and requires_grad come back, also when forward raises; inputs unchanged;
    same seed, same result."""
    model = TorchModel(Failing(tiny_cnn(0).module, fail_at=2))
    model.train()
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    x = tiny_images(4)
    attr = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    x0, a0 = x.clone(), attr.clone()
    with pytest.raises(RuntimeError, match="on purpose"):
        metric(model, x, 0, attributions=attr)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    ok = tiny_cnn(0)
    a, b = metric(ok, x, attributions=attr, seed=3), metric(ok, x, attributions=attr, seed=3)
    assert torch.equal(a.scores, b.scores) and torch.equal(x, x0) and torch.equal(attr, a0)
