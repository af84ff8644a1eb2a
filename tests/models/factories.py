"""Model factories the CLI tests load as 'module:factory'."""

from scrutiny.models import MLP


def digits_mlp():
    return MLP(in_features=64, num_classes=10, hidden=(32,))
