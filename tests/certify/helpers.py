"""Small networks and probes shared by the certification tests."""

import torch
from torch import nn

from scrutiny.models import TorchModel


def seeded_init(net: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net.eval()


def random_mlp(seed: int = 0, d: int = 12, hidden=(16, 12), k: int = 4,
               dtype=torch.float32) -> TorchModel:
    layers, prev = [], d
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, k))
    net = seeded_init(nn.Sequential(*layers), seed, scale=1.5).to(dtype)
    return TorchModel(net, name="random_mlp")


def random_cnn(seed: int = 0) -> TorchModel:
    """Conv-BN-ReLU-MaxPool-Conv-ReLU-AvgPool-Flatten-Linear-ReLU-Linear, normalised inputs."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=1, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    return TorchModel(seeded_init(net, seed, scale=1.5), mean=[0.4], std=[0.3], name="random_cnn")


def points_in_ball(x0: torch.Tensor, eps: float, norm: str, m: int, seed: int = 0,
                   bounds=(0.0, 1.0)) -> torch.Tensor:
    """(m, N, ...) random points of the ball around each sample, inside the bounds:
    for linf half of them corners of the box, half uniform."""
    g = torch.Generator().manual_seed(seed)
    shape = (m, *x0.shape)
    if norm == "linf":
        u = torch.rand(shape, generator=g) * 2 - 1
        u[: m // 2] = u[: m // 2].sign()
        pts = x0 + eps * u
    else:
        d = torch.randn(shape, generator=g)
        d = d / d.flatten(2).norm(dim=2).view(m, -1, *([1] * (x0.dim() - 1)))
        r = torch.rand((m, x0.shape[0]), generator=g).view(m, -1, *([1] * (x0.dim() - 1)))
        r[: m // 2] = 1.0
        pts = x0 + eps * r * d
    return pts.clamp(*bounds)


def extreme_points(model: TorchModel, x0: torch.Tensor, eps: float, norm: str, steps: int = 30,
                   bounds=(0.0, 1.0)) -> torch.Tensor:
    """PGD (projected steepest ascent) on +-each logit and each margin z_j - z_y, all in one
    batch: points of the ball where one output is near its extreme; ``(3K, N, ...)``."""
    from scrutiny.types import ThreatModel

    threat = ThreatModel(norm, eps, bounds)
    n = len(x0)
    with torch.no_grad():
        k = model(x0).shape[1]
    y = model.predict(x0)
    # objective o (of 3K) on copy o of every sample: sign * (z_j - [margin] z_y)
    coef = torch.zeros(3 * k, n, k)
    for j in range(k):
        coef[3 * j, :, j] = 1
        coef[3 * j + 1, :, j] = -1
        coef[3 * j + 2, :, j] = 1
        coef[3 * j + 2, torch.arange(n), y] -= 1
    coef = coef.reshape(3 * k * n, k)
    xs0 = x0.repeat(3 * k, *[1] * (x0.dim() - 1))
    x = xs0.clone()
    alpha = 2.5 * eps / steps
    with model.evaluating():
        for _ in range(steps):
            x.requires_grad_(True)
            (g,) = torch.autograd.grad((model(x) * coef).sum(), x)
            if norm == "linf":
                step = g.sign()
            else:
                step = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            x = threat.project(xs0, x.detach() + alpha * step)
    return x.detach().reshape(3 * k, *x0.shape)


def assert_contains(bounds, model: TorchModel, pts: torch.Tensor, y: torch.Tensor,
                    tol: float = 1e-5) -> None:
    """Every output of every point ``(M, N, ...)`` lies within the logit and margin bounds."""
    m, n = pts.shape[:2]
    with torch.no_grad():
        z = model(pts.reshape(m * n, *pts.shape[2:])).reshape(m, n, -1)
    marg = z.gather(2, y[None, :, None].expand(m, n, 1)) - z
    for val, lo, hi in ((z, bounds.logits_lower, bounds.logits_upper),
                        (marg, bounds.margin_lower, bounds.margin_upper)):
        assert (val >= lo - tol).all(), (lo - val).max()
        assert (val <= hi + tol).all(), (val - hi).max()
