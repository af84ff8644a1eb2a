"""Counterfactual explanations: the smallest change that moves a prediction to a desired class."""

from scrutiny.explain.counterfactual.wachter import (
    Counterfactual,
    CounterfactualResult,
    counterfactual,
    mad_scale,
)

__all__ = ["Counterfactual", "CounterfactualResult", "counterfactual", "mad_scale"]
