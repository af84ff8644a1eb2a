"""The digits MLP fixture of the certification tests."""

import pytest

from tests.fixture_models import fixture_model


@pytest.fixture(scope="session")
def digits_mlp():
    """A small ReLU MLP trained on the digits (shipped weights), for radius searches."""
    return fixture_model("certify-mlp")
