"""MC dropout: no epistemic variance without dropout, more of it out of distribution."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import MCDropout, mc_dropout
from scrutiny.explain.uncertainty import dropout_modules
from scrutiny.testing.models import dropout_mlp
from tests.fixture_models import fixture_model


@pytest.fixture(scope="module")
def trained():
    from scrutiny.data import load_digits

    model = fixture_model("dropout-mlp")
    assert (model.predict(load_digits(split="test").x) == load_digits(split="test").y
            ).float().mean() > 0.9
    return model


def test_zero_epistemic_variance_without_dropout(trained, digits_test):
    x = digits_test.x[:16]
    no_drop = dropout_mlp(0, p=0.0)
    no_drop.load_state_dict(trained.state_dict())
    e = mc_dropout(no_drop, x, n_samples=16)
    assert torch.equal(e.meta["epistemic"], torch.zeros(16))
    assert torch.equal(e.meta["mutual_information"], torch.zeros(16))
    assert torch.equal(e.attributions, torch.zeros_like(e.attributions))
    # same network with dropout active: non-zero
    on = mc_dropout(trained, x, n_samples=16)
    assert (on.meta["epistemic"] > 0).any()
    # mean prediction equals the deterministic one without dropout
    assert torch.allclose(e.meta["mean_probs"], no_drop(x).softmax(1), atol=1e-6)


def test_higher_epistemic_variance_out_of_distribution(trained, digits_test):
    x_in = digits_test.x[:64]
    x_out = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    e_in = mc_dropout(trained, x_in, n_samples=64)
    e_out = mc_dropout(trained, x_out, n_samples=64)
    assert e_out.meta["epistemic"].mean() > 2 * e_in.meta["epistemic"].mean()
    assert e_out.meta["mutual_information"].mean() > 2 * e_in.meta["mutual_information"].mean()
    assert e_out.meta["epistemic"].median() > e_in.meta["epistemic"].median()


def test_only_dropout_layers_switched_and_restored(trained, digits_test):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                        nn.Dropout(0.3), nn.Linear(32, 10))
    from scrutiny.models.wrapper import TorchModel

    model = TorchModel(net)
    model.eval()
    seen = []
    net[2].register_forward_hook(lambda m, i, o: seen.append((m.training, net[4].training)))
    MCDropout(n_samples=4)(model, digits_test.x[:4])
    assert seen[-1] == (False, True)  # batch norm in eval mode, dropout sampling
    assert not any(m.training for m in model.modules())
    model.train()
    MCDropout(n_samples=4)(model, digits_test.x[:4])
    assert all(m.training for m in model.modules())
    assert [m.training for m in dropout_modules(model)] == [True]


def test_aleatoric_from_a_heteroscedastic_head(digits_test):
    model = fixture_model("dropout-mlp-heteroscedastic")
    x = digits_test.x[:32]
    e = MCDropout(n_samples=8, heteroscedastic=True)(model, x)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(e.target, out[:, :10].argmax(1))
    assert (e.meta["aleatoric"] > 0).all() and e.meta["mean_probs"].shape == (32, 10)
    with pytest.raises(InputError, match="classes"):
        MCDropout(n_samples=2, heteroscedastic=True)(model, x, target=15)


def test_map_shape_and_sensitivity(trained, digits_test):
    x = digits_test.x[:4].reshape(4, 1, 8, 8)
    e = MCDropout(n_samples=32)(trained, x)
    assert e.attributions.shape == (4, 8, 8)
    assert (e.attributions.flatten(1).amax(1) > 0).all()
    e2 = MCDropout(n_samples=32, uncertainty_map="entropy")(trained, x)
    assert not torch.allclose(e.attributions, e2.attributions)
