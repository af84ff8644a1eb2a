"""SmoothGrad: gradient maps averaged over noisy copies of the input."""

from __future__ import annotations

import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin, target_gradient
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags

BASES: tuple[str, ...] = ("gradient", "sensitivity", "input_x_gradient", "saliency")


def _base_map(base: str, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if base == "gradient":
        return g
    if base == "sensitivity":
        return g.square()
    if base == "input_x_gradient":
        return g * x
    return g.abs().amax(dim=1) if g.dim() == 4 else g.abs()


@register("explainer", "smoothgrad", paper="Smilkov, Thorat, Kim, Viegas, Wattenberg. "
          "SmoothGrad: removing noise by adding noise. ICML 2017 workshop",
          test_params={"n_samples": 4})
class SmoothGrad(Explainer):
    """SmoothGrad: ``mean_s M(x + e_s)`` with ``e_s ~ N(0, sigma^2)``.

    ``M`` is a gradient map (``base``) and ``sigma = noise_level * (x_max -
    x_min)`` with the extremes of each input, as in the paper (which found
    10-20% best). ``base="sensitivity"`` averages squared gradients
    ("SmoothGrad-squared" of Hooker et al. 2019). All ``N * n_samples`` noisy
    copies are evaluated in chunks of ``batch_size``.

    The ``n_samples`` noise draws come from torch's RNG (seeded by ``seed=``)
    and are shared by every input of the batch (common random numbers), so an
    input's map does not depend on the other inputs of the batch; each map is
    still an average over independent draws, as the paper defines it. Noisy
    copies are not clipped to the input bounds (the paper does not clip).

    Parameters
    ----------
    n_samples : int
        Noisy copies per input (the paper: 50).
    noise_level : float
        ``sigma / (x_max - x_min)``; 0 gives the plain map.
    base : {"gradient", "sensitivity", "input_x_gradient", "saliency"}
        The map that is averaged.
    batch_size : int
        Noisy inputs per forward/backward pass.

    References
    ----------
    .. [1] Smilkov, Thorat, Kim, Viegas, Wattenberg. "SmoothGrad: removing
       noise by adding noise". ICML 2017 workshop on visualization for deep
       learning.
    .. [2] Hooker, Erhan, Kindermans, Kim. "A benchmark for interpretability
       methods in deep neural networks". NeurIPS 2019 (SmoothGrad-squared).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> SmoothGrad(n_samples=16)(pretrained("digits-cnn", progress=False), x).attributions.shape
    torch.Size([4, 1, 8, 8])
    """

    tags = Tags(stochastic=True)

    n_samples: int = param(50, integer=True, positive=True)
    noise_level: float = param(0.15, nonneg=True)
    base: str = param("gradient", choices=BASES)
    batch_size: int = param(512, integer=True, positive=True)

    def linear_oracle(self, w, x):
        """Closed form on ``f = w.x + b`` for the bases whose map is constant in ``x``."""
        if self.base in ("gradient", "sensitivity", "saliency"):
            return _base_map(self.base, w, x)
        raise InputError("input_x_gradient has no noise-free closed form")

    def _explain(self, model, x, target):
        n, k = len(x), self.n_samples
        flat = x.flatten(1)
        sigma = self.noise_level * (flat.amax(1) - flat.amin(1))
        eps = torch.randn((k, *x.shape[1:]), device=x.device, dtype=x.dtype)
        total = None
        for chunk in torch.arange(n * k, device=x.device).split(self.batch_size):
            i, s = chunk // k, chunk % k
            xi = x[i] + sigma[i].view(-1, *([1] * (x.dim() - 1))) * eps[s]
            g, _ = target_gradient(model, xi, target[i])
            m = _base_map(self.base, g, xi)
            if total is None:
                total = m.new_zeros((n, *m.shape[1:]))
            total.index_add_(0, i, m)
        return total / k, {"sigma": sigma.cpu()}


smoothgrad = function_twin(SmoothGrad, "smoothgrad")
