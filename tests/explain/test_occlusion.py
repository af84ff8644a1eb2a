"""Occlusion (Zeiler & Fergus): a region the model ignores gets 0; linear closed form."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import Occlusion, occlusion
from scrutiny.models import TorchModel
from scrutiny.testing import tiny_images, tiny_linear


class _LeftHalf(nn.Module):
    """A small nonlinear net that only sees the left half (columns < 4) of 8x8 images."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 8 * 4, 3))

    def forward(self, x):
        return self.net(x[..., :4])


def test_occluding_an_ignored_region_gives_zero():
    model = TorchModel(_LeftHalf())
    x = tiny_images(6, shape=(1, 8, 8))
    for window, first_blind in ((1, 4), (2, 5), ((3, 2), 5)):
        e = Occlusion(window=window, baseline="zero", batch_size=37)(model, x)
        a = e.attributions
        assert a.shape == (6, 8, 8)
        # every window covering these columns lies in the ignored half
        assert a[..., first_blind:].abs().max() <= 1e-6
        assert a[..., :4].abs().max() > 1e-2


def test_linear_model_window_one_is_weight_times_difference_from_fill():
    model = tiny_linear(0, shape=(1, 6, 6))
    x = tiny_images(4)
    t = torch.tensor([0, 1, 2, 1])
    w = model.module[1].weight[t].reshape(x.shape).detach()
    for fill in (0.0, 0.3, "mean"):
        e = occlusion(model, x, t, window=1, baseline=fill)
        f = x.mean((2, 3), keepdim=True) if fill == "mean" else fill
        assert torch.allclose(e.attributions, (w * (x - f))[:, 0], atol=1e-5)


def test_tables_and_strided_windows_are_averaged_over_covering_windows():
    model = tiny_linear(1, shape=(10,))
    x = torch.rand(3, 10, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2])
    w = model.module[1].weight[t].detach()
    one = Occlusion(window=1, baseline=0.0)(model, x, t).attributions
    assert one.shape == (3, 10) and torch.allclose(one, w * x, atol=1e-5)
    # window 3, stride 3 on 10 features: starts 0, 3, 6 and 7 (the edge); feature 7
    # is covered by the windows at 6 and 7, feature 0 only by the window at 0
    e = Occlusion(window=3, stride=3, baseline=0.0, batch_size=2)(model, x, t)
    drop = {s: (w * x)[:, s:s + 3].sum(1) for s in (0, 3, 6, 7)}
    assert torch.allclose(e.attributions[:, 0], drop[0], atol=1e-5)
    assert torch.allclose(e.attributions[:, 7], (drop[6] + drop[7]) / 2, atol=1e-5)
    assert e.meta["windows"] == 4


def test_occlusion_rejects_bad_settings():
    with pytest.raises(InputError, match="window"):
        Occlusion(window=0)
    with pytest.raises(InputError, match="larger than the input"):
        Occlusion(window=7)(tiny_linear(0), tiny_images(2))
    with pytest.raises(InputError, match="unknown baseline"):
        Occlusion(baseline="grey")
