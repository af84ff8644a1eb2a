"""LIME: local interpretable model-agnostic explanations, for images and tables."""

from __future__ import annotations

import math

import torch

from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.explain.baselines import check_fill
from scrutiny.explain.surrogate._features import (
    MODES,
    OUTPUTS,
    SEGMENTERS,
    check_dict,
    coalition_outputs,
    evaluate_rows,
    image_fill,
    pad_stack,
    resolve_mode,
    rng_from_torch,
    segment_images,
    weighted_ridge,
)
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags

DISCRETIZERS: tuple[str, ...] = ("quartile",)


def _at_least_two(name: str, n: int) -> None:
    if n < 2:
        raise InputError(f"{name} must be >= 2 (a surrogate needs several samples), got {n}")


def check_background(background: object, x: torch.Tensor) -> torch.Tensor:
    """Background rows ``(B, ...)`` with the shape of one input, finite, float."""
    if not isinstance(background, torch.Tensor) or not background.is_floating_point():
        raise InputError("background must be a floating-point tensor of rows (B, ...) shaped "
                         "like the inputs")
    if background.dim() == x.dim() - 1:
        background = background[None]
    if background.shape[1:] != x.shape[1:] or len(background) == 0:
        raise InputError(f"background must have shape (B, {', '.join(map(str, x.shape[1:]))}), "
                         f"got {tuple(background.shape)}")
    if not torch.isfinite(background).all():
        raise InputError("background contains NaN or infinite values")
    return background.to(device=x.device, dtype=x.dtype)


@register("explainer", "lime", paper="Ribeiro, Singh, Guestrin. \"Why should I trust you?\": "
          "explaining the predictions of any classifier. KDD 2016",
          test_params={"n_samples": 64, "segmenter": "grid", "n_segments": 9})
