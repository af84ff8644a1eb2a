"""BadNets (Gu et al. 2017): the backdoor works, the clean task holds, the poison is drawn as stated."""

import json

import pytest
import torch

from scrutiny.attacks.poisoning import BadNets, accuracy, attack_success_rate, badnets
from scrutiny.errors import InputError
from scrutiny.models import build
from scrutiny.models.wrapper import as_model


def test_backdoor_succeeds_while_clean_accuracy_holds(badnets_digits, clean_victim_digits,
                                                      digits_test):
    """Gu et al.'s claim: the backdoored network keeps (almost) the clean network's accuracy,
    and triggered inputs go to the target. Measured over seeds 0..4 (call seed and initial
    weights; 20 epochs, 10% poisoned): attack success 0.995-1.000; clean accuracy 0.920-0.964
    backdoored, 0.927-0.969 clean; drop -0.011..0.049 (any pair of the two: <= 0.049)."""
    r = badnets_digits
    clean = accuracy(clean_victim_digits, digits_test)
    assert r.attack_success >= 0.95
    assert r.clean_accuracy >= clean - 0.06
    # the same figure measured directly on the returned model and trigger
    assert r.attack_success == attack_success_rate(r.model, digits_test, r.trigger, 0)
    # the trigger does the work: without it, inputs of the other labels are rarely called 0
    others = digits_test.x[digits_test.y != 0]
    assert float((as_model(r.model).predict(others) == 0).float().mean()) < 0.05


def test_result_describes_the_poisoned_training_set(badnets_digits, digits_train):
    r = badnets_digits
    assert len(r.data) == len(digits_train) and len(r.poisoned) == round(0.1 * len(digits_train))
    assert r.poison_rate == pytest.approx(0.1, abs=1e-3)
    assert bool((r.data.y[r.poisoned] == 0).all())
    assert bool((digits_train.y[r.poisoned] != 0).all())          # never a point of the target
    assert torch.equal(r.data.x[r.poisoned], r.trigger.apply(digits_train.x[r.poisoned]))
    rest = torch.ones(len(r.data), dtype=torch.bool)
    rest[r.poisoned] = False
    assert torch.equal(r.data.x[rest], digits_train.x[rest])
    assert torch.equal(r.data.y[rest], digits_train.y[rest])
    d = r.to_dict()
    json.dumps(d)
    assert d["n_poisoned"] == len(r.poisoned) and d["trigger_area"] == 9 and d["target"] == 0


def test_poison_draws_the_stated_number_seeded(digits_train):
    attack = BadNets(target=3, rate=0.2)
    data, idx = attack.poison(digits_train, seed=5)
    again, idx2 = attack.poison(digits_train, seed=5)
    _, other = attack.poison(digits_train, seed=6)
    assert len(idx) == round(0.2 * len(digits_train)) == len(idx.unique())
    assert torch.equal(idx, idx2) and torch.equal(data.x, again.x)
    assert not torch.equal(idx, other)
    assert bool((digits_train.y[idx] != 3).all()) and bool((data.y[idx] == 3).all())
    assert torch.equal(digits_train.x, digits_train.x.clone())  # the caller's data is kept


def test_add_mode_appends_triggered_copies(digits_train):
    data, idx = BadNets(rate=0.1, mode="add").poison(digits_train, seed=0)
    n = len(digits_train)
    assert len(data) == n + round(0.1 * n)
    assert torch.equal(idx, torch.arange(n, len(data)))
    assert torch.equal(data.x[:n], digits_train.x) and torch.equal(data.y[:n], digits_train.y)
    assert bool((data.y[idx] == 0).all())


def test_all_to_all_labels_each_poison_point_with_the_next_label(digits_train):
    data, idx = BadNets(rate=0.1, all_to_all=True).poison(digits_train, seed=0)
    assert torch.equal(data.y[idx], (digits_train.y[idx] + 1) % 10)


def test_all_to_all_backdoor_is_learned(digits_train, digits_test):
    """All-to-all maps label k to k + 1 under the trigger, which the GAP head of the small CNN
    learns slowly (8 epochs at rate 0.1-0.5: success 0.05-0.58), the MLP readily. Measured
    over seeds 0..4 (MLP, 20 epochs, 30% poisoned): success 0.827-0.869, clean accuracy
    0.927-0.936."""
    torch.manual_seed(0)
    r = badnets(build("mlp", (1, 8, 8), 10), digits_train, test=digits_test, seed=0,
                all_to_all=True, rate=0.3, epochs=20)
    assert r.target is None and r.meta["all_to_all"] is True
    assert r.attack_success >= 0.7
    assert r.clean_accuracy >= 0.88


def test_add_mode_backdoor_is_learned(digits_train, digits_test):
    """mode="add" (the paper's traffic-sign setting). Measured over seeds 0..4 (MLP, 15 epochs,
    10% added): success 0.998-1.000, clean accuracy 0.960-0.973."""
    torch.manual_seed(0)
    r = badnets(build("mlp", (1, 8, 8), 10), digits_train, test=digits_test, seed=0,
                mode="add", rate=0.1, epochs=15)
    assert len(r.data) == len(digits_train) + len(r.poisoned)
    assert r.attack_success >= 0.95
    assert r.clean_accuracy >= 0.92


def test_clear_errors(digits_train):
    with pytest.raises(InputError, match="target 10 is not a label"):
        BadNets(target=10).poison(digits_train)
    with pytest.raises(InputError, match=r"rate=0.0001 of 1347 training points poisons none"):
        BadNets(rate=1e-4).poison(digits_train)
    with pytest.raises(InputError, match="only .* points are not of the target label"):
        BadNets(rate=1.0).poison(digits_train)
    with pytest.raises(InputError, match="rate must be in"):
        BadNets(rate=0.0)
    with pytest.raises(InputError, match="needs the training data"):
        BadNets()(build("cnn", (1, 8, 8), 10))
