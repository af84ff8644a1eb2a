"""Grad-CAM at any named convolutional layer."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, capture, check_batch_size
from scrutiny.models.wrapper import TorchModel
from scrutiny.registry import register
from scrutiny.types import Tags


def last_conv(model: TorchModel) -> str:
    """Name of the last ``nn.Conv2d`` of the wrapped module."""
    names = [n for n, m in model.module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError(f"{model.name} has no Conv2d layer; pass layer= one of: "
                         + ", ".join(model.layer_names()))
    return names[-1]


@register("explainer", "grad_cam", paper="Selvaraju et al. Grad-CAM: visual explanations "
          "from deep networks via gradient-based localization. ICCV 2017")
class GradCAM(Explainer):
    """Grad-CAM: ``ReLU(sum_k a_k A^k)`` with ``a_k`` the spatial mean of ``dy_c / dA^k``.

    ``A`` is the output of ``layer`` (default: the last ``Conv2d``). The map is
    upsampled bilinearly to the input size: attributions have shape
    ``(N, H, W)``; the map at the layer's resolution is in ``meta["layer_map"]``.

    Parameters
    ----------
    layer : str, optional
        Name of a layer of the wrapped module (``"features.5"``).
    relu : bool
        Keep only positive evidence, as the paper does.
    batch_size : int
        Inputs per forward/backward pass.

    References
    ----------
    .. [1] Selvaraju et al. "Grad-CAM: visual explanations from deep networks
       via gradient-based localization". ICCV 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> GradCAM()(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 8, 8])
    """

    tags = Tags(image_only=True)

    def __init__(self, *, layer: str | None = None, relu: bool = True, batch_size: int = 256) -> None:
        check_batch_size(batch_size)
        self.layer = layer
        self.relu = relu
        self.batch_size = batch_size

    def _explain(self, model, x, target):
        name = self.layer or last_conv(model)
        layer = model.layer(name)
        maps = []
        with capture(layer) as store:
            for i in range(0, len(x), self.batch_size):
                xb, tb = x[i:i + self.batch_size], target[i:i + self.batch_size]
                with torch.enable_grad():
                    # parameters are frozen: the input must carry the graph to the layer
                    out = model(xb.detach().requires_grad_(True)).gather(1, tb[:, None])[:, 0]
                    act = store.get("out")
                    if not isinstance(act, torch.Tensor) or act.dim() != 4:
                        raise InputError(f"layer {name!r} must output feature maps (N, C, h, w)")
                    g = grad_wrt(out, act)
                cam = (g.mean(dim=(2, 3), keepdim=True) * act.detach()).sum(dim=1)
                maps.append(F.relu(cam) if self.relu else cam)
        raw = torch.cat(maps)
        up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        return up[:, 0], {"layer": name, "layer_map": raw.cpu()}


def grad_cam(model, x, target=None, **params):
    """Function twin of :class:`GradCAM`."""
    seed = params.pop("seed", 0)
    return GradCAM(**params).explain(model, x, target, seed=seed)
