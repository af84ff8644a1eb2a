"""Small architectures and the trained-on-demand model zoo."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.models.weights import cache_dir, load_weights, save_weights
from scrutiny.models.wrapper import TorchModel


class SmallCNN(nn.Module):
    """Three 3x3 convolutions, global average pooling and one linear layer.

    The GAP + linear head makes CAM exact for it. Layers: ``features.0`` ...
    ``features.6`` (the last convolution is ``features.5``), ``classifier``.

    Examples
    --------
    >>> SmallCNN(in_channels=1, num_classes=10)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(2 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class MLP(nn.Module):
    """A ReLU multilayer perceptron on flattened inputs.

    Examples
    --------
    >>> MLP(in_features=64, num_classes=10)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_features: int, num_classes: int = 10,
                 hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: Bumped whenever the architectures or the training code change, so cached weights
#: trained by an older version are not reused.
ZOO_VERSION = 2


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is built and trained (all of it goes into the cache key)."""

    dataset: str
    arch: str
    epochs: int
    lr: float = 3e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0
    #: Adversarial training: parameters of
    #: :class:`scrutiny.defenses.training.AdversarialTraining` as ``(name, value)`` pairs
    #: (its ``method``, ``eps``, ``steps``...); empty for standard training.
    adversarial: tuple[tuple[str, Any], ...] = ()

    def key(self) -> str:
        fields = asdict(self)
        if not self.adversarial:  # standard recipes keep the keys they had before the field
            del fields["adversarial"]
        blob = (json.dumps(fields, sort_keys=True) + torch.__version__.split("+")[0]
                + f"/zoo-{ZOO_VERSION}")
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


RECIPES: dict[str, Recipe] = {
    "digits-cnn": Recipe("digits", "cnn", epochs=30),
    "digits-mlp": Recipe("digits", "mlp", epochs=40),
    "synthetic-cnn": Recipe("synthetic", "cnn", epochs=15),
    "breast-cancer-mlp": Recipe("breast_cancer", "mlp", epochs=60),
    # Madry-style PGD adversarial training at linf eps 0.1 (see docs/defenses.md for figures)
    "digits-cnn-pgd": Recipe("digits", "cnn", epochs=30,
                             adversarial=(("method", "pgd"), ("eps", 0.1), ("steps", 7))),
    "digits-cnn-trades": Recipe("digits", "cnn", epochs=30,
                                adversarial=(("method", "trades"), ("eps", 0.1), ("steps", 7))),
}


def build(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """An untrained network of ``arch`` ("cnn" or "mlp") for the input shape."""
    if arch == "cnn":
        if len(input_shape) != 3:
            raise InputError(f"the cnn needs image inputs (C, H, W), got shape {input_shape}")
        return SmallCNN(in_channels=input_shape[0], num_classes=num_classes)
    if arch == "mlp":
        n = 1
        for s in input_shape:
            n *= s
        return MLP(in_features=n, num_classes=num_classes)
    raise InputError(f"unknown arch {arch!r}; accepted: cnn, mlp")


def pretrained(name: str = "digits-cnn", *, retrain: bool = False, progress: bool = True,
               device: str | torch.device | None = None) -> TorchModel:
    """A zoo model, trained on first use (seconds on a CPU) and cached as safetensors.

    Parameters
    ----------
    name : str
        One of :data:`RECIPES`.
    retrain : bool
        Ignore the cache and train again.

    Examples
    --------
    >>> model = pretrained("digits-cnn", progress=False)
    >>> model.num_classes
    10
    """
    from scrutiny.data import load
    from scrutiny.models.training import train

    if name not in RECIPES:
        raise InputError(f"unknown zoo model {name!r}; available: {', '.join(RECIPES)}")
    r = RECIPES[name]
    data = load(r.dataset, split="train")
    with seeded(r.seed):  # the initial weights are part of the recipe
        net = build(r.arch, tuple(data.input_shape), data.num_classes)
    path = cache_dir() / f"{name}-{r.key()}.safetensors"
    if path.is_file() and not retrain:
        load_weights(net, path)
    else:
        objective = None
        if r.adversarial:
            from scrutiny.defenses.training import AdversarialTraining

            objective = AdversarialTraining(**dict(r.adversarial)).objective()
        train(net, data, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size,
              weight_decay=r.weight_decay, seed=r.seed, progress=progress, objective=objective)
        save_weights(net, path, metadata={"recipe": json.dumps(asdict(r)), "name": name})
    model = TorchModel(net, num_classes=data.num_classes, name=name)
    return model.to(device) if device is not None else model