class Lime(Explainer):
    """LIME: a weighted linear surrogate fitted around each input.

    For each input ``x`` the method samples ``n_samples`` perturbations ``z``
    with an interpretable representation ``z'``, queries the black box
    (``model(z)`` only, without gradients, ``batch_size`` rows per forward,
    all inputs of the batch together), weights each sample by the kernel
    ``pi(z) = exp(-D(z', x')^2 / kernel_width^2)`` and fits a ridge regression
    (``alpha``; ``Ridge(alpha=1)`` as in the lime package) of the explained
    output on ``z'``. The attributions are the surrogate's coefficients; its
    weighted ``R^2`` on the samples (local fidelity) is ``meta["r2"]``.

    **Images** (``(N, C, H, W)``): features are superpixels (``segmenter``;
    the segments are ``meta["segments"]``); ``z'`` is uniform on ``{0, 1}^M``
    (first sample all ones, the input itself), a hidden superpixel takes the
    ``fill`` (``"mean"``: the superpixel's mean colour, lime's
    ``hide_color=None``), ``D`` is the cosine distance to the all-ones
    vector and ``kernel_width`` defaults to 0.25. Attributions ``(N, H, W)``:
    each pixel carries its superpixel's coefficient (per-superpixel values in
    ``meta["features"]``).

    **Tables** (``(N, d)``): pass the training rows at call time,
    ``explain(model, x, background=rows)`` (data, not a hyperparameter; the
    same keyword as KernelSHAP). As lime's tabular explainer with
    ``discretize="quartile"`` (lime's default), each feature is binned at the
    background quartiles, a perturbation draws each feature's bin from the
    background bin frequencies and a value inside the bin from a truncated
    normal with the bin's mean and std, and ``z'_j = 1`` when the bin equals
    the input's. With ``discretize=None``, perturbations are
    ``N(mean, std^2)`` of the background per feature (around the input when
    ``sample_around_instance``) and ``z'`` is the standardised sample, so a
    coefficient is the output change per background standard deviation:
    ``w_j * std_j`` for a linear black box. ``D`` is Euclidean and
    ``kernel_width`` defaults to ``0.75 * sqrt(d)``.

    Random draws depend on the seed only (the same for every sample of a
    batch), so a batch gives the same result as its samples one by one.

    Parameters
    ----------
    n_samples : int
        Perturbations per input (lime: 5000 tabular, 1000 images; 1000 here).
    kernel_width : float, optional
        Width of the exponential kernel; default 0.25 (images) or
        ``0.75 * sqrt(d)`` (tables), lime's defaults.
    alpha : float
        Ridge penalty of the surrogate (the intercept is not penalised).
    output : {"probability", "logit"}
        Explained quantity: softmax probability of the target (as lime) or
        its logit.
    mode : {"auto", "image", "tabular"}
        ``"auto"``: images for 4-d inputs, tabular otherwise.
    segmenter : {"slic", "quickshift", "felzenszwalb", "grid"}
        Superpixel algorithm (scikit-image). ``slic`` is the default because
        quickshift (lime's choice) returns a single segment on tiny images
        such as the 8x8 digits; ``grid`` gives square cells.
    n_segments : int
        Approximate number of superpixels (``slic`` and ``grid``).
    segmenter_params : dict, optional
        Extra keyword arguments of the scikit-image segmenter.
    fill : "mean", "zero", "blur", "uniform", float or Tensor
        Replacement of hidden superpixels.
    blur_sigma : float
        Sigma of the ``"blur"`` fill.
    discretize : {"quartile", None}
        Tabular discretisation of continuous features.
    sample_around_instance : bool
        Tabular, ``discretize=None``: centre the Gaussian samples on the input
        instead of the background mean.
    batch_size : int
        Perturbed inputs per forward pass.

    Notes
    -----
    The kernel is the paper's ``exp(-D^2 / sigma^2)``; the lime package
    uses its square root, which equals this kernel with ``kernel_width``
    multiplied by ``sqrt(2)``. All ``M`` features enter the surrogate (lime's
    ``feature_selection="none"`` with ``num_features=M``); pick the top ones
    from the attributions.

    References
    ----------
    .. [1] Ribeiro, Singh, Guestrin. "'Why should I trust you?': explaining
       the predictions of any classifier". KDD 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:2]
    >>> e = Lime(n_samples=300)(pretrained("digits-cnn", progress=False), x)
    >>> e.attributions.shape, e.meta["r2"].shape
    (torch.Size([2, 8, 8]), torch.Size([2]))
    """

    tags = Tags(white_box=False, stochastic=True)
    call_data = ("background",)

    n_samples: int = param(1000, integer=True, positive=True, check=_at_least_two)
    kernel_width: float | None = param(None, positive=True)
    alpha: float = param(1.0, nonneg=True)
    output: str = param("probability", choices=OUTPUTS)
    mode: str = param("auto", choices=MODES)
    segmenter: str = param("slic", choices=SEGMENTERS)
    n_segments: int = param(16, integer=True, positive=True)
    segmenter_params: dict | None = param(None, kind=dict, check=check_dict)
    fill: str | float | torch.Tensor = param("mean", check=check_fill)
    blur_sigma: float = param(2.0, nonneg=True)
    discretize: str | None = param("quartile", choices=(*DISCRETIZERS, None))
    sample_around_instance: bool = param(False, kind=bool)
    batch_size: int = param(1024, integer=True, positive=True)

    def _explain(self, model, x, target, background=None):
        if resolve_mode(self.mode, x) == "image":
            if background is not None:
                raise InputError("background is for tabular LIME; images use fill=")
            return self._explain_image(model, x, target)
        if background is None:
            raise InputError("tabular LIME samples from the training distribution: pass "
                             "explain(model, x, background=training_rows)")
        return self._explain_tabular(model, x, target, check_background(background, x))

    # ------------------------------------------------------------ images
    def _explain_image(self, model, x, target):
        n = len(x)
        if n == 0:  # an empty batch: nothing to sample, empty maps and surrogates
            e = torch.zeros(0, dtype=torch.float64)
            return x.new_zeros((0, *x.shape[2:])), {
                "r2": e, "intercept": e, "features": e.reshape(0, 0),
                "n_features": torch.zeros(0, dtype=torch.long),
                "segments": torch.zeros((0, *x.shape[2:]), dtype=torch.long)}
        seg = segment_images(x, self.segmenter, self.n_segments, self.segmenter_params)
        m_of = (seg.reshape(n, -1).amax(1) + 1).tolist()
        fill = image_fill(self.fill, x, seg, model.bounds, self.blur_sigma)
        rng = rng_from_torch()
        draws: dict[int, torch.Tensor] = {}
        for m in set(m_of):  # the same draws for every image with m superpixels
            z = torch.from_numpy(rng.integers(0, 2, (self.n_samples, m))).to(x.device)
            z[0] = 1
            draws[m] = z
        zs = [draws[m] for m in m_of]
        groups = seg.reshape(n, 1, -1).expand(n, x.shape[1], -1).reshape(n, -1)
        ys = coalition_outputs(model, x, groups, fill.reshape(n, 1, -1), zs, target,
                               self.output, self.batch_size)
        width = 0.25 if self.kernel_width is None else self.kernel_width
        m_max = max(m_of)
        X = pad_stack([z.double() for z in zs], self.n_samples, m_max)
        k = X.sum(2)
        m_t = torch.tensor(m_of, dtype=torch.float64, device=x.device)[:, None]
        dist = torch.where(k > 0, 1 - torch.sqrt(k / m_t), 1.0)  # cosine distance to ones
        w = torch.exp(-dist ** 2 / width ** 2)
        valid = torch.arange(m_max, device=x.device)[None] < m_t
        beta, intercept, r2 = weighted_ridge(X, torch.stack(ys), w, self.alpha, valid)
        attr = torch.gather(beta, 1, seg.reshape(n, -1)).reshape(n, *x.shape[2:])
        return attr.to(x.dtype), {"r2": r2.cpu(), "intercept": intercept.cpu(),
                                  "features": beta.cpu(), "n_features": torch.tensor(m_of),
                                  "segments": seg.cpu()}

    # ------------------------------------------------------------ tables
    def _explain_tabular(self, model, x, target, bg):
        n, shape = len(x), x.shape[1:]
        if n == 0:  # an empty batch: empty attributions and surrogates
            e = torch.zeros(0, dtype=torch.float64)
            return torch.zeros_like(x), {"r2": e, "intercept": e}
        xf, bgf = x.reshape(n, -1).double(), bg.reshape(len(bg), -1).double()
        d, s = xf.shape[1], self.n_samples
        mean, std = bgf.mean(0), bgf.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        gen = torch.Generator(device="cpu").manual_seed(int(rng_from_torch().integers(2**62)))
        if self.discretize is None:
            noise = torch.randn(s, d, generator=gen, dtype=torch.float64).to(x.device)
            centre = xf[:, None] if self.sample_around_instance else mean[None, None]
            data = (centre + noise[None] * std).expand(n, s, d).clone()  # (N, S, d)
            data[:, 0] = xf
            X = (data - mean) / std
        else:
            data, X = _quartile_samples(xf, bgf, s, gen)
        dist = (X - X[:, :1]).norm(dim=2)
        width = 0.75 * math.sqrt(d) if self.kernel_width is None else self.kernel_width
        w = torch.exp(-dist ** 2 / width ** 2)
        rows = data.to(x.dtype).reshape(n * s, *shape)
        y = evaluate_rows(model, lambda a, b: rows[a:b], n * s,
                          target.repeat_interleave(s), self.output, self.batch_size)
        valid = torch.ones(n, d, dtype=torch.bool, device=x.device)
        beta, intercept, r2 = weighted_ridge(X, y.reshape(n, s), w, self.alpha, valid)
        return beta.to(x.dtype).reshape(x.shape), {"r2": r2.cpu(), "intercept": intercept.cpu()}


