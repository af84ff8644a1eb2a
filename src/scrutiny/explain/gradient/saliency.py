"""Saliency maps: the magnitude of the input gradient."""

from __future__ import annotations

import torch

from scrutiny.explain.base import Explainer, check_batch_size, target_gradient
from scrutiny.registry import register


@register("explainer", "saliency", paper="Simonyan, Vedaldi, Zisserman. Deep inside "
          "convolutional networks: visualising image classification models and saliency maps. "
          "ICLR 2014 workshop")
class Saliency(Explainer):
    """Image-specific class saliency: ``M_ij = max_c |d S_target / d x_cij|``.

    For images the result has shape ``(N, H, W)`` (maximum over channels, as
    in the paper); for other inputs it is ``|gradient|`` with the input's shape.

    Parameters
    ----------
    batch_size : int
        Inputs per forward/backward pass.

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

    def __init__(self, *, batch_size: int = 256) -> None:
        check_batch_size(batch_size)
        self.batch_size = batch_size

    @staticmethod
    def linear_oracle(w, x):
        """Closed form on ``f = w.x + b``: ``max_c |w|``."""
        return w.abs().amax(dim=1) if w.dim() == 4 else w.abs()

    def _explain(self, model, x, target):
        grads = [target_gradient(model, x[i:i + self.batch_size], target[i:i + self.batch_size])[0]
                 for i in range(0, len(x), self.batch_size)]
        g = torch.cat(grads).abs()
        return (g.amax(dim=1) if g.dim() == 4 else g), {}


def saliency(model, x, target=None, **params):
    """Function twin of :class:`Saliency`: ``saliency(model, x, target).attributions``."""
    seed = params.pop("seed", 0)
    return Saliency(**params).explain(model, x, target, seed=seed)
