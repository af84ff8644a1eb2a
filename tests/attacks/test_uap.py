"""Universal adversarial perturbations (Moosavi-Dezfooli et al. 2017; Hirano & Takemoto 2020).

One perturbation, learned on training images, fools held-out images far more
often than random noise of the same norm, and stays in the eps-ball.
"""

import pytest
import torch

from scrutiny.attacks import DeepFool
from scrutiny.attacks.physical import UAP
from scrutiny.base import seeded
from scrutiny.data import load_digits
from scrutiny.errors import InputError
from scrutiny.types import ThreatModel, lp_norm


@pytest.fixture(scope="module")
def digits_train():
    d = load_digits(split="train")
    return d.x[:200], d.y[:200]


def _random_like(v: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if norm == "linf":
        return (torch.randint(0, 2, v.shape, generator=g) * 2 - 1.0) * eps
    r = torch.randn(v.shape, generator=g)
    return r / r.norm() * eps


def test_one_perturbation_fools_held_out_images(digits_model, digits_train, digits_test):
    x, y = digits_train
    tm = ThreatModel("l2", 2.0)
    res = UAP(max_passes=2, candidates=4)(digits_model, x[:150], y[:150], threat=tm)
    v = res.meta["perturbation"]
    assert v.shape == x.shape[1:]
    assert float(lp_norm(v[None], "l2")) <= 2.0 * (1 + 1e-5)
    assert tm.contains(x[:150], res.x_adv).all()
    assert torch.allclose(res.x_adv, UAP.apply(x[:150], v))          # x_adv is x + v, clipped
    clean = digits_model.predict(digits_test.x)
    fooled = (digits_model.predict(UAP.apply(digits_test.x, v)) != clean).float().mean()
    noise = _random_like(v, "l2", 2.0)
    by_noise = (digits_model.predict(UAP.apply(digits_test.x, noise)) != clean).float().mean()
    # measured on the 450 held-out images: 0.68 against 0.09 for random noise on the shipped
    # CNN; 0.76 / 0.08, 0.64 / 0.06, 0.46 / 0.11 and 0.39 / 0.08 on CNNs retrained with seeds
    # 1-4 (0.82 / 0.09 on the shipped one with 300 training images and all 10 candidates)
    assert fooled > 0.3 and fooled > 3 * by_noise and fooled > by_noise + 0.25
    # the reported fooling rate is the one of the returned perturbation on the training images
    on_train = (digits_model.predict(UAP.apply(x[:150], v)) != digits_model.predict(x[:150]))
    assert res.meta["fooling_rate"] == pytest.approx(float(on_train.float().mean()), abs=1e-6)


def test_targeted_uap_sends_held_out_images_to_the_target(digits_model, digits_train, digits_test):
    x, y = digits_train
    res = UAP(max_passes=3)(digits_model, x, y, threat=ThreatModel("l2", 2.5), target=5)
    v = res.meta["perturbation"]
    assert float(lp_norm(v[None], "l2")) <= 2.5 * (1 + 1e-5)
    to_target = (digits_model.predict(UAP.apply(digits_test.x, v)) == 5).float().mean()
    noise = _random_like(v, "l2", 2.5)
    by_noise = (digits_model.predict(UAP.apply(digits_test.x, noise)) == 5).float().mean()
    assert to_target > 0.8 and to_target > by_noise + 0.5      # measured 0.998 vs 0.087
    assert res.meta["targeted_success_rate"] >= 0.8


def test_linf_perturbation_stays_in_the_ball_and_the_mask(digits_model, digits_train):
    x, y = digits_train
    mask = torch.zeros(1, 8, 8)
    mask[:, :4] = 1
    tm = ThreatModel("linf", 0.3, mask=mask)
    res = UAP(max_passes=1, batch_size=64, candidates=3)(digits_model, x[:60], y[:60], threat=tm)
    v = res.meta["perturbation"]
    assert v.abs().max() <= 0.3 + 1e-6 and v.abs().max() > 0.1
    assert torch.equal(v[:, 4:], torch.zeros_like(v[:, 4:]))
    assert tm.contains(x[:60], res.x_adv).all()


def test_stops_once_the_fooling_rate_is_reached(digits_model, digits_train):
    x, y = digits_train
    res = UAP(delta=1.0)(digits_model, x[:50], y[:50], threat=ThreatModel("l2", 2.0))
    assert res.meta["passes"] == 0 and torch.equal(res.x_adv, x[:50])


def test_batch_of_one_is_the_papers_sequential_algorithm(digits_model, digits_train):
    """batch_size=1 reproduces a per-point reference loop (same seed, same visiting order)."""
    x, y = digits_train
    x, tm = x[:12], ThreatModel("l2", 2.0)
    uap = UAP(max_passes=1, batch_size=1, deepfool_steps=3, candidates=3)
    res = uap(digits_model, x, y[:12], threat=tm, seed=1)
    df = DeepFool(candidates=3, steps=3)
    v = torch.zeros_like(x[:1])
    with digits_model.evaluating(), seeded(1):
        label = digits_model(x).argmax(1)
        for i in torch.randperm(12):
            xi = (x[i:i + 1] + v).clamp(0, 1)
            if digits_model(xi).argmax(1) != label[i]:
                continue
            x_new = df._run(digits_model, xi, label[i:i + 1],  # _run sees resolved bounds
                            ThreatModel("l2", float("inf"), digits_model.bounds), None)
            if digits_model(x_new.clamp(0, 1)).argmax(1) != label[i]:
                v = _project_l2(v + x_new - xi, 2.0)
    assert v.abs().sum() > 0
    assert torch.allclose(res.meta["perturbation"], v[0], atol=1e-5)
    again = uap(digits_model, x, y[:12], threat=tm, seed=1)
    assert torch.equal(again.meta["perturbation"], res.meta["perturbation"])


def _project_l2(v: torch.Tensor, eps: float) -> torch.Tensor:
    n = float(v.norm())
    return v * min(1.0, eps / n) if n > 0 else v


def test_clear_errors(digits_model, digits_test):
    x, y = digits_test.x[:4], digits_test.y[:4]
    with pytest.raises(InputError, match="delta"):
        UAP(delta=1.5)
    with pytest.raises(InputError, match="max_passes"):
        UAP(max_passes=0)
    with pytest.raises(InputError, match="supports norms"):
        UAP()(digits_model, x, y, threat=ThreatModel("l1", 1.0))
    with pytest.raises(InputError, match="finite"):
        UAP()(digits_model, x, y, threat=ThreatModel("l2", float("inf")))
    with pytest.raises(InputError, match="shape"):
        UAP.apply(x, torch.zeros(8, 8))
