"""Local explanations. Every class here is registered under ``explainer:<name>``.

Each class has a function twin for quick use, e.g.
``scrutiny.explain.integrated_gradients(model, x, target)``.
"""

from scrutiny.explain import lrp  # noqa: F401  (registers the LRP explainers)
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

from scrutiny.explain.surrogate import KernelShap, Lime, kernel_shap, lime  # noqa: E402

__all__ += ["KernelShap", "Lime", "kernel_shap", "lime"]

from scrutiny.explain.cam import CAM, cam  # noqa: E402
from scrutiny.explain.gradient import (  # noqa: E402
    Gradient,
    InputXGradient,
    Sensitivity,
    SmoothGrad,
    input_x_gradient,
    sensitivity,
    smoothgrad,
    vanilla_gradient,
)
from scrutiny.explain.perturbation.occlusion import Occlusion, occlusion  # noqa: E402

__all__ += ["CAM", "Gradient", "InputXGradient", "Occlusion", "Sensitivity", "SmoothGrad", "cam",
            "input_x_gradient", "occlusion", "sensitivity", "smoothgrad", "vanilla_gradient"]

from scrutiny.explain.perturbation.extremal import (  # noqa: E402
    ExtremalPerturbation,
    extremal_perturbation,
)
from scrutiny.explain.uncertainty import MCDropout, mc_dropout  # noqa: E402

__all__ += ["ExtremalPerturbation", "MCDropout", "extremal_perturbation", "mc_dropout"]

from scrutiny.explain.lrp import LRP  # noqa: E402  (twin: scrutiny.explain.lrp.lrp)

__all__ += ["LRP"]

# what has the model learned? (registry kind "learned"; base: scrutiny.explain.learned)
from scrutiny.explain import (  # noqa: E402,F401  (each subpackage registers its methods)
    counterfactual,
    disentangle,
    features,
    influence,
)
