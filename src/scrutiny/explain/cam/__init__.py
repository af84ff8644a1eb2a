"""Class activation maps."""

from scrutiny.explain.cam.gradcam import GradCAM, grad_cam

__all__ = ["GradCAM", "grad_cam"]
