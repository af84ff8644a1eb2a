"""KernelSHAP: Shapley values by weighted linear regression over coalitions."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.explain.baselines import check_fill, make_baseline
from scrutiny.explain.surrogate._features import (
    MODES,
    OUTPUTS,
    SEGMENTERS,
    check_dict,
    coalition_outputs,
    constrained_wls,
    image_fill,
    pad_stack,
    resolve_mode,
    rng_from_torch,
    segment_images,
)
from scrutiny.explain.surrogate.lime import check_background
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags


def shapley_coalitions(m: int, n_samples: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Coalitions ``(S, m)`` (0/1) and their kernel weights, as shap's KernelExplainer.

    The Shapley kernel gives a coalition of size ``s`` the weight
    ``(m - 1) / (C(m, s) s (m - s))``. Sizes are visited from the outside in
    (``s`` with its complement ``m - s``); while the budget can hold every
    coalition of a size pair, all of them are enumerated with their exact
    kernel weight. The rest of the budget samples sizes from the remaining
    kernel mass and random coalitions of that size together with their
    complements (paired sampling); duplicates add weight instead of rows;
    the sampled weights are rescaled to the remaining mass. The empty and
    full coalitions (infinite weight) are not rows: they are the constraints
    ``phi_0 = E f`` and ``sum phi = f(x) - E f``.
    """
    if m < 2:
        return np.zeros((0, m)), np.zeros(0)
    n_samples = min(n_samples, 2 ** m - 2) if m <= 30 else n_samples
    n_sizes = math.ceil((m - 1) / 2)
    n_paired = math.floor((m - 1) / 2)
    kw = np.array([(m - 1) / (s * (m - s)) for s in range(1, n_sizes + 1)])
    kw[:n_paired] *= 2
    kw /= kw.sum()
    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = n_samples
    remaining = kw.copy()
    n_full = 0
    for s in range(1, n_sizes + 1):
        paired = s <= n_paired
        n_sub = math.comb(m, s) * (2 if paired else 1)
        if left * remaining[s - 1] / n_sub < 1.0 - 1e-8:
            break
        n_full += 1
        left -= n_sub
        if remaining[s - 1] < 1.0:
            remaining /= 1 - remaining[s - 1]
        w = kw[s - 1] / math.comb(m, s) / (2 if paired else 1)
        for inds in combinations(range(m), s):
            z = np.zeros(m)
            z[list(inds)] = 1
            masks.append(z)
            weights.append(w)
            if paired:
                masks.append(1 - z)
                weights.append(w)
    n_fixed = len(masks)
    if n_full != n_sizes and left > 0:
        rem = kw.copy()
        rem[:n_paired] /= 2
        rem = rem[n_full:]
        rem /= rem.sum()
        sizes = rng.choice(len(rem), 4 * left, p=rem) + n_full + 1
        seen: dict[bytes, int] = {}
        for s in sizes:
            if left <= 0:
                break
            z = np.zeros(m)
            z[rng.permutation(m)[:s]] = 1
            key = z.tobytes()
            if key in seen:
                weights[seen[key]] += 1.0
                if s <= n_paired:
                    weights[seen[key] + 1] += 1.0
                continue
            seen[key] = len(masks)
            masks.append(z)
            weights.append(1.0)
            left -= 1
            if left > 0 and s <= n_paired:
                masks.append(1 - z)
                weights.append(1.0)
                left -= 1
        wts = np.asarray(weights)
        wts[n_fixed:] *= kw[n_full:].sum() / wts[n_fixed:].sum()
        weights = list(wts)
    return np.asarray(masks).reshape(-1, m), np.asarray(weights)


@register("explainer", "kernel_shap", paper="Lundberg, Lee. A unified approach to "
          "interpreting model predictions. NeurIPS 2017",
          test_params={"n_samples": 64, "segmenter": "grid", "n_segments": 9})
