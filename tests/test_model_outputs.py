"""NaN or infinite model outputs are an error at the clean forward pass, never predictions.

``argmax`` of a row with NaN returns some index, so without the check a broken
model reports a plausible-looking clean accuracy (e.g. 12.5%).
"""

import pytest
import torch

from scrutiny.attacks import PGD
from scrutiny.errors import InputError, ModelOutputError
from scrutiny.explain import Saliency
from scrutiny.metrics import Deletion
from scrutiny.models import QueryModel
from scrutiny.registry import create
from scrutiny.testing.models import NonFinite, tiny_cnn, tiny_images
from scrutiny.types import ThreatModel


def test_model_output_error_is_an_input_error():
    assert issubclass(ModelOutputError, InputError) and issubclass(ModelOutputError, ValueError)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_white_box_attack_explainer_and_metric_refuse_non_finite_logits(value):
    model = NonFinite(tiny_cnn(0).module, value=value, row=2)
    x, y = tiny_images(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ModelOutputError, match=r"NaN or infinite outputs for 1 of 4 inputs "
                                               r"\(first: sample 2\)"):
        PGD(steps=2)(model, x, y, threat=ThreatModel("linf", 0.1))
    with pytest.raises(ModelOutputError, match="NaN or infinite"):
        Saliency()(model, x)
    with pytest.raises(ModelOutputError, match="NaN or infinite"):
        Deletion(steps=2)(model, x, explainer="saliency")


def test_black_box_attack_refuses_a_callable_answering_nan_scores():
    inner = tiny_cnn(0)

    def scores(x):
        with torch.no_grad():
            p = inner(x).softmax(dim=1)
        p[0] = float("nan")
        return p

    qm = QueryModel(scores, output="probs", bounds=(0.0, 1.0), num_classes=3)
    x, y = tiny_images(3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ModelOutputError, match="NaN or infinite"):
        create("attack:square", max_queries=5)(qm, x, y, threat=ThreatModel("linf", 0.1))
    assert qm.queries == 0  # refused before the attack spent a query


def test_finite_outputs_pass():
    model = tiny_cnn(0)
    x = tiny_images(4)
    res = PGD(steps=2)(model, x, model.predict(x), threat=ThreatModel("linf", 0.1))
    assert res.clean_accuracy() == 1.0
