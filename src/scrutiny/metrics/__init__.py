"""Measures of whether an explanation can be trusted (sanity checks, faithfulness, localisation).

Every class here is registered under ``metric:<name>`` and has a function twin,
e.g. ``scrutiny.metrics.deletion(model, x, target, explainer="integrated_gradients")``.
A metric takes the model, the inputs and what it judges at call time: an
explainer (instance or registered name) or, where it allows, precomputed
``attributions=``.
"""

from scrutiny.metrics.base import Metric, MetricResult
from scrutiny.metrics.faithfulness import CurveResult, Deletion, Insertion, deletion, insertion
from scrutiny.metrics.infidelity import (
    Infidelity,
    InfidelityResult,
    MaxSensitivity,
    SensitivityResult,
    infidelity,
    max_sensitivity,
)
from scrutiny.metrics.localisation import PointingGame, PointingResult, pointing_game
from scrutiny.metrics.randomization import (
    DataRandomization,
    ModelRandomization,
    RandomizationResult,
    data_randomization,
    model_randomization,
    similarity,
)

__all__ = [
    "CurveResult",
    "DataRandomization",
    "Deletion",
    "Infidelity",
    "InfidelityResult",
    "Insertion",
    "MaxSensitivity",
    "Metric",
    "MetricResult",
    "ModelRandomization",
    "PointingGame",
    "PointingResult",
    "RandomizationResult",
    "SensitivityResult",
    "data_randomization",
    "deletion",
    "infidelity",
    "insertion",
    "max_sensitivity",
    "model_randomization",
    "pointing_game",
    "similarity",
]
