"""Neural Cleanse (Wang et al. 2019) on the digits CNN.

The scan reverses a trigger for each label of ``badnets_digits`` (BadNets, target 0, a 3x3
checkerboard at the bottom right) and of ``clean_victim_digits`` (the same network trained
on clean data) on the test split, with the defaults but 50 inputs (half the cost).
Measured for scan seeds 0..4 (with the defaults, 100 inputs, in brackets; "twins": victims
trained with BadNets/training seeds 0..4 in another process, defaults, scan seed 0):

- infected label 0: smallest mask norm for every seed (6.6 to 8.4; [6.5 to 10.2]; twins: 4
  of 5), 0.48 to 0.65 of the median norm; anomaly index 0.95 to 4.55 [1.29 to 2.67]: flagged
  by the default threshold (3.88 for 10 labels, a 5% false-positive rate for normal norms)
  for 1 of 5 seeds, by the paper's threshold of 2 for 2 of 5 (twins: 2 of 5). The other
  labels' norms spread too much on 8x8 digits;
- its norm over label 0's norm on the clean victim, same seed: 0.42 to 0.65 [0.41 to 0.76;
  twins up to 0.82];
- clean victim: nothing flagged by the default threshold (largest index on the small side
  1.09 to 2.14, always label 5, 0.65 to 0.77 of the median); the paper's threshold of 2
  flags label 5 for 1 of 5 seeds [2 of 5; 3 of 4 for a twin, and on the shipped CNN]: its
  natural trigger is almost as small as the planted one;
- the reversed trigger of label 0 only partly sits on the true patch: IoU of the supports
  0.14 to 0.33, share of the mask inside the patch 0.26 to 0.43 (twins: 0.05 to 0.32)
  against 9/64 = 0.14 for a uniform mask. The CNN pools globally, so its trigger detector
  fires anywhere; not asserted.
"""

import json

import numpy as np
import pytest

from scrutiny.attacks.poisoning import Trigger
from scrutiny.defenses.backdoor import (
    CleanseResult,
    NeuralCleanse,
    anomaly_threshold,
    mad_anomaly_index,
    neural_cleanse,
)
from scrutiny.errors import InputError

SCAN = NeuralCleanse(n_inputs=50, batch_size=50)


@pytest.fixture(scope="module")
def infected_scan(badnets_digits, digits_test):
    return SCAN(badnets_digits.model, digits_test, seed=0)


@pytest.fixture(scope="module")
def clean_scan(clean_victim_digits, digits_test):
    return SCAN(clean_victim_digits, digits_test, seed=0)


def test_infected_label_has_a_smaller_trigger_than_on_the_clean_victim(infected_scan, clean_scan):
    # measured (module docstring): ratio 0.42 to 0.76, up to 0.82 for a twin; label 0 below
    # the median of the infected model's norms every time
    assert infected_scan.norms[0] < 0.9 * clean_scan.norms[0]
    assert infected_scan.norms[0] < np.median(infected_scan.norms)
    # measured: largest index on the small side 1.09 to 2.14 on the clean victim (scan seeds
    # 0..4), below the default threshold 3.88
    assert clean_scan.flagged == []


def test_reversed_triggers_reach_their_labels(infected_scan, clean_scan, badnets_digits):
    # measured: every reversed trigger sends at least 81% (50 inputs; 90% with 100) of the
    # other labels' test inputs to its label
    for r in (infected_scan, clean_scan):
        assert float(r.success.min()) >= 0.7
        assert all(isinstance(t, Trigger) and t.shape == (1, 8, 8) for t in r.triggers)
        assert np.allclose(r.norms, [t.l1() for t in r.triggers])


def test_result_and_flagging_rule(infected_scan):
    r = infected_scan
    assert isinstance(r, CleanseResult) and r.labels == list(range(10)) and len(r.suspicious) == 0
    assert np.allclose(r.anomaly_index, mad_anomaly_index(r.norms))
    small = r.norms < np.median(r.norms)
    assert r.anomaly_threshold == anomaly_threshold(10, 0.05)
    assert r.flagged == [k for k in r.labels if small[k] and r.anomaly_index[k] > r.anomaly_threshold]
    d = json.loads(json.dumps(r.to_dict()))
    assert d["method"] == "neural_cleanse" and d["flagged"] == r.flagged and len(d["norms"]) == 10
    assert d["anomaly_threshold"] == r.anomaly_threshold
    assert NeuralCleanse(anomaly_threshold=2).flag_threshold(10) == 2.0


def test_anomaly_threshold_holds_its_false_positive_rate():
    """Under the null it is calibrated for (all n values normal; fresh draws, another seed
    than the threshold's own), the largest one-sided anomaly index passes the threshold at
    the asked rate, while the paper's fixed 2 flags a third of clean 10-label models."""
    rng = np.random.default_rng(123)
    for n, rate in ((10, 0.05), (10, 0.01), (43, 0.05)):
        v = rng.standard_normal((4000, n))
        largest = np.array([np.where(r < np.median(r), mad_anomaly_index(r), 0).max() for r in v])
        assert abs(float((largest > anomaly_threshold(n, rate)).mean()) - rate) < 0.012
        if n == 10 and rate == 0.05:
            assert 0.28 < float((largest > 2).mean()) < 0.38  # measured 0.33
    assert anomaly_threshold(2) == float("inf") and anomaly_threshold(10) > anomaly_threshold(43)
    with pytest.raises(InputError):
        NeuralCleanse(false_positive_rate=1.5)


def test_mad_anomaly_index():
    v = np.array([10.0, 11.0, 9.0, 10.0, 2.0])
    # median 10, absolute deviations (0, 1, 1, 0, 8), MAD 1.4826 * 1
    assert np.allclose(mad_anomaly_index(v), [0, 1 / 1.4826, 1 / 1.4826, 0, 8 / 1.4826])
    assert mad_anomaly_index(np.array([3.0, 3.0, 3.0, 1.0])).tolist() == [0.0, 0.0, 0.0, np.inf]


def test_labels_subset_and_bad_labels(digits_model, digits_test):
    r = neural_cleanse(digits_model, digits_test, labels=(2, 7, 4), epochs=2, n_inputs=20)
    assert r.labels == [2, 7, 4] and len(r.norms) == len(r.triggers) == len(r.success) == 3
    with pytest.raises(InputError, match="labels"):
        NeuralCleanse(labels=(1, 1))
    with pytest.raises(InputError, match="labels"):
        NeuralCleanse(labels=(-1, 2))
    with pytest.raises(InputError, match=r"\[12\]"):
        NeuralCleanse(labels=(0, 12), epochs=1)(digits_model, digits_test)
