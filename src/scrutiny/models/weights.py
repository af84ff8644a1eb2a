"""Weights as safetensors (never pickle) and user models from ``module:factory``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scrutiny.errors import InputError


def cache_dir() -> Path:
    """Where trained zoo weights live: ``$SCRUTINY_CACHE`` or ``~/.cache/scrutiny``."""
    root = os.environ.get("SCRUTINY_CACHE") or Path.home() / ".cache" / "scrutiny"
    return Path(root)


def save_weights(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Save ``module.state_dict()`` to a safetensors file (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    tmp.replace(path)
    return path


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors state dict into ``module``; clear errors on mismatch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise InputError(f"weights must be a .safetensors file (pickle is refused), got {path.name}")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"{path.name} is not a valid safetensors file: {e}") from e
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise InputError(f"weights do not fit {type(module).__name__}: {e}") from e
    if missing or unexpected:
        raise InputError(f"weights do not fit {type(module).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module


def load_factory(spec: str, **kwargs) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (a class or a function)."""
    if spec.count(":") != 1:
        raise InputError(f"model must be 'module:factory', e.g. 'mypkg.nets:make_net', got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"cannot import {mod_name!r}: {e}") from e
    factory = getattr(mod, attr, None)
    if factory is None or not callable(factory):
        raise InputError(f"{mod_name!r} has no callable {attr!r}")
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: one clear line, not a traceback
        raise InputError(f"{spec} raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise InputError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def torch_load_safe(path: str | Path):
    """``torch.load`` restricted to tensors (``weights_only=True``)."""
    return torch.load(path, map_location="cpu", weights_only=True)
