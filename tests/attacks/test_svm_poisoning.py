"""Poisoning SVMs (Biggio, Nelson, Laskov 2012): the KKT gradient is the loss's gradient, and
one attack point raises the SVM's validation error and hinge loss, for both kernels."""

import json

import numpy as np
import pytest
import torch

from scrutiny.attacks.poisoning import SVMPoisoning, svm_poisoning
from scrutiny.errors import InputError

#: The paper's MNIST pair 8 vs 3 on the 8x8 digits; C scaled for 64 inputs (see the class's
#: Notes): linear C=10 ~ the paper's C=1 on 784 inputs; RBF (gamma "scale" ~0.1) with C=100.
PAIR = (8, 3)
SETTINGS = {"linear": {"kernel": "linear", "C": 10.0}, "rbf": {"kernel": "rbf", "C": 100.0}}


@pytest.fixture(scope="module")
def split(digits_train):
    """100 training points of 8 vs 3 (as the paper's MNIST setting), the other 170 validate."""
    pair = torch.nonzero((digits_train.y == PAIR[0]) | (digits_train.y == PAIR[1])).flatten()
    perm = pair[torch.randperm(len(pair), generator=torch.Generator().manual_seed(0))]
    return digits_train.subset(perm[:100]), digits_train.subset(perm[100:])


@pytest.fixture(scope="module")
def runs(split, digits_test):
    """The attack for both kernels and call seeds 0..4 (the seed draws the starting point)."""
    train, val = split
    return {k: [SVMPoisoning(classes=PAIR, **kw)(None, train, validation=val, test=digits_test,
                                                 seed=s) for s in range(5)]
            for k, kw in SETTINGS.items()}


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_validation_error_and_hinge_loss_rise(runs, kernel):
    """The paper's figure: along the gradient ascent the validation hinge loss rises at every
    step but the last (the stopping rule ends on the first step that does not raise it), and
    the validation error rises with it. Measured over seeds 0..4: linear C=10: hinge
    0.065-0.104 -> 0.226-0.296 (ratio >= 2.17), error 0.006-0.024 -> 0.077-0.125 (rise >=
    0.065), test error 0.011 -> 0.056-0.101; RBF C=100: hinge 0.081-0.090 -> 0.261-0.308
    (ratio >= 3.05), error 0.006-0.012 -> 0.083-0.119 (rise >= 0.071), test error 0.011 ->
    0.045-0.101; the clean SVM's validation error is within 0.012 of the start's."""
    for r in runs[kernel]:
        h, e = r.hinge_loss, r.validation_error
        assert r.iterations >= 2
        assert all(b > a for a, b in zip(h[:-2], h[1:-1], strict=True))
        assert h[-1] > 1.6 * h[0]
        assert e[-1] >= e[0] + 0.04
        assert abs(r.clean_validation_error - e[0]) <= 0.03
        assert r.test_error_after > r.test_error_before


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_gradient_matches_finite_differences_of_the_retrained_svm(split, runs, kernel):
    """The KKT gradient equals the derivative of the validation hinge loss of an SVC
    retrained at ``x_c +- h d`` (central differences, h=1e-3), along the gradient and along
    random directions, at the point after the second step. Measured over seeds 0..4: the
    largest |difference| is 0.008 ``||g||`` (linear) and 0.004 ``||g||`` (RBF); along the
    gradient itself about 1e-4."""
    train, val = split
    attack = SVMPoisoning(classes=PAIR, **SETTINGS[kernel])
    x_tr, y_tr = attack.binary(train, PAIR)
    x_val, y_val = attack.binary(val, PAIR)
    gamma = attack.gamma_for(x_tr)
    rng = np.random.default_rng(0)
    for r in runs[kernel]:
        xc, yc = r.path[2].double().numpy(), -1.0
        x_all, y_all = np.vstack([x_tr, xc[None]]), np.append(y_tr, yc)

        def loss(point, x_all=x_all, y_all=y_all):
            x = x_all.copy()
            x[-1] = point
            return attack.hinge(attack.fit(x, y_all, gamma), x_val, y_val)[0]

        g = attack.gradient(attack.fit(x_all, y_all, gamma), x_all, y_all, x_val, y_val, gamma)
        norm = np.linalg.norm(g)
        assert norm > 0
        for d in [g / norm, *rng.standard_normal((3, len(g)))]:
            d = d / np.linalg.norm(d)
            fd = (loss(xc + 1e-3 * d) - loss(xc - 1e-3 * d)) / 2e-3
            assert abs(fd - g @ d) <= 0.02 * norm


