"""Feature squeezing (Xu, Evans, Qi. NDSS 2018): threshold from clean data, detection rates."""

import pytest
import torch
from torch.nn import functional as F

from scrutiny.attacks import FGSM, PGD
from scrutiny.data import load_digits
from scrutiny.defenses import FeatureSqueezing
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel


@pytest.fixture(scope="module")
def detector(digits_model):
    # 2 bits: on the 8x8 digits (17 grey levels) 1 bit and the 2x2 median cost too much
    # clean accuracy to be usable squeezers (see the class docstring)
    return FeatureSqueezing(bits=2, median_size=None).fit(digits_model, load_digits(split="train"))


def test_score_is_the_max_l1_distance_of_softmaxes(digits_model, digits_test):
    x = digits_test.x[:16]
    det = FeatureSqueezing(bits=1, median_size=2).fit(digits_model, digits_test.x[:50])
    p = F.softmax(digits_model(x), 1)
    sq = det.squeezers()
    d = torch.stack([(F.softmax(digits_model(s(x)), 1) - p).abs().sum(1) for s in sq], 1)
    assert torch.allclose(det.score(x), d.amax(1).detach(), atol=1e-6)
    assert [type(s).__name__ for s in sq] == ["BitDepth", "Median"]


def test_threshold_from_clean_data_gives_the_target_fpr(detector, digits_test):
    train = load_digits(split="train")
    on_calibration = float(detector.detect(train.x).float().mean())
    assert on_calibration <= detector.fpr  # at most a fraction fpr above the threshold
    assert on_calibration > detector.fpr - 2 / len(train)
    held_out = float(detector.detect(digits_test.x).float().mean())
    assert abs(held_out - 0.05) < 0.03


def test_detects_fgsm_and_pgd_far_above_the_false_positive_rate(detector, digits_model, digits_test):
    x, y = digits_test.x, digits_test.y
    tm = ThreatModel("linf", 0.1)
    advs = {"fgsm": FGSM()(digits_model, x, y, threat=tm),
            "pgd": PGD(steps=10)(digits_model, x, y, threat=tm)}
    rep = detector.report(x, advs)
    assert rep.false_positive_rate < 0.08
    for name in advs:
        assert rep.n_successful[name] > 100
        assert rep.detection_rate[name] > 0.5, rep.to_dict()
        assert rep.detection_rate[name] > 5 * rep.false_positive_rate
        assert rep.roc_auc[name] > 0.85
    # a sequence of results is named after each attack
    rep2 = detector.report(x, list(advs.values()))
    assert sorted(rep2.detection_rate) == ["fgsm#0", "pgd#1"]


def test_clear_errors(digits_model, digits_test):
    with pytest.raises(InputError, match="at least one squeezer"):
        FeatureSqueezing(bits=None, median_size=None)
    with pytest.raises(InputError, match="fpr"):
        FeatureSqueezing(fpr=1.5)
    with pytest.raises(InputError, match="not fitted"):
        FeatureSqueezing().score(digits_test.x[:2])
    det = FeatureSqueezing(median_size=None)
    with pytest.raises(InputError, match="at least 2"):
        det.fit(digits_model, digits_test.x[:1])
    det.fit(digits_model, digits_test.x[:20])
    with pytest.raises(InputError, match="outside the model's bounds"):
        det.score(digits_test.x[:2] + 5)
    with pytest.raises(InputError, match="AttackResult"):
        det.report(digits_test.x[:4], {"x": digits_test.x[:4]})
