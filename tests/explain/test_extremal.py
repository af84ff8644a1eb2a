"""Extremal perturbations: masks of the requested area that cover the class object
(Fong, Patrick, Vedaldi, ICCV 2019)."""

import copy

import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.explain import ExtremalPerturbation, extremal_perturbation
from scrutiny.explain.baselines import gaussian_blur
from scrutiny.explain.perturbation.extremal import SmoothMask


@pytest.fixture(scope="module")
def synthetic():
    from scrutiny.data import make_synthetic
    from scrutiny.models import pretrained

    return pretrained("synthetic-cnn", progress=False), make_synthetic(split="test")


def test_mask_area_equals_requested_area(digits_model, digits_test):
    # float64: after 200 steps, float32 rounding of another batch size grows to 1e-4..1e-3
    model, x = copy.deepcopy(digits_model).double(), digits_test.x[:4].double()
    e = ExtremalPerturbation(areas=(0.1, 0.3), steps=200)(model, x)
    assert e.meta["masks"].shape == (4, 2, 8, 8)
    err = (e.meta["mask_area"] - torch.tensor([0.1, 0.3], dtype=torch.float64)).abs()
    # one pixel of an 8x8 image is 0.016 of the area; 0.03 is asserted on 32x32 images below.
    # Measured on the shipped CNN and CNNs retrained with seeds 1-4: max 0.040, mean <= 0.014.
    assert (err < 0.05).all(), e.meta["mask_area"]
    assert err.mean() < 0.02
    assert torch.equal(e.attributions, e.meta["masks"][:, 0])
    # the areas were optimised as one batch: the same result one area at a time
    single = ExtremalPerturbation(areas=(0.3,), steps=200)(model, x[2:3])
    assert torch.allclose(single.attributions, e.meta["masks"][2:3, 1], atol=1e-9)


def test_mask_covers_the_class_object(synthetic):
    model, data = synthetic
    n = 6
    x, box, y = data.x[:n], data.masks[:n, 0].float(), data.y[:n]
    e = extremal_perturbation(model, x, y, areas=(0.1,), baseline="zero",
                              steps=200)
    m = e.attributions
    recall = (m * box).sum((1, 2)) / box.sum((1, 2))   # share of the object under the mask
    assert (e.meta["mask_area"] - 0.1).abs().max() < 0.03
    assert recall.mean() > 0.7 and (recall > 0.5).float().mean() >= 5 / 6, recall
    # a random mask of the same area covers about 10% of the object
    assert recall.mean() > 4 * 0.1


def test_preserved_region_keeps_the_class_better_than_a_random_one(digits_model, digits_test):
    x = digits_test.x[:6]
    ep = ExtremalPerturbation(areas=(0.25,), steps=100)
    e = ep(digits_model, x)
    fill = gaussian_blur(x, 1.0)  # the default blur baseline of 8x8 images
    with torch.no_grad():
        found = ep._reward(digits_model, e.attributions, x, fill, e.target)
        rolled = torch.roll(e.attributions, shifts=(4, 4), dims=(1, 2))
        other = ep._reward(digits_model, rolled, x, fill, e.target)
    assert (found > other).float().mean() >= 5 / 6


def test_smooth_mask_is_bounded_and_smooth():
    g = SmoothMask(16, 16, 2, 6.0, 20.0, torch.device("cpu"), torch.float32)
    p = torch.zeros(1, g.grid[0] * g.grid[1])
    p[0, (g.grid[0] // 2) * g.grid[1] + g.grid[1] // 2] = 1
    m = g(p)[0]
    assert 0 <= m.min() and m.max() <= 1
    assert m[8, 8] > 0.9 and m[0, 0] < 0.05          # a blob around the centre
    assert (m[:, 1:] - m[:, :-1]).abs().max() < 0.5   # no hard edges


def test_rejects_bad_areas():
    with pytest.raises(InputError, match="areas"):
        ExtremalPerturbation(areas=(0.0,))
    with pytest.raises(InputError, match="areas"):
        ExtremalPerturbation(areas=1.5)
