"""Defenses: detectors, preprocessing, adversarial training.

Every class here is registered under ``defense:<name>``; a defense is
``fit(model, data) -> self`` then ``wrap(model) -> TorchModel``; a
:class:`Detector` (feature squeezing) flags inputs with ``detect(x)`` instead.
:func:`adaptive` gives the model an adaptive attack (BPDA / EOT) should use.
"""

from scrutiny.defenses import backdoor  # noqa: F401  (registers the backdoor scans)
from scrutiny.defenses.adaptive import adaptive, eot_input_gradient, is_non_differentiable, is_randomized
from scrutiny.defenses.base import (
    Defense,
    DetectionReport,
    Detector,
    Preprocessed,
    StraightThrough,
    Transform,
)
from scrutiny.defenses.deepcloak import DeepCloak, FeatureMask
from scrutiny.defenses.detectors import FeatureSqueezing
from scrutiny.defenses.preprocess import BitDepthReduction, MedianSmoothing, RandomResizePad
from scrutiny.defenses.training import AdversarialTraining

__all__ = ["AdversarialTraining", "BitDepthReduction", "DeepCloak", "Defense", "DetectionReport",
           "Detector",
           "FeatureMask",
           "FeatureSqueezing", "MedianSmoothing", "Preprocessed", "RandomResizePad",
           "StraightThrough", "Transform", "adaptive", "eot_input_gradient", "is_non_differentiable",
           "is_randomized"]
