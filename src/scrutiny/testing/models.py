"""Tiny seeded models and inputs for the common checks (CPU, milliseconds)."""

from __future__ import annotations

import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel


def tiny_cnn(seed: int = 0, in_channels: int = 1, num_classes: int = 3) -> TorchModel:
    """Conv-ReLU-Conv-ReLU-GAP-Linear with seeded random weights."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return TorchModel(net, name="tiny_cnn")


def tiny_linear(seed: int = 0, shape: tuple[int, ...] = (1, 6, 6), num_classes: int = 3) -> TorchModel:
    """``f(x) = W flatten(x) + b`` with seeded weights: every gradient is known."""
    g = torch.Generator().manual_seed(seed)
    d = 1
    for s in shape:
        d *= s
    lin = nn.Linear(d, num_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
    return TorchModel(nn.Sequential(nn.Flatten(), lin), name="tiny_linear")


def tiny_images(n: int = 5, seed: int = 0, shape: tuple[int, ...] = (1, 6, 6)) -> torch.Tensor:
    """Uniform random inputs in [0, 1]."""
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


class Failing(nn.Module):
    """Wraps a module and raises on the ``fail_at``-th forward (after running it)."""

    def __init__(self, module: nn.Module, fail_at: int = 2) -> None:
        super().__init__()
        self.inner = module
        self.fail_at = fail_at
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.inner(x)
        if self.calls >= self.fail_at:
            raise RuntimeError("forward failed on purpose")
        return out


class NonFinite(nn.Module):
    """Wraps a module and puts ``value`` (NaN or +-inf) in logit 0 of sample ``row``."""

    def __init__(self, module: nn.Module, value: float = float("nan"), row: int = 1) -> None:
        super().__init__()
        self.inner = module
        self.value = value
        self.row = row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        hit = torch.zeros_like(out, dtype=torch.bool)
        if len(out) > self.row:
            hit[self.row, 0] = True
        return torch.where(hit, torch.full_like(out, self.value), out)


def dropout_mlp(seed: int = 0, in_features: int = 64, num_classes: int = 10, hidden: int = 128,
                p: float = 0.5, heteroscedastic: bool = False) -> TorchModel:
    """Flatten-Linear-ReLU-Dropout-Linear with seeded (untrained) weights, for MC dropout.

    ``heteroscedastic=True`` doubles the output: ``K`` logits then ``K``
    log-variances of the logits (Kendall & Gal's classification head).
    """
    g = torch.Generator().manual_seed(seed)
    out = 2 * num_classes if heteroscedastic else num_classes
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(p),
                        nn.Linear(hidden, out))
    with torch.no_grad():
        for layer in (net[1], net[4]):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g)
                               / layer.weight.shape[1] ** 0.5)
            layer.bias.zero_()
    return TorchModel(net, name="dropout_mlp")


class Quantized(nn.Module):
    """A front end unknown to scrutiny: rounds inputs in [0, 1] to ``levels`` levels, then ``inner``.

    ``torch.round`` has a zero derivative, so the input gradient of the whole
    model is exactly zero (masked gradients), and it is not one of the
    defenses' declared non-differentiable transforms.
    """

    def __init__(self, inner: nn.Module, levels: int = 4) -> None:
        super().__init__()
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise InputError(f"levels must be an integer >= 2, got {levels!r}")
        self.inner = inner
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.levels - 1
        return self.inner(torch.round(x * k) / k)


def quantized_cnn(levels: int = 4) -> TorchModel:
    """The digits CNN (shipped weights, or retrained with ``SCRUTINY_RETRAIN_SEED``) behind a
    :class:`Quantized` front end of ``levels`` levels: a gradient-masked model for tests,
    loadable with ``--model scrutiny.testing.models:quantized_cnn``."""
    from scrutiny.models import pretrained

    cnn = pretrained("digits-cnn", progress=False)
    return TorchModel(Quantized(cnn.module, levels), bounds=cnn.bounds,
                      name=f"digits-cnn-quantized{levels}")


class Noisy(nn.Module):
    """Gaussian noise of std ``sigma`` added to the input inside every forward, then ``inner``.

    A randomized model that declares nothing: two passes of the same input
    differ, and gradient attacks without EOT are misled.
    """

    def __init__(self, inner: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0:
            raise InputError(f"sigma must be > 0, got {sigma!r}")
        self.inner = inner
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x + self.sigma * torch.randn_like(x))


def noisy_cnn(sigma: float = 0.1) -> TorchModel:
    """The digits CNN behind a :class:`Noisy` front end: a randomized model for tests,
    loadable with ``--model scrutiny.testing.models:noisy_cnn``."""
    from scrutiny.models import pretrained

    cnn = pretrained("digits-cnn", progress=False)
    return TorchModel(Noisy(cnn.module, sigma), bounds=cnn.bounds, name=f"digits-cnn-noisy{sigma:g}")


def _seed_weights(net: nn.Module, g: torch.Generator) -> None:
    """Seeded weights (``N(0, 1/fan_in)``, biases ``N(0, 0.1)``) and, for batch norm,
    non-trivial affine parameters and running statistics (so that in eval mode it is not
    the identity); layer norms get a non-trivial affine map too."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                c = m.num_features
                m.weight.copy_(1 + 0.3 * torch.randn(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            else:
                for name, p in m.named_parameters(recurse=False):
                    if name == "weight":
                        fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                        p.copy_(torch.randn(p.shape, generator=g) * fan_in ** -0.5)
                    else:  # biases, class token and position embeddings
                        p.copy_(0.1 * torch.randn(p.shape, generator=g))


def tiny_resnet(seed: int = 0, in_channels: int = 3, num_classes: int = 3) -> TorchModel:
    """A seeded two-stage :class:`~scrutiny.models.zoo.ResNet` (widths 4 and 8, one
    block each) with a 2x2 stride-1 max pooling after the stem, in eval mode.

    It has the parts of a real ResNet: batch norm (non-trivial running statistics),
    residual additions (an identity and a strided 1x1 projection shortcut), max and
    global average pooling and dropout; a forward and backward on a few 3x8x8 images
    takes about a millisecond.

    Examples
    --------
    >>> model = tiny_resnet()
    >>> model(tiny_images(2, shape=(3, 8, 8))).shape
    torch.Size([2, 3])
    """
    from scrutiny.models.zoo import ResNet

    g = torch.Generator().manual_seed(seed)
    net = ResNet(in_channels=in_channels, num_classes=num_classes, widths=(4, 8), blocks=1,
                 dropout=0.5)
    net.stem.append(nn.MaxPool2d(2, stride=1))
    _seed_weights(net, g)
    return TorchModel(net, name="tiny_resnet").eval()


def tiny_vit(seed: int = 0, in_channels: int = 3, num_classes: int = 3, image_size: int = 8
             ) -> TorchModel:
    """A seeded :class:`~scrutiny.models.zoo.ViT` (2x2 patches, width 8, one block of two
    heads), in eval mode.

    It has the parts of a real vision transformer: a patch-embedding convolution, a
    class token and position embeddings, layer norm, multi-head self-attention with an
    explicit softmax, a GELU MLP and dropout; a forward and backward on a few 3x8x8
    images takes about a millisecond.

    Examples
    --------
    >>> model = tiny_vit()
    >>> model(tiny_images(2, shape=(3, 8, 8))).shape
    torch.Size([2, 3])
    """
    from scrutiny.models.zoo import ViT

    g = torch.Generator().manual_seed(seed)
    net = ViT(in_channels=in_channels, image_size=image_size, num_classes=num_classes, patch=2,
              dim=8, depth=1, heads=2, dropout=0.5)
    _seed_weights(net, g)
    return TorchModel(net, name="tiny_vit").eval()
