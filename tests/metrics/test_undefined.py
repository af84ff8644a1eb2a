"""A metric that is undefined says so: every NaN score comes with a reason, and the summary is
strict JSON (null, never a bare NaN)."""

import json
import math

import pytest
import torch

from scrutiny import registry
from scrutiny.metrics.base import Metric, MetricResult, degenerate, describe_degenerate, nanmean
from scrutiny.testing.models import quantized_cnn

#: Metrics that take no further call-time data (pointing game and data randomization have
#: their own tests of undefined samples).
PLAIN = [n for n in registry.list_methods("metric")
         if not registry.get(n, "metric").cls.call_data]


def test_degenerate_maps_are_told_apart():
    maps = torch.randn(5, 3, 4, generator=torch.Generator().manual_seed(0))
    maps[1] = 0
    maps[2] = -0.25
    maps[3, 0, 0] = float("nan")
    maps[4, 1, 2] = float("inf")
    got = {k: m.tolist() for k, m in degenerate(maps).items()}
    assert got == {"zero": [False, True, False, False, False],
                   "constant": [False, False, True, False, False],
                   "non_finite": [False, False, False, True, True]}
    assert describe_degenerate(degenerate(maps)) == ("1 of 5 maps are all zero; 1 of 5 maps are "
                                                     "constant; 2 of 5 maps are non-finite (NaN "
                                                     "or infinite values)")
    assert describe_degenerate(degenerate(maps[:1])) is None
    assert not any(m.numel() for m in degenerate(torch.zeros(0, 8, 8)).values())


class HalfDefined(Metric):
    """Leaves the first score NaN and gives no reason."""

    name = "half_defined"

    def _evaluate(self, model, x, target, explainer, attributions, seed):
        s = torch.ones(len(x), dtype=torch.float64)
        s[:1] = float("nan")
        return MetricResult(scores=s, aggregate=nanmean(s), target=target.cpu())


def test_the_base_class_explains_a_nan_the_metric_left_unexplained():
    from scrutiny.testing.models import tiny_cnn, tiny_images

    model, x = tiny_cnn(0), tiny_images(4)
    res = HalfDefined()(model, x, attributions=torch.zeros_like(x))
    assert res.aggregate == 1.0 and res.undefined == "1 of 4 samples have no defined score"
    empty = HalfDefined()(model, x[:0], attributions=torch.zeros_like(x[:0]))
    assert math.isnan(empty.aggregate) and empty.undefined == "no samples"
    assert empty.to_dict() == {"n": 0, "aggregate": None, "undefined": "no samples",
                               "metric": "half_defined"}


@pytest.mark.parametrize("name", PLAIN)
def test_every_metric_on_all_zero_maps_is_defined_or_says_why(name, digits_test):
    """Saliency of a CNN behind a 4-level input quantizer: every map all zero."""
    info = registry.get(name, "metric")
    metric = info.cls(**info.test_params)
    res = metric(quantized_cnn(), digits_test.x[:3], explainer="saliency")
    if torch.isnan(res.scores).any() or math.isnan(res.aggregate):
        assert res.undefined, name
    else:
        assert res.undefined is None, name
    json.dumps(res.to_dict(), allow_nan=False)
