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
from scrutiny.data.embedded import COLOUR_DIGITS_MEAN, COLOUR_DIGITS_STD
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


class BasicBlock(nn.Module):
    """A residual block of two 3x3 convolutions with batch norm (He et al. 2016).

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is the
    identity, or a strided 1x1 convolution with batch norm where the shape changes.

    Examples
    --------
    >>> BasicBlock(8, 16, stride=2)(torch.zeros(2, 8, 8, 8)).shape
    torch.Size([2, 16, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small CIFAR-style residual network (He et al. 2016).

    Stem (3x3 convolution, batch norm, ReLU), one stage of :class:`BasicBlock`
    per entry of ``widths`` (each after the first halves the resolution),
    global average pooling, dropout and a linear classifier. Layers:
    ``stem``, ``layer1`` ... ``layerN`` (the last is the CAM layer), ``pool``,
    ``dropout``, ``classifier``.

    References
    ----------
    He, Zhang, Ren & Sun (2016). Deep residual learning for image recognition. CVPR.

    Examples
    --------
    >>> ResNet(in_channels=3, num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10,
                 widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        if not widths or blocks < 1:
            raise InputError(f"a ResNet needs widths and blocks >= 1, got {widths!r}, {blocks!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        c = widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(c if j == 0 else w, w, stride=2 if (i > 0 and j == 0) else 1)
                     for j in range(blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            c = w
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


class Attention(nn.Module):
    """Multi-head self-attention with an explicit softmax (Vaswani et al. 2017)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = self.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al. 2021).

    Non-overlapping ``patch`` x ``patch`` patches embedded by a strided
    convolution, a class token and learned position embeddings, ``depth``
    pre-norm blocks (:class:`TransformerBlock`: layer norm, multi-head
    self-attention, GELU MLP), a final layer norm and a linear head on the
    class token. Layers: ``patch_embed``, ``blocks.0`` ... , ``norm``, ``head``.

    References
    ----------
    Dosovitskiy et al. (2021). An image is worth 16x16 words: transformers for
    image recognition at scale. ICLR.

    Examples
    --------
    >>> ViT(in_channels=3, image_size=32, num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, *,
                 patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if image_size % patch:
            raise InputError(f"image_size {image_size} is not a multiple of patch {patch}")
        n = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, dropout=dropout)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1) + self.pos_embed
        t = self.norm(self.blocks(self.dropout(t)))
        return self.head(t[:, 0])


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
    #: Per-channel normalisation the model applies first (``TorchModel(mean=, std=)``):
    #: it takes and is attacked on ``[0, 1]`` inputs; empty for none.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def describe(self) -> str:
        """The recipe as canonical JSON (with the zoo version): what shipped weights record.
        An empty normalisation is left out, so recipes without one describe as before."""
        d = {k: v for k, v in asdict(self).items() if k not in ("mean", "std") or v}
        return json.dumps({**d, "zoo_version": ZOO_VERSION}, sort_keys=True)

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
    # CIFAR-size (32x32x3) ResNet on colourised digits, normalised inside the model
    "colour-digits-resnet": Recipe("colour_digits", "resnet", epochs=8, lr=3e-3,
                                   mean=COLOUR_DIGITS_MEAN, std=COLOUR_DIGITS_STD),
}


def build(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """An untrained network of ``arch`` ("cnn", "mlp", "resnet" or "vit") for the input shape."""
    if arch == "cnn":
        if len(input_shape) != 3:
            raise InputError(f"the cnn needs image inputs (C, H, W), got shape {input_shape}")
        return SmallCNN(in_channels=input_shape[0], num_classes=num_classes)
    if arch == "mlp":
        n = 1
        for s in input_shape:
            n *= s
        return MLP(in_features=n, num_classes=num_classes)
    if arch in ("resnet", "vit"):
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise InputError(f"the {arch} needs square image inputs (C, H, W), got shape {input_shape}")
        if arch == "resnet":
            return ResNet(in_channels=input_shape[0], num_classes=num_classes)
        patch = 4 if input_shape[1] % 4 == 0 else 2
        return ViT(in_channels=input_shape[0], image_size=input_shape[1], num_classes=num_classes,
                   patch=patch)
    raise InputError(f"unknown arch {arch!r}; accepted: cnn, mlp, resnet, vit")


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
        # the wrapper is trained (its normalisation first); the state is the network's
        train(_wrap(net, r, data.num_classes, name), data, epochs=r.epochs, lr=r.lr,
              batch_size=r.batch_size, weight_decay=r.weight_decay, seed=r.seed,
              progress=progress, objective=objective)
        save_weights(net, path, metadata={"recipe": r.describe(), "name": name,
                                          "trained_on": machine_fingerprint()})
    model = _wrap(net, r, data.num_classes, name)
    return model.to(device) if device is not None else model


def _wrap(net: nn.Module, recipe: Recipe, num_classes: int, name: str) -> TorchModel:
    """``net`` as a TorchModel with the recipe's normalisation (none when it has none)."""
    norm = {"mean": recipe.mean, "std": recipe.std} if recipe.mean else {}
    return TorchModel(net, num_classes=num_classes, name=name, **norm)


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
