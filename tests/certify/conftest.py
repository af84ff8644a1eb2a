"""The digits MLP fixture of the certification tests."""

import pytest
import torch
from torch import nn

from scrutiny.models import TorchModel
from scrutiny.models.training import train
from tests.certify.helpers import seeded_init


@pytest.fixture(scope="session")
def digits_mlp(digits_test):
    """A small ReLU MLP trained on the digits (seconds), for radius searches."""
    from scrutiny.data import load_digits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 10))
    seeded_init(net, 0)
    train(net, load_digits(split="train"), epochs=15, lr=3e-3, seed=0, progress=False)
    return TorchModel(net.eval(), name="digits_mlp")
