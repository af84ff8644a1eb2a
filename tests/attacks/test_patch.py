"""Adversarial patch (Brown et al. 2017): the patch works when pasted at random places.

A targeted patch trained on some images, pasted at fresh random positions,
scales and rotations on held-out images, sends a large fraction of them to the
target class, far more than a random patch of the same size.
"""

import pytest
import torch

from scrutiny.attacks.physical import AdversarialPatch
from scrutiny.attacks.physical.patch import patch_mask
from scrutiny.attacks.physical.transforms import warp
from scrutiny.base import seeded
from scrutiny.data import load_digits
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel

UNBOUNDED = ThreatModel("linf", float("inf"))


@pytest.fixture(scope="module")
def digits_train():
    d = load_digits(split="train")
    return d.x[:64], d.y[:64]


def test_patch_pasted_at_random_places_sends_held_out_images_to_the_target(
        digits_model, digits_train, digits_test):
    x, y = digits_train
    attack = AdversarialPatch(size=0.4, steps=40, n_samples=4)
    res = attack(digits_model, x, y, threat=UNBOUNDED, target=3)
    patch = res.meta["patch"]
    assert patch.shape == x.shape[1:] and patch.min() >= 0 and patch.max() <= 1
    xt = digits_test.x
    hit = (digits_model.predict(attack.apply(xt, patch, seed=1)) == 3).float().mean()
    noise = torch.rand(patch.shape, generator=torch.Generator().manual_seed(0)) * res.meta["patch_mask"]
    by_noise = (digits_model.predict(attack.apply(xt, noise, seed=1)) == 3).float().mean()
    # measured (60 steps): 0.68 of the 450 held-out images against 0.15 for a random patch
    assert hit > 0.5 and hit > by_noise + 0.3
    # the same patch at other random places still works
    assert (digits_model.predict(attack.apply(xt, patch, seed=2)) == 3).float().mean() > 0.5


def test_only_the_pasted_area_changes(digits_model, digits_train):
    x, y = digits_train
    attack = AdversarialPatch(size=0.2, steps=2, n_samples=2)
    res = attack(digits_model, x[:16], y[:16], threat=UNBOUNDED, target=0)
    covered = warp(res.meta["patch_mask"].expand(16, 1, 8, 8), res.meta["placements"])
    free = (covered == 0).expand_as(x[:16])
    assert torch.equal(res.x_adv[free], x[:16][free]) and not torch.equal(res.x_adv, x[:16])
    again = attack.apply(x[:16], res.meta["patch"], placements=res.meta["placements"])
    assert torch.allclose(again, res.x_adv, atol=1e-6)


def test_placements_keep_the_patch_inside_at_the_sampled_scale():
    attack = AdversarialPatch(size=0.25, rotation=0.0, scale=(0.7, 1.1))
    with seeded(0):
        fwd = attack.sample_placements(64, 16, 16)
    mask = patch_mask("square", 0.25, 16, 16)
    assert float(mask.sum()) == pytest.approx(0.25 * 256)
    area = warp(mask.expand(64, 1, 16, 16), fwd).sum(dim=(1, 2, 3))
    scale2 = torch.linalg.det(fwd[:, :, :2])                 # area factor s^2
    # bilinear resampling of the anti-aliased edge moves the area by a few percent at most
    assert torch.allclose(area, mask.sum() * scale2, rtol=0.05)
    assert fwd[:, :, 2].abs().max() < 1 and len({round(float(t), 3) for t in fwd[:, 0, 2]}) > 30
    circle = patch_mask("circle", 0.25, 16, 16)
    assert float(circle.sum()) == pytest.approx(64, rel=0.02)


def test_finite_eps_bounds_the_patch_contrast(digits_model, digits_train):
    x, y = digits_train
    tm = ThreatModel("linf", 0.3)
    res = AdversarialPatch(size=0.3, steps=3, n_samples=2)(digits_model, x[:16], y[:16], threat=tm,
                                                        target=1)
    assert tm.contains(x[:16], res.x_adv).all() and res.norms.max() > 0.1


def test_clear_errors(digits_model, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    with pytest.raises(InputError, match="shape"):
        AdversarialPatch(shape="triangle")
    with pytest.raises(InputError, match="size"):
        AdversarialPatch(size=0.0)
    with pytest.raises(InputError, match="scale"):
        AdversarialPatch(scale=(1.0,))
    with pytest.raises(InputError, match="supports norms"):
        AdversarialPatch()(digits_model, x, y, threat=ThreatModel("l2", 1.0))
    with pytest.raises(InputError, match="mask"):
        AdversarialPatch()(digits_model, x, y,
                           threat=ThreatModel("linf", 1.0, mask=torch.ones(1, 8, 8)))
    with pytest.raises(InputError, match="patch must be"):
        AdversarialPatch().apply(x, torch.zeros(1, 4, 4))
