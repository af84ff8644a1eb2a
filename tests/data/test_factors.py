"""The dSprites-like factor dataset: every image is drawn from its recorded factors."""

import pytest
import torch

from scrutiny.data import FACTOR_SHAPES, make_factors
from scrutiny.errors import InputError


def _centre(x: torch.Tensor) -> torch.Tensor:
    """Centre of mass (column, row), in pixels, of each image of ``(N, 1, H, W)``."""
    h, w = x.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32) + 0.5
    cols = torch.arange(w, dtype=torch.float32) + 0.5
    mass = x.sum((1, 2, 3))
    return torch.stack([(x.sum((1, 2)) * cols).sum(1) / mass,
                        (x.sum((1, 3)) * rows).sum(1) / mass], 1)


def test_full_grid_holds_every_combination_once_labelled_by_shape():
    fd = make_factors()
    assert fd.factor_names == ("shape", "scale", "x", "y") and len(fd) == 4 * 3 * 8 * 8
    assert fd.data.x.shape == (768, 1, 16, 16) and fd.data.classes == FACTOR_SHAPES
    assert float(fd.data.x.min()) >= 0 and float(fd.data.x.max()) <= 1
    assert torch.equal(fd.data.y, fd.factors[:, 0])
    assert len(torch.unique(fd.factors, dim=0)) == len(fd)  # each combination once
    assert [len(lv) for lv in fd.levels] == [4, 3, 8, 8]
    assert fd.values().shape == (768, 4)


def test_each_image_is_drawn_where_and_as_large_as_its_factors_say():
    fd = make_factors(size=20, positions=5)
    v = fd.values()
    c = _centre(fd.data.x)
    # the anti-aliased shapes' centres of mass sit on the recorded position (measured max
    # error 0.11 px, a small triangle: anti-aliasing of its slanted edges)
    assert float((c - v[:, 2:4]).abs().max()) < 0.25
    mass = fd.data.x.sum((1, 2, 3))
    for s in range(4):  # a larger scale draws a larger shape, whatever the shape and place
        rows = fd.factors[:, 0] == s
        by_scale = [float(mass[rows & (fd.factors[:, 1] == k)].mean()) for k in range(3)]
        assert by_scale == sorted(by_scale) and by_scale[0] < 0.6 * by_scale[-1]
    # the shapes differ: the same place and scale gives four different images
    same_place = (fd.factors[:, 1:] == fd.factors[0, 1:]).all(1)
    assert len(torch.unique(fd.data.x[same_place].flatten(1), dim=0)) == 4


def test_sampling_and_rotation_are_seeded():
    a = make_factors(n=60, rotations=4, seed=3)
    b = make_factors(n=60, rotations=4, seed=3)
    c = make_factors(n=60, rotations=4, seed=4)
    assert a.factor_names[-1] == "rotation" and a.factors.shape == (60, 5)
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)
    assert all(int(a.factors[:, k].max()) < len(lv) for k, lv in enumerate(a.levels))
    # a quarter turn of an ellipse swaps its extent in x and y
    e = make_factors(shapes=["ellipse"], scales=1, positions=1, rotations=4)
    w0, w1 = (e.data.x[0, 0] > 0.5).any(0).sum(), (e.data.x[0, 0] > 0.5).any(1).sum()
    r0, r1 = (e.data.x[1, 0] > 0.5).any(0).sum(), (e.data.x[1, 0] > 0.5).any(1).sum()
    assert w0 > w1 and r0 < r1


@pytest.mark.parametrize("bad, message", [
    ({"size": 4}, "size"), ({"shapes": ("star",)}, "shapes"), ({"shapes": ()}, "shapes"),
    ({"scales": 0}, "scales"), ({"positions": 1.5}, "positions"), ({"n": 0}, "n must")])
def test_bad_arguments_are_refused_naming_them(bad, message):
    with pytest.raises(InputError, match=message):
        make_factors(**bad)
