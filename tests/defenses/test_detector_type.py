"""Detectors are declared by type (:class:`Detector`), never recognised by a ``detect`` attribute."""

import torch

from scrutiny import registry
from scrutiny.attacks import FGSM
from scrutiny.audit.matrix import game_matrix
from scrutiny.defenses import BitDepthReduction, Detector, FeatureSqueezing
from scrutiny.types import ThreatModel


def test_every_registered_detector_is_a_detector():
    classes = {s: registry.get(s).cls for s in registry.list_methods("defense")}
    assert issubclass(classes["defense:feature_squeezing"], Detector)
    for spec, cls in classes.items():
        # a registered defense offers the detector API exactly when it declares the type
        offers = any(callable(getattr(cls, a, None)) for a in ("detect", "score", "report"))
        assert offers == issubclass(cls, Detector), spec


def test_a_defense_with_a_detect_attribute_is_not_treated_as_a_detector(
        monkeypatch, digits_model, digits_test):
    calls = []

    def detect(self, x):  # flags everything: a detection row would read 1.0
        calls.append(len(x))
        return torch.ones(len(x), dtype=torch.bool)

    monkeypatch.setattr(BitDepthReduction, "detect", detect, raising=False)
    x, y, tm = digits_test.x[:32], digits_test.y[:32], ThreatModel("linf", 0.1)
    fit = (digits_test.x[100:300], digits_test.y[100:300])
    gm = game_matrix(digits_model, x, y, attacks=("fgsm",),
                     defenses=("bit_depth", "feature_squeezing"), threat=tm, fit_data=fit)
    assert not calls
    assert "bit_depth" not in gm.detectors and "feature_squeezing" in gm.detectors
    # bit_depth's row is the defended model's accuracy, clean and under attack
    defended = BitDepthReduction().wrap(digits_model)
    with torch.no_grad():
        assert gm.clean["bit_depth"] == float((defended.predict(x) == y).float().mean())
    assert gm.cells["bit_depth"]["fgsm"] == FGSM()(defended, x, y, threat=tm).robust_accuracy()
    # the detector's row: detection rate of FGSM's successes and the clean false positives
    det = FeatureSqueezing().fit(digits_model, fit[0])
    assert gm.detectors["feature_squeezing"] == float(det.detect(x).float().mean())
