"""Shared fixtures: the digits CNN (shipped weights) and its test data.

``SCRUTINY_TEST_THREADS`` sets torch's thread count (default 1; CI also runs 2);
``SCRUTINY_RETRAIN_SEED`` trains the zoo and fixture models here with another seed
instead of loading the shipped weights (see ``tests/fixture_models.py``).
"""

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SCRUTINY_TEST_THREADS", "1")))


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
