"""Saliency maps: the magnitude of the input gradient."""

from __future__ import annotations

from scrutiny.explain.base import function_twin
from scrutiny.explain.gradient.simple import GradientBase
from scrutiny.registry import register


@register("explainer", "saliency", paper="Simonyan, Vedaldi, Zisserman. Deep inside "
          "convolutional networks: visualising image classification models and saliency maps. "
          "ICLR 2014 workshop")
class Saliency(GradientBase):
    """Image-specific class saliency: ``M_ij = max_c |d S_target / d x_cij|``.

    For images the result has shape ``(N, H, W)`` (maximum over channels, as
    in the paper); for other inputs it is ``|gradient|`` with the input's shape.

    Parameters
    ----------
    batch_size : int
        Inputs per forward/backward pass.
    layer : str, optional
        Attribute to this layer's output instead of the input.

    References
    ----------
    .. [1] Simonyan, Vedaldi, Zisserman. "Deep inside convolutional networks:
       visualising image classification models and saliency maps". ICLR 2014.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> Saliency()(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 8, 8])
    """

    @staticmethod
    def transform(g, x):
        """``max_c |g|`` for images, ``|g|`` otherwise."""
        g = g.abs()
        return g.amax(dim=1) if g.dim() == 4 else g


saliency = function_twin(Saliency, "saliency")
