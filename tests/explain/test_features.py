"""Feature visualisation (Olah et al. 2017; Erhan 2009; Simonyan 2014; Nguyen 2016; Szegedy 2014).

The margins below were measured on the shipped digits CNN and on SCRUTINY_RETRAIN_SEED=1..4
(values listed in that order); the unit visualised is the most active channel of the last
conv layer ("features.5") on the test set (channel 0 is dead in two of the retrained models).
"""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain.features import (
    ActivationMaximization,
    ClassPrototype,
    DatasetExamples,
    ImageParam,
    Jitter,
    Multifaceted,
    Rotate,
    Scale,
    activation_maximization,
    apply_transforms,
    channel,
    class_logit,
    class_probability,
    dataset_examples,
    deepdream,
    direction,
    l2_penalty,
    neuron,
    total_variation,
)
from scrutiny.explain.gradient.layer import layer_activations
from scrutiny.models import TorchModel

LAYER = "features.5"


@pytest.fixture(scope="module")
def unit(digits_model, digits_test):
    """The most active channel of LAYER on the test set."""
    with digits_model.evaluating():
        acts = layer_activations(digits_model, LAYER, digits_test.x)
    return int(acts.mean((0, 2, 3)).argmax())


def _pairwise(x):
    f = x.flatten(1)
    d = torch.cdist(f, f)
    off = ~torch.eye(len(f), dtype=torch.bool)
    return d[off].mean().item(), d[off].min().item()


# ------------------------------------------------------------------ objectives
def test_objectives_are_what_they_say_and_compose_as_weighted_sums(digits_model, digits_test):
    x = digits_test.x[:6]
    with digits_model.evaluating(), torch.no_grad():
        a = layer_activations(digits_model, LAYER, x)
        b = layer_activations(digits_model, "features.3", x)
        logits = digits_model(x)
        c = channel(LAYER, 5).values(digits_model, x)
        assert torch.allclose(c, a[:, 5].mean((1, 2)), atol=1e-6)
        assert torch.allclose(neuron(LAYER, 5).values(digits_model, x), a[:, 5, 2, 2])  # centre
        assert torch.allclose(neuron(LAYER, 5, (1, 3)).values(digits_model, x), a[:, 5, 1, 3])
        assert torch.allclose(deepdream("features.3").values(digits_model, x),
                              b.pow(2).mean((1, 2, 3)), atol=1e-6)
        e5 = torch.zeros(a.shape[1])
        e5[5] = 1
        assert torch.allclose(direction(LAYER, e5).values(digits_model, x), c, atol=1e-6)
        assert torch.allclose(class_logit(3).values(digits_model, x), logits[:, 3])
        assert torch.allclose(class_probability(3).values(digits_model, x),
                              logits.softmax(1)[:, 3])
        assert torch.allclose(class_probability(3, log=True).values(digits_model, x),
                              logits.log_softmax(1)[:, 3])
        per_row = class_logit([0, 1, 2, 3, 4, 5]).values(digits_model, x)
        assert torch.allclose(per_row, logits[torch.arange(6), torch.arange(6)])
        obj = channel(LAYER, 5) - 0.5 * deepdream("features.3") + class_logit(3) / 4
        assert repr(obj) == ("channel('features.5', 5) - 0.5 * deepdream('features.3') "
                             "+ 0.25 * class_logit(3)")
        assert obj.layers == (LAYER, "features.3")
        expected = c - 0.5 * b.pow(2).mean((1, 2, 3)) + logits[:, 3] / 4
        assert torch.allclose(obj.values(digits_model, x), expected, atol=1e-5)
        assert torch.allclose((-obj).values(digits_model, x), -expected, atol=1e-5)
        assert sum([channel(LAYER, 5), class_logit(3)]) == channel(LAYER, 5) + class_logit(3)


def test_the_probability_rises_when_other_classes_fall_the_logit_does_not():
    model = TorchModel(nn.Identity())  # the logits are the inputs
    z = torch.tensor([[1.0, 2.0, 0.0]])
    lower = torch.tensor([[1.0, -2.0, 0.0]])  # class 1's logit lowered, class 0's unchanged
    with model.evaluating():
        assert class_logit(0).values(model, lower) == class_logit(0).values(model, z)
        assert class_probability(0).values(model, lower) > 2 * class_probability(0).values(model, z)


