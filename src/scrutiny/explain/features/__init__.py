"""Feature visualisation: what a unit, a layer or a class of the model responds to.

Objectives (:mod:`~scrutiny.explain.features.objectives`, composable: ``a - 0.5 * b``),
regularisers (:mod:`~scrutiny.explain.features.regularizers`) and parametrisations
(:mod:`~scrutiny.explain.features.param`) after Olah et al. 2017, and four registered
methods of kind ``"learned"``: :class:`ActivationMaximization`, :class:`ClassPrototype`,
:class:`Multifaceted` and :class:`DatasetExamples`, each with a function twin.
"""

from scrutiny.explain.features.examples import DatasetExamples, TopExamples, dataset_examples
from scrutiny.explain.features.objectives import (
    Objective,
    channel,
    class_logit,
    class_probability,
    deepdream,
    direction,
    neuron,
)
from scrutiny.explain.features.param import ImageParam
from scrutiny.explain.features.regularizers import (
    Jitter,
    Rotate,
    Scale,
    apply_transforms,
    l2_penalty,
    total_variation,
)
from scrutiny.explain.features.visualize import (
    ActivationMaximization,
    ClassPrototype,
    Facets,
    Multifaceted,
    Prototypes,
    Visualization,
    activation_maximization,
    class_prototype,
    multifaceted,
)

__all__ = ["ActivationMaximization", "ClassPrototype", "DatasetExamples", "Facets",
           "ImageParam", "Jitter", "Multifaceted", "Objective", "Prototypes", "Rotate", "Scale",
           "TopExamples", "Visualization", "activation_maximization", "apply_transforms",
           "channel", "class_logit", "class_probability", "class_prototype", "dataset_examples",
           "deepdream", "direction", "l2_penalty", "multifaceted", "neuron", "total_variation"]
