"""Layer-wise Relevance Propagation: a slow reference, conservation at every layer,
canonizers, residual sums, composites and bad input."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scrutiny.errors import InputError
from scrutiny.explain import LRP
from scrutiny.explain.lrp import lrp
from scrutiny.models import TorchModel
from scrutiny.models.layers import Add
from scrutiny.testing import tiny_images

# ---------------------------------------------------------------- slow reference
# Written independently of scrutiny.explain.lrp: every linear layer becomes an explicit
# matrix M (in_dim, out_dim) built from unit inputs, contributions z_ij = a_i M_ij are
# formed explicitly, one sample at a time; max pooling walks its windows in Python loops.


def _dense(layer: nn.Module, in_shape):
    d = 1
    for s in in_shape:
        d *= s
    eye = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
    if isinstance(layer, nn.Conv2d):
        out = F.conv2d(eye, layer.weight, None, layer.stride, layer.padding)
        b = None if layer.bias is None else layer.bias.repeat_interleave(out[0, 0].numel())
    elif isinstance(layer, nn.Linear):
        out = eye.reshape(d, -1) @ layer.weight.T
        b = layer.bias
    else:  # average pooling
        out = layer(eye)
        b = None
    m = out.reshape(d, -1)
    return m, (torch.zeros(m.shape[1], dtype=m.dtype) if b is None else b.detach().clone())


def _safe(num, den):
    return torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)


def _ref_dense(rule, a, m, b, r, lo=None, hi=None):
    """One layer by the rule's formula on explicit matrices (a: (in,), r: (out,))."""
    name, p = rule
    if name in ("epsilon", "z"):
        z = a[:, None] * m
        zj = z.sum(0) + b
        eps = p.get("epsilon", 0.0) if name == "epsilon" else 0.0
        den = zj + eps * torch.where(zj >= 0, 1.0, -1.0).double()
        return (z * _safe(r, den)[None, :]).sum(1)
    if name == "gamma":
        g = p["gamma"]
        z = a[:, None] * (m + g * m.clamp(min=0))
        zj = z.sum(0) + b + g * b.clamp(min=0)
        return (z * _safe(r, zj)[None, :]).sum(1)
    if name == "alphabeta":
        alpha, beta = p["alpha"], p["beta"]
        z = a[:, None] * m
        zp, zn = z.clamp(min=0), z.clamp(max=0)
        dp = zp.sum(0) + b.clamp(min=0)
        dn = zn.sum(0) + b.clamp(max=0)
        return (alpha * zp * _safe(r, dp)[None, :] - beta * zn * _safe(r, dn)[None, :]).sum(1)
    if name == "zbox":
        z = a[:, None] * m - lo[:, None] * m.clamp(min=0) - hi[:, None] * m.clamp(max=0)
        return (z * _safe(r, z.sum(0))[None, :]).sum(1)
    raise AssertionError(name)


def _ref_maxpool(layer, a, r, mode):
    k, s = layer.kernel_size, layer.stride
    out = torch.zeros_like(a)
    _, h, w = r.shape
    for c, i, j in itertools.product(range(r.shape[0]), range(h), range(w)):
        win = a[c, i * s:i * s + k, j * s:j * s + k]
        if mode == "winner":
            idx = int(win.flatten().argmax())
            out[c, i * s + idx // k, j * s + idx % k] += r[c, i, j]
        else:
            out[c, i * s:i * s + k, j * s:j * s + k] += win * _safe(r[c, i, j], win.sum())
    return out


def reference_lrp(layers, x, target, rules, maxpool="winner", bounds=(0.0, 1.0)):
    """``rules[k]`` is ``(name, params)`` for the k-th layer (linear layers only)."""
    result = []
    for n in range(len(x)):
        acts = [x[n:n + 1]]
        for layer in layers:
            acts.append(layer(acts[-1]))
        out = acts[-1][0]
        r = torch.zeros_like(out)
        r[target[n]] = out[target[n]]
        for k in reversed(range(len(layers))):
            layer, a = layers[k], acts[k][0]
            if isinstance(layer, nn.ReLU | nn.Flatten):
                r = r.reshape(a.shape)
            elif isinstance(layer, nn.MaxPool2d):
                r = _ref_maxpool(layer, a, r.reshape(acts[k + 1][0].shape), maxpool)
            else:
                m, b = _dense(layer, a.shape)
                lo = torch.full((a.numel(),), bounds[0], dtype=a.dtype)
                hi = torch.full((a.numel(),), bounds[1], dtype=a.dtype)
                r = _ref_dense(rules[k], a.flatten(), m, b, r.flatten(), lo, hi).reshape(a.shape)
        result.append(r)
    return torch.stack(result)


def small_net(seed=0, bias=True):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=bias), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(3, 4, 3, padding=1, bias=bias), nn.ReLU(),
                        nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(16, 6, bias=bias),
                        nn.ReLU(), nn.Linear(6, 3, bias=bias)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.6)
    return net


