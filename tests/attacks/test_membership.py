"""Membership inference by loss threshold (Yeom et al. CSF 2018).

Properties: an overfitted model gives its members away (advantage clearly > 0); the
advantage follows the generalisation gap (exactly equal to it for the 0-1 loss, the
paper's bounded-loss adversary with B = 1; larger for the model with the larger gap);
members and nonmembers drawn from the same held-out data give no advantage.
"""

import json

import pytest
import torch

from scrutiny.attacks.privacy import MembershipInference, MembershipResult, membership_inference
from scrutiny.attacks.privacy.membership import per_example_loss
from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.models import MLP, TorchModel
from scrutiny.models.training import train
from scrutiny.models.zoo import retrain_seed

#: The overfitted model: a one-hidden-layer MLP trained on 100 training digits for 100
#: epochs (~4 s), with the seed of $SCRUTINY_RETRAIN_SEED (default 0).
N_MEMBERS, EPOCHS = 100, 100


@pytest.fixture(scope="module")
def overfit(digits_train):
    """(model, members, held_out): ``held_out`` are the training-split points it never saw."""
    seed = retrain_seed() or 0
    order = torch.randperm(len(digits_train), generator=torch.Generator().manual_seed(seed))
    members, held_out = digits_train.subset(order[:N_MEMBERS]), digits_train.subset(order[N_MEMBERS:])
    with seeded(seed):
        net = MLP(in_features=64, num_classes=10, hidden=(64,))
    train(net, members, epochs=EPOCHS, lr=3e-3, batch_size=32, weight_decay=0.0, seed=seed,
          progress=False)
    return TorchModel(net.eval()), members, held_out


def test_overfitted_model_leaks_membership(overfit, digits_test):
    # measured (fixture seeds 0..4): advantage 0.118..0.276 (gap 0.087..0.124), AUC
    # 0.62..0.68; the same-split noise level is |advantage| <= 0.05 (test below)
    model, members, _ = overfit
    r = MembershipInference()(model, members, nonmembers=digits_test)
    assert isinstance(r, MembershipResult)
    assert r.advantage > 0.08 and r.auc > 0.58
    assert r.advantage == pytest.approx(r.tpr - r.fpr)
    assert r.balanced_accuracy == pytest.approx(0.5 + r.advantage / 2)
    assert r.threshold == pytest.approx(float(-r.member_scores.double().mean()), rel=1e-6)
    assert json.loads(json.dumps(r.to_dict()))["n_members"] == N_MEMBERS


def test_zero_one_advantage_is_the_generalization_gap(overfit, digits_test, digits_model,
                                                      digits_train):
    # Yeom et al. Theorem 2: the bounded-loss adversary's advantage is R_gen / B; with the
    # 0-1 loss (B = 1) it is the test error minus the train error, exactly
    model, members, _ = overfit
    for m, mem in ((model, members), (digits_model, digits_train)):
        r = MembershipInference(loss="zero_one")(m, mem, nonmembers=digits_test)
        assert r.advantage == pytest.approx(r.generalization_gap, abs=1e-12)
        assert r.tpr == pytest.approx(r.member_accuracy)


def test_advantage_grows_with_the_gap(overfit, digits_test, digits_model, digits_train):
    # measured: overfitted MLP gap 0.087..0.124, advantage 0.118..0.276 (fixture seeds
    # 0..4); the shipped digits CNN gap 0.018, advantage 0.025 (AUC 0.516); with
    # SCRUTINY_RETRAIN_SEED=1..4 the CNN's gap is 0.009..0.014, advantage -0.003..0.028,
    # AUC 0.502..0.518
    model, members, _ = overfit
    small = MembershipInference()(digits_model, digits_train, nonmembers=digits_test)
    large = MembershipInference()(model, members, nonmembers=digits_test)
    assert large.generalization_gap > small.generalization_gap + 0.04
    assert large.advantage > small.advantage + 0.05
    assert large.auc > small.auc + 0.05


@pytest.mark.parametrize("split_seed", range(5))
def test_no_advantage_within_the_same_held_out_data(overfit, split_seed):
    # measured (fixture seeds 0..4 x split seeds 0..4, 623 vs 624 points): |advantage|
    # <= 0.048, |AUC - 0.5| <= 0.036
    model, _, held_out = overfit
    order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(split_seed))
    half = len(order) // 2
    r = membership_inference(model, held_out.subset(order[:half]),
                             nonmembers=held_out.subset(order[half:]))
    assert abs(r.advantage) < 0.1
    assert abs(r.auc - 0.5) < 0.07


def test_reference_threshold(overfit, digits_test):
    # the threshold of the best advantage on a disjoint reference split carries over:
    # measured advantage 0.162..0.358 (fixture seeds 0..4)
    model, members, _ = overfit
    h, k = N_MEMBERS // 2, len(digits_test) // 2
    ref = (members.subset(slice(h, None)), digits_test.subset(slice(k, None)))
    r = MembershipInference(threshold="reference")(
        model, members.subset(slice(0, h)), nonmembers=digits_test.subset(slice(0, k)),
        reference=ref)
    assert r.advantage > 0.08
    # the paper's threshold, the mean training loss, read on the reference members
    mean_ref = MembershipInference()(model, members.subset(slice(0, h)),
                                     nonmembers=digits_test.subset(slice(0, k)), reference=ref)
    assert mean_ref.threshold == pytest.approx(float(per_example_loss(model, ref[0])[0].mean()))


def test_rejects_bad_calls(digits_model, digits_test):
    mi = MembershipInference()
    with pytest.raises(InputError, match="nonmembers"):
        mi(digits_model, digits_test)
    with pytest.raises(InputError, match="reference"):
        MembershipInference(threshold="reference")(digits_model, digits_test,
                                                   nonmembers=digits_test)
    with pytest.raises(InputError, match="pair"):
        mi(digits_model, digits_test, nonmembers=digits_test, reference=digits_test)
    with pytest.raises(InputError, match="both must hold points"):
        mi(digits_model, digits_test.subset([]), nonmembers=digits_test)
    with pytest.raises(InputError, match="threshold"):
        MembershipInference(threshold="median")