def _quartile_samples(xf: torch.Tensor, bgf: torch.Tensor, s: int, gen: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """lime's quartile discretisation: ``(samples (N, S, d), binary z' (N, S, d))``."""
    n, d = xf.shape
    dev = xf.device
    q = torch.quantile(bgf, torch.tensor([0.25, 0.5, 0.75], dtype=bgf.dtype, device=dev), dim=0)
    lo_all, hi_all = bgf.min(0).values, bgf.max(0).values
    bins_x = torch.empty(n, d, dtype=torch.long, device=dev)
    sampled = torch.empty(s, d, dtype=torch.long)
    values = torch.empty(s, d, dtype=torch.float64)
    u_bin = torch.rand(s, d, generator=gen, dtype=torch.float64)
    u_val = torch.rand(s, d, generator=gen, dtype=torch.float64)
    for j in range(d):  # per feature: a handful of bins
        edges = torch.unique(q[:, j])
        b_bg = torch.searchsorted(edges, bgf[:, j].contiguous())
        bins_x[:, j] = torch.searchsorted(edges, xf[:, j].contiguous())
        nb = len(edges) + 1
        counts = torch.bincount(b_bg, minlength=nb).double()
        cdf = (counts / counts.sum()).cumsum(0).cpu()
        k = torch.searchsorted(cdf, u_bin[:, j].contiguous(), right=True).clamp_max(nb - 1)
        sampled[:, j] = k
        lows = torch.cat([lo_all[j:j + 1], edges]).cpu()
        highs = torch.cat([edges, hi_all[j:j + 1]]).cpu()
        means = torch.zeros(nb, dtype=torch.float64)
        stds = torch.zeros(nb, dtype=torch.float64)
        for b in range(nb):
            sel = bgf[b_bg == b, j].cpu()
            if len(sel):
                means[b], stds[b] = sel.mean(), sel.std(unbiased=False)
        stds = stds + 1e-11
        a = torch.special.ndtr((lows[k] - means[k]) / stds[k])
        bb = torch.special.ndtr((highs[k] - means[k]) / stds[k])
        z = torch.special.ndtri((a + u_val[:, j] * (bb - a)).clamp(1e-12, 1 - 1e-12))
        values[:, j] = (means[k] + stds[k] * z).clamp(lows[k], highs[k])
    data = values.to(dev)[None].repeat(n, 1, 1)
    data[:, 0] = xf
    X = (sampled.to(dev)[None] == bins_x[:, None]).double()
    X[:, 0] = 1
    return data, X


lime = function_twin(Lime, "lime")