def _x(n=4, seed=0):
    return tiny_images(n, seed).double()


CASES = {
    "epsilon": ({"rule": {"rule": "epsilon", "epsilon": 0.1}}, ("epsilon", {"epsilon": 0.1})),
    "z": ({"rule": "z"}, ("z", {})),
    "zplus": ({"rule": "zplus"}, ("alphabeta", {"alpha": 1.0, "beta": 0.0})),
    "alphabeta": ({"rule": "alphabeta", "alpha": 2.0, "beta": 1.0},
                  ("alphabeta", {"alpha": 2.0, "beta": 1.0})),
    "gamma": ({"rule": "gamma", "gamma": 0.3}, ("gamma", {"gamma": 0.3})),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("maxpool", ["winner", "proportional"])
def test_matches_slow_reference(case, maxpool):
    kw, ref_rule = CASES[case]
    net, x = small_net(), _x()
    t = torch.tensor([0, 1, 2, 1])
    e = LRP(**kw, maxpool=maxpool)(TorchModel(net), x, t)
    rules = {k: ref_rule for k in range(len(net))}
    ref = reference_lrp(list(net), x, t, rules, maxpool)
    assert torch.allclose(e.attributions, ref, atol=1e-9, rtol=1e-6)
    assert e.attributions.abs().sum() > 0


def test_zbox_first_layer_and_per_name_rules_match_reference():
    net, x = small_net(1), _x(seed=1)
    t = torch.tensor([2, 0, 1, 0])
    e = LRP(rule="epsilon", epsilon=0.01,
            rules={"0": "zbox", "Linear": "zplus", "9": {"rule": "z"}})(TorchModel(net), x, t)
    eps = ("epsilon", {"epsilon": 0.01})
    rules = {0: ("zbox", {}), 2: eps, 3: eps, 7: ("alphabeta", {"alpha": 1.0, "beta": 0.0}),
             9: ("z", {})}
    assert torch.allclose(e.attributions, reference_lrp(list(net), x, t, rules),
                          atol=1e-9, rtol=1e-6)


def test_zbox_bounds_follow_the_wrappers_normalisation():
    net, x = small_net(2), _x(seed=2)
    t = torch.tensor([1, 1, 0, 2])
    model = TorchModel(net, mean=[0.4], std=[0.25])
    e = LRP(rule="z", rules={"0": "zbox"})(model, x, t)
    rules = {k: ("z", {}) for k in range(len(net))}
    rules[0] = ("zbox", {})
    ref = reference_lrp(list(net), (x - 0.4) / 0.25, t, rules, bounds=(-1.6, 2.4))
    assert torch.allclose(e.attributions, ref, atol=1e-9, rtol=1e-6)


# ---------------------------------------------------------------- conservation
def _check_layers(e, rtol=1e-5, shares=True):
    for k in e.meta["layers"]:
        rin, rout = e.meta["layer_relevance"][k], e.meta["layer_relevance_out"][k]
        total = rin + e.meta["bias_relevance"][k] + e.meta["stabilizer_relevance"][k]
        assert torch.allclose(total, rout, rtol=rtol, atol=1e-12), k
        if not shares:
            assert torch.allclose(rin, rout, rtol=rtol, atol=1e-12), k


@pytest.mark.parametrize("rule", ["z", {"rule": "epsilon", "epsilon": 1e-9}, "zplus"])
def test_conservation_at_every_layer_without_bias(rule):
    net = small_net(2, bias=False)
    x = _x(6, seed=2)
    model = TorchModel(net.float())
    e = LRP(rule=rule)(model, x.float())
    f = e.outputs.double()
    assert (f.abs() > 1e-3).all()
    _check_layers(e, shares=False)
    # layer by layer the relevance stays f(x), down to the input
    for k in e.meta["layers"]:
        assert torch.allclose(e.meta["layer_relevance"][k], f, rtol=1e-5), k
    assert torch.allclose(e.attributions.double().sum((1, 2, 3)), f, rtol=1e-5)


def test_with_biases_conservation_holds_once_the_bias_share_is_added():
    net, x = small_net(3), _x(6, seed=3)
    e = LRP(rule="epsilon", epsilon=0.05)(TorchModel(net), x)
    _check_layers(e, rtol=1e-10)
    total = (e.attributions.sum((1, 2, 3)) + e.meta["bias_relevance_total"]
             + e.meta["stabilizer_relevance_total"])
    assert torch.allclose(total, e.outputs.double(), rtol=1e-10)
    assert e.meta["bias_relevance_total"].abs().min() > 1e-3  # the biases do absorb relevance
    assert not torch.allclose(e.attributions.sum((1, 2, 3)), e.outputs.double(), rtol=1e-3)


def test_lrp0_equals_gradient_times_input_on_the_digits_cnn(digits_model, digits_test):
    """Montavon et al. 2019: LRP-0 on a ReLU network (winner-take-all max pooling) is
    gradient x input, biases included; the epsilon rule conserves at every layer."""
    x = digits_test.x[:16]
    e0 = LRP(rule="z")(digits_model, x)
    xg = x.clone().requires_grad_(True)
    out = digits_model(xg).gather(1, e0.target[:, None]).sum()
    (g,) = torch.autograd.grad(out, xg)
    assert torch.allclose(e0.attributions, g * x, atol=1e-5)
    e = LRP(rule="epsilon", rules={"features.0": "zbox"})(digits_model, x)
    assert e.meta["layers"] == ["features.0", "features.1", "features.2", "features.3",
                                "features.4", "features.5", "features.6", "pool", "flatten",
                                "classifier"]
    _check_layers(e, rtol=1e-9)
    rel = e.meta["conservation_residual"].abs() / e.outputs.double().abs()
    assert rel.max() < 1e-9


# ---------------------------------------------------------------- canonizer
def _bn_net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                        nn.Flatten(), nn.Linear(144, 8), nn.BatchNorm1d(8), nn.ReLU(),
                        nn.Linear(8, 3))
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.normal_(1, 0.3)
            bn.bias.normal_(0, 0.3)
    return net.eval()