def test_bad_objectives_and_calls_are_refused_naming_the_value(digits_model, digits_test):
    x = digits_test.x[:2]
    with digits_model.evaluating():
        with pytest.raises(InputError, match="channel 99 is out of range"):
            channel(LAYER, 99).values(digits_model, x)
        with pytest.raises(InputError, match="no layer 'nope'"):
            channel("nope", 0).values(digits_model, x)
        with pytest.raises(InputError, match=r"position \(9, 0\)"):
            neuron(LAYER, 0, (9, 0)).values(digits_model, x)
        with pytest.raises(InputError, match="class 10 is out of range"):
            class_logit(10).values(digits_model, x)
    with pytest.raises(InputError, match="channel must be an integer >= 0, got -1"):
        channel(LAYER, -1)
    with pytest.raises(InputError, match="objective must be an Objective"):
        activation_maximization(digits_model, "features.5", digits_test, steps=1)
    with pytest.raises(InputError, match="give the input shape"):
        activation_maximization(digits_model, channel(LAYER, 0), steps=1)
    with pytest.raises(InputError, match="facets=5 is more than the 4 top examples"):
        Multifaceted(facets=5, top=4, steps=1)(digits_model, digits_test,
                                                objective=channel(LAYER, 0))
    with pytest.raises(InputError, match="scale must be"):
        ActivationMaximization(scale=(1.0,))
    with pytest.raises(InputError, match="unit must be an integer in"):
        dataset_examples(digits_model, digits_test, LAYER, 64)


# ------------------------------------------------------------------ regularisers
def test_each_regulariser_is_selectable_and_lowers_its_own_penalty(digits_model, digits_test,
                                                                   unit):
    """TV (weight 20) and L2 (weight 50) each end with a lower penalty than no regulariser
    (60 steps). Measured worst ratio over the 2 images: TV 0.38, 0.16, 0.10, 0.42, 0.48;
    L2 0.59, 0.40, 0.33, 0.46, 0.46."""
    obj = channel(LAYER, unit)
    kw = {"steps": 60, "lr": 0.1, "n_images": 2}
    plain = ActivationMaximization(**kw)(digits_model, objective=obj, shape=(1, 8, 8)).images
    tv = ActivationMaximization(tv=20.0, **kw)(digits_model, objective=obj, shape=(1, 8, 8))
    l2 = ActivationMaximization(l2=50.0, **kw)(digits_model, objective=obj, shape=(1, 8, 8))
    assert (total_variation(tv.images) < 0.8 * total_variation(plain)).all()
    assert (l2_penalty(l2.images, 0.5) < 0.8 * l2_penalty(plain, 0.5)).all()
    assert tv.meta["tv"] == 20.0 and l2.meta["l2"] == 50.0


def test_transforms_are_the_affine_maps_they_say_and_seeded():
    x = torch.rand(3, 2, 8, 8)
    torch.manual_seed(0)
    y = apply_transforms(x, (Jitter(2),))
    torch.manual_seed(0)
    shift = Jitter(2).matrix(3)[:, :2, 2].long()  # the same draw: whole-pixel shifts (dx, dy)
    for i, (dx, dy) in enumerate(shift.tolist()):
        moved = torch.roll(x[i], (dy, dx), dims=(1, 2))
        assert torch.allclose(y[i, :, 2:-2, 2:-2], moved[:, 2:-2, 2:-2], atol=1e-5)
    assert torch.allclose(apply_transforms(x, (Scale(1.0, 1.0), Rotate(0.0))), x, atol=1e-5)
    # a constant image stays constant under any draw (reflected borders, no zero padding)
    flat = torch.full((4, 1, 8, 8), 0.3)
    assert torch.allclose(apply_transforms(flat, (Jitter(3), Scale(0.5, 2.0), Rotate(45.0))),
                          flat, atol=1e-5)
    with pytest.raises(InputError, match="jitter must be an integer >= 0, got -1"):
        Jitter(-1)


