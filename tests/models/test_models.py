"""TorchModel, QueryModel, weights and the zoo."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError, NotDifferentiableError, QueryBudgetExceeded
from scrutiny.models import (
    MLP,
    QueryModel,
    SmallCNN,
    TorchModel,
    as_model,
    load_factory,
    load_weights,
    save_weights,
)


def test_normalisation_lives_inside_the_wrapper():
    lin = nn.Linear(3, 2)
    m = TorchModel(lin, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    x = torch.rand(4, 3)
    assert torch.allclose(m(x), lin((x - 0.5) / 0.25))
    img = TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), mean=[0.1, 0.2, 0.3],
                     std=[1, 2, 3])
    xi = torch.rand(2, 3, 2, 2)
    ref = (xi - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / torch.tensor([1., 2, 3]).view(1, 3, 1, 1)
    assert torch.allclose(img(xi), img.module(ref))


def test_evaluating_restores_mode_and_grads_even_on_error():
    net = SmallCNN()
    net.train()
    net.classifier.weight.requires_grad_(False)
    m = TorchModel(net)
    with pytest.raises(RuntimeError), m.evaluating():
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        raise RuntimeError
    assert net.training and not net.classifier.weight.requires_grad
    assert net.classifier.bias.requires_grad


def test_bad_models_are_refused():
    with pytest.raises(NotDifferentiableError, match="QueryModel"):
        TorchModel(lambda x: x)
    with pytest.raises(NotDifferentiableError):
        as_model("model.onnx")
    with pytest.raises(InputError, match=r"shape \(N, K\)"):
        TorchModel(nn.Identity())(torch.rand(2, 3, 4))
    with pytest.raises(InputError, match="both mean and std"):
        TorchModel(nn.Identity(), mean=[0.5])


def test_query_model_counts_exactly_and_honours_the_budget():
    qm = QueryModel(nn.Linear(4, 3), output="probs", budget=10)
    p = qm.predict(torch.rand(6, 4))
    assert torch.allclose(p.sum(1), torch.ones(6)) and qm.queries == 6
    with pytest.raises(QueryBudgetExceeded, match="6 of 10 used, 5 more"):
        qm.predict(torch.rand(5, 4))
    assert qm.queries == 6  # a refused query is not run nor counted
    assert qm.predict(torch.rand(4, 4)).shape == (4, 3) and qm.remaining == 0


def test_query_model_over_a_callable():
    qm = QueryModel(lambda x: x.sum(dim=1).long() % 2, output="label")
    assert qm(torch.ones(3, 4)).tolist() == [0, 0, 0]
    bad = QueryModel(lambda x: x, output="label")
    with pytest.raises(InputError, match="returned shape"):
        bad(torch.ones(3, 4))
    with pytest.raises(InputError, match="unknown output"):
        QueryModel(nn.Linear(2, 2), output="scores")


def test_safetensors_round_trip_and_refusals(tmp_path):
    a, b = MLP(in_features=4, num_classes=2), MLP(in_features=4, num_classes=2)
    path = save_weights(a, tmp_path / "w.safetensors", {"note": "x"})
    load_weights(b, path)
    x = torch.rand(3, 4)
    assert torch.equal(a(x), b(x))
    with pytest.raises(InputError, match="pickle is refused"):
        load_weights(b, _touch(tmp_path / "w.pt"))
    with pytest.raises(InputError, match="do not fit"):
        load_weights(MLP(in_features=5, num_classes=2), path)
    with pytest.raises(FileNotFoundError):
        load_weights(b, tmp_path / "missing.safetensors")


def _touch(p):
    p.write_bytes(b"x")
    return p


def test_load_factory():
    m = load_factory("scrutiny.models.zoo:SmallCNN")
    assert isinstance(m, SmallCNN)
    with pytest.raises(InputError, match="module:factory"):
        load_factory("nocolon")
    with pytest.raises(InputError, match="cannot import"):
        load_factory("no_such_module_xyz:f")


def test_zoo_model_is_accurate_and_cached(digits_model, digits_test):
    acc = (digits_model.predict(digits_test.x) == digits_test.y).float().mean()
    assert acc > 0.95
    from scrutiny.models import pretrained

    again = pretrained("digits-cnn", progress=False)  # loaded from the safetensors cache
    assert torch.equal(again(digits_test.x[:5]), digits_model(digits_test.x[:5]))
