"""Local explanations. Every class here is registered under ``explainer:<name>``.

Each class has a function twin for quick use, e.g.
``scrutiny.explain.integrated_gradients(model, x, target)``.
"""

from scrutiny.explain.base import Explainer
from scrutiny.explain.cam import GradCAM, grad_cam
from scrutiny.explain.gradient import (
    IntegratedGradients,
    Saliency,
    integrated_gradients,
    saliency,
)

__all__ = ["Explainer", "GradCAM", "IntegratedGradients", "Saliency", "grad_cam",
           "integrated_gradients", "saliency"]