def _merged_by_hand(net):
    convs = []
    for lin, bn in ((net[0], net[1]), (net[4], net[5])):
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        new = type(lin)(*((1, 4, 3) if isinstance(lin, nn.Conv2d) else (144, 8)),
                        **({"padding": 1} if isinstance(lin, nn.Conv2d) else {}))
        with torch.no_grad():
            new.weight.copy_(lin.weight * s.view(-1, *([1] * (lin.weight.dim() - 1))))
            new.bias.copy_((lin.bias - bn.running_mean) * s + bn.bias)
        convs.append(new)
    return nn.Sequential(convs[0], nn.ReLU(), nn.Flatten(), convs[1], nn.ReLU(), net[7]).eval()


def test_batchnorm_canonizer_equals_merged_network_and_leaves_model_alone():
    net, x = _bn_net(), tiny_images(5, seed=4)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    e = LRP(rule="epsilon", epsilon=0.01)(TorchModel(net), x)
    merged = _merged_by_hand(net)
    assert torch.allclose(merged(x), net(x), atol=1e-5)
    e2 = LRP(rule="epsilon", epsilon=0.01)(TorchModel(merged), x, e.target)
    assert torch.allclose(e.attributions, e2.attributions, atol=1e-5)
    assert e.meta["merged_batchnorm"] == ["1", "5"]
    assert isinstance(net[1], nn.BatchNorm2d) and isinstance(net[5], nn.BatchNorm1d)
    assert net[2].inplace
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    _check_layers(e, rtol=1e-10)


def test_batchnorm_not_after_a_linear_layer_is_refused():
    net = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(36, 3)).eval()
    with pytest.raises(InputError, match="BatchNorm"):
        LRP()(net, tiny_images(2))


# ---------------------------------------------------------------- residual Add
class _Residual(nn.Module):
    def __init__(self, use_add=True):
        super().__init__()
        torch.manual_seed(5)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.add = Add()
        self.use_add = use_add
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(108, 3, bias=False)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        s = self.add(h, self.conv2(h)) if self.use_add else h + self.conv2(h)
        return self.fc(self.flatten(self.relu(s)))


