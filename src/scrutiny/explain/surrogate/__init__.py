"""Model-agnostic surrogate explanations: LIME and KernelSHAP."""

from scrutiny.explain.surrogate.lime import Lime, lime
from scrutiny.explain.surrogate.shap import KernelShap, kernel_shap

__all__ = ["KernelShap", "Lime", "kernel_shap", "lime"]

# global surrogates (registry kind "learned")
from scrutiny.explain.surrogate.global_surrogate import (  # noqa: E402
    LinearSurrogate,
    SurrogateTree,
    surrogate_linear,
    surrogate_tree,
)

__all__ += ["LinearSurrogate", "SurrogateTree", "surrogate_linear", "surrogate_tree"]
