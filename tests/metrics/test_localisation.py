"""Pointing game (Zhang et al., ECCV 2016): near 100% on synthetic data whose class is
caused by a known region; a random map scores about chance."""

import math

import pytest
import torch

from scrutiny.errors import InputError
from scrutiny.metrics import PointingGame, pointing_game
from scrutiny.testing.models import tiny_cnn


@pytest.fixture(scope="module")
def synthetic():
    from scrutiny.data import make_synthetic
    from scrutiny.models import pretrained

    return pretrained("synthetic-cnn", progress=False), make_synthetic(split="test")


def test_integrated_gradients_point_at_the_class_object(synthetic):
    model, data = synthetic
    x, y, masks = data.x[:64], data.y[:64], data.masks[:64]
    res = PointingGame()(model, x, y, explainer="integrated_gradients", masks=masks)
    assert res.tolerance == pytest.approx(15 * 32 / 224)
    # measured 0.98 on the shipped CNN, 0.97, 0.97, 0.95, 0.89 on CNNs retrained with seeds
    # 1-4 (the last reaches 93% accuracy, the others 100%). Saliency maps depend more on the
    # weights: 0.94, 0.95, 0.89, 0.88, 0.17.
    assert res.aggregate >= 0.85
    assert res.mean_class_accuracy >= 0.8 and set(res.class_accuracy) == {0, 1, 2, 3}
    assert res.chance < 0.2  # an 8x8 square grown by 2 pixels in 32x32
    # a random map scores about chance
    rand = torch.rand(64, 32, 32, generator=torch.Generator().manual_seed(0))
    r = PointingGame()(model, data.x[:64], data.y[:64], attributions=rand, masks=data.masks[:64])
    assert abs(r.aggregate - r.chance) < 0.1 and r.aggregate < 0.3


def test_hits_misses_and_tolerance():
    model = tiny_cnn(0)
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 1, 20, 20, dtype=torch.bool)
    masks[:2, 0, 5:8, 5:8] = True  # the third sample has no region
    maps = torch.zeros(3, 20, 20)
    maps[0, 6, 6] = 1  # inside
    maps[1, 9, 6] = 1  # 2 pixels below the region (rows 5 to 7)
    maps[2, 0, 0] = 1
    hit = pointing_game(model, x, 0, attributions=maps, masks=masks, tolerance=2)
    assert hit.scores[:2].tolist() == [1.0, 1.0] and math.isnan(hit.scores[2])
    assert hit.aggregate == 1.0 and hit.points[1].tolist() == [9, 6]
    assert hit.undefined == "1 of 3 samples have no ground-truth region"
    miss = pointing_game(model, x, 0, attributions=maps, masks=masks[:, 0].float(), tolerance=1.9)
    assert miss.scores[:2].tolist() == [1.0, 0.0] and miss.aggregate == 0.5
    # channel-summed image attributions give the same points
    again = PointingGame(tolerance=1.9)(model, x, 0, attributions=maps[:, None], masks=masks)
    assert torch.equal(again.points, miss.points)


def test_a_constant_map_points_nowhere():
    """An all-zero map has no maximum: undefined (with the reason), not a hit or a miss at
    pixel (0, 0), and left out of the hit rate and of the chance level."""
    model = tiny_cnn(0)
    x = torch.rand(3, 1, 20, 20, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[:, 0:3, 0:3] = True  # (0, 0), where argmax of a constant map lands, is inside
    maps = torch.zeros(3, 20, 20)
    maps[0, 15, 15] = 1  # a miss
    maps[2] = 0.5  # constant, not zero
    res = pointing_game(model, x, 0, attributions=maps, masks=masks, tolerance=1)
    assert res.scores[0] == 0.0 and torch.isnan(res.scores[1:]).all()
    assert res.aggregate == 0.0 and res.class_accuracy == {0: 0.0}
    assert res.undefined == "2 of 3 samples have a constant map, which points nowhere"
    assert res.to_dict()["aggregate"] == 0.0


def test_clear_errors(synthetic):
    model, data = synthetic
    x, y = data.x[:4], data.y[:4]
    with pytest.raises(InputError, match="masks="):
        PointingGame()(model, x, y, explainer="saliency")
    with pytest.raises(InputError, match="masks must have shape"):
        PointingGame()(model, x, y, explainer="saliency", masks=data.masks[:3])
    with pytest.raises(InputError, match="0 and 1"):
        PointingGame()(model, x, y, explainer="saliency", masks=data.masks[:4].float() * 0.5)
    with pytest.raises(InputError, match="do not fit"):
        PointingGame()(model, x, y, attributions=torch.zeros(4, 16, 16), masks=data.masks[:4])
    with pytest.raises(InputError, match="needs images"):
        PointingGame()(model, x.flatten(1), y, attributions=torch.zeros(4, 1024),
                       masks=data.masks[:4])
    with pytest.raises(InputError, match="tolerance"):
        PointingGame(tolerance=-1)
