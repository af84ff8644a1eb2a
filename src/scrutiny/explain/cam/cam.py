"""Class activation mapping for networks ending in global average pooling + linear."""

from __future__ import annotations

import torch
from torch import nn

from scrutiny.errors import InputError, UnsupportedModelError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.explain.cam.gradcam import upsample
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags

_PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Identity)


def _is_gap(m: nn.Module) -> bool:
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size
        return size == 1 or (isinstance(size, tuple) and tuple(size) == (1, 1))
    return False


def find_gap_head(model: TorchModel) -> tuple[str, str]:
    """Names of the global average pooling layer and the linear layer that follows it.

    Looks for the last ``nn.AdaptiveAvgPool2d(1)`` and the first ``nn.Linear``
    registered after it, with only flatten/dropout/identity layers between them.
    """
    leaves = [(n, m) for n, m in model.module.named_modules() if n and not list(m.children())]
    gaps = [i for i, (_, m) in enumerate(leaves) if _is_gap(m)]
    hint = ("CAM needs a network ending in global average pooling + one linear layer; pass "
            "layer= (the feature maps that are pooled) and classifier= (the linear layer) "
            "explicitly; layers: " + ", ".join(model.layer_names()))
    if not gaps:
        heads = [(n, m) for n, m in leaves if isinstance(m, nn.Linear)]
        head = f"; its classifier {heads[-1][0]!r} (Linear) reads no pooled feature maps" \
            if heads else ""
        raise UnsupportedModelError(f"{model.name} has no nn.AdaptiveAvgPool2d(1){head} (a "
                                    f"vision transformer reads its class token). {hint}")
    for name, m in leaves[gaps[-1] + 1:]:
        if isinstance(m, nn.Linear):
            return leaves[gaps[-1]][0], name
        if not isinstance(m, _PASS_THROUGH):
            break
    raise InputError(f"no nn.Linear directly after the pooling layer {leaves[gaps[-1]][0]!r} "
                     f"of {model.name}. {hint}")


@register("explainer", "cam", paper="Zhou, Khosla, Lapedriza, Oliva, Torralba. Learning deep "
          "features for discriminative localization. CVPR 2016")
class CAM(Explainer):
    """Class activation map: ``M_c = sum_k w_ck A_k``.

    ``A`` are the feature maps that a global average pooling layer reduces and
    ``w_c`` the row of the following linear layer for class ``c``, so that the
    logit is ``S_c = mean_xy M_c(x, y) + b_c``. By default both are found
    automatically (the last ``nn.AdaptiveAvgPool2d(1)`` and the ``nn.Linear``
    right after it; ``A`` is the pooling layer's input); otherwise name them.
    The map is upsampled bilinearly to the input size: attributions have shape
    ``(N, H, W)``; the map at the layer's resolution is ``meta["layer_map"]``.
    Like the paper, no ReLU is applied.

    Parameters
    ----------
    layer : str, optional
        Layer whose output are the pooled feature maps ``(N, K, h, w)``.
    classifier : str, optional
        The linear layer applied to the pooled features (weight ``(classes, K)``).
    batch_size : int
        Inputs per forward pass.

    References
    ----------
    .. [1] Zhou, Khosla, Lapedriza, Oliva, Torralba. "Learning deep features
       for discriminative localization". CVPR 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> e = CAM()(pretrained("digits-cnn", progress=False), x)
    >>> e.attributions.shape, e.meta["classifier"]
    (torch.Size([4, 8, 8]), 'classifier')
    """

    tags = Tags(image_only=True)
    #: A vision transformer has no global average pooling before its head: refused.
    architectures = ("resnet",)

    layer: str | None = param(None, kind=str)
    classifier: str | None = param(None, kind=str)
    batch_size: int = param(256, integer=True, positive=True)

    def _explain(self, model, x, target):
        if self.layer is None or self.classifier is None:
            pool, head = find_gap_head(model)
        layer_name = self.layer or pool
        head_name = self.classifier or head
        fc = model.layer(head_name)
        if not isinstance(fc, nn.Linear):
            raise InputError(f"classifier {head_name!r} must be an nn.Linear, got "
                             f"{type(fc).__name__}")
        # default: the pooling layer's input; with layer=: that layer's output
        store: dict[str, torch.Tensor] = {}

        def hook(_m, inp, out):
            store["a"] = inp[0] if self.layer is None else out

        handle = model.layer(layer_name).register_forward_hook(hook)
        maps = []
        try:
            with torch.no_grad():
                # at least one (possibly empty) chunk: an empty batch gets its shapes too
                for i in range(0, max(len(x), 1), self.batch_size):
                    model(x[i:i + self.batch_size])
                    a = store.get("a")
                    if not isinstance(a, torch.Tensor) or a.dim() != 4:
                        raise InputError(f"layer {layer_name!r} must output feature maps "
                                         "(N, K, h, w)")
                    if a.shape[1] != fc.in_features:
                        raise InputError(f"layer {layer_name!r} has {a.shape[1]} channels but "
                                         f"classifier {head_name!r} takes {fc.in_features} "
                                         "features; CAM needs GAP + linear between them")
                    w = fc.weight[target[i:i + self.batch_size]]
                    maps.append(torch.einsum("nk,nkhw->nhw", w, a))
        finally:
            handle.remove()
        raw = torch.cat(maps)
        name = f"{layer_name} (input)" if self.layer is None else layer_name
        return upsample(raw, x.shape[-2:]), {"layer": name, "classifier": head_name,
                                             "layer_map": raw.cpu()}


cam = function_twin(CAM, "cam")
