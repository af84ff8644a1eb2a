"""Adversarial training through the one loop: robustness rises; checkpoints resume exactly."""

import json

import pytest
import torch
from safetensors.torch import load_file

from scrutiny.attacks import PGD
from scrutiny.base import seeded
from scrutiny.data import load_digits
from scrutiny.defenses import AdversarialTraining
from scrutiny.errors import InputError
from scrutiny.models import MLP, TorchModel
from scrutiny.models.training import train
from scrutiny.models.zoo import RECIPES
from scrutiny.types import ThreatModel

SETTINGS = {"eps": 0.1, "epochs": 5, "lr": 1e-2, "steps": 5}


def _mlp():
    with seeded(0):
        return TorchModel(MLP(64, hidden=(64,)))


@pytest.fixture(scope="module")
def train_data():
    return load_digits(split="train")


@pytest.fixture(scope="module")
def standard(train_data):
    net = _mlp()
    train(net, train_data, epochs=SETTINGS["epochs"], lr=SETTINGS["lr"], progress=False)
    return net


def _pgd_eval(model, data):
    x, y = data.x[:300], data.y[:300]
    return PGD(steps=20)(model, x, y, threat=ThreatModel("linf", 0.1))


@pytest.mark.parametrize("method", ["fgsm_mix", "fast_fgsm", "pgd", "trades"])
def test_robust_accuracy_rises_well_above_the_standard_model(method, standard, train_data, digits_test):
    base = _pgd_eval(standard, digits_test)
    at = AdversarialTraining(method=method, **SETTINGS).fit(_mlp(), train_data)
    res = _pgd_eval(at.wrap(None), digits_test)
    assert res.clean_accuracy() > 0.9 and res.clean_accuracy() > base.clean_accuracy() - 0.03
    assert res.robust_accuracy() > base.robust_accuracy() + 0.12, (method, base.robust_accuracy(),
                                                                    res.robust_accuracy())
    assert len(at.history_.loss) == SETTINGS["epochs"]


class _Interrupt:
    """Raises during the ``fail_at``-th batch; described like the objective it wraps."""

    def __init__(self, inner, fail_at):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __repr__(self):
        return repr(self.inner)

    def __call__(self, module, x, y):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner(module, x, y)


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(tmp_path, train_data):
    data = train_data.subset(range(256))
    at = AdversarialTraining(method="pgd", eps=0.1, steps=2)
    kw = {"epochs": 3, "lr": 1e-2, "batch_size": 64, "progress": False}

    full = _mlp()
    hist_full = train(full, data, objective=at.objective(), **kw)

    ckpt = tmp_path / "run.safetensors"
    part = _mlp()
    with pytest.raises(KeyboardInterrupt):  # dies in epoch 2 (4 batches per epoch)
        train(part, data, objective=_Interrupt(at.objective(), fail_at=6), checkpoint=ckpt, **kw)
    meta = json.loads((tmp_path / "run.safetensors.json").read_text())
    assert meta["epoch"] == 1
    tensors = load_file(str(ckpt))  # safetensors, no pickle: weights, Adam moments, RNG states
    assert any(k.startswith("opt.") and k.endswith("exp_avg") for k in tensors)
    assert "rng.torch" in tensors and "rng.generator" in tensors

    resumed = _mlp()
    hist = train(resumed, data, objective=at.objective(), checkpoint=ckpt, **kw)
    assert hist.loss == hist_full.loss and hist.accuracy == hist_full.accuracy
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a finished checkpoint resumes to the same weights without training
    again = _mlp()
    assert train(again, data, objective=at.objective(), checkpoint=ckpt, **kw).loss == hist_full.loss
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 full.state_dict().values(), strict=True))
    # a checkpoint of another setup is refused, not silently mixed in
    with pytest.raises(InputError, match="different training setup"):
        train(_mlp(), data, objective=at.objective(), checkpoint=ckpt, **{**kw, "lr": 5e-3})


def test_adversarial_recipes_have_keys_of_their_own():
    assert RECIPES["digits-cnn-pgd"].key() != RECIPES["digits-cnn"].key()
    assert dict(RECIPES["digits-cnn-pgd"].adversarial)["method"] == "pgd"


def test_clear_errors(train_data):
    with pytest.raises(InputError, match="method must be one of"):
        AdversarialTraining(method="free")
    with pytest.raises(InputError, match="norm"):
        AdversarialTraining(norm="l1")
    with pytest.raises(InputError, match="eps"):
        AdversarialTraining(eps=0)
    with pytest.raises(InputError, match="alpha"):
        AdversarialTraining(alpha=2)
    with pytest.raises(InputError, match="not fitted"):
        AdversarialTraining().wrap(None)
    with pytest.raises(InputError, match="ArrayDataset"):
        AdversarialTraining().fit(_mlp(), train_data.x)
    with pytest.raises(InputError, match="safetensors"):
        train(_mlp(), train_data, epochs=1, checkpoint="run.pt", progress=False)
