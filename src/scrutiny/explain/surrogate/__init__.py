"""Model-agnostic surrogate explanations: LIME and KernelSHAP."""

from scrutiny.explain.surrogate.lime import Lime, lime
from scrutiny.explain.surrogate.shap import KernelShap, kernel_shap

__all__ = ["KernelShap", "Lime", "kernel_shap", "lime"]
