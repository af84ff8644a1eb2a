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

from scrutiny.errors import InputError


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


@contextlib.contextmanager
def replaced(layer: nn.Module, output: torch.Tensor) -> Iterator[None]:
    """Run the block with ``layer``'s output replaced by ``output``; hook removed on exit.

    What the layer computes is discarded and everything after it sees
    ``output`` instead (layer Integrated Gradients runs the network from a
    layer's interpolated activations this way). The replacement must have
    the shape of the layer's own output.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> with replaced(net[0], torch.full((1, 2), -1.0)):
    ...     net(torch.zeros(1, 3))
    tensor([[0., 0.]])
    """

    def hook(_m, _inp, out):
        if not isinstance(out, torch.Tensor) or out.shape != output.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the layer's output is {got}; its replacement has shape "
                             f"{tuple(output.shape)}")
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
