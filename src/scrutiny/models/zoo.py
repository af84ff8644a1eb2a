"""Small architectures and the trained-on-demand model zoo."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from scrutiny import registry
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

#: Weights trained once and shipped with the package: every machine loads the same numbers.
SHIPPED = Path(__file__).parent / "shipped"

#: The registered defense whose ``objective()`` trains the adversarial recipes. The zoo
#: resolves it through :mod:`scrutiny.registry` by name, so models never import defenses.
ADVERSARIAL_TRAINING = "defense:adversarial_training"

#: Environment variable: when set to an integer, zoo models (and the test suite's fixture
#: models) ignore the shipped weights and are trained here with this seed instead.
RETRAIN_SEED_ENV = "SCRUTINY_RETRAIN_SEED"


def machine_fingerprint() -> str:
    """What makes weights trained here differ from another machine's for the same recipe.

    The torch version and the vector instruction set torch dispatches to on this CPU
    (AVX2 and AVX-512 kernels sum in different orders, so training drifts apart).

    Examples
    --------
    >>> machine_fingerprint().startswith("torch-")
    True
    """
    return f"torch-{torch.__version__.split('+')[0]}/{torch.backends.cpu.get_cpu_capability()}"


def retrain_seed() -> int | None:
    """The seed of ``$SCRUTINY_RETRAIN_SEED``, or None when it is not set."""
    value = os.environ.get(RETRAIN_SEED_ENV, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as e:
        raise InputError(f"{RETRAIN_SEED_ENV} must be an integer seed, got {value!r}") from e


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
    #: Adversarial training: parameters of the registered defense :data:`ADVERSARIAL_TRAINING`
    #: (:class:`scrutiny.defenses.training.AdversarialTraining`) as ``(name, value)`` pairs
    #: (its ``method``, ``eps``, ``steps``...); empty for standard training.
    adversarial: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        """The recipe as canonical JSON (with the zoo version): what shipped weights record."""
        return json.dumps({**asdict(self), "zoo_version": ZOO_VERSION}, sort_keys=True)

    def key(self) -> str:
        """Cache key of weights trained on this machine: the recipe and the machine's fingerprint."""
        blob = self.describe() + machine_fingerprint()
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


#: Metadata keys of a weights file written by :func:`save_built` (how to rebuild its network).
BUILT_KEYS = ("scrutiny.arch", "scrutiny.input_shape", "scrutiny.num_classes")


def save_built(module: nn.Module, path: str | Path, *, arch: str, input_shape: tuple[int, ...],
               num_classes: int, metadata: dict[str, str] | None = None) -> Path:
    """Save the weights of a network made by :func:`build` with what rebuilds it (its arch,
    input shape and class count in the safetensors metadata), so that :func:`load_built`
    (and ``scrutiny audit --model FILE.safetensors``) can load it with no code.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> net = build("cnn", (1, 8, 8), 10)
    >>> path = save_built(net, pathlib.Path(tempfile.mkdtemp()) / "net.safetensors",
    ...                   arch="cnn", input_shape=(1, 8, 8), num_classes=10)
    >>> load_built(path).num_classes
    10
    """
    shape = ",".join(str(int(s)) for s in input_shape)
    meta = {**(metadata or {}), "scrutiny.arch": arch, "scrutiny.input_shape": shape,
            "scrutiny.num_classes": str(int(num_classes))}
    return save_weights(module, path, metadata=meta)


def load_built(path: str | Path, *, name: str | None = None) -> TorchModel:
    """The network a :func:`save_built` file describes, with its weights (no pickle, no code
    from the file: the architecture is one of :func:`build`'s)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{path.name} is not a valid safetensors file: {e}") from e
    if not all(k in meta for k in BUILT_KEYS):
        raise InputError(f"{path.name} does not say which network it holds (written by "
                         "save_built, e.g. by `scrutiny poison`); for your own network give "
                         "--model module:factory --weights FILE")
    try:
        shape = tuple(int(v) for v in meta["scrutiny.input_shape"].split(","))
        k = int(meta["scrutiny.num_classes"])
    except ValueError as e:
        raise InputError(f"{path.name}: malformed scrutiny metadata ({e})") from e
    net = build(meta["scrutiny.arch"], shape, k)
    load_weights(net, path)
    return TorchModel(net.eval(), num_classes=k, name=name or path.stem)


def pretrained(name: str = "digits-cnn", *, retrain: bool = False, seed: int | None = None,
               progress: bool = True, device: str | torch.device | None = None) -> TorchModel:
    """A zoo model: the weights shipped with scrutiny, or trained here and cached.

    Shipped weights are the same on every machine. A model is trained here (seconds
    to a minute on a CPU; cached as safetensors under :func:`cache_dir`, keyed by
    the recipe and :func:`machine_fingerprint`) when ``retrain`` is set, when
    another ``seed`` is asked for (argument or ``$SCRUTINY_RETRAIN_SEED``), or when
    no shipped weights match the current recipe.

    Parameters
    ----------
    name : str
        One of :data:`RECIPES`.
    retrain : bool
        Ignore shipped and cached weights and train again.
    seed : int, optional
        Train with this seed (initial weights and data order) instead of the
        recipe's; default ``$SCRUTINY_RETRAIN_SEED`` when set, else the recipe's.
    device : str or torch.device, optional
        Where the returned model lives.

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
    if seed is None:
        seed = retrain_seed()
    if seed is not None:
        r = replace(r, seed=int(seed))
    data = load(r.dataset, split="train")
    with seeded(r.seed):  # the initial weights are part of the recipe
        net = build(r.arch, tuple(data.input_shape), data.num_classes)
    shipped = SHIPPED / f"{name}.safetensors"
    path = cache_dir() / f"{name}-{r.key()}.safetensors"
    if not retrain and r == RECIPES[name] and _shipped_matches(shipped, r):
        load_weights(net, shipped)
    elif path.is_file() and not retrain:
        load_weights(net, path)
    else:
        objective = None
        if r.adversarial:  # resolved by name: the zoo (models) does not import defenses
            objective = registry.create(ADVERSARIAL_TRAINING, **dict(r.adversarial)).objective()
        train(net, data, epochs=r.epochs, lr=r.lr, batch_size=r.batch_size,
              weight_decay=r.weight_decay, seed=r.seed, progress=progress, objective=objective)
        save_weights(net, path, metadata={"recipe": r.describe(), "name": name,
                                          "trained_on": machine_fingerprint()})
    model = TorchModel(net, num_classes=data.num_classes, name=name)
    return model.to(device) if device is not None else model


def _shipped_matches(path: Path, recipe: Recipe) -> bool:
    """Whether ``path`` holds shipped weights of exactly ``recipe`` (warns when they are stale)."""
    if not path.is_file():
        return False
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("recipe") == recipe.describe():
        return True
    warnings.warn(f"the shipped weights {path.name} were trained by another recipe or zoo "
                  "version; training here instead (regenerate them with `make weights`)",
                  stacklevel=3)
    return False


def ship(names: list[str] | None = None, *, directory: Path = SHIPPED, progress: bool = True) -> None:
    """Train zoo models with their recipes and write them as the shipped weights.

    Run by ``make weights`` when a recipe, an architecture or the training code changes.
    """
    for name in names or list(RECIPES):
        model = pretrained(name, retrain=True, seed=RECIPES[name].seed, progress=progress)
        save_weights(model.module, directory / f"{name}.safetensors",
                     metadata={"recipe": RECIPES[name].describe(), "name": name,
                               "trained_on": machine_fingerprint()})
