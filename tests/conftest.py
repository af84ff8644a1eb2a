"""Shared fixtures: the digits CNN (shipped weights) and its test data.

``SCRUTINY_TEST_THREADS`` sets torch's thread count (default 1; ``mixed``: one in the first
pytest-xdist process, two in the others, as ``make test-random`` runs it);
``SCRUTINY_RETRAIN_SEED`` trains the zoo and fixture models here with another seed
instead of loading the shipped weights (see ``tests/fixture_models.py``).
"""

import os

import pytest
import torch

_THREADS = os.environ.get("SCRUTINY_TEST_THREADS", "1")
if _THREADS == "mixed":  # under pytest-xdist: the first process one thread, the others two
    _THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0" else "2"
torch.set_num_threads(int(_THREADS))


def pytest_report_header(config):
    from scrutiny.models.zoo import machine_fingerprint, retrain_seed

    seed = retrain_seed()
    weights = "shipped" if seed is None else f"retrained here with seed {seed}"
    return [f"scrutiny: {machine_fingerprint()}, torch threads {torch.get_num_threads()}, "
            f"model weights {weights}"]


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Zoo weights go to SCRUTINY_CACHE when set (CI keeps it warm), else a temp dir."""
    if "SCRUTINY_CACHE" not in os.environ:
        os.environ["SCRUTINY_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def digits_model(_cache_dir):
    from scrutiny.models import pretrained

    return pretrained("digits-cnn", progress=False)


@pytest.fixture(scope="session")
def digits_test():
    from scrutiny.data import load_digits

    return load_digits(split="test")


@pytest.fixture(scope="session")
def digits_train():
    from scrutiny.data import load_digits

    return load_digits(split="train")


#: The training settings of the backdoor fixtures (a digits CNN trained here, ~11 s each).
BACKDOOR_EPOCHS = 20


@pytest.fixture(scope="session")
def badnets_digits(digits_train, digits_test):
    """A BadNets result on the digits CNN trained here: 3x3 checkerboard at the bottom right,
    target 0, 10% of the training set poisoned (replaced), 20 epochs, seed 0. Its ``model``
    is the backdoored victim, ``poisoned`` the indices of the poison points in ``data``."""
    from scrutiny.attacks.poisoning import BadNets
    from scrutiny.base import seeded
    from scrutiny.models import build

    with seeded(0):  # the initial weights, whatever ran before
        net = build("cnn", (1, 8, 8), 10)
    return BadNets(target=0, rate=0.1, epochs=BACKDOOR_EPOCHS)(net, digits_train, test=digits_test,
                                                               seed=0)


@pytest.fixture(scope="session")
def clean_victim_digits(digits_train):
    """The same architecture trained on the clean training set with the same settings as
    ``badnets_digits`` (the baseline of its clean accuracy)."""
    from scrutiny.attacks.poisoning import train_victim
    from scrutiny.base import seeded
    from scrutiny.models import build

    with seeded(0):
        net = build("cnn", (1, 8, 8), 10)
    return train_victim(net, digits_train, epochs=BACKDOOR_EPOCHS, seed=0)[0]
