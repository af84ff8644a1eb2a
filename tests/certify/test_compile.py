"""The bound graph is compiled once per model and sees weights changed in place."""

import torch
from torch import nn

from scrutiny.certify import CROWN, IBP, propagation
from scrutiny.certify.propagation import Network, compile_network
from scrutiny.models import TorchModel
from tests.certify.helpers import random_cnn, random_mlp


def _fresh(model: TorchModel, x: torch.Tensor, eps: float):
    """CROWN's bounds from a network built anew (the cache emptied first)."""
    propagation._COMPILED.pop(model.module, None)
    return CROWN().bounds(model, x, eps)


def test_built_once_and_reused_across_calls_eps_and_batches(monkeypatch):
    class Net(nn.Module):  # a custom module: read with torch.fx
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 2, 3, padding=1), nn.Linear(2 * 36, 3)

        def forward(self, x):
            return self.head(torch.flatten(torch.relu(self.conv(x)), 1))

    model = TorchModel(Net().eval())
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    first = CROWN().bounds(model, x, 0.05)
    net = compile_network(model, x)

    def no_tracing(*a, **k):
        raise AssertionError("the model was read again")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_tracing)
    again = CROWN().bounds(model, x, 0.05)  # another certifier, same model: the same graph
    IBP().bounds(model, x[:2], 0.2)          # another batch, eps and method
    CROWN(batch_size=2).bounds(model, x, torch.linspace(0, 0.1, 5))
    assert compile_network(model, x[:1]) is net
    assert torch.equal(first.margin_lower, again.margin_lower)


def test_weights_changed_in_place_are_seen():
    model = random_cnn(seed=3)  # Conv, BatchNorm (running statistics), pooling, normalisation
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    before = CROWN().bounds(model, x, 0.05)
    net = compile_network(model, x)
    with torch.no_grad():  # a training step: parameters and statistics changed in place
        for p in model.module.parameters():
            p.mul_(0.9).add_(0.01)
        bn = model.module[1]
        bn.running_mean.add_(0.2)
        bn.running_var.mul_(1.5)
    after = CROWN().bounds(model, x, 0.05)
    assert compile_network(model, x) is net  # not rebuilt ...
    fresh = _fresh(model, x, 0.05)           # ... yet equal to a network built anew
    for f in ("logits_lower", "logits_upper", "margin_lower", "margin_upper"):
        assert torch.allclose(getattr(after, f), getattr(fresh, f), rtol=0, atol=1e-5)
    assert (after.logits_lower - before.logits_lower).abs().max() > 1e-2


def test_a_change_of_structure_rebuilds():
    model = random_mlp(seed=0)
    x = torch.rand(3, 12, generator=torch.Generator().manual_seed(2))
    net = compile_network(model, x)
    model.module[2] = nn.Linear(16, 12)  # another layer object
    assert compile_network(model, x) is not net
    net = compile_network(model, x)
    model.module[0].weight = nn.Parameter(model.module[0].weight.detach() * 2)  # replaced
    assert compile_network(model, x) is not net
    assert compile_network(model, x.double().float()) is compile_network(model, x)
    assert isinstance(compile_network(model, x), Network)
    b = CROWN().bounds(model, x, 0.05)
    assert torch.allclose(b.logits_lower, _fresh(model, x, 0.05).logits_lower)
