"""DBA (Xie et al. 2020): attackers who each poison with one piece of a trigger plant the
assembled trigger in the federated global model."""

import json

import pytest
import torch
from torch import nn

from scrutiny.attacks.poisoning import DBA, attack_success_rate, dba
from scrutiny.attacks.poisoning.federated import dba_triggers
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.zoo import retrain_seed

#: A small federation: 10 clients (4 attackers, 3 of the 6 benign ones per round), 5 rounds
#: from the digits CNN, the class's other defaults (target 2, batch 16, attackers 4 local
#: epochs); a few seconds per run.
SETTINGS = {"clients": 10, "attackers": 4, "rounds": 5, "fraction": 0.5}

# Measured with SETTINGS over call seeds 0..4 on the shipped weights, and with seed 0 on
# SCRUTINY_RETRAIN_SEED=1..4 (global-trigger success of DBA / of the centralised attack):
#   shipped  seed 0: 0.586/0.419  1: 0.645/0.431  2: 0.584/0.367  3: 0.687/0.520  4: 0.596/0.411
#   retrained  rs 1: 0.414/0.527  2: 0.515/0.441  3: 0.495/0.443  4: 0.835/0.764
# Best local piece on the DBA model 0.18-0.40 (global minus it >= 0.115); mean piece success
# DBA 0.125-0.195 against centralised 0.050-0.085; clean accuracy DBA 0.922-0.947,
# centralised 0.947-0.976 (0.949-0.978 before); the clean model obeys the global trigger for
# <= 0.005 of the inputs. Both attacks still gain at round 5.


@pytest.fixture(scope="module")
def runs(digits_model, digits_train, digits_test):
    """DBA and its centralised baseline, same federation, seed and trigger-pixel budget."""
    return {d: DBA(distributed=d, **SETTINGS)(digits_model, digits_train, test=digits_test, seed=0)
            for d in (True, False)}


def _carries(x: torch.Tensor, trigger) -> torch.Tensor:
    return ((x - trigger.pattern) * trigger.mask).abs().flatten(1).amax(1) == 0


def test_global_trigger_succeeds_though_no_client_trained_on_it(runs, digits_model, digits_test):
    r = runs[True]
    x = r.data.x[r.poisoned]
    assert not bool(_carries(x, r.trigger).any())                  # never the whole trigger
    assert torch.equal(torch.stack([_carries(x, p) for p in r.pieces]).sum(0),
                       torch.ones(len(x), dtype=torch.long))       # exactly one piece each
    assert attack_success_rate(digits_model, digits_test, r.trigger, 2) < 0.05
    assert r.attack_success >= 0.3
    assert r.attack_success >= max(r.local_success) + 0.05        # more than any piece
    assert r.clean_accuracy >= 0.88


def test_distributed_against_centralised_at_the_same_budget(runs):
    """The paper's comparison. At this scale DBA's global trigger beats the centralised one on
    the shipped weights at every seed (by 0.15-0.22) but not on every retrained starting
    model (by -0.11 to +0.07): the strict ordering is asserted on the shipped weights only.
    What holds throughout: the same trigger-pixel budget, a DBA trigger at most 0.2 behind,
    and pieces that work on their own far more often after DBA."""
    dist, cent = runs[True], runs[False]
    assert bool(_carries(cent.data.x[cent.poisoned], cent.trigger).all())
    # the paper's fair budget: as many trigger pixels stamped in all
    assert len(dist.poisoned) * dist.pieces[0].area == len(cent.poisoned) * cent.trigger.area
    assert dist.attack_success >= cent.attack_success - 0.2
    if retrain_seed() is None:
        assert dist.attack_success >= cent.attack_success + 0.08
    mean = {d: sum(r.local_success) / len(r.local_success) for d, r in runs.items()}
    assert mean[True] >= mean[False] + 0.03
    assert not cent.distributed and dist.distributed


def test_result_fields(runs, digits_train):
    r = runs[True]
    n = SETTINGS["rounds"]
    assert len(r.round_success) == len(r.round_accuracy) == n
    assert r.attack_success == r.round_success[-1] and r.clean_accuracy == r.round_accuracy[-1]
    assert len(r.local_success) == len(r.pieces) == SETTINGS["attackers"]
    assert isinstance(r.model, nn.Module) and not r.model.training
    assert len(r.data) == len(digits_train) and r.target == 2
    assert bool((r.data.y[r.poisoned] == 2).all())
    d = r.to_dict()
    json.dumps(d)
    assert d["method"] == "dba" and d["piece_areas"] == [3, 3, 3, 3] and d["trigger_area"] == 12


def test_shards_are_a_seeded_iid_split(digits_train):
    attack = DBA(clients=7)
    shards = attack.shards(digits_train, seed=3)
    every = torch.cat(shards)
    assert len(every) == len(digits_train) == len(every.unique())
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert all(torch.equal(a, b) for a, b in zip(shards, attack.shards(digits_train, seed=3),
                                                   strict=True))
    assert not torch.equal(shards[0], attack.shards(digits_train, seed=4)[0])


def test_triggers_split_into_disjoint_pieces():
    glob, pieces = dba_triggers((3, 10, 10), 5, size=2, gap=1)
    assert len(pieces) == 5 and glob.area == 10
    assert torch.equal(torch.stack([p.mask for p in pieces]).sum(0), glob.mask)
    assert glob.shape == (3, 10, 10)


def test_without_test_data_and_on_a_tiny_federation():
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(x=torch.rand(40, 1, 6, 6, generator=g), y=torch.arange(40) % 3,
                        classes=("a", "b", "c"), name="tiny")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    r = dba(net, data, seed=0, clients=4, attackers=2, rounds=2, size=2, poison_rate=0.5,
            distributed=False)
    assert r.attack_success is None and r.round_success == [] and r.local_success == []
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # caller's net kept
    assert not all(torch.equal(before[k], v) for k, v in r.model.state_dict().items())


def test_clear_errors(digits_train):
    small = digits_train.subset(torch.arange(40))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(InputError, match="attackers=4 leaves no benign client"):
        DBA(clients=4, attackers=4)
    with pytest.raises(InputError, match="cannot be split among clients=50"):
        DBA(clients=50)(net, small)
    with pytest.raises(InputError, match="target 12 is not a label"):
        DBA(target=12)(net, small)
    with pytest.raises(InputError, match="need 11 rows on each edge"):
        DBA(size=5, attackers=4, gap=1)(net, small)
    with pytest.raises(InputError, match="poisons none once divided among attackers=4"):
        DBA(poison_rate=0.05, distributed=False)(net, small)
