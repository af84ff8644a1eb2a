"""Class activation maps."""

from scrutiny.explain.cam.cam import CAM, cam
from scrutiny.explain.cam.gradcam import GradCAM, grad_cam

__all__ = ["CAM", "GradCAM", "cam", "grad_cam"]
