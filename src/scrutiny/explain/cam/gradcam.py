"""Grad-CAM and Grad-CAM++ at any named convolutional layer."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, capture, function_twin
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags


def last_conv(model: TorchModel) -> str:
    """Name of the last ``nn.Conv2d`` of the wrapped module."""
    names = [n for n, m in model.module.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise InputError(f"{model.name} has no Conv2d layer; pass layer= one of: "
                         + ", ".join(model.layer_names()))
    return names[-1]


def _custom(m: nn.Module) -> bool:
    return not type(m).__module__.startswith("torch.nn")


def default_layer(model: TorchModel) -> str:
    """Grad-CAM's default layer: the last block of the network, else its last ``Conv2d``.

    A block is an outermost submodule of a class outside ``torch.nn`` (no such ancestor
    but the model itself) holding a ``Conv2d`` or a ``LayerNorm``: a ResNet's last
    residual block (its output, after the addition; ``layer4[-1]`` of a torchvision
    ResNet) or a vision transformer's last encoder block (its tokens, see
    :class:`GradCAM`). A block holding the classifier (the last ``Linear``) wraps the
    whole network, behind a front end: its own blocks are looked for. A plain CNN has
    none: its last ``Conv2d``.
    """
    conv = last_conv(model)
    mods = dict(model.module.named_modules())
    linears = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else None
    root = ""
    while True:
        def outermost(name: str, root: str = root) -> bool:
            parts = name.split(".")
            start = len(root.split(".")) + 1 if root else 1
            return not any(_custom(mods[".".join(parts[:i])]) for i in range(start, len(parts)))

        blocks = [n for n, m in mods.items()
                  if n != root and (not root or n.startswith(root + ".")) and _custom(m)
                  and outermost(n) and any(isinstance(s, nn.Conv2d | nn.LayerNorm)
                                           for s in m.modules())]
        if not blocks:
            return conv
        # a block holding the classifier wraps the whole network (a front end around it):
        # look inside it
        if head is not None and head.startswith(blocks[-1] + "."):
            root = blocks[-1]
            continue
        return blocks[-1]


def as_maps(act: torch.Tensor, name: str) -> torch.Tensor:
    """Feature maps ``(N, C, h, w)`` of a layer's output: itself, or tokens ``(N, T, D)``
    of a vision transformer reshaped to the ``h x w`` patch grid (``T = h * w``, or
    ``1 + h * w`` with a leading class token, which is left out)."""
    if act.dim() == 4:
        return act
    if act.dim() == 3:
        t = act.shape[1]
        for skip in (1, 0):
            side = math.isqrt(t - skip) if t > skip else 0
            if side * side == t - skip and side > 0:
                return act[:, skip:].transpose(1, 2).reshape(len(act), act.shape[2], side, side)
    raise InputError(f"layer {name!r} must output feature maps (N, C, h, w) or tokens of a "
                     f"square patch grid (N, [1 +] h * w, D), got shape {tuple(act.shape)}")


def upsample(raw: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear upsampling of layer maps ``(N, h, w)`` to the input size ``(N, H, W)``."""
    return F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def gradcam_weights(variant: str, g: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Channel weights ``(N, C, 1, 1)`` from the gradient ``g = dS_c / dA`` and ``A``.

    ``"gradcam"``: the spatial mean of ``g`` (Selvaraju et al., eq. 1).
    ``"gradcam++"``: ``sum_ab alpha_ab relu(g_ab)`` with the closed form for
    an exponential output ``Y = exp(S)`` (Chattopadhay et al., eq. 19):
    ``alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)`` (0 where the denominator is 0).
    The paper's ``dY/dA = exp(S) g`` only adds the positive factor ``exp(S)``
    per sample, which is left out, as in the authors' code.
    """
    if variant == "gradcam":
        return g.mean(dim=(2, 3), keepdim=True)
    g2 = g.square()
    den = 2 * g2 + (act * g.pow(3)).sum(dim=(2, 3), keepdim=True)
    alpha = torch.where(den != 0, g2 / torch.where(den != 0, den, 1), 0)
    return (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)


VARIANTS: tuple[str, ...] = ("gradcam", "gradcam++")


@register("explainer", "grad_cam", paper="Selvaraju et al. Grad-CAM: visual explanations "
          "from deep networks via gradient-based localization. ICCV 2017; Chattopadhay et al. "
          "Grad-CAM++: generalized gradient-based visual explanations for deep convolutional "
          "networks. WACV 2018")
class GradCAM(Explainer):
    """Grad-CAM: ``ReLU(sum_k a_k A^k)`` with ``a_k`` the spatial mean of ``dy_c / dA^k``.

    ``variant="gradcam++"`` gives Grad-CAM++: ``a_k = sum_ab alpha^k_ab
    relu(dy_c / dA^k_ab)`` with the paper's closed-form ``alpha`` (see
    :func:`gradcam_weights`), which weighs every positive location of a map
    rather than averaging, so several instances of a class all show up.

    ``A`` is the output of ``layer`` (default: :func:`default_layer`, the last
    residual or transformer block if the network has any, else the last
    ``Conv2d``); tokens ``(N, [1 +] h * w, D)`` of a vision transformer are
    reshaped to the patch grid, the class token left out (Chefer et al.'s and
    pytorch-grad-cam's ``reshape_transform``), so on a ViT the map is that of
    the last block's patch tokens. The map is
    upsampled bilinearly to the input size: attributions have shape
    ``(N, H, W)``; the map at the layer's resolution is in ``meta["layer_map"]``.

    Parameters
    ----------
    layer : str, optional
        Name of a layer of the wrapped module (``"features.5"``).
    variant : {"gradcam", "gradcam++"}
        How the channel weights are computed.
    relu : bool
        Keep only positive evidence, as the paper does.
    batch_size : int
        Inputs per forward/backward pass.

    References
    ----------
    .. [1] Selvaraju et al. "Grad-CAM: visual explanations from deep networks
       via gradient-based localization". ICCV 2017.
    .. [2] Chattopadhay, Sarkar, Howlader, Balasubramanian. "Grad-CAM++:
       generalized gradient-based visual explanations for deep convolutional
       networks". WACV 2018.
    .. [3] Chefer, Gur, Wolf. "Transformer interpretability beyond attention
       visualization". CVPR 2021 (Grad-CAM on a ViT's last block).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> GradCAM()(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 8, 8])
    >>> GradCAM(variant="gradcam++")(pretrained("digits-cnn", progress=False), x).meta["layer"]
    'features.5'
    """

    tags = Tags(image_only=True)

    layer: str | None = param(None, kind=str)
    variant: str = param("gradcam", choices=VARIANTS)
    relu: bool = param(True, kind=bool)
    batch_size: int = param(256, integer=True, positive=True)

    def _explain(self, model, x, target):
        name = self.layer or default_layer(model)
        layer = model.layer(name)
        maps = []
        with capture(layer) as store:
            # at least one (possibly empty) chunk: an empty batch gets its shapes too
            for i in range(0, max(len(x), 1), self.batch_size):
                xb, tb = x[i:i + self.batch_size], target[i:i + self.batch_size]
                with torch.enable_grad():
                    # parameters are frozen: the input must carry the graph to the layer
                    out = model(xb.detach().requires_grad_(True)).gather(1, tb[:, None])[:, 0]
                    act = store.get("out")
                    if not isinstance(act, torch.Tensor):
                        raise InputError(f"layer {name!r} must output feature maps (N, C, h, w)")
                    g = as_maps(grad_wrt(out, act), name)
                act = as_maps(act.detach(), name)
                cam = (gradcam_weights(self.variant, g, act) * act).sum(dim=1)
                maps.append(F.relu(cam) if self.relu else cam)
        raw = torch.cat(maps)
        return upsample(raw, x.shape[-2:]), {"layer": name, "layer_map": raw.cpu()}


grad_cam = function_twin(GradCAM, "grad_cam")
