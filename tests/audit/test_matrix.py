"""The game matrix: every attack against every defense, adaptive where declared."""

import math

from scrutiny.audit.matrix import game_matrix
from scrutiny.types import ThreatModel


def test_matrix_cells_and_detector_row(digits_model, digits_test):
    x, y = digits_test.x[:48], digits_test.y[:48]
    gm = game_matrix(digits_model, x, y, attacks=("fgsm", "pgd"),
                     defenses=("bit_depth", "feature_squeezing"), threat=ThreatModel("linf", 0.2),
                     fit_data=(digits_test.x[100:300], digits_test.y[100:300]),
                     params={"pgd": {"steps": 10}, "feature_squeezing": {"bits": 2,
                                                                        "median_size": None}})
    assert gm.defenses == ["none", "bit_depth", "feature_squeezing"]
    assert all(set(gm.cells[d]) == {"fgsm", "pgd"} for d in gm.defenses)
    # the quantizer's zero gradients do not protect it: the base attacks it with BPDA
    assert gm.cells["bit_depth"]["pgd"] < gm.clean["bit_depth"] - 0.3
    # the detector row holds detection rates of the undefended model's adversarial inputs
    assert 0 <= gm.detectors["feature_squeezing"] <= 0.2
    rate = gm.cells["feature_squeezing"]["pgd"]
    assert not math.isnan(rate) and rate > gm.detectors["feature_squeezing"]
    assert gm.to_dict()["eps"] == 0.2
