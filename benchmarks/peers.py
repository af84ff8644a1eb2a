"""Import helpers for the peer libraries (benchmarks only; never imported by scrutiny).

Zennit imports ``torchvision.models.resnet`` for canonizers of torchvision's
ResNet blocks, and Quantus imports torchvision for image transforms it does not
use here. The registry's torchvision is a CUDA build that cannot load next to a
CPU torch, so when no working torchvision is installed this module registers a
minimal stand-in with those names. Importing it is a no-op when a real
torchvision imports.
"""

from __future__ import annotations

import importlib
import sys
import types


def _install_stand_in() -> None:
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # noqa: BLE001 - missing or broken (CUDA build beside a CPU torch)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    from torch import nn

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0-stand-in"
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(nn.Module):  # never instantiated
        pass

    class Bottleneck(nn.Module):  # never instantiated
        pass

    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck
    models.resnet = resnet
    transforms = types.ModuleType("torchvision.transforms")
    tv.models, tv.transforms = models, transforms
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.resnet": resnet, "torchvision.transforms": transforms})


_install_stand_in()


def optional(name: str):
    """Import a peer module, or None when it is missing or does not import."""
    try:
        return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a peer that is missing or broken
        return None
