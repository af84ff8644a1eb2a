"""Weights as safetensors (never pickle) and user models from ``module:factory``."""

from __future__ import annotations

import ast
import importlib
import os
from pathlib import Path
from typing import Any

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


#: Suffixes of torch state dicts :func:`load_weights` reads with ``weights_only=True``.
TORCH_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin")


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a state dict into ``module``: a ``.safetensors`` file, or a torch file
    (``.pt``, ``.pth``, ``.bin``) read with ``torch.load(weights_only=True)`` (tensors
    and containers only: any other pickle is refused). A torch checkpoint holding the
    state dict under ``"state_dict"`` or ``"model"`` is unwrapped. Clear errors on
    mismatch.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from torch import nn
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.pt"
    >>> torch.save(nn.Linear(4, 2).state_dict(), path)
    >>> load_weights(nn.Linear(4, 2), path).out_features
    2
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise InputError(f"{path.name} is not a valid safetensors file: {e}") from e
    elif path.suffix in TORCH_SUFFIXES:
        state = _torch_state(path)
    else:
        raise InputError(f"weights must be a .safetensors file or a torch state dict "
                         f"({', '.join(TORCH_SUFFIXES)}; pickle is refused), got {path.name}")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise InputError(f"weights do not fit {type(module).__name__}: {e}") from e
    if missing or unexpected:
        raise InputError(f"weights do not fit {type(module).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return module


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a torch file, read with ``weights_only=True``."""
    try:
        obj = torch_load_safe(path)
    except Exception as e:  # an UnpicklingError for anything but tensors and containers
        raise InputError(f"{path.name} is not a torch state dict readable with "
                         f"torch.load(weights_only=True) (any other pickle is refused): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    for key in ("state_dict", "model"):  # a training checkpoint around the state dict
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path.name} does not hold a state dict (a dict of tensors), got "
                         f"{type(obj).__name__}")
    return obj


def _factory_call(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"module:factory"`` or ``"module:factory(name=value, ...)"`` as the module, the
    factory and its keyword arguments. The values must be numbers, booleans, None or
    tuples of them, read as literals (never evaluated): a spec from a config file cannot
    make a call such as ``os:system("...")``."""
    if spec.count(":") != 1:
        raise InputError(f"model must be 'module:factory', e.g. 'mypkg.nets:make_net', got {spec!r}")
    mod_name, call = (p.strip() for p in spec.split(":"))
    if "(" not in call:
        return mod_name, call, {}
    try:
        node = ast.parse(call, mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) \
                or node.args or any(k.arg is None for k in node.keywords):
            raise ValueError("only name=value arguments")
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        if not all(_plain_literal(v) for v in kwargs.values()):
            raise ValueError("values must be numbers, booleans, None or tuples of them")
    except (SyntaxError, ValueError) as e:
        raise InputError(f"model {spec!r}: the factory's arguments must be name=number "
                         f"(e.g. 'torchvision.models:resnet18(num_classes=10)'): {e}") from e
    return mod_name, node.func.id, kwargs


def _plain_literal(v: Any) -> bool:
    if isinstance(v, tuple | list):
        return all(_plain_literal(e) for e in v)
    return v is None or isinstance(v, bool | int | float)


def load_factory(spec: str, **kwargs) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (a class or a function), called with
    ``kwargs``; ``"package.module:factory(num_classes=10)"`` gives it keyword arguments
    whose values are numbers, booleans, None or tuples of them (read as literals, never
    evaluated as code).

    Examples
    --------
    >>> load_factory("torch.nn:Linear(in_features=4, out_features=2)").out_features
    2
    """
    mod_name, attr, given = _factory_call(spec)
    kwargs = {**given, **kwargs}
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
