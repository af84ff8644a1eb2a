"""The training loop: seeded, fixed thread count, progress bar, checkpoints and resume.

Adversarial training goes through the same loop: pass an ``objective``
(see :mod:`scrutiny.defenses.training`) instead of the default cross-entropy.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
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


#: ``objective(module, x, y) -> (loss, logits)``: the scalar loss to minimise on a batch
#: and the logits whose accuracy the history records (of the clean or the perturbed batch).
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

_CKPT_VERSION = 1


def cross_entropy(module: nn.Module, x: torch.Tensor, y: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The default objective: mean cross-entropy of ``module(x)``."""
    out = module(x)
    return nn.functional.cross_entropy(out, y), out


def _describe(objective: Any) -> str:
    """A description of the objective that is stable across processes (no addresses)."""
    if hasattr(objective, "__qualname__"):
        return f"{getattr(objective, '__module__', '')}.{objective.__qualname__}"
    if type(objective).__repr__ is object.__repr__:
        return type(objective).__qualname__
    return repr(objective)


def _save_checkpoint(path: Path, module: nn.Module, opt: torch.optim.Optimizer,
                     sched: Any, gen: torch.Generator, epoch: int, hist: TrainHistory,
                     config: dict[str, Any]) -> None:
    """Weights, optimizer tensors and RNG states as safetensors; the rest as JSON (no pickle)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt_state["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = gen.get_state()
    meta = {"version": _CKPT_VERSION, "epoch": epoch, "history": asdict(hist), "config": config,
            "param_groups": opt_state["param_groups"], "opt_scalars": scalars,
            "scheduler": sched.state_dict()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp))
    side = Path(str(path) + ".json")
    tmp_side = Path(str(side) + ".tmp")
    tmp_side.write_text(json.dumps(meta))
    tmp.replace(path)
    tmp_side.replace(side)


def _load_checkpoint(path: Path, module: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                     gen: torch.Generator, config: dict[str, Any]) -> tuple[int, TrainHistory] | None:
    """Restore a checkpoint written by :func:`_save_checkpoint`; None if absent."""
    side = Path(str(path) + ".json")
    if not path.is_file() or not side.is_file():
        return None
    meta = json.loads(side.read_text())
    if meta.get("version") != _CKPT_VERSION or meta.get("config") != config:
        raise InputError(f"checkpoint {path} was written by a different training setup "
                         f"({meta.get('config')}); use another path or resume=False")
    tensors = load_file(str(path))
    module.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta["opt_scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.generator"])
    return meta["epoch"], TrainHistory(**meta["history"])


def train(module: nn.Module, data: ArrayDataset, *, epochs: int = 10, lr: float = 3e-3,
          batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0, threads: int | None = 1,
          progress: bool | None = None, objective: Objective | None = None,
          checkpoint: str | Path | None = None, resume: bool = True) -> TrainHistory:
    """Training with Adam and a cosine schedule; cross-entropy unless ``objective`` is given.

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
    objective : callable, optional
        ``objective(module, x, y) -> (loss, logits)`` per batch (default
        :func:`cross_entropy`); adversarial training objectives live in
        :mod:`scrutiny.defenses.training`. Randomness inside it must come from
        torch's global RNG (seeded here and saved in checkpoints).
    checkpoint : str or Path, optional
        A ``.safetensors`` file written after every epoch (weights, Adam's
        state tensors and the RNG states) with a JSON sidecar
        ``checkpoint + ".json"`` (epoch, history, scheduler, optimizer
        hyperparameters). Never pickle.
    resume : bool
        If ``checkpoint`` exists, continue from it: the result equals the
        uninterrupted run exactly (same seed, data and settings, which are
        checked).

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
    if checkpoint is not None and not str(checkpoint).endswith(".safetensors"):
        raise InputError(f"checkpoint must be a .safetensors path, got {str(checkpoint)!r}")
    objective = objective or cross_entropy
    dev = next(module.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    hist = TrainHistory()
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
              "seed": seed, "n": len(data), "objective": _describe(objective)}
    was_training = module.training
    start = 0
    with fixed_threads(threads), torch.random.fork_rng(devices=[]), \
            progress_bar(epochs, "training", enabled=progress) as bar:
        torch.manual_seed(seed)
        if checkpoint is not None and resume:
            done = _load_checkpoint(Path(checkpoint), module, opt, sched, gen, config)
            if done is not None:
                start, hist = done
                bar.advance("resumed", n=start)
        module.train()
        for epoch in range(start, epochs):
            perm = torch.randperm(len(data), generator=gen)
            tot, correct, n = 0.0, 0, 0
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = data.x[idx].to(dev), data.y[idx].to(dev)
                loss, out = objective(module, xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot += loss.item() * len(idx)
                correct += int((out.argmax(1) == yb).sum())
                n += len(idx)
            sched.step()
            hist.loss.append(tot / n)
            hist.accuracy.append(correct / n)
            if checkpoint is not None:
                _save_checkpoint(Path(checkpoint), module, opt, sched, gen, epoch + 1, hist, config)
            bar.advance(f"loss {hist.loss[-1]:.3f} acc {hist.accuracy[-1]:.3f}")
    module.train(was_training)
    return hist
