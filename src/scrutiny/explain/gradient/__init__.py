"""Gradient-based attributions."""

from scrutiny.explain.gradient.integrated import IntegratedGradients, integrated_gradients
from scrutiny.explain.gradient.saliency import Saliency, saliency

__all__ = ["IntegratedGradients", "Saliency", "integrated_gradients", "saliency"]
