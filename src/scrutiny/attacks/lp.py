"""Steepest-ascent steps and random starts for Lp threat models."""

from __future__ import annotations

import torch

from scrutiny.types import ThreatModel, lp_norm


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def steepest_direction(grad: torch.Tensor, norm: str, l1_sparsity: float = 0.95) -> torch.Tensor:
    """Unit-norm direction ``d`` maximising ``<grad, d>`` (approximately, for l1).

    linf: ``sign(grad)``. l2: ``grad / ||grad||_2``. l1: the exact maximiser
    is one coordinate; as in sparse l1 attacks (Tramer & Boneh 2019) the step
    spreads over the top ``1 - l1_sparsity`` fraction of ``|grad|``, with signs,
    normalised to unit l1 norm.
    """
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / _view(lp_norm(grad, "l2").clamp_min(1e-12), grad)
    flat = grad.reshape(len(grad), -1)
    k = max(1, int(round((1 - l1_sparsity) * flat.shape[1])))
    thresh = flat.abs().topk(k, dim=1).values[:, -1:]
    d = flat.sign() * (flat.abs() >= thresh)
    d = d / d.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
    return d.view_as(grad)


def random_start(x0: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """A random point of the threat set around ``x0`` (uniform for linf)."""
    eps = threat.eps
    if threat.norm == "linf":
        delta = torch.empty_like(x0).uniform_(-eps, eps)
    else:
        if threat.norm == "l2":
            d = torch.randn_like(x0)
        else:
            d = torch.distributions.Laplace(0.0, 1.0).sample(x0.shape).to(x0)
        r = torch.rand(len(x0), device=x0.device, dtype=x0.dtype)
        delta = d / _view(lp_norm(d, threat.norm).clamp_min(1e-12), d) * _view(r * eps, d)
    return threat.project(x0, x0 + delta)
