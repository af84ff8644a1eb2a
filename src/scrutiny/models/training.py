"""The training loop: seeded, fixed thread count, progress bar."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.progress import progress_bar


@dataclass
class TrainHistory:
    """Loss and accuracy per epoch on the training data."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (deterministic reductions)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(module: nn.Module, data: ArrayDataset, *, epochs: int = 10, lr: float = 3e-3,
          batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0, threads: int | None = 1,
          progress: bool = True) -> TrainHistory:
    """Standard cross-entropy training with Adam.

    Parameters
    ----------
    module : nn.Module
        Trained in place (on the device of its parameters).
    data : ArrayDataset
        Inputs in their natural range.
    seed : int
        Seeds initial shuffling and any randomness in the module.
    threads : int, optional
        Thread count during training (fixed for reproducible results).

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import MLP
    >>> net = MLP(in_features=64)
    >>> hist = train(net, load_digits(), epochs=2, progress=False)
    >>> len(hist.loss)
    2
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError("epochs and batch_size must be >= 1 and lr > 0")
    dev = next(module.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    was_training = module.training
    with fixed_threads(threads), torch.random.fork_rng(devices=[]), \
            progress_bar(epochs, "training", enabled=progress) as bar:
        torch.manual_seed(seed)
        module.train()
        for _ in range(epochs):
            perm = torch.randperm(len(data), generator=gen)
            tot, correct, n = 0.0, 0, 0
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = data.x[idx].to(dev), data.y[idx].to(dev)
                out = module(xb)
                loss = nn.functional.cross_entropy(out, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
                correct += int((out.argmax(1) == yb).sum())
                n += len(idx)
            sched.step()
            hist.loss.append(tot / n)
            hist.accuracy.append(correct / n)
            bar.advance(f"loss {hist.loss[-1]:.3f} acc {hist.accuracy[-1]:.3f}")
    module.train(was_training)
    return hist
