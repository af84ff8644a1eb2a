"""Black-box adversarial reprogramming (BAR): a frozen digits CNN, queried for probabilities
only, learns to classify the breast-cancer table embedded as an image."""

import pytest
import torch

from scrutiny.attacks.blackbox import BlackBoxReprogramming
from scrutiny.attacks.blackbox.reprogram import embed, frequency_label_map
from scrutiny.errors import InputError
from scrutiny.models import QueryModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cancer():
    from scrutiny.data import load_breast_cancer

    return load_breast_cancer(), load_breast_cancer(split="test")


def test_reprogrammed_black_box_beats_chance_on_held_out_data(digits_model, cancer):
    train, test = cancer
    majority = max(float(test.y.float().mean()), 1 - float(test.y.float().mean()))  # 0.63
    black_box = QueryModel(digits_model, output="probs")
    bar = BlackBoxReprogramming(steps=50, lr=0.3)
    program = bar.fit(black_box, train.x, train.y, input_shape=(1, 8, 8))
    # every query counted: one probe, the frequency mapping's pass over the training set,
    # then (q + 1) * batch per step
    assert program.queries == 1 + len(train.x) + 50 * 11 * 32 == black_box.queries
    # minibatch losses: the last ten steps lower than the first ten
    assert sum(program.losses[-10:]) < sum(program.losses[:10])
    before = black_box.queries
    acc = bar.score(black_box, test.x, test.y, program)
    assert black_box.queries == before + len(test.x)
    # measured above the majority rate by 0.13 (shipped CNN) and 0.25, 0.24, 0.20, 0.27
    # (CNNs retrained with seeds 1-4)
    assert acc > majority + 0.08
    # the program, not the label mapping alone, does it: the same mapping at the empty
    # program scores lower (measured by 0.08 to 0.20 on those five CNNs)
    blank = BlackBoxReprogramming(steps=1, lr=1e-9)
    p0 = blank.fit(black_box, train.x, train.y, input_shape=(1, 8, 8))
    assert torch.equal(p0.label_map, program.label_map)
    assert blank.score(black_box, test.x, test.y, p0) < acc - 0.04
    # the program lives on the frame only: the embedded table is left as it is
    x = program.transform(test.x[:3])
    emb, mask = embed(test.x[:3], (1, 8, 8), (0.0, 1.0))
    assert torch.equal(x * (1 - mask), emb * (1 - mask)) and int(mask.sum()) == 64 - 36


def test_frequency_label_mapping_follows_the_black_box_and_fixed_does_not():
    pred = torch.tensor([7, 7, 7, 2, 2, 5, 5, 5, 5, 1])
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 0, 2])
    # counts: 7 -> class 0 twice; 5 -> class 2 three times; 2 -> class 1 twice
    assert frequency_label_map(pred, y, 10, 3, 1).tolist() == [[7], [2], [5]]
    two = frequency_label_map(pred, y, 10, 3, 2)
    assert two.shape == (3, 2) and len(set(two.flatten().tolist())) == 6
    assert two[2, 0] == 5 and two[0, 0] == 7
    qm = QueryModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), output="logits")
    fixed = BlackBoxReprogramming(steps=1, label_mapping="fixed", labels_per_class=2).fit(
        qm, torch.rand(6, 5), torch.tensor([0, 1, 2, 0, 1, 2]), input_shape=(1, 8, 8))
    assert fixed.label_map.tolist() == [[0, 3], [1, 4], [2, 5]]


def test_multi_label_mapping_and_parameters():
    bar = BlackBoxReprogramming(steps=2, n_samples=2, batch_size=4)
    assert type(bar)(**bar.get_params()) == bar
    qm = QueryModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)),
                    output="logits")
    x, y = torch.rand(8, 5), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    p = bar.fit(qm, x, y, input_shape=(1, 8, 8))
    # 3 new classes x 3 source labels each, disjoint
    assert p.label_map.shape == (3, 3) and len(set(p.label_map.flatten().tolist())) == 9
    a = bar.fit(qm, x, y, input_shape=(1, 8, 8), seed=1)
    b = bar.fit(qm, x, y, input_shape=(1, 8, 8), seed=1)
    assert torch.equal(a.weights, b.weights)


def test_bad_input(digits_model):
    with pytest.raises(InputError, match="optimizer"):
        BlackBoxReprogramming(optimizer="rmsprop")
    with pytest.raises(InputError, match="label_mapping"):
        BlackBoxReprogramming(label_mapping="learned")
    with pytest.raises(InputError, match="n_samples must be > 0"):
        BlackBoxReprogramming(n_samples=0)
    x, y = torch.rand(4, 30), torch.tensor([0, 1, 0, 1])
    with pytest.raises(InputError, match="scores"):
        BlackBoxReprogramming().fit(QueryModel(digits_model, output="label"), x, y,
                                    input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="do not fit"):
        BlackBoxReprogramming().fit(QueryModel(digits_model, output="probs"), torch.rand(4, 80),
                                    y, input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="labels each"):
        BlackBoxReprogramming(labels_per_class=6).fit(QueryModel(digits_model, output="probs"),
                                                      x, y, input_shape=(1, 8, 8))
