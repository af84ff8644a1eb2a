"""Randomized smoothing (Cohen, Rosenfeld, Kolter 2019): PREDICT and CERTIFY."""

from __future__ import annotations

import math

import torch
from scipy import stats

from scrutiny.certify.base import Certifier, CertResult
from scrutiny.models.calls import prepare
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


def lower_confidence_bound(k: torch.Tensor, n: int, alpha: float) -> torch.Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``Beta(alpha; k, n - k + 1)`` quantile, 0 when ``k = 0``.

    Examples
    --------
    >>> float(lower_confidence_bound(torch.tensor([100]), 100, 0.001))  # 0.001 ** (1 / 100)
    0.933254...
    """
    kk = k.detach().cpu().double().numpy()
    p = stats.beta.ppf(alpha, kk, n - kk + 1)
    p[kk == 0] = 0.0
    return torch.as_tensor(p)


@register("certifier", "smoothing", paper="Cohen, Rosenfeld, Kolter. Certified adversarial "
          "robustness via randomized smoothing. ICML 2019",
          test_params={"n0": 8, "n": 32, "batch_size": 64})
class RandomizedSmoothing(Certifier):
    """Randomized smoothing: an l2 certificate for the Gaussian-smoothed classifier.

    The smoothed classifier ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0,
    sigma^2 I)``, is constant on the l2 ball of radius ``sigma * Phi^-1(p_A)``
    around ``x`` when ``p_A`` lower-bounds the probability of its top class
    (and ``p_A > 1/2``). Monte Carlo, as in the paper:

    * :meth:`predict` (PREDICT): counts the base classifier's predictions on
      ``n`` noisy copies; returns the top class ``c_A`` if a two-sided binomial
      test of ``n_A`` against ``n_A + n_B`` (the top two counts) at 1/2 has
      p-value <= ``alpha``, else abstains. A wrong answer has probability at
      most ``alpha``.
    * :meth:`certify` (CERTIFY): picks ``c_A`` from ``n0`` noisy copies, then
      lower-bounds ``p_A`` from ``n`` fresh ones with the one-sided ``(1 -
      alpha)`` Clopper-Pearson bound; abstains if it is < 1/2, else returns
      ``c_A`` and the radius ``sigma * Phi^-1(p_A_lower)``. The certificate
      is wrong with probability at most ``alpha``. A sample is ``certified``
      at the threat's eps when ``c_A == y`` and its radius is >= eps; one run
      gives the radius, so :meth:`certified_accuracy` at several radii costs
      one CERTIFY (:attr:`gives_radius`).

    :class:`~scrutiny.certify.base.Certifier` owns the calls (``certify(model,
    x, y, threat, *, seed)``, ``certified_accuracy``, ``certified_radius``,
    ``classify``, the same for every certifier); the threat model must be l2.

    Noisy copies of all the samples are drawn and classified in batches of
    ``batch_size`` (several samples share a batch).

    Parameters
    ----------
    sigma : float
        Noise level, in input units (the model wrapper normalises afterwards).
    n0 : int
        Samples for choosing the class in CERTIFY (paper: 100).
    n : int
        Samples for the estimate in CERTIFY and PREDICT (paper: 100,000 for
        CERTIFY).
    alpha : float
        Failure probability (paper: 0.001).
    batch_size : int
        Noisy inputs per forward pass.

    Notes
    -----
    The noise is not clipped to the input bounds, as in the paper: the base
    classifier sees ``x + d`` in R^d, and the radius certifies the smoothed
    classifier on the whole l2 ball.

    References
    ----------
    .. [1] Cohen, Rosenfeld, Kolter. "Certified adversarial robustness via
       randomized smoothing". ICML 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> rs = RandomizedSmoothing(sigma=0.25, n0=20, n=200)
    >>> res = rs.certify(model, data.x[:8], data.y[:8], ThreatModel("l2", 0.25), seed=0)
    >>> bool((res.radius[res.abstain] == 0).all()), res.radius.shape
    (True, torch.Size([8]))
    >>> bool((res.certified == (res.label == data.y[:8]) & (res.radius >= 0.25)).all())
    True
    """

    tags = Tags(norms=("l2",), stochastic=True)
    gives_radius = True

    sigma: float = param(0.25, positive=True)
    n0: int = param(100, integer=True, positive=True)
    n: int = param(100_000, integer=True, positive=True)
    alpha: float = param(0.001, between=(0, 1), interval="()")
    batch_size: int = param(1000, integer=True, positive=True)

    # ------------------------------------------------------------------ sampling
    def counts(self, model: TorchModel, x: torch.Tensor, num: int) -> torch.Tensor:
        """``(N, K)`` counts of the base classifier's classes on ``num`` noisy copies of each
        sample (uses torch's RNG; call inside :func:`scrutiny.base.seeded`)."""
        n = len(x)
        total = n * num
        k = model.num_classes
        out = torch.zeros(n * k, dtype=torch.long, device=x.device)
        bs = self.batch_size
        with progress_bar(math.ceil(total / bs), "smoothing") as bar:
            for start in range(0, total, bs):
                idx = torch.arange(start, min(start + bs, total), device=x.device) // num
                noisy = x[idx] + torch.randn((len(idx), *x.shape[1:]), device=x.device,
                                             dtype=x.dtype) * self.sigma
                pred = model(noisy).argmax(dim=1)
                out.index_add_(0, idx * k + pred, torch.ones_like(pred))  # no host sync
                bar.advance()
        return out.view(n, k)

    # ------------------------------------------------------------------ the paper's two
    def predict(self, model, x: torch.Tensor, *, seed: int | None = 0) -> CertResult:
        """PREDICT: the smoothed classifier's class, or abstain (``label = -1``).

        ``meta["p_value"]`` holds the binomial test's p-values; ``radius`` is 0.
        """
        with prepare(self, model, x, seed=seed, accepted=(), no_grad=True) as call:
            return self._predict(call.model, call.x0)

    def _predict(self, model: TorchModel, x: torch.Tensor) -> CertResult:
        c = self.counts(model, x, self.n).cpu()
        top2 = c.topk(min(2, c.shape[1]), dim=1)
        na = top2.values[:, 0]
        nb = top2.values[:, 1] if c.shape[1] > 1 else torch.zeros_like(na)
        pvals = torch.tensor([stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b else 1.0
                              for a, b in zip(na.tolist(), nb.tolist(), strict=True)],
                             dtype=torch.float64)
        abstain = pvals > self.alpha
        label = torch.where(abstain, torch.full_like(na, -1), top2.indices[:, 0])
        return CertResult(label=label, radius=torch.zeros(len(label)), abstain=abstain,
                          certified=torch.zeros(len(label), dtype=torch.bool), norm="l2",
                          meta={"certifier": self.name, "counts": c, "p_value": pvals})

    def _classify(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        return self._predict(model, x).label

    def _certify(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                 threat: ThreatModel) -> CertResult:
        """CERTIFY: per sample the class ``c_A`` and the l2 radius, or abstain.

        ``certified``: ``c_A == y`` with a radius >= ``threat.eps``.
        ``meta["p_lower"]`` holds the lower confidence bounds on ``p_A``.
        """
        c0 = self.counts(model, x, self.n0).cpu()
        c = self.counts(model, x, self.n).cpu()
        ca = c0.argmax(dim=1)
        na = c.gather(1, ca[:, None])[:, 0]
        p_lower = lower_confidence_bound(na, self.n, self.alpha)
        abstain = p_lower < 0.5
        radius = self.sigma * torch.as_tensor(stats.norm.ppf(p_lower.clamp(0.5, 1).numpy()))
        radius = torch.where(abstain, torch.zeros_like(radius), radius).float()
        label = torch.where(abstain, torch.full_like(ca, -1), ca)
        return CertResult(label=label, radius=radius, abstain=abstain,
                          certified=~abstain & (radius >= threat.eps),
                          meta={"p_lower": p_lower, "counts": c, "sigma": self.sigma})
