"""Defenses: detectors, preprocessing, adversarial training.

Every class here is registered under ``defense:<name>``; a defense is
``fit(model, data) -> self`` then ``wrap(model) -> TorchModel``.
:func:`adaptive` gives the model an adaptive attack (BPDA / EOT) should use.
"""

from scrutiny.defenses.adaptive import adaptive, eot_input_gradient, is_non_differentiable, is_randomized
from scrutiny.defenses.base import Defense, Preprocessed, StraightThrough, Transform
from scrutiny.defenses.deepcloak import DeepCloak, FeatureMask
from scrutiny.defenses.detectors import DetectionReport, FeatureSqueezing
from scrutiny.defenses.preprocess import BitDepthReduction, MedianSmoothing, RandomResizePad
from scrutiny.defenses.training import AdversarialTraining

__all__ = ["AdversarialTraining", "BitDepthReduction", "DeepCloak", "Defense", "DetectionReport",
           "FeatureMask",
           "FeatureSqueezing", "MedianSmoothing", "Preprocessed", "RandomResizePad",
           "StraightThrough", "Transform", "adaptive", "eot_input_gradient", "is_non_differentiable",
           "is_randomized"]
