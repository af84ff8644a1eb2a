"""Gradient family: saliency, gradient, sensitivity, input x gradient, SmoothGrad, IG."""

import pytest
import torch
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import (
    Gradient,
    InputXGradient,
    IntegratedGradients,
    Saliency,
    Sensitivity,
    SmoothGrad,
    input_x_gradient,
    integrated_gradients,
    saliency,
    sensitivity,
    smoothgrad,
    vanilla_gradient,
)
from scrutiny.explain.gradient.integrated import kink_weights
from scrutiny.models import TorchModel
from scrutiny.testing import tiny_images, tiny_linear


def test_saliency_is_max_abs_gradient_over_channels():
    model = tiny_linear(0, shape=(3, 5, 5))
    x = tiny_images(4, shape=(3, 5, 5))
    t = torch.tensor([0, 1, 2, 1])
    e = saliency(model, x, t)
    w = model.module[1].weight[t].reshape(4, 3, 5, 5)
    assert e.attributions.shape == (4, 5, 5)
    assert torch.allclose(e.attributions, w.abs().amax(1))


def _smooth_net(seed=0):
    torch.manual_seed(seed)
    return TorchModel(nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(),
                                    nn.Linear(16, 3)))


@pytest.mark.parametrize("rule", ["adaptive", "gausslegendre", "riemann_trapezoid",
                                  "riemann_middle"])
def test_ig_completeness_on_a_smooth_model(rule):
    model, x = _smooth_net(), tiny_images(5)
    e = IntegratedGradients(steps=64, rule=rule)(model, x)
    span = (e.outputs - e.meta["baseline_output"]).abs()
    assert (e.delta.abs() <= 1e-3 * span + 1e-6).all()
    assert torch.allclose(e.attributions.flatten(1).sum(1),
                          e.outputs - e.meta["baseline_output"], atol=1e-3)


def test_ig_completeness_on_the_trained_cnn(digits_model, digits_test):
    """ReLU networks have kinks along the path; enough steps still give 1e-3."""
    x = digits_test.x[:16]
    e = IntegratedGradients(steps=1024, rule="riemann_trapezoid")(digits_model, x)
    span = (e.outputs - e.meta["baseline_output"]).abs()
    # summed over samples: measured 1.1e-4 to 2.7e-4 on the shipped CNN and CNNs retrained with
    # seeds 1-4; the mean of per-sample ratios, which samples with a small f(x) - f(b) dominate,
    # 1.4e-4 to 1.1e-3
    assert e.delta.abs().sum() / span.sum() < 1e-3
    assert (e.delta.abs() / span).mean() < 3e-3
    # the error shrinks with the number of steps
    coarse = IntegratedGradients(steps=16, rule="riemann_trapezoid")(digits_model, x)
    assert coarse.delta.abs().mean() > e.delta.abs().mean()


def test_ig_baselines():
    model, x = _smooth_net(), tiny_images(3)
    for b in ("zero", "blur", "uniform", 0.5, torch.full((1, 6, 6), 0.3)):
        e = integrated_gradients(model, x, baseline=b, steps=32)
        span = (e.outputs - e.meta["baseline_output"]).abs()
        assert (e.delta.abs() <= 1e-3 * span + 1e-5).all()
    with pytest.raises(InputError, match="unknown baseline"):
        IntegratedGradients(baseline="gray")
    with pytest.raises(InputError, match="does not broadcast"):
        integrated_gradients(model, x, baseline=torch.zeros(2, 2))
    with pytest.raises(InputError, match="rule must be one of"):
        IntegratedGradients(rule="simpson")


def test_target_out_of_range_is_one_clear_error():
    with pytest.raises(InputError, match="3 classes"):
        Saliency()(tiny_linear(0), tiny_images(2), 5)


