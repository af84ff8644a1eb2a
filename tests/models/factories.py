"""Model factories the CLI tests load as 'module:factory'."""

from scrutiny.models import MLP


def digits_mlp():
    return MLP(in_features=64, num_classes=10, hidden=(32,))


def seeded_digits_mlp():
    """A factory that fixes its own weights (as one loading a checkpoint would)."""
    from scrutiny.base import seeded

    with seeded(3):
        return MLP(in_features=64, num_classes=10, hidden=(32,))


def broken_factory():
    raise RuntimeError("cannot find my checkpoint")
