"""Plain gradient attributions: the gradient, sensitivity analysis and input x gradient."""

from __future__ import annotations

import torch

from scrutiny.explain.base import Explainer, function_twin, target_gradient
from scrutiny.explain.gradient.layer import batched_layer_gradient
from scrutiny.params import param
from scrutiny.registry import register


def batched_gradient(model, x: torch.Tensor, target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``d z_target / dx`` for every input, one forward/backward per chunk of ``batch_size``."""
    if not len(x):
        return torch.zeros_like(x)
    return torch.cat([target_gradient(model, x[i:i + batch_size], target[i:i + batch_size])[0]
                      for i in range(0, len(x), batch_size)])


class GradientBase(Explainer):
    """Shared hyperparameters and ``_explain`` of the one-gradient methods: a subclass
    writes ``transform(gradient, x)`` (also its closed form on a linear model).

    With ``layer=`` the gradient is taken with respect to that layer's output
    ``a`` and the transform gets ``a`` in place of ``x`` (the layer variants of
    Captum: :class:`InputXGradient` with a layer is LayerGradientXActivation);
    the attributions then have the layer's shape and ``Explanation.location``
    names the layer.

    Parameters
    ----------
    batch_size : int
        Inputs per forward/backward pass.
    layer : str, optional
        Attribute to this layer's output instead of the input.
    """

    batch_size: int = param(256, integer=True, positive=True)
    layer: str | None = param(None, kind=str)

    @staticmethod
    def transform(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def linear_oracle(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Closed form on ``f = w.x + b``: the transform applied to the gradient ``w``."""
        return self.transform(w, x)

    def _explain(self, model, x, target):
        if self.layer is not None:
            g, a = batched_layer_gradient(model, self.layer, x, target, self.batch_size)
            return self.transform(g, a), {"location": self.layer}
        return self.transform(batched_gradient(model, x, target, self.batch_size), x), {}


@register("explainer", "gradient", paper="Simonyan, Vedaldi, Zisserman. Deep inside "
          "convolutional networks: visualising image classification models and saliency maps. "
          "ICLR 2014 workshop")
class Gradient(GradientBase):
    """The raw input gradient ``d S_target / dx`` (signed, the input's shape).

    The base map of SmoothGrad; :class:`Saliency` is its channel-max magnitude.

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
    >>> Gradient()(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 1, 8, 8])
    """

    @staticmethod
    def transform(g, x):
        return g


@register("explainer", "sensitivity", paper="Bach et al. On pixel-wise explanations for "
          "non-linear classifier decisions by layer-wise relevance propagation. PLoS ONE 2015; "
          "Montavon, Samek, Mueller. Methods for interpreting and understanding deep neural "
          "networks. Digital Signal Processing 2018")
class Sensitivity(GradientBase):
    """Sensitivity analysis: ``R_i = (d S_target / d x_i)^2``.

    The relevance of an input element is its squared partial derivative: how
    much a local change of that element changes the output (Montavon et al.,
    Section 3.1). It explains the function's local variation, not the
    prediction itself, and does not satisfy conservation.

    Parameters
    ----------
    batch_size : int
        Inputs per forward/backward pass.
    layer : str, optional
        Attribute to this layer's output instead of the input.

    References
    ----------
    .. [1] Bach et al. "On pixel-wise explanations for non-linear classifier
       decisions by layer-wise relevance propagation". PLoS ONE 2015.
    .. [2] Montavon, Samek, Mueller. "Methods for interpreting and
       understanding deep neural networks". Digital Signal Processing 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> e = Sensitivity()(pretrained("digits-cnn", progress=False), x)
    >>> bool((e.attributions >= 0).all())
    True
    """

    @staticmethod
    def transform(g, x):
        return g.square()


@register("explainer", "input_x_gradient", paper="Shrikumar, Greenside, Shcherbina, Kundaje. "
          "Not just a black box: learning important features through propagating activation "
          "differences. arXiv:1605.01713, 2016")
class InputXGradient(GradientBase):
    """Input x gradient: ``R_i = x_i * d S_target / d x_i``.

    For a linear model with zero bias the attributions sum to the output; in
    general it is the first-order Taylor term at the origin.

    Parameters
    ----------
    batch_size : int
        Inputs per forward/backward pass.
    layer : str, optional
        Attribute to this layer's output instead of the input.

    References
    ----------
    .. [1] Shrikumar, Greenside, Shcherbina, Kundaje. "Not just a black box:
       learning important features through propagating activation
       differences". arXiv:1605.01713, 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> InputXGradient()(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 1, 8, 8])
    """

    @staticmethod
    def transform(g, x):
        return g * x


vanilla_gradient = function_twin(Gradient, "vanilla_gradient")


sensitivity = function_twin(Sensitivity, "sensitivity")


input_x_gradient = function_twin(InputXGradient, "input_x_gradient")