def test_residual_add_splits_and_conserves():
    x = tiny_images(4, seed=6)
    e = LRP(rule="z")(_Residual(), x)
    _check_layers(e, shares=False)
    assert "add" in e.meta["layers"]
    f = e.outputs.double()
    assert torch.allclose(e.attributions.double().sum((1, 2, 3)), f, rtol=1e-5)
    # a functional '+' (autograd would hand the full relevance to both branches) is
    # rewritten to an Add by the canonizer: the same split, conservation holds
    plain = LRP(rule="z")(_Residual(use_add=False), x)
    assert any(k.startswith("add") for k in plain.meta["layers"])
    assert torch.allclose(plain.attributions, e.attributions, atol=1e-6)
    assert (plain.meta["conservation_residual"].abs() < 1e-9).all()


def test_resnet_batchnorm_merged_and_residuals_split():
    """On a ResNet (batch norm after every convolution, identity and projection shortcuts
    written as a functional '+'), every BatchNorm is folded and relevance is conserved."""
    from scrutiny.testing.models import tiny_resnet

    model = tiny_resnet(1)
    x = tiny_images(3, seed=2, shape=(3, 8, 8))
    e = LRP()(model, x)
    bns = [n for n, m in model.module.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(e.meta["merged_batchnorm"]) == sorted(bns) and len(bns) == 6
    assert sum(k.startswith("add") for k in e.meta["layers"]) == 2
    assert (e.meta["conservation_residual"].abs() < 1e-9).all()
    assert torch.allclose(e.outputs, model(x).gather(1, e.target[:, None])[:, 0], atol=1e-5)


# ---------------------------------------------------------------- composites
def test_per_name_rules_differ_from_per_type_and_names_win(digits_model, digits_test):
    x = digits_test.x[:4]
    by_type = LRP(rules={"Conv2d": "zplus"})(digits_model, x).attributions
    by_name = LRP(rules={"Conv2d": "zplus", "features.0": "epsilon"})(digits_model, x).attributions
    container = LRP(rules={"Conv2d": "zplus", "features": "epsilon"})(digits_model, x).attributions
    plain = LRP()(digits_model, x).attributions
    assert not torch.allclose(by_type, by_name, atol=1e-4)
    # the container name covers every layer inside it, and beats the type
    assert torch.allclose(container, plain, atol=1e-6)


def test_function_twin_and_params_roundtrip():
    net, x = small_net(), _x()
    m = LRP(rule={"rule": "alphabeta", "alpha": 1.5, "beta": 0.5}, rules={"Linear": "z"})
    assert LRP(**m.get_params()) == m
    a = m(TorchModel(net), x).attributions
    b = lrp(TorchModel(net), x, rule={"rule": "alphabeta", "alpha": 1.5, "beta": 0.5},
            rules={"Linear": "z"}).attributions
    assert torch.equal(a, b)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, match", [
    ({"rule": "lrp-magic"}, "unknown LRP rule"),
    ({"rules": {"Conv2d": "nope"}}, "unknown LRP rule"),
    ({"alpha": 2.0, "beta": 0.5}, "alpha - beta = 1"),
    ({"rule": {"rule": "alphabeta", "alpha": 3.0, "beta": 1.0}}, "alpha - beta = 1"),
    ({"rule": {"rule": "z", "epsilon": 0.1}}, "does not accept 'epsilon'"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"maxpool": "mean"}, "maxpool"),
    ({"precision": "float16"}, "precision"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(InputError, match=match):
        LRP(**kw)


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 5), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(InputError, match=r"'2' \(Tanh\)"):
        LRP()(net, tiny_images(2))


def test_broadcasting_add_is_refused():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.add, self.flatten, self.fc = Add(), nn.Flatten(), nn.Linear(36, 3)

        def forward(self, x):
            return self.fc(self.flatten(self.add(x, torch.ones(1, 1, 1, 1))))

    with pytest.raises(InputError, match="no broadcasting"):
        LRP()(Net(), tiny_images(2))


def test_unknown_rules_key_is_refused():
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    with pytest.raises(InputError, match="neither a layer name nor a layer type"):
        LRP(rules={"classifier": "z"})(net, tiny_images(2))
