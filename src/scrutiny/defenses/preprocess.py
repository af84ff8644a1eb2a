"""Preprocessing defenses: a transform in front of the model, declaring how it breaks gradients.

Bit-depth reduction and median smoothing (Xu et al. NDSS 2018) are
``non_differentiable``; random resizing and padding (Xie et al. ICLR 2018) is
``randomized``. :func:`scrutiny.defenses.adaptive.adaptive` turns a model
defended this way into one on which white-box attacks get the BPDA / EOT
gradients of Athalye et al. (ICML 2018).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from scrutiny.defenses.base import Defense, Transform, preprocessed
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

_XU = ("Xu, Evans, Qi. Feature squeezing: detecting adversarial examples in deep neural "
       "networks. NDSS 2018")
_XIE = ("Xie, Wang, Zhang, Ren, Yuille. Mitigating adversarial effects through randomization. "
        "ICLR 2018")
_MODES = ("nearest", "bilinear")


def _check_scale(name: str, scale: tuple) -> None:
    if (len(scale) != 2 or not all(isinstance(s, int | float) and not isinstance(s, bool)
                                   for s in scale) or not 0 < scale[0] < scale[1]):
        raise InputError(f"{name} must be (low, high) with 0 < low < high, got {scale!r}")


def _images(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise InputError(f"{what} needs images (N, C, H, W), got shape {tuple(x.shape)}")


class BitDepth(Transform):
    """Quantise each value to ``2**bits`` levels of the input range (zero gradient)."""

    non_differentiable = True

    def __init__(self, bits: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds)
        self.bits = bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds
        levels = 2 ** self.bits - 1
        z = ((x - lo) / (hi - lo)).clamp(0, 1)
        return torch.round(z * levels) / levels * (hi - lo) + lo


class Median(Transform):
    """Median over a ``size x size`` window per channel, as ``scipy.ndimage.median_filter``.

    Edges are extended by half-sample symmetric reflection (scipy's
    ``mode="reflect"``); for an even window the upper of the two middle values
    is taken and the window covers offsets ``-size//2 .. size - 1 - size//2``,
    as scipy does (so ``size=2`` is the 2x2 smoothing of Xu et al.).
    """

    non_differentiable = True

    def __init__(self, size: int, bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds)
        self.size = size

    @staticmethod
    def _reflect_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
        i = torch.arange(-before, n + after, device=device)
        period = 2 * n
        i = i % period
        return torch.where(i >= n, period - 1 - i, i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _images(x, "median smoothing")
        k = self.size
        if k == 1:
            return x
        n, c, h, w = x.shape
        before, after = k // 2, k - 1 - k // 2
        xp = x.index_select(2, self._reflect_index(h, before, after, x.device))
        xp = xp.index_select(3, self._reflect_index(w, before, after, x.device))
        cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[2:]), k)  # (NC, k*k, H*W)
        med = cols.sort(dim=1).values[:, (k * k) // 2]
        return med.reshape(n, c, h, w)


class RandomResizePadding(Transform):
    """Resize to a random ``rnd x rnd`` then zero-pad at a random place to a fixed size.

    For an ``H x W`` input, ``rnd`` is drawn per sample uniformly from
    ``[ceil(H * scale[0]), round(H * scale[1]))`` (width in proportion), the
    output is ``round(H * scale[1]) x round(W * scale[1])`` and the top/left
    padding uniform in ``[0, out - rnd]`` (Xie et al.: 299 -> [310, 331) -> 331).
    """

    randomized = True

    def __init__(self, scale: tuple[float, float], mode: str = "nearest", resize_back: bool = False,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(bounds)
        self.scale = scale
        self.mode = mode
        self.resize_back = resize_back

    @staticmethod
    def sizes(h: int, scale: tuple[float, float]) -> tuple[int, int]:
        """``(smallest rnd, padded size)`` for input height ``h``."""
        return math.ceil(h * scale[0] - 1e-9), round(h * scale[1])

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode=self.mode, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _images(x, "random resize and pad")
        n, c, h, w = x.shape
        lo, ph = self.sizes(h, self.scale)
        pw = round(w * self.scale[1])
        if lo >= ph:
            raise InputError(f"scale={self.scale} leaves no random size for a {h}x{w} input "
                             f"(sizes [{lo}, {ph})); widen the range")
        dev = x.device
        rnd = torch.randint(lo, ph, (n,), device=dev)
        rnd_w = rnd if w == h else (rnd * w / h).round().long().clamp(1, pw)
        top = (torch.rand(n, device=dev) * (ph - rnd + 1)).floor().long()
        left = (torch.rand(n, device=dev) * (pw - rnd_w + 1)).floor().long()
        out = x.new_zeros(n, c, ph, pw)
        for s in rnd.unique().tolist():  # one resize per distinct size, not per sample
            g = (rnd == s).nonzero()[:, 0]
            sw = int(rnd_w[g[0]])
            r = self._resize(x[g], (s, sw))
            out = out.index_copy(0, g, F.pad(r, (0, pw - sw, 0, ph - s)))
        # shift each canvas by its own offset: the image sits top-left on zeros, so a
        # circular shift by at most the zero margin is exactly the random padding
        rows = (torch.arange(ph, device=dev)[None] - top[:, None]) % ph
        cols = (torch.arange(pw, device=dev)[None] - left[:, None]) % pw
        out = out.gather(2, rows[:, None, :, None].expand(n, c, ph, pw))
        out = out.gather(3, cols[:, None, None, :].expand(n, c, ph, pw))
        if self.resize_back:
            out = self._resize(out, (h, w))
        return out


@register("defense", "bit_depth", paper=_XU, test_params={"bits": 2})
class BitDepthReduction(Defense):
    """Bit-depth reduction: quantise every input value to ``2**bits`` levels.

    ``x -> round(x * (2^b - 1)) / (2^b - 1)`` on the input range. The
    rounding has zero gradient, so a plain white-box attack on the wrapped
    model sees no signal (gradient masking); the transform declares itself
    ``non_differentiable`` and :func:`~scrutiny.defenses.adaptive.adaptive`
    attacks it with BPDA (identity backward pass).

    Parameters
    ----------
    bits : int
        Bits per value, 1 to 16 (Xu et al. use 1 for MNIST, 4-5 for CIFAR-10).

    References
    ----------
    .. [1] Xu, Evans, Qi. "Feature squeezing: detecting adversarial examples in
       deep neural networks". NDSS 2018.
    .. [2] Athalye, Carlini, Wagner. "Obfuscated gradients give a false sense of
       security". ICML 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> defended = BitDepthReduction(bits=2).wrap(model)
    >>> float((defended.predict(data.x) == data.y).float().mean()) > 0.8
    True
    """

    bits: int = param(1, integer=True, between=(1, 16))

    def transform(self) -> BitDepth:
        """The input transform as an ``nn.Module``."""
        return BitDepth(self.bits)

    def wrap(self, model: Any) -> TorchModel:
        """``model`` with the quantiser in front (a :class:`TorchModel`)."""
        return preprocessed(self.transform(), model, f"bit_depth{self.bits}")


@register("defense", "median_filter", paper=_XU, test_params={"size": 2})
class MedianSmoothing(Defense):
    """Median smoothing over a ``size x size`` window (spatial squeezer of Xu et al.).

    Matches ``scipy.ndimage.median_filter(x, size=(1, 1, size, size),
    mode="reflect")``. The transform declares itself ``non_differentiable``
    (adaptive attacks use BPDA with the identity, as Athalye et al. do).

    Parameters
    ----------
    size : int
        Window side (Xu et al.: 2 for MNIST, 2-3 for CIFAR-10 and ImageNet).

    References
    ----------
    .. [1] Xu, Evans, Qi. "Feature squeezing: detecting adversarial examples in
       deep neural networks". NDSS 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> defended = MedianSmoothing(size=2).wrap(model)
    >>> defended(data.x[:3]).shape
    torch.Size([3, 10])
    """

    size: int = param(2, integer=True, positive=True)

    def transform(self) -> Median:
        """The input transform as an ``nn.Module``."""
        return Median(self.size)

    def wrap(self, model: Any) -> TorchModel:
        """``model`` with median smoothing in front (a :class:`TorchModel`)."""
        return preprocessed(self.transform(), model, f"median{self.size}")


@register("defense", "random_resize_pad", paper=_XIE, test_params={"scale": (1.0, 1.5)})
class RandomResizePad(Defense):
    """Input randomisation: random resizing, then random zero padding (Xie et al.).

    Every forward resizes each image to a random ``rnd x rnd`` with ``rnd``
    uniform in ``[ceil(H * scale[0]), round(H * scale[1]))`` and pads it with
    zeros at a random position to ``round(H * scale[1])`` square. The
    defaults are the paper's ratios (299 -> [310, 331) -> 331). The network
    must accept the larger size (a fully convolutional / global-pooling
    network does), or set ``resize_back=True`` to resize the padded image back
    to ``H x W`` (not in the paper). The transform declares itself
    ``randomized``: the adaptive attack against it is EOT.

    Parameters
    ----------
    scale : (float, float)
        Range of ``rnd / H`` (``[low, high)``); ``high`` also sets the padded size.
    mode : {"nearest", "bilinear"}
        Interpolation of the resize (the paper's code uses nearest neighbour).
    resize_back : bool
        Resize the padded image back to the input size.

    Notes
    -----
    The paper draws one size and one padding per batch; here each sample
    draws its own (batched per distinct size), which is the same
    distribution per sample and makes samples in a batch independent.

    References
    ----------
    .. [1] Xie, Wang, Zhang, Ren, Yuille. "Mitigating adversarial effects
       through randomization". ICLR 2018.
    .. [2] Athalye, Carlini, Wagner. "Obfuscated gradients give a false sense of
       security". ICML 2018 (EOT breaks it).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> defended = RandomResizePad(scale=(1.0, 1.5)).wrap(model)
    >>> defended.module.transform(data.x[:2]).shape  # 8x8 -> random 8..11 -> padded 12x12
    torch.Size([2, 1, 12, 12])
    """

    #: A vision transformer (fixed input size) needs ``resize_back=True``; without it the
    #: defended model raises an UnsupportedModelError.
    architectures = ("resnet",)
    scale: tuple[float, float] = param((310 / 299, 331 / 299), kind=tuple, check=_check_scale)
    mode: str = param("nearest", choices=_MODES)
    resize_back: bool = param(False, kind=bool)

    def transform(self) -> RandomResizePadding:
        """The input transform as an ``nn.Module``."""
        return RandomResizePadding(self.scale, self.mode, self.resize_back)

    def wrap(self, model: Any) -> TorchModel:
        """``model`` with the random resize and pad in front (a :class:`TorchModel`)."""
        return preprocessed(self.transform(), model, "random_resize_pad")