class KernelShap(Explainer):
    """KernelSHAP: Shapley values as a weighted linear regression over coalitions.

    For features ``j = 1..M`` (table columns, or the superpixels of an image,
    segmented by the same code as :class:`~scrutiny.explain.Lime`) the value
    of a coalition ``z'`` is ``v(z') = E_r f(z' * x + (1 - z') * r)``, the
    expectation over reference rows ``r``: the ``background=`` rows given at
    call time (shap's background data), or else the single reference
    ``baseline`` (default the lower bound, ``"zero"``). The attributions
    ``phi`` minimise ``sum_z pi(z') (v(z') - E f - z'.phi)^2`` with the
    Shapley kernel ``pi(z') = (M - 1) / (C(M, |z'|) |z'| (M - |z'|))``,
    subject to the efficiency constraint ``sum phi = f(x) - E f``, enforced
    exactly. Coalitions are enumerated by size while the budget allows and
    paired-sampled otherwise, as the shap package's KernelExplainer does
    (:func:`shapley_coalitions`); with ``n_samples >= 2^M - 2`` every
    coalition is used and ``phi`` are the exact Shapley values. All
    perturbed inputs of the batch are evaluated together, ``batch_size``
    rows per forward, without gradients.

    ``Explanation.delta`` is ``sum(phi) - (f(x) - E f)`` (zero up to float
    rounding); ``meta["expected_value"]`` is ``E f``. For images the
    attributions ``(N, H, W)`` give each pixel its superpixel's ``phi``
    (``meta["features"]`` holds ``phi`` per superpixel, ``meta["segments"]``
    the segments), so efficiency holds over superpixels, not pixel sums.

    Parameters
    ----------
    n_samples : int, optional
        Coalition budget (shap's ``nsamples``); default ``2 M + 2048``,
        capped at ``2^M - 2``.
    output : {"logit", "probability"}
        Explained output of the target class.
    baseline : "zero", "blur", "uniform", "mean", float or Tensor
        Reference input when no ``background`` is given (``"mean"``: the
        superpixel mean colour, images only).
    blur_sigma : float
        Sigma of the ``"blur"`` baseline.
    mode : {"auto", "image", "tabular"}
        ``"auto"``: images for 4-d inputs, tabular otherwise.
    segmenter : {"slic", "quickshift", "felzenszwalb", "grid"}
        Superpixel algorithm for images, as in :class:`~scrutiny.explain.Lime`.
    n_segments : int
        Approximate number of superpixels (``slic`` and ``grid``).
    segmenter_params : dict, optional
        Extra keyword arguments of the scikit-image segmenter.
    batch_size : int
        Perturbed inputs per forward pass.

    Notes
    -----
    No l1 feature selection is applied (shap's ``l1_reg=False``): every
    feature gets a value.

    References
    ----------
    .. [1] Lundberg, Lee. "A unified approach to interpreting model
       predictions". NeurIPS 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:2]
    >>> e = KernelShap(n_samples=300)(pretrained("digits-cnn", progress=False), x)
    >>> bool(e.delta.abs().max() < 1e-4)
    True
    """

    tags = Tags(white_box=False, stochastic=True)
    call_data = ("background",)

    n_samples: int | None = param(None, integer=True, positive=True)
    output: str = param("logit", choices=OUTPUTS)
    baseline: str | float | torch.Tensor = param("zero", check=check_fill)
    blur_sigma: float = param(2.0, nonneg=True)
    mode: str = param("auto", choices=MODES)
    segmenter: str = param("slic", choices=SEGMENTERS)
    n_segments: int = param(16, integer=True, positive=True)
    segmenter_params: dict | None = param(None, kind=dict, check=check_dict)
    batch_size: int = param(1024, integer=True, positive=True)

    def _explain(self, model, x, target, background=None):
        n, dev = len(x), x.device
        image = resolve_mode(self.mode, x) == "image"
        if n == 0:  # an empty batch: nothing to sample, empty maps and values
            if background is not None:
                check_background(background, x)
            e = torch.zeros(0, dtype=torch.float64, device=dev)
            extra = {"delta": e, "expected_value": e.cpu(), "features": e.reshape(0, 0).cpu()}
            if image:
                extra.update(segments=torch.zeros((0, *x.shape[2:]), dtype=torch.long),
                             n_features=torch.zeros(0, dtype=torch.long))
                return x.new_zeros((0, *x.shape[2:])), extra
            return torch.zeros_like(x), extra
        if image:
            seg = segment_images(x, self.segmenter, self.n_segments, self.segmenter_params)
            groups = seg.reshape(n, 1, -1).expand(n, x.shape[1], -1).reshape(n, -1)
            m_of = (seg.reshape(n, -1).amax(1) + 1).tolist()
        else:
            groups = torch.arange(x[0].numel(), device=dev).expand(n, -1)
            m_of = [x[0].numel()] * n
        if background is not None:
            refs = check_background(background, x).reshape(1, -1, x[0].numel()).expand(n, -1, -1)
        elif isinstance(self.baseline, str) and self.baseline == "mean":
            if not image:
                raise InputError("baseline='mean' (superpixel mean colour) needs images")
            refs = image_fill("mean", x, seg, model.bounds, self.blur_sigma).reshape(n, 1, -1)
        else:
            refs = make_baseline(self.baseline, x, model.bounds, self.blur_sigma).reshape(n, 1, -1)
        rng = rng_from_torch()
        draws: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in sorted(set(m_of)):  # the same coalitions for every sample with m features
            budget = 2 * m + 2048 if self.n_samples is None else self.n_samples
            z, w = shapley_coalitions(m, budget, rng)
            draws[m] = (torch.from_numpy(z).to(dev), torch.from_numpy(w).to(dev))
        full = [torch.ones(1, m, device=dev) for m in m_of]
        empty = [torch.zeros(1, m, device=dev) for m in m_of]
        zs = [draws[m][0] for m in m_of]
        vals = coalition_outputs(model, x, groups, refs, full + empty + zs, target,
                                 self.output, self.batch_size)
        fx = torch.cat(vals[:n])
        ef = torch.cat(vals[n:2 * n])
        ys = vals[2 * n:]
        m_max, s_max = max(m_of), max(max(len(z) for z in zs), 1)
        Z = pad_stack([z.double() for z in zs], s_max, m_max)
        W = pad_stack([draws[m][1][:, None] for m in m_of], s_max, 1)[..., 0]
        Y = pad_stack([y[:, None] for y in ys], s_max, 1)[..., 0] - ef[:, None]
        valid = torch.arange(m_max, device=dev)[None] < torch.tensor(m_of, device=dev)[:, None]
        phi = constrained_wls(Z, Y, W, fx - ef, valid)
        delta = phi.sum(1) - (fx - ef)
        extra = {"delta": delta, "expected_value": ef.cpu(), "features": phi.cpu()}
        if image:
            attr = torch.gather(phi, 1, seg.reshape(n, -1)).reshape(n, *x.shape[2:])
            extra.update(segments=seg.cpu(), n_features=torch.tensor(m_of))
        else:
            attr = phi.reshape(x.shape)
        return attr.to(x.dtype), extra


kernel_shap = function_twin(KernelShap, "kernel_shap")
