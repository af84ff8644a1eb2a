"""RP2 stickers (Eykholt et al. 2018): one masked perturbation over many images.

Pixels outside the mask never change, and the one sticker fools many held-out images.
"""

import pytest
import torch

from scrutiny.attacks.physical import Sticker
from scrutiny.data import load_digits
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


@pytest.fixture(scope="module")
def digits_train():
    d = load_digits(split="train")
    return d.x[:64], d.y[:64]


def _bottom_rows(k: int = 3) -> torch.Tensor:
    mask = torch.zeros(1, 8, 8)
    mask[:, 8 - k:] = 1
    return mask


def test_sticker_changes_only_the_mask_and_fools_held_out_images(digits_model, digits_train,
                                                                 digits_test):
    x, y = digits_train
    mask = _bottom_rows()
    tm = ThreatModel("linf", 1.0, mask=mask)
    res = Sticker(steps=15, n_samples=4)(digits_model, x, y, threat=tm)
    outside = (1 - mask).bool().expand_as(x)
    assert torch.equal(res.x_adv[outside], x[outside])                 # exactly unchanged
    sticker = res.meta["perturbation"]
    assert torch.equal(sticker[(1 - mask).bool()], torch.zeros(40))
    xt, yt = digits_test.x, digits_test.y
    stuck = Sticker.apply(xt, sticker)
    assert torch.equal(stuck[(1 - mask).bool().expand_as(xt)], xt[(1 - mask).bool().expand_as(xt)])
    fooled = (digits_model.predict(stuck) != yt).float().mean()
    noise = torch.rand(mask.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    by_noise = (digits_model.predict(Sticker.apply(xt, noise * mask)) != yt).float().mean()
    # measured: 0.64 of the 450 held-out images against 0.39 for a random sticker on the same
    # mask (clean error 0.02); more steps or images do not raise it on this mask
    assert fooled > 0.5 and fooled > by_noise + 0.15


def test_targeted_sticker_and_l1_mask_refinement(digits_model, digits_train, digits_test):
    x, y = digits_train
    mask = _bottom_rows()
    res = Sticker(steps=12, n_samples=4, mask_keep=0.5)(digits_model, x, y,
                                                      threat=ThreatModel("linf", 1.0, mask=mask),
                                                      target=2)
    refined = res.meta["mask"]
    assert int(refined.sum()) == 12 and bool((refined <= mask).all())  # half of the 24 pixels
    changed = (res.x_adv != x).any(dim=0)
    assert not changed[(refined == 0)].any()
    to_target = (digits_model.predict(Sticker.apply(digits_test.x, res.meta["perturbation"])) == 2)
    assert to_target.float().mean() > 0.3                              # measured 0.43; ~0.1 by chance


def test_without_a_mask_it_is_a_universal_perturbation_in_the_ball(digits_model, digits_train):
    x, y = digits_train
    tm = ThreatModel("l2", 1.5)
    res = Sticker(steps=5, n_samples=2)(digits_model, x[:16], y[:16], threat=tm)
    v = res.meta["perturbation"]
    assert float(v.norm()) <= 1.5 * (1 + 1e-5) and float(v.norm()) > 0.5
    assert tm.contains(x[:16], res.x_adv).all()


def test_clear_errors(digits_model, digits_test):
    with pytest.raises(InputError, match="mask_keep"):
        Sticker(mask_keep=0.0)
    with pytest.raises(InputError, match="lr"):
        Sticker(lr=0)
    with pytest.raises(InputError, match="translate"):
        Sticker(translate=2.0)
    with pytest.raises(InputError, match="loss"):
        Sticker(loss="hinge")
    with pytest.raises(InputError, match="perturbation"):
        Sticker.apply(digits_test.x[:2], torch.zeros(1, 4, 4))