def test_transforms_and_fourier_parametrisation_run_seeded(digits_model, unit):
    am = ActivationMaximization(steps=20, lr=0.1, jitter=1, scale=(0.9, 1.1), rotate=10.0,
                                parametrization="fourier")
    a = am(digits_model, objective=channel(LAYER, unit), shape=(1, 8, 8), seed=1)
    b = am(digits_model, objective=channel(LAYER, unit), shape=(1, 8, 8), seed=1)
    c = am(digits_model, objective=channel(LAYER, unit), shape=(1, 8, 8), seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.trace.shape == (20, 1) and a.trace[-1, 0] > a.trace[0, 0]
    assert ((a.images > 0) & (a.images < 1)).all()  # inside the bounds


def test_fourier_parametrisation_inverts_and_decorrelates_three_channels():
    start = 0.1 + 0.8 * torch.rand(2, 3, 6, 7)
    for kind in ("pixel", "fourier"):
        p = ImageParam.from_images(start, (0.0, 1.0), kind=kind)
        assert torch.allclose(p(), start, atol=1e-5)
        assert p.mix is not None
    assert ImageParam.random((1, 1, 6, 6), (0.0, 1.0), kind="fourier").mix is None


# ------------------------------------------------------------------ the methods
def test_activation_maximization_goes_far_beyond_the_best_dataset_example(
        digits_model, digits_test, unit):
    """The optimised image's channel mean over the test set's maximum. Measured (100 steps):
    22.0 vs 15.4 (ratio 1.43), 18.9/12.3 (1.54), 14.5/8.8 (1.65), 21.8/13.3 (1.65),
    25.7/19.3 (1.33)."""
    r = ActivationMaximization(steps=100, lr=0.1)(digits_model, digits_test,
                                                  objective=channel(LAYER, unit))
    assert r.images.shape == (1, 1, 8, 8) and r.data_values.shape == (len(digits_test),)
    assert r.values[0] > 1.2 * r.data_values.max() and r.data_values.max() > 0
    assert r.trace.shape == (100, 1) and r.trace[-1, 0] > r.trace[0, 0]
    assert r.meta["objective"] == f"channel('features.5', {unit})"


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_class_prototypes_are_classified_as_their_class(digits_model, score):
    """Defaults (200 steps, lr 0.05, L2 0.3). Measured smallest probability of its class
    over the 10 prototypes, logit: 0.91, 0.90, 1.00, 0.52, 0.63; probability: 0.989, 0.988,
    0.994, 0.991, 0.985."""
    r = ClassPrototype(score=score)(digits_model, shape=(1, 8, 8))
    assert r.images.shape == (10, 1, 8, 8)
    assert r.classes.tolist() == list(range(10))
    assert r.predicted.tolist() == list(range(10))
    assert (r.probabilities > 0.4).all()


def test_multifaceted_facets_differ_from_each_other(digits_model, digits_test, unit):
    """3 facets of the unit's 100 top test examples, 50 steps. Measured (mean, min) pairwise
    L2 distance of the facets: (1.76, 1.36), (2.61, 2.10), (2.04, 1.33), (2.12, 0.90),
    (2.85, 1.66); of their starts: (1.85, 1.74), (1.84, 1.69), (1.95, 1.43), (1.71, 1.50),
    (1.89, 1.64) (an 8x8 image in [0, 1] is at most 8 from another)."""
    obj = channel(LAYER, unit)
    r = Multifaceted(facets=3, steps=50)(digits_model, digits_test, objective=obj)
    assert r.images.shape == r.starts.shape == (3, 1, 8, 8)
    assert sorted(set(r.labels.tolist())) == [0, 1, 2] and len(r.top_indices) == 100
    mean, low = _pairwise(r.images)
    assert mean > 1.0 and low > 0.5
    assert _pairwise(r.starts)[1] > 1.0
    for j in range(3):  # each start is its cluster's mean image
        members = digits_test.x[r.top_indices[r.labels == j]]
        assert torch.allclose(r.starts[j], members.mean(0), atol=1e-6)
    assert (r.values > r.start_values).all()  # the optimisation raised the objective


def test_dataset_examples_of_a_unit_and_of_a_random_direction_on_the_same_footing(
        digits_model, digits_test):
    r = DatasetExamples(k=7)(digits_model, digits_test, layer=LAYER, unit=5, seed=3)
    assert r.unit_images.shape == r.random_images.shape == (7, 1, 8, 8)
    assert r.unit_scores.shape == r.random_scores.shape == (7,)
    assert (r.unit_scores[:-1] >= r.unit_scores[1:]).all()
    assert (r.random_scores[:-1] >= r.random_scores[1:]).all()
    assert abs(r.direction.norm().item() - 1) < 1e-6
    with digits_model.evaluating():
        acts = layer_activations(digits_model, LAYER, digits_test.x).mean((2, 3))
    # the unit's scores are its channel means: the top-k of all of them
    assert torch.allclose(r.unit_scores, acts[:, 5].sort(descending=True).values[:7], atol=1e-5)
    i = r.random_indices[2]  # a random direction's score is the projection on that unit vector
    assert torch.allclose(r.random_scores[2], acts[i] @ r.direction, atol=1e-5)
    assert r.random_scores[0] >= (acts @ r.direction).max() - 1e-5
    assert torch.equal(r.unit_images[0], digits_test.x[r.unit_indices[0]])
    other = dataset_examples(digits_model, digits_test, LAYER, 5, seed=4, k=7)
    assert not torch.equal(other.direction, r.direction)
    assert torch.equal(other.unit_indices, r.unit_indices)  # the unit's list needs no seed
