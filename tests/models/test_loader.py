"""A DataLoader (any iterable of (x, y) batches) is accepted wherever a batch is."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scrutiny.attacks import PGD
from scrutiny.errors import InputError
from scrutiny.explain import Saliency
from scrutiny.metrics import Deletion
from scrutiny.models import calls
from scrutiny.models.calls import as_batch
from scrutiny.types import ThreatModel


def test_as_batch_concatenates_in_order_and_takes_the_labels():
    x, y = torch.rand(10, 1, 4, 4), torch.arange(10) % 3
    bx, by = as_batch(DataLoader(TensorDataset(x, y), batch_size=3))
    assert torch.equal(bx, x) and torch.equal(by, y)
    # a plain list of (x, y) pairs and of input tensors; given labels win over the loader's
    assert torch.equal(as_batch([(x[:4], y[:4]), (x[4:], y[4:])])[1], y)
    bx, by = as_batch([x[:4], x[4:]])
    assert torch.equal(bx, x) and by is None
    assert torch.equal(as_batch([(x, y)], y + 1)[1], y + 1)
    # a tensor passes through untouched
    assert as_batch(x, y)[0] is x


def test_as_batch_is_bounded_and_refuses_mixed_or_empty_loaders(monkeypatch):
    x, y = torch.rand(10, 3), torch.zeros(10, dtype=torch.long)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(InputError, match="more than limit=8 samples"):
        as_batch(loader, limit=8)
    monkeypatch.setattr(calls, "MAX_LOADER_SAMPLES", 9)
    with pytest.raises(InputError, match="MAX_LOADER_SAMPLES"):
        as_batch(loader)
    assert len(as_batch(loader, limit=10)[0]) == 10
    with pytest.raises(InputError, match="batch 1 of the loader lacks labels"):
        as_batch([(x[:2], y[:2]), x[2:]])
    with pytest.raises(InputError, match="no batch"):
        as_batch([])
    with pytest.raises(InputError, match="batch 0 .* list inputs"):
        as_batch([([1.0, 2.0], 0)])


def test_attack_explainer_and_metric_take_a_loader(digits_model, digits_test):
    data = digits_test.subset(range(12))
    loader = DataLoader(data, batch_size=5)  # 5 + 5 + 2: the last batch is short
    threat = ThreatModel("linf", 0.1)
    attack = PGD(steps=3)
    from_loader = attack(digits_model, loader, threat=threat)
    direct = attack(digits_model, data.x, data.y, threat=threat)
    assert torch.equal(from_loader.y, data.y)  # the labels came from the loader
    assert torch.equal(from_loader.x_adv, direct.x_adv)
    assert from_loader.robust_accuracy() == direct.robust_accuracy()
    e = Saliency()(digits_model, loader)
    assert torch.equal(e.attributions, Saliency()(digits_model, data.x).attributions)
    m = Deletion(steps=4)
    assert torch.equal(m(digits_model, loader, explainer="saliency").scores,
                       m(digits_model, data.x, explainer="saliency").scores)


def test_an_attack_without_labels_says_where_they_come_from(digits_model, digits_test):
    with pytest.raises(InputError, match="needs the true labels: give y"):
        PGD()(digits_model, digits_test.x[:2], threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="needs the true labels"):
        PGD()(digits_model, [digits_test.x[:2]], threat=ThreatModel("linf", 0.1))
