"""Deep Leakage from Gradients (Zhu et al. NeurIPS 2019) and iDLG (Zhao et al. 2020).

Properties: the label is read off the shared gradient exactly (iDLG); a private input is
rebuilt from its gradient (low MSE). Reference levels of MSE on the digits test split: a
random other digit 0.148, the mean digit 0.074, the nearest other digit 0.022 (median);
the dummy initialisation ~0.3. DLG's setting (a network early in training) is the
untrained one; on the zoo's trained ReLU networks the gradient of a fitted sample nearly
vanishes and the reconstruction mostly fails (figures in the docstring of
``scrutiny.attacks.privacy.DLG``).
"""

import json

import pytest
import torch
import torch.nn.functional as F

from scrutiny.attacks.privacy import DLG, IDLG, LeakageResult, idlg
from scrutiny.attacks.privacy.leakage import idlg_labels, shared_gradient
from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.models import build, pretrained
from scrutiny.models.data_method import same_result

SEEDS = range(5)
#: A reconstruction this close to its private input is that input: the nearest *other*
#: test digit is at MSE 0.022 (median), a random one at 0.148.
RECOVERED = 0.01


def _untrained_mlp():
    """The digits MLP at its seeded initialisation: the paper's untrained client model."""
    with seeded(0):
        return build("mlp", (1, 8, 8), 10)


@pytest.fixture(scope="module")
def digits_mlp(_cache_dir):
    return pretrained("digits-mlp", progress=False)


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp"])
def test_idlg_reads_the_label_of_every_sample(name, digits_test, _cache_dir):
    # iDLG's sign rule is exact: the true label's row of the last weight gradient is the
    # only negative one, also for the misclassified samples (450/450 on both models).
    model = pretrained(name, progress=False)
    for i in range(len(digits_test)):
        g = shared_gradient(model, digits_test.x[i:i + 1], digits_test.y[i:i + 1])
        assert int(idlg_labels(g, 10)[0]) == int(digits_test.y[i]), i


@pytest.mark.parametrize("seed", SEEDS)
def test_idlg_result_has_the_true_label(digits_model, digits_mlp, digits_test, seed):
    worst = int(F.cross_entropy(digits_model.logits(digits_test.x), digits_test.y,
                                reduction="none").argmax())  # misclassified
    for model in (digits_model, digits_mlp):
        for i in (seed, worst):
            r = IDLG(iterations=1, max_iter=1)(model, digits_test.subset([i]), seed=seed)
            assert r.label_accuracy == 1.0 and int(r.labels[0]) == int(digits_test.y[i])


@pytest.mark.parametrize("method", [DLG, IDLG])
@pytest.mark.parametrize("seed", SEEDS)
def test_rebuilds_one_input_of_an_untrained_mlp(digits_test, method, seed):
    # measured (sample `seed`, seeds 0..4): MSE <= 2e-4 (DLG) / 3e-3 (iDLG) after
    # 30 iterations, from an initialisation at MSE 0.24..0.32
    batch = digits_test.subset([seed])
    r = method(iterations=30)(_untrained_mlp(), batch, seed=seed)
    assert isinstance(r, LeakageResult)
    assert float(r.mse[0]) < RECOVERED < 0.2 < float(r.init_mse[0])
    assert r.label_accuracy == 1.0 and int(r.labels[0]) == int(batch.y[0])
    assert float(r.x.min()) >= 0.0 and float(r.x.max()) <= 1.0
    assert r.history[-1] <= r.history[0] and r.gradient_loss == min(r.history)


def test_rebuilds_a_batch_of_two_matched(digits_test):
    # measured (random distinct-label pairs, seeds 0..4): mean MSE < 1e-4 for DLG and iDLG
    batch = digits_test.subset([0, 1])
    r = DLG(iterations=30)(_untrained_mlp(), batch, seed=0)
    assert (r.mse < RECOVERED).all()
    # x[i] is matched to sample i: each is far from the other sample (MSE 0.148 typical)
    other = ((r.x.flip(0) - batch.x) ** 2).flatten(1).mean(1)
    assert (other > 5 * RECOVERED).all()
    assert r.label_accuracy == 1.0


def test_given_gradient_equals_computed_gradient(digits_test):
    model, batch = _untrained_mlp(), digits_test.subset([3])
    a = IDLG(iterations=3)(model, batch, seed=1)
    g = shared_gradient(model, batch.x, batch.y)
    b = IDLG(iterations=3)(model, batch, seed=1, gradient=g)
    assert same_result(a, b)
    blind = IDLG(iterations=3)(model, None, seed=1, gradient=g, batch_size=1,
                               input_shape=(1, 8, 8))
    assert blind.mse is None and blind.label_accuracy is None
    assert torch.equal(blind.x, a.x) and torch.equal(blind.labels, a.labels)
    assert json.loads(json.dumps(a.to_dict()))["label_accuracy"] == 1.0


def test_model_is_left_unchanged(digits_test):
    model = _untrained_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    idlg(model, digits_test.subset([0]), iterations=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_rejects_bad_calls(digits_test):
    model, batch = _untrained_mlp(), digits_test.subset([0])
    g = shared_gradient(model, batch.x, batch.y)
    with pytest.raises(InputError, match="private batch"):
        DLG()(model, None)
    with pytest.raises(InputError, match="batch_size"):
        DLG()(model, None, gradient=g)
    with pytest.raises(InputError, match="tensors"):
        DLG()(model, batch, gradient=g[:-1])
    with pytest.raises(InputError, match="shape"):
        DLG()(model, batch, gradient=[t.flatten() for t in g])
    with pytest.raises(InputError, match="batch_size=2"):
        DLG()(model, batch, gradient=g, batch_size=2)
    with pytest.raises(InputError, match="empty"):
        DLG()(model, digits_test.subset([]))
    with pytest.raises(InputError, match="nothing to match"):
        DLG()(model, batch, gradient=[torch.zeros_like(t) for t in g])