class _Quadratic(nn.Module):
    """``f_k(x) = sum_i A_ki x_i^2 + W_ki x_i``: gradient ``2 A_k x + W_k``, known in closed form."""

    def __init__(self, d=36, k=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = nn.Parameter(torch.randn(k, d, generator=g))
        self.W = nn.Parameter(torch.randn(k, d, generator=g))

    def forward(self, x):
        z = x.flatten(1)
        return z.square() @ self.A.T + z @ self.W.T

    def grad(self, x, t):
        return (2 * self.A[t] * x.flatten(1) + self.W[t]).reshape(x.shape).detach()


def test_sensitivity_gradient_and_input_x_gradient_match_the_analytic_gradient():
    net = _Quadratic()
    model, x = TorchModel(net), tiny_images(4)
    t = torch.tensor([0, 2, 1, 2])
    g = net.grad(x, t)
    assert torch.allclose(sensitivity(model, x, t).attributions, g.square(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(vanilla_gradient(model, x, t).attributions, g, rtol=1e-5, atol=1e-6)
    assert torch.allclose(input_x_gradient(model, x, t).attributions, x * g, rtol=1e-5,
                          atol=1e-6)
    # batching does not matter
    assert torch.allclose(Sensitivity(batch_size=3)(model, x, t).attributions, g.square(),
                          rtol=1e-5, atol=1e-6)


def test_smoothgrad_with_zero_noise_is_the_plain_gradient(digits_model, digits_test):
    x = digits_test.x[:6]
    plain = Gradient()(digits_model, x).attributions
    sg = SmoothGrad(noise_level=0.0, n_samples=5, batch_size=7)(digits_model, x).attributions
    assert torch.allclose(sg, plain, rtol=1e-5, atol=1e-7)
    sq = SmoothGrad(noise_level=0.0, n_samples=3, base="sensitivity")(digits_model, x)
    assert torch.allclose(sq.attributions, plain.square(), rtol=1e-5, atol=1e-9)
    ixg = smoothgrad(digits_model, x, noise_level=0.0, n_samples=2, base="input_x_gradient")
    assert torch.allclose(ixg.attributions, InputXGradient()(digits_model, x).attributions,
                          rtol=1e-5, atol=1e-7)
    sal = smoothgrad(digits_model, x, noise_level=0.0, n_samples=2, base="saliency")
    assert torch.allclose(sal.attributions, Saliency()(digits_model, x).attributions,
                          rtol=1e-5, atol=1e-7)
    # with noise the map changes
    noisy = SmoothGrad(noise_level=0.15, n_samples=5)(digits_model, x).attributions
    assert not torch.allclose(noisy, plain, atol=1e-3)


def test_smoothgrad_averaging_reduces_variance_across_seeds(digits_model, digits_test):
    x, t = digits_test.x[:4], digits_test.y[:4]

    def spread(n):
        maps = torch.stack([SmoothGrad(n_samples=n, noise_level=0.2)(digits_model, x, t,
                                                                     seed=s).attributions
                            for s in range(6)])
        return float(maps.var(dim=0).mean())

    few, many = spread(2), spread(32)
    assert many < few / 4  # 1/n: a 16-fold reduction is expected


def test_smoothgrad_rejects_bad_settings():
    with pytest.raises(InputError, match="base must be one of"):
        SmoothGrad(base="lrp")
    with pytest.raises(InputError, match="n_samples"):
        SmoothGrad(n_samples=0)


def test_adaptive_ig_is_more_complete_and_as_accurate_as_a_fixed_rule(digits_model, digits_test):
    """The default adaptive rule vs Gauss-Legendre with as many nodes on every sample."""
    x = digits_test.x[:12]
    e = IntegratedGradients()(digits_model, x)
    span = (e.outputs - e.meta["baseline_output"]).abs()
    nodes = e.meta["nodes"]
    floor = IntegratedGradients().min_steps  # the default's floor (an implementation constant)
    assert floor <= nodes.min() and nodes.max() <= 128  # min_steps on every sample
    gl = IntegratedGradients(rule="gausslegendre", steps=int(nodes.float().mean()) + 1)(
        digits_model, x)
    err, gl_err = (e.delta.abs() / span).mean(), (gl.delta.abs() / span).mean()
    assert err < 3e-3 and err < gl_err / 1.5  # 9x on 64 images, see the issue-4 table
    # the attributions themselves are about as close to the integral as the fixed rule's
    ref = IntegratedGradients(rule="riemann_middle", steps=512)(digits_model, x).attributions

    def dist(a):
        return float(((a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean())

    assert dist(e.attributions) < 1.5 * dist(gl.attributions)
    # delta is honest: recomputed from the attributions and the model
    with torch.no_grad():
        fx = digits_model(x).gather(1, e.target[:, None])[:, 0]
        fb = digits_model(torch.zeros_like(x)).gather(1, e.target[:, None])[:, 0]
    assert torch.allclose(e.delta, e.attributions.flatten(1).sum(1) - (fx - fb), atol=1e-5)


def test_adaptive_ig_with_zero_tolerance_spends_the_whole_budget(digits_model, digits_test):
    x = digits_test.x[:4]
    e = IntegratedGradients(rtol=0.0, steps=40)(digits_model, x)
    assert (e.meta["nodes"] == 40).all()
    with pytest.raises(InputError, match="steps >= 2"):
        IntegratedGradients(steps=1)


def _one_hidden_layer(seed, inputs=6, hidden=5):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 2)).double()
    return net


def _exact_ig(net, x, target):
    """IG of a one-hidden-layer ReLU net in closed form (zero baseline).

    Hidden unit j is on where ``z_j(a) = c_j + a w_j . x > 0``; its gradient
    ``v_j w_j`` is integrated over that part of [0, 1] exactly.
    """
    w, c = net[0].weight, net[0].bias
    v = net[2].weight[target]  # (n, hidden)
    z0, dz = c.expand(len(x), -1), x @ w.T
    cross = -z0 / dz
    frac = torch.where(dz > 0, (1 - cross.clamp(0, 1)), cross.clamp(0, 1))
    frac = torch.where(dz == 0, (z0 > 0).double(), frac)
    return x * ((v * frac) @ w)


def test_kink_weights_integrate_one_switch_exactly():
    # f(a) = 2a on [0, c], then slope -1: g jumps from 2 to -1 at c
    h, c = torch.tensor([0.5], dtype=torch.float64), 0.3
    df = torch.tensor([2 * c - (0.5 - c)], dtype=torch.float64)
    wa, wb = kink_weights(h, df, torch.tensor([2.0], dtype=torch.float64),
                          torch.tensor([-1.0], dtype=torch.float64))
    assert torch.allclose(wa, torch.tensor([c], dtype=torch.float64))
    assert torch.allclose(wb, torch.tensor([0.5 - c], dtype=torch.float64))
    # a switch that f cannot place inside (two switches): trapezoid weights
    wa, wb = kink_weights(h, torch.tensor([5.0], dtype=torch.float64),
                          torch.tensor([2.0], dtype=torch.float64),
                          torch.tensor([-1.0], dtype=torch.float64))
    assert torch.allclose(wa, h / 2) and torch.allclose(wb, h / 2)


def test_adaptive_ig_is_exact_on_a_piecewise_linear_path_with_few_switches():
    """Refined until no interval holds two switches, the rule is the exact integral."""
    net = _one_hidden_layer(3)
    torch.manual_seed(4)
    x = torch.rand(8, 6, dtype=torch.float64) * 2 - 0.5
    model = TorchModel(net, num_classes=2, bounds=(-1.0, 2.0))
    target = torch.tensor([0, 1] * 4)
    exact = _exact_ig(net, x, target)
    e = IntegratedGradients(steps=64, rtol=1e-10, min_steps=2)(model, x, target)
    assert torch.allclose(e.attributions, exact, atol=1e-9, rtol=1e-7)
    assert int(e.meta["nodes"].max()) < 64  # stopped on completeness, not on the budget
    # the trapezoid rule on as many uniform nodes is far off: the exactness is the kink weights'
    trap = IntegratedGradients(steps=int(e.meta["nodes"].max()), rule="riemann_trapezoid")
    err = (trap(model, x, target).attributions - exact).abs().max()
    assert err > 1e-4


def test_adaptive_ig_without_completeness_goal_gives_a_better_map(digits_model, digits_test):
    """rtol=0 places every node by the gradient's change: closer to the integral per node."""
    x = digits_test.x[:12]
    ref = IntegratedGradients(rule="riemann_middle", steps=1024)(digits_model, x).attributions

    def dist(a):
        return float(((a - ref).flatten(1).abs().sum(1) / ref.flatten(1).abs().sum(1)).mean())

    free = IntegratedGradients(rtol=0.0, steps=48)(digits_model, x).attributions
    gl = IntegratedGradients(rule="gausslegendre", steps=48)(digits_model, x).attributions
    # measured dist(free) / dist(gl): 0.85 on the shipped CNN; 0.84, 0.95, 0.92, 0.93 on CNNs
    # retrained with seeds 1-4 (weights trained on another CPU once gave 1.01: hence shipped
    # weights, and no margin claimed beyond "closer")
    assert dist(free) < dist(gl)


def test_ig_passes_are_sized_to_the_input_and_do_not_change_the_result(digits_model, digits_test):
    from scrutiny.explain.gradient.integrated import path_batch

    # None: about 2**15 input values per pass (cache-sized on a CPU), at least 16 points
    assert path_batch(None, 64) == 512 and path_batch(None, 28 * 28) == 41
    assert path_batch(None, 3 * 224 * 224) == 16 and path_batch(100, 64) == 100
    x = digits_test.x[:8]
    auto = IntegratedGradients(steps=24)(digits_model, x)
    small = IntegratedGradients(steps=24, batch_size=7)(digits_model, x)
    assert torch.equal(auto.meta["nodes"], small.meta["nodes"])  # the same decisions
    assert torch.allclose(auto.attributions, small.attributions, atol=1e-5)
