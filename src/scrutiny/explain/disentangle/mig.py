"""The Mutual Information Gap (MIG), a disentanglement score of a representation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from scrutiny.errors import InputError

__all__ = ["MIGScore", "discrete_mutual_information", "mutual_information_gap"]


@dataclass
class MIGScore:
    """The result of :func:`mutual_information_gap`.

    Attributes
    ----------
    score : float
        The MIG: the mean of ``gaps`` over the factors that vary (in ``[0, 1]``).
    gaps : torch.Tensor
        Per factor ``k``: ``(I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`` with ``z_a`` and ``z_b``
        the latents of highest and second-highest mutual information with it; NaN for
        a factor that does not vary (``H = 0``, left out of ``score``).
    mutual_information : torch.Tensor
        ``(L, K)``: ``I(z_j; v_k)`` in nats, latents by factors.
    entropy : torch.Tensor
        ``(K,)``: ``H(v_k)`` in nats.
    latent_of : tuple of int
        Per factor, the latent of highest mutual information with it.
    factor_names : tuple of str
        The factors' names (``"0"``, ``"1"``, ... unless given).
    """

    score: float
    gaps: torch.Tensor
    mutual_information: torch.Tensor
    entropy: torch.Tensor
    latent_of: tuple[int, ...]
    factor_names: tuple[str, ...]

    def latent(self, factor: str | int) -> int:
        """The latent that MIG assigns to ``factor`` (a name or a column index)."""
        if isinstance(factor, str):
            if factor not in self.factor_names:
                raise InputError(f"unknown factor {factor!r}; factors: "
                                 f"{', '.join(self.factor_names)}")
            factor = self.factor_names.index(factor)
        if not 0 <= factor < len(self.latent_of):
            raise InputError(f"factor index {factor} out of range [0, {len(self.latent_of)})")
        return self.latent_of[factor]


def discrete_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information in nats between two discrete variables given as label arrays
    (the plug-in estimate from their joint histogram; ``I(a; a) = H(a)``)."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1))
    np.add.at(joint, (ia.ravel(), ib.ravel()), 1.0)
    p = joint / max(joint.sum(), 1.0)
    outer = p.sum(1, keepdims=True) @ p.sum(0, keepdims=True)
    nz = p > 0
    return float(max(0.0, (p[nz] * np.log(p[nz] / outer[nz])).sum()))


def mutual_information_gap(codes: torch.Tensor | np.ndarray, factors: torch.Tensor | np.ndarray,
                           *, bins: int = 20, factor_names: Sequence[str] | None = None
                           ) -> MIGScore:
    """The Mutual Information Gap of a representation against known generative factors.

    Chen et al. [1]_ define, for ``K`` ground-truth factors ``v_k`` and latents ``z_j``,

    ``MIG = 1/K sum_k (I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k)) / H(v_k)``

    with ``j(k) = argmax_j I(z_j; v_k)``: for each factor, the gap between the two latents
    most informative about it, normalised by the factor's entropy (so a gap lies in
    ``[0, 1]``); a factor captured by one latent alone scores 1, one spread over two
    latents or one mixed with others scores near 0. The paper estimates ``I`` from the
    encoder's full posterior; this is the estimator of Locatello et al. [2]_ (the
    ``disentanglement_lib`` one): each latent's values (the posterior means) are
    discretised into ``bins`` equal-width bins over their range and ``I`` is the plug-in
    estimate from the joint histogram with the factor's levels.

    Parameters
    ----------
    codes : Tensor or ndarray
        ``(N, L)`` latent codes (a VAE's posterior means), at least 2 latents.
    factors : Tensor or ndarray
        ``(N, K)`` discrete factor levels (integers or any values, compared exactly).
    bins : int, optional
        Equal-width bins per latent (20 as in ``disentanglement_lib``).
    factor_names : sequence of str, optional
        Names of the ``K`` factors.

    Returns
    -------
    MIGScore
        The score, the gap of each factor, the ``(L, K)`` mutual information, the
        factors' entropies and the latent of each factor. Factors that do not vary are
        left out of the mean (their gap is NaN).

    References
    ----------
    .. [1] Chen, Li, Grosse, Duvenaud. "Isolating sources of disentanglement in
       variational autoencoders". NeurIPS 2018.
    .. [2] Locatello et al. "Challenging common assumptions in the unsupervised learning
       of disentangled representations". ICML 2019.

    Examples
    --------
    >>> import torch
    >>> v = torch.arange(400).reshape(20, 20).flatten()
    >>> factors = torch.stack([v // 20, v % 20], 1)           # two independent factors
    >>> good = factors.float() + 0.1 * torch.randn(400, 2)     # one latent per factor
    >>> mixed = torch.stack([good[:, 0] + good[:, 1], good[:, 0] - good[:, 1]], 1)
    >>> mutual_information_gap(good, factors).score > 0.95
    True
    >>> mutual_information_gap(mixed, factors).score < 0.2
    True
    """
    z = codes.detach().cpu().double().numpy() if isinstance(codes, torch.Tensor) \
        else np.asarray(codes, dtype=np.float64)
    v = factors.detach().cpu().numpy() if isinstance(factors, torch.Tensor) else np.asarray(factors)
    if z.ndim != 2 or z.shape[1] < 2:
        raise InputError(f"codes must be (N, L) with L >= 2 latents, got shape {z.shape}")
    if v.ndim != 2 or len(v) != len(z) or v.shape[1] < 1:
        raise InputError(f"factors must be (N, K) with N = {len(z)} (the codes' rows), got "
                         f"shape {v.shape}")
    if not np.isfinite(z).all():
        raise InputError("codes hold NaN or infinite values")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise InputError(f"bins must be an int >= 2, got {bins!r}")
    names = tuple(str(k) for k in range(v.shape[1])) if factor_names is None \
        else tuple(factor_names)
    if len(names) != v.shape[1]:
        raise InputError(f"factor_names has {len(names)} names for {v.shape[1]} factors")
    binned = []
    for j in range(z.shape[1]):
        edges = np.histogram_bin_edges(z[:, j], bins)
        binned.append(np.digitize(z[:, j], edges[1:-1]))
    mi = np.array([[discrete_mutual_information(binned[j], v[:, k]) for k in range(v.shape[1])]
                   for j in range(z.shape[1])])
    entropy = np.array([discrete_mutual_information(v[:, k], v[:, k]) for k in range(v.shape[1])])
    top = np.sort(mi, 0)[::-1]
    varies = entropy > 0
    gaps = np.full(v.shape[1], np.nan)
    gaps[varies] = (top[0, varies] - top[1, varies]) / entropy[varies]
    if not varies.any():
        raise InputError("no factor varies: the MIG is undefined")
    return MIGScore(score=float(gaps[varies].mean()), gaps=torch.from_numpy(gaps).float(),
                    mutual_information=torch.from_numpy(mi).float(),
                    entropy=torch.from_numpy(entropy).float(),
                    latent_of=tuple(int(j) for j in mi.argmax(0)), factor_names=names)
