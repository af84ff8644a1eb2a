"""Forward hooks on a model's layers, always removed: shared by attacks and explainers.

Feature-space attacks (:class:`scrutiny.attacks.whitebox.feature.FeatureAdversary`)
and layer explainers (Grad-CAM) both read a layer's activations; the hook lives
here, with the models, so neither has to import the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def capture(layer: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``layer``'s output of each forward in ``store["out"]``; hook removed on exit.

    Parameters
    ----------
    layer : nn.Module
        The layer to watch (e.g. ``model.layer("features.3")``).

    Yields
    ------
    dict
        ``store``; after a forward pass, ``store["out"]`` is the layer's latest output
        (with its graph, so it can be differentiated).

    Examples
    --------
    >>> lin = nn.Linear(3, 2)
    >>> with capture(lin) as store:
    ...     _ = lin(torch.zeros(4, 3))
    >>> store["out"].shape, len(lin._forward_hooks)
    (torch.Size([4, 2]), 0)
    """
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _inp, out):
        store["out"] = out

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
