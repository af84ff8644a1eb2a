"""What LIME and KernelSHAP share: interpretable features (superpixels or table
columns), perturbed inputs built from binary coalitions, batched model
evaluation and the weighted least-squares solvers.

The interpretable representation of an input is a vector ``z' in {0, 1}^M``
over ``M`` features: table columns, or superpixels of an image (every channel
of a superpixel is one feature). ``z'_j = 1`` keeps feature ``j`` of ``x``;
``z'_j = 0`` replaces it by a reference value (a fill colour or a background
row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from scrutiny.errors import InputError
from scrutiny.explain.baselines import make_baseline
from scrutiny.models.wrapper import TorchModel

SEGMENTERS: tuple[str, ...] = ("slic", "quickshift", "felzenszwalb", "grid")
OUTPUTS: tuple[str, ...] = ("probability", "logit")
MODES: tuple[str, ...] = ("auto", "image", "tabular")


def check_dict(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a dict, got {value!r}")


def resolve_mode(mode: str, x: torch.Tensor) -> str:
    """``"image"`` for ``(N, C, H, W)`` inputs under ``mode="auto"``, else ``"tabular"``."""
    if mode == "auto":
        return "image" if x.dim() == 4 else "tabular"
    if mode == "image" and x.dim() != 4:
        raise InputError(f"mode='image' needs inputs (N, C, H, W), got shape {tuple(x.shape)}")
    return mode


def rng_from_torch() -> np.random.Generator:
    """A NumPy generator seeded from torch's (seeded) global RNG.

    One draw per call, independent of the batch: every sample of a batch uses
    a generator with the same seed, so explaining a batch gives the same
    result as explaining its samples one by one.
    """
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


# ---------------------------------------------------------------- segmentation
def _grid(h: int, w: int, n_segments: int) -> np.ndarray:
    side = max(1, round(float(np.sqrt(h * w / n_segments))))
    r = np.arange(h)[:, None] // side
    c = np.arange(w)[None, :] // side
    return r * (-(-w // side)) + c


def segment_images(x: torch.Tensor, segmenter: str, n_segments: int,
                   params: dict[str, Any] | None) -> torch.Tensor:
    """Superpixels of each image: a long tensor ``(N, H, W)`` with labels ``0..M_i-1``.

    ``slic`` (default ``compactness`` 0.1 for one-channel images in [0, 1],
    10 for RGB, which skimage converts to Lab), ``quickshift`` (lime's default
    segmenter; ``kernel_size=4, max_dist=200, ratio=0.2`` as in lime, on the
    image as is), ``felzenszwalb`` or ``grid`` (square cells, about
    ``n_segments`` of them; deterministic, best for tiny images).
    """
    from skimage import segmentation as sk

    n, c, h, w = x.shape
    params = dict(params or {})
    imgs = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    out = np.empty((n, h, w), dtype=np.int64)
    for i in range(n):
        img = imgs[i]
        if segmenter == "grid":
            seg = _grid(h, w, n_segments)
        elif segmenter == "slic":
            kw = {"compactness": 10.0 if c == 3 else 0.1, **params}
            seg = sk.slic(img if c > 1 else img[..., 0], n_segments=n_segments, start_label=0,
                          channel_axis=-1 if c > 1 else None, **kw)
        elif segmenter == "quickshift":
            kw = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2, **params}
            rgb = img if c == 3 else np.repeat(img.mean(axis=-1, keepdims=True), 3, axis=-1)
            seg = sk.quickshift(rgb, convert2lab=False, **kw)
        else:
            kw = {"scale": 1.0, "min_size": 2, **params}
            seg = sk.felzenszwalb(img, channel_axis=-1, **kw)
        out[i] = np.unique(seg, return_inverse=True)[1].reshape(h, w)
    return torch.from_numpy(out).to(x.device)


def segment_means(x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Each pixel replaced by its superpixel's mean colour (lime's ``hide_color=None``)."""
    n, c, h, w = x.shape
    m = int(seg.max()) + 1
    onehot = F.one_hot(seg.reshape(n, -1), m).to(x.dtype)           # (N, HW, M)
    sums = torch.einsum("nch,nhm->ncm", x.reshape(n, c, -1), onehot)
    means = sums / onehot.sum(1, keepdim=True).clamp_min(1)
    return torch.gather(means, 2, seg.reshape(n, 1, -1).expand(n, c, -1)).reshape(x.shape)


def image_fill(fill: str | float | torch.Tensor, x: torch.Tensor, seg: torch.Tensor,
               bounds: tuple[float, float], blur_sigma: float) -> torch.Tensor:
    """The replacement image for hidden superpixels, shape of ``x``."""
    if isinstance(fill, str) and fill == "mean":
        return segment_means(x, seg)
    return make_baseline(fill, x, bounds, blur_sigma)


# ---------------------------------------------------------------- evaluation
def evaluate_rows(model: TorchModel, make_rows: Callable[[int, int], torch.Tensor],
                  total: int, row_target: torch.Tensor, output: str, batch_size: int
                  ) -> torch.Tensor:
    """Model output (logit or probability of ``row_target``) for ``total`` perturbed
    rows built on the fly by ``make_rows(start, stop)``, ``batch_size`` per forward."""
    out = torch.empty(total, dtype=torch.float64, device=row_target.device)
    with torch.no_grad():
        for start in range(0, total, batch_size):
            stop = min(total, start + batch_size)
            z = model(make_rows(start, stop))
            if output == "probability":
                z = z.softmax(dim=1)
            out[start:stop] = z.gather(1, row_target[start:stop, None])[:, 0].double()
    return out


