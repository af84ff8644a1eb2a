"""K-Arm's symmetric check (Shen et al. 2021) on a constructed model whose answer is known.

The model classifies 4x4 images by their distance to four prototypes, and carries a
backdoor: a bright top-left pixel adds to label 0's logit, whatever the rest of the image.
Label 0 is then reached from every label by a one-pixel trigger, while the way back from a 0
to another label is a change of the whole prototype; the prototypes of labels 2 and 3 differ
in two pixels, a natural shortcut that goes both ways. The CLI-built BadNets victim beside
the embedded digits CNN is in tests/test_cli_tampering.py (the audit's backdoor section).
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from scrutiny.data import ArrayDataset
from scrutiny.defenses.backdoor import KArm, KArmResult, k_arm
from scrutiny.defenses.backdoor.cleanse import reverse_triggers
from scrutiny.errors import InputError
from scrutiny.models import as_model

PROTO = torch.zeros(4, 1, 4, 4)
PROTO[0, 0, 1:3, 1:3] = 1.0  # a square
PROTO[1, 0, :, 3] = 1.0  # the right column
PROTO[2, 0, 3, :] = 1.0  # the bottom row
PROTO[3, 0, 3, :2] = 1.0  # half of it and
PROTO[3, 0, 2, 2:] = 1.0  # half of the row above: two pixels from label 2


class Backdoored(nn.Module):
    """Logits ``-4 ||x - proto_k||^2``, plus ``40 sigmoid(6 (x[0, 0] - 0.5))`` for label 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = ((x[:, None] - PROTO[None]) ** 2).flatten(2).sum(2)
        logits = -4 * d
        bonus = 40 * torch.sigmoid(6 * (x[:, 0, 0, 0] - 0.5))
        return logits + torch.nn.functional.pad(bonus[:, None], (0, 3))


@pytest.fixture(scope="module")
def case():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat_interleave(12)
    x = (PROTO[y] + 0.05 * torch.randn(len(y), 1, 4, 4, generator=g)).clamp(0, 1)
    x[:, 0, 0, 0] = 0.0  # the trigger pixel is dark on clean inputs
    return as_model(Backdoored().eval()), ArrayDataset(x, y, classes=("a", "b", "c", "d"),
                                              name="prototypes")


SCAN = KArm(epochs=60, n_inputs=48, batch_size=12, sym_inputs=12, patience=2, sym_epochs=60)


def test_clean_inputs_are_classified(case):
    model, data = case
    assert (model.predict(data.x) == data.y).all()


def test_symmetric_check_flags_the_one_way_shortcut(case):
    model, data = case
    r = SCAN(model, data, seed=0)
    assert isinstance(r, KArmResult) and r.candidates[0] == 0
    # every label reaches 0 by about the trigger pixel; a 0 needs its whole square changed
    fw, bw = r.forward[0, 1:], r.backward[0, 1:]
    assert (fw < 1.5).all() and (bw > 2 * fw).all()
    assert r.ratio[0] > 2 and r.shortcut[0] > 1 and r.score[0] > r.score_bound
    assert r.flagged == [0]


def test_natural_shortcut_is_symmetric(case):
    """Without label 0, the smallest trigger is one of the twins 2 and 3: small both ways,
    so the ratio stays near 1 and nothing is flagged."""
    model, data = case
    r = KArm(labels=(1, 2, 3), epochs=60, n_inputs=48, batch_size=12, sym_inputs=12,
             patience=2, sym_epochs=60)(model, data, seed=0)
    assert r.candidates[0] in (2, 3) and r.flagged == []
    # measured 1.04 (60 epochs), 1.05 (80); the backdoor of the full model: 5.6, 5.8
    assert 0.7 < r.ratio[0] < 1.65 and r.score[0] < r.score_bound
    twin = 5 - r.candidates[0]
    assert r.forward[0, r.labels.index(twin)] < r.forward[0, r.labels.index(1)]


def test_decision_is_deterministic_for_a_seed(case):
    """The same seed gives the same triggers, ratio and verdict (the check's default length,
    three times ``epochs``); another seed draws other inputs and starting masks."""
    model, data = case
    scan = KArm(epochs=8, n_inputs=24, batch_size=12, sym_inputs=6, patience=1)
    a, b, c = scan(model, data, seed=3), scan(model, data, seed=3), scan(model, data, seed=4)
    assert a.candidates == b.candidates and a.flagged == b.flagged
    np.testing.assert_array_equal(a.forward, b.forward)
    np.testing.assert_array_equal(a.backward, b.backward)
    np.testing.assert_array_equal(a.ratio, b.ratio)
    assert not np.array_equal(a.forward, c.forward)
    assert a.meta["sym_epochs"] is None


def test_result_json_and_bad_input(case):
    model, data = case
    r = k_arm(model, data, epochs=3, n_inputs=8, sym_inputs=3)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["method"] == "k_arm" and d["candidates"] == r.candidates
    assert len(d["forward"][0]) == 4 and d["forward"][0][r.candidates[0]] is None
    assert d["score_bound"] == KArm().score_bound and len(d["norms"]) == 4
    assert d["score"][0] == pytest.approx(d["ratio"][0] * d["shortcut"][0])
    no_label_3 = ArrayDataset(data.x[data.y < 3], data.y[data.y < 3], classes=data.classes,
                              name="no3")
    with pytest.raises(InputError, match=r"\[3\]"):
        KArm(epochs=1, n_inputs=8)(model, no_label_3)


def test_reverse_triggers_away_leaves_the_label(case):
    """``away=True`` sends label 1's inputs anywhere but 1; per-trigger inputs ``(g, N, ...)``."""
    model, data = case
    x = data.x[data.y == 1][None]
    torch.manual_seed(0)
    mask, pattern = reverse_triggers(model, x, [1], epochs=30, batch_size=12, lr=0.1,
                                     init_cost=1e-2, cost_multiplier=1.5, patience=2,
                                     threshold=0.99, away=True)
    stamped = (1 - mask[0]) * x[0] + mask[0] * pattern[0]
    assert (model.predict(stamped) != 1).float().mean() >= 0.9
    assert mask.shape == (1, 1, 4, 4) and np.isfinite(float(mask.sum()))
