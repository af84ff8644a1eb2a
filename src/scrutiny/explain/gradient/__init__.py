"""Gradient-based attributions."""

from scrutiny.explain.gradient.integrated import IntegratedGradients, integrated_gradients
from scrutiny.explain.gradient.saliency import Saliency, saliency
from scrutiny.explain.gradient.simple import (
    Gradient,
    InputXGradient,
    Sensitivity,
    input_x_gradient,
    sensitivity,
    vanilla_gradient,
)
from scrutiny.explain.gradient.smoothgrad import SmoothGrad, smoothgrad

__all__ = ["Gradient", "InputXGradient", "IntegratedGradients", "Saliency", "Sensitivity",
           "SmoothGrad", "input_x_gradient", "integrated_gradients", "saliency",
           "sensitivity", "smoothgrad", "vanilla_gradient"]