def coalition_outputs(model: TorchModel, x: torch.Tensor, groups: torch.Tensor,
                      refs: torch.Tensor, coalitions: list[torch.Tensor], target: torch.Tensor,
                      output: str, batch_size: int) -> list[torch.Tensor]:
    """``E_r f(z' * x + (1 - z') * r)`` for every coalition of every sample.

    Parameters
    ----------
    x : (N, ...) inputs; a row is built flat then reshaped like ``x[0]``.
    groups : (N, D) feature index of each input element.
    refs : (N, B, D) reference rows per sample (fill or background rows).
    coalitions : list of (S_l, M) 0/1 tensors; entry ``l`` belongs to sample ``l % N``
        (several lists of N may be concatenated).

    All ``sum_i S_i * B`` perturbed inputs are evaluated in forwards of
    ``batch_size`` rows, across samples; the result per entry is (S_l,).
    """
    shape = x.shape[1:]
    n, b = len(x), refs.shape[1]
    counts = [len(z) for z in coalitions]
    m_max = max((z.shape[1] for z in coalitions), default=1)
    zpad = torch.zeros(sum(counts), max(m_max, 1), dtype=torch.bool, device=x.device)
    owner = torch.repeat_interleave(torch.arange(len(counts), device=x.device) % n,
                                    torch.tensor(counts, device=x.device))
    row = 0
    for z in coalitions:
        zpad[row:row + len(z), :z.shape[1]] = z.bool()
        row += len(z)
    total = int(zpad.shape[0]) * b

    def make_rows(start: int, stop: int) -> torch.Tensor:
        r = torch.arange(start, stop, device=x.device)
        c, k = r // b, r % b
        i = owner[c]
        keep = torch.gather(zpad[c], 1, groups[i].reshape(len(r), -1))
        flat = torch.where(keep, x[i].reshape(len(r), -1), refs[i, k])
        return flat.reshape(len(r), *shape)

    row_target = target[owner].repeat_interleave(b)
    vals = evaluate_rows(model, make_rows, total, row_target, output, batch_size)
    return list(vals.reshape(-1, b).mean(dim=1).split(counts))


# ---------------------------------------------------------------- solvers
def pad_stack(mats: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    out = mats[0].new_zeros(len(mats), rows, cols)
    for i, m in enumerate(mats):
        out[i, :m.shape[0], :m.shape[1]] = m
    return out


def weighted_ridge(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float,
                   valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted ridge with an unpenalised intercept, batched over samples (float64).

    Minimises ``sum_s w_s (y_s - b - X_s beta)^2 + alpha ||beta||^2`` per
    sample, as scikit-learn's ``Ridge(alpha).fit(X, y, sample_weight=w)`` does
    (centre with the weighted means, then solve the normal equations). Padded
    rows have ``w = 0``; padded columns (``valid`` False) get ``beta = 0``.

    Returns ``(beta (N, M), intercept (N,), weighted R^2 (N,))``.
    """
    sw = w / w.sum(dim=1, keepdim=True).clamp_min(1e-300)
    xm = (sw[..., None] * X).sum(1, keepdim=True)
    ym = (sw * y).sum(1, keepdim=True)
    Xc, yc = X - xm, y - ym
    A = Xc.transpose(1, 2) @ (w[..., None] * Xc)
    eye = torch.diag_embed(torch.where(valid, alpha, 1.0).to(X))
    rhs = (Xc.transpose(1, 2) @ (w * yc)[..., None])[..., 0]
    beta = (torch.linalg.pinv(A + eye, hermitian=True) @ rhs[..., None])[..., 0] * valid
    intercept = (ym[:, 0] - (xm[:, 0] * beta).sum(1))
    pred = (X @ beta[..., None])[..., 0] + intercept[:, None]
    ss_res = (w * (y - pred) ** 2).sum(1)
    ss_tot = (w * yc ** 2).sum(1)
    r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300),
                     torch.where(ss_res > 0, 0.0, 1.0).to(X))
    return beta, intercept, r2


def constrained_wls(Z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, total: torch.Tensor,
                    valid: torch.Tensor) -> torch.Tensor:
    """``argmin_phi sum_s w_s (y_s - Z_s phi)^2`` subject to ``sum_j phi_j = total``.

    Batched over samples (float64). The equality constraint is enforced
    exactly through its Lagrange multiplier (``A = Z^T W Z``, ``b = Z^T W y``):
    ``phi = A^+ b - A^+ 1 (1^T A^+ b - total) / (1^T A^+ 1)``, the same
    solution as the shap package's elimination of one variable. Padded
    columns (``valid`` False) get ``phi = 0`` and are outside the constraint.
    """
    c = valid.to(Z)
    A = Z.transpose(1, 2) @ (w[..., None] * Z) + torch.diag_embed(1 - c)
    b = (Z.transpose(1, 2) @ (w * y)[..., None])[..., 0]
    Ainv = torch.linalg.pinv(A, hermitian=True)
    u = (Ainv @ b[..., None])[..., 0] * c
    v = (Ainv @ c[..., None])[..., 0] * c
    denom = (c * v).sum(1)
    lam = ((c * u).sum(1) - total) / torch.where(denom.abs() > 0, denom, 1.0)
    phi = u - v * lam[:, None]
    # distribute any rounding residue so the constraint holds to float precision
    resid = total - (phi * c).sum(1)
    return phi + c * (resid / c.sum(1).clamp_min(1))[:, None]
