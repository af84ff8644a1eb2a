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
