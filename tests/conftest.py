"""Shared fixtures: the trained digits CNN (cached per session) and its test data."""

import os

import pytest
import torch

torch.set_num_threads(1)


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