def test_result_holds_the_poisoned_two_class_set(split, runs, digits_test):
    train, _ = split
    r = runs["linear"][0]
    assert r.poison_label == PAIR[0]                          # the first of classes by default
    assert r.poison.shape == train.x.shape[1:]
    assert float(r.poison.min()) >= 0.0 and float(r.poison.max()) <= 1.0
    assert len(r.data) == len(train) + 1 and r.poisoned.tolist() == [len(train)]
    assert torch.equal(r.data.x[-1], r.poison) and int(r.data.y[-1]) == PAIR[0]
    assert torch.equal(r.data.x[:-1], train.x) and torch.equal(r.data.y[:-1], train.y)
    # the path starts at a training point of the other class (label flipped)
    start = r.path[0]
    other = train.x[train.y == PAIR[1]].flatten(1)
    assert bool((other == start).all(1).any())
    assert torch.allclose(r.path[-1], r.poison.flatten())
    assert len(r.path) == len(r.hinge_loss) == len(r.validation_error) == r.iterations + 1
    # the reported figures are those of the returned SVMs
    x_te, y_te = SVMPoisoning(classes=PAIR).binary(digits_test, PAIR)
    assert r.test_error_after == pytest.approx(float((np.sign(r.poisoned_svc.decision_function(x_te))
                                                      != y_te).mean()))
    assert r.attack_success == r.test_error_after and r.clean_accuracy == 1 - r.test_error_after
    assert r.model is None
    d = r.to_dict()
    json.dumps(d)
    assert d["iterations"] == r.iterations and d["gamma"] is None
    assert runs["rbf"][0].gamma == pytest.approx(1 / (64 * float(train.x.double().var())), rel=0.05)


def test_poison_label_and_function_form(split):
    train, val = split
    r = svm_poisoning(train, validation=val, classes=PAIR, poison_label=3, C=10.0, max_iter=3)
    assert r.poison_label == 3 and int(r.data.y[-1]) == 3
    other = train.x[train.y == 8].flatten(1)
    assert bool((other == r.path[0]).all(1).any())
    again = SVMPoisoning(classes=PAIR, poison_label=3, C=10.0, max_iter=3)(None, train,
                                                                           validation=val)
    assert r.hinge_loss == again.hinge_loss and torch.equal(r.poison, again.poison)


def test_bad_input_is_refused(split, digits_model):
    train, val = split
    with pytest.raises(InputError, match="classes=\\(a, b\\)"):
        SVMPoisoning()(None, train, validation=val)              # 10-class data, no pair named
    with pytest.raises(InputError, match="validation="):
        SVMPoisoning(classes=PAIR)(None, train)
    with pytest.raises(InputError, match="model=None"):
        SVMPoisoning(classes=PAIR)(digits_model, train, validation=val)
    with pytest.raises(InputError, match="poison_label=5"):
        SVMPoisoning(classes=PAIR, poison_label=5)
    with pytest.raises(InputError, match="classes must be two different labels"):
        SVMPoisoning(classes=(3, 3))
    with pytest.raises(InputError, match="12 is not a label"):
        SVMPoisoning(classes=(8, 12))(None, train, validation=val)
    with pytest.raises(InputError, match="bounds"):
        SVMPoisoning(bounds=(1.0, 0.0))
    with pytest.raises(InputError, match="no point of one of the labels"):
        SVMPoisoning(classes=(8, 3))(None, train.subset(train.y == 8), validation=val)
