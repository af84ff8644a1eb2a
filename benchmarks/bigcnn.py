"""The benchmarks' larger CNN on 28x28 digits ("BigCNN"), trained here once and cached.

Not part of the package: the zoo's models are small on purpose (tests); the
benchmarks of issue 17 also need a model of MNIST size. The architecture is
Carlini and Wagner's MNIST network (S&P 2017): conv 32-32, max-pool, conv
64-64, max-pool, fully connected 200-200, 10 logits (ReLU everywhere). It is
trained on ``scrutiny.data.load_digits(size=28, split="train")`` (the 8x8
digits upsampled) with :func:`scrutiny.models.training.train` (Adam, cosine
schedule, seed 0, one thread), and its weights are cached as safetensors in
``benchmarks/results/`` (git-ignored) under the recipe's name.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scrutiny.data import load_digits
from scrutiny.models import TorchModel

RESULTS = Path(__file__).resolve().parent / "results"
EPOCHS = 10
SEED = 0


class BigCNN(nn.Module):
    """Carlini-Wagner's MNIST CNN: conv 32-32-pool-64-64-pool, fc 200-200-10."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, side: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2))
        s = ((side - 4) // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * s * s, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
            nn.Linear(200, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_bigcnn(epochs: int = EPOCHS, seed: int = SEED, log=print) -> TorchModel:
    """The trained BigCNN on 28x28 digits (trained and cached on first use), frozen, eval mode."""
    from scrutiny.models.training import train

    net = BigCNN()
    path = RESULTS / f"digits28-bigcnn-e{epochs}-s{seed}.safetensors"
    if path.is_file():
        net.load_state_dict(load_file(path))
    else:
        log(f"training BigCNN on digits 28x28 ({epochs} epochs, seed {seed}, one thread) ...")
        torch.manual_seed(seed)
        net = BigCNN()  # initial weights from the seed
        train(net, load_digits(size=28, split="train"), epochs=epochs, lr=1e-3, seed=seed,
              threads=1, progress=False)
        RESULTS.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    model = TorchModel(net.eval(), num_classes=10, name="digits28-bigcnn")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    m = load_bigcnn()
    d = load_digits(size=28, split="test")
    with torch.no_grad():
        acc = float((m(d.x).argmax(1) == d.y).float().mean())
    print(f"BigCNN test accuracy {acc:.3f} ({time.perf_counter() - t0:.0f} s)")
