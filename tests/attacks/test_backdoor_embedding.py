"""Adversarial backdoor embedding (Tan & Shokri 2020): the backdoor survives and the poison
points no longer stand apart in the latent space."""

import json
import math

import pytest
import torch

from scrutiny.attacks.poisoning import BackdoorEmbedding, BadNets, backdoor_embedding
from scrutiny.attacks.poisoning.embedding import _Objective, latent_separation, latents
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models import build

#: The training of the ``badnets_digits`` fixture (tests/conftest.py): 20 epochs, seed 0.
EPOCHS = 20


@pytest.fixture(scope="module")
def embedded(digits_train, digits_test):
    """The attack with the settings of ``badnets_digits`` (target 0, 10% poisoned, 3x3
    checkerboard, 20 epochs, seed 0) and its default penalty 0.5."""
    torch.manual_seed(0)
    return BackdoorEmbedding(target=0, rate=0.1, epochs=EPOCHS)(
        build("cnn", (1, 8, 8), 10), digits_train, test=digits_test, seed=0)


def test_backdoor_survives_and_latent_separation_drops(embedded, badnets_digits):
    """The paper's claim against plain BadNets on the same poisoned set. Measured over seeds
    0..4 (call seed and initial weights), penalty 0.5:
      attack success   embedding 0.988-1.000          BadNets 0.995-1.000
      clean accuracy   embedding 0.902-0.964          BadNets 0.920-0.964 (same seed: drop <= 0.018)
      separation       embedding 0.544-0.824 (0.728)  BadNets 0.857-1.000
    (separation: AUROC of the target label's poison points along its top singular direction;
    the silhouette of the poison/clean split drops likewise, 0.26-0.50 -> 0.07-0.25)."""
    r, b = embedded, badnets_digits
    assert torch.equal(r.poisoned, b.poisoned) and torch.equal(r.data.x, b.data.x)
    assert r.attack_success >= 0.95
    assert r.clean_accuracy >= b.clean_accuracy - 0.07
    plain = latent_separation(b.model, b.data, b.poisoned)
    assert plain >= 0.8
    assert r.separation <= plain - 0.03
    assert r.separation == latent_separation(r.model, r.data, r.poisoned)


def test_result_fields_and_dict(embedded):
    r = embedded
    assert len(r.discriminator_accuracy) == EPOCHS
    assert all(0.0 <= a <= 1.0 for a in r.discriminator_accuracy)
    assert r.history is not None and len(r.history.loss) == EPOCHS
    d = r.to_dict()
    json.dumps(d)
    assert d["separation"] == r.separation and d["method"] == "backdoor_embedding"
    assert d["n_poisoned"] == len(r.poisoned)


def test_zero_penalty_trains_exactly_as_badnets(digits_train):
    """With penalty 0 the regulariser's gradient vanishes: the victim is BadNets' victim."""
    small = digits_train.subset(torch.arange(300))
    torch.manual_seed(1)
    net = build("cnn", (1, 8, 8), 10)
    a = BackdoorEmbedding(penalty=0.0, rate=0.1, epochs=2, hidden=(16,))(net, small, seed=1)
    b = BadNets(rate=0.1, epochs=2)(net, small, seed=1)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(a.poisoned, b.poisoned)
    assert a.clean_accuracy is None and a.attack_success is None  # no test data given


def test_discriminator_labels_are_the_poison_points(badnets_digits):
    attack = BackdoorEmbedding()
    obj = _Objective(attack, badnets_digits.trigger, len(badnets_digits.data), 64,
                     torch.device("cpu"))
    flags = obj.carries(badnets_digits.data.x)
    expected = torch.zeros(len(flags), dtype=torch.long)
    expected[badnets_digits.poisoned] = 1
    assert torch.equal(flags, expected)


def test_a_named_layer_and_the_function_form(digits_train):
    small = digits_train.subset(torch.arange(200))
    torch.manual_seed(0)
    net = build("cnn", (1, 8, 8), 10)
    r = backdoor_embedding(net, small, seed=0, layer="features.5", epochs=1, hidden=(8,))
    assert latents(r.model, small.x[:3], layer="features.5").shape == (3, 64 * 4 * 4)
    assert 0.5 <= r.separation <= 1.0
    assert r.meta["layer"] == "features.5"


def test_latent_separation_reads_one_direction():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 1, 2, 2, generator=g)
    y = torch.zeros(60, dtype=torch.long)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    shifted = x.clone()
    shifted[:20, 0, 0, 0] += 10.0                   # the poison points stand apart
    data = ArrayDataset(x=shifted, y=y, classes=("a", "b"), name="t")
    assert latent_separation(net, data, torch.arange(20)) == 1.0
    same = ArrayDataset(x=x, y=y, classes=("a", "b"), name="t")
    assert latent_separation(net, same, torch.arange(20)) < 0.75   # drawn alike
    everything = ArrayDataset(x=x, y=torch.ones(60, dtype=torch.long), classes=("a", "b"), name="t")
    assert math.isnan(latent_separation(net, everything, torch.arange(60)))  # no clean point


def test_clear_errors(digits_train):
    net = build("cnn", (1, 8, 8), 10)
    with pytest.raises(InputError, match="no layer 'nope'"):
        BackdoorEmbedding(layer="nope", epochs=1)(net, digits_train.subset(torch.arange(50)))
    with pytest.raises(InputError, match="hidden must be a non-empty tuple"):
        BackdoorEmbedding(hidden=())
    with pytest.raises(InputError, match="hidden must be a non-empty tuple"):
        BackdoorEmbedding(hidden=(8, 0))
    with pytest.raises(InputError, match="penalty must be >= 0"):
        BackdoorEmbedding(penalty=-1.0)
