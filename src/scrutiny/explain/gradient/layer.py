"""Attributions at a layer: gradients with respect to a layer's activations.

The gradient family takes ``layer=`` (a layer name of the wrapped module):
:class:`~scrutiny.explain.gradient.simple.InputXGradient` then gives Captum's
LayerGradientXActivation, ``a * d S_target / d a`` with ``a`` the layer's
output, and :class:`~scrutiny.explain.gradient.integrated.IntegratedGradients`
Captum's LayerIntegratedGradients, the path integral over the layer's
activations from those of the baseline input to those of ``x``. The
attributions then have the shape of the layer's output and
``Explanation.location`` names the layer.
"""

from __future__ import annotations

import torch

from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.hooks import capture, replaced
from scrutiny.models.wrapper import TorchModel


def _checked(name: str, out: object) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise InputError(f"layer {name!r} outputs {type(out).__name__}, not one tensor; "
                         "choose a layer with a single tensor output")
    return out


def layer_activations(model: TorchModel, name: str, x: torch.Tensor) -> torch.Tensor:
    """The output of layer ``name`` at inputs ``x`` (no graph)."""
    with capture(model.layer(name)) as store, torch.no_grad():
        model(x)
    if "out" not in store:
        raise InputError(f"layer {name!r} is not called in the model's forward pass")
    return _checked(name, store["out"]).detach()


def layer_gradient(model: TorchModel, name: str, x: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d z_target / d a, a)`` with ``a`` the output of layer ``name`` at ``x``."""
    # parameters are frozen: the input must carry the graph to the layer
    x = x.detach().requires_grad_(True)
    with capture(model.layer(name)) as store:
        out = model(x).gather(1, target[:, None])[:, 0]
    if "out" not in store:
        raise InputError(f"layer {name!r} is not called in the model's forward pass")
    a = _checked(name, store["out"])
    return grad_wrt(out, a), a.detach()


def batched_layer_gradient(model: TorchModel, name: str, x: torch.Tensor, target: torch.Tensor,
                           batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`layer_gradient` in chunks of ``batch_size`` (an empty batch: one empty chunk)."""
    parts = [layer_gradient(model, name, x[i:i + batch_size], target[i:i + batch_size])
             for i in range(0, max(len(x), 1), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class LayerPath:
    """The network from a layer on, as a function of that layer's activations.

    ``path(points, rows)`` runs the model on ``x[rows]`` with the layer's
    output replaced by ``points`` (one row per entry of ``rows``), as Captum's
    LayerIntegratedGradients does: whatever does not pass through the layer
    sees the original inputs.
    """

    def __init__(self, model: TorchModel, name: str, x: torch.Tensor) -> None:
        self.model, self.layer, self.x = model, model.layer(name), x

    def __call__(self, points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with replaced(self.layer, points):
            return self.model(self.x[rows])
