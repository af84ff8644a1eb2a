"""Counterfactual explanations (Wachter, Mittelstadt & Russell 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["Counterfactual", "CounterfactualResult", "counterfactual", "mad_scale"]


@dataclass(repr=False)
class CounterfactualResult(LearnedResult):
    """Counterfactuals of a batch ``x`` (``N`` samples).

    Attributes
    ----------
    x_cf : torch.Tensor
        The counterfactuals, shaped like ``x``; a failed sample keeps its last iterate.
    desired : torch.Tensor
        The desired class per sample ``(N,)``.
    success : torch.Tensor
        ``(N,)`` bool: ``x_cf`` is classified as ``desired`` and its output is within
        ``tolerance`` of ``target_value`` (the paper's constraint).
    distance : torch.Tensor
        ``(N,)`` distance ``d(x, x_cf)`` in the method's metric (weighted l1 or l2).
    lam : torch.Tensor
        ``(N,)`` the lambda at which ``x_cf`` was found (the last one tried on failure).
    changed : torch.Tensor
        ``(N,)`` number of features that differ from ``x`` (sparsity).
    output : torch.Tensor
        ``(N,)`` the optimised output at ``x_cf`` (probability or logit margin of ``desired``).
    nearest_distance : torch.Tensor
        ``(N,)`` distance (same metric) from ``x`` to its nearest example of class
        ``desired`` in the training data (``inf`` when the data has none).
    nearest_index : torch.Tensor
        ``(N,)`` index of that example in the data (``-1`` when none).
    scale : torch.Tensor
        The per-feature scale ``s`` of the distance (shape of one input; MAD or ones).
    """

    x_cf: torch.Tensor
    desired: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    lam: torch.Tensor
    changed: torch.Tensor
    output: torch.Tensor
    nearest_distance: torch.Tensor
    nearest_index: torch.Tensor
    scale: torch.Tensor


def mad_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-feature median absolute deviation of the rows ``x`` ``(N, ...)``.

    ``MAD_k = median_j |x_jk - median_l x_lk|`` (Wachter et al., eq. 4). A feature whose
    MAD is 0 takes its mean absolute deviation around the median instead, and a feature
    constant in ``x`` the smallest positive scale of the others (1 if there is none), so
    the weights ``1 / MAD`` stay finite.
    """
    flat = x.reshape(len(x), -1).double()
    dev = (flat - flat.median(0).values).abs()
    s = dev.median(0).values
    s = torch.where(s > 0, s, dev.mean(0))
    floor = s[s > 0].min() if bool((s > 0).any()) else torch.tensor(1.0, dtype=s.dtype)
    return torch.where(s > 0, s, floor).reshape(x.shape[1:]).to(x.dtype)


def _immutable_mask(immutable: Sequence[int | str], data: ArrayDataset, shape: torch.Size
                    ) -> torch.Tensor:
    """``(d,)`` bool, False at the immutable features (indices or names of a table)."""
    if isinstance(immutable, str | int):
        immutable = (immutable,)
    allowed = torch.ones(shape, dtype=torch.bool)
    if len(immutable) == 0:
        return allowed
    if len(shape) != 1:
        raise InputError(f"immutable features are for tables (inputs (N, d)), got inputs of "
                         f"shape {tuple(shape)}; pass a mask instead")
    names = list(data.feature_names or ())
    for f in immutable:
        if isinstance(f, str):
            if f not in names:
                raise InputError(f"immutable feature {f!r} is not one of the data's feature "
                                 f"names")
            f = names.index(f)
        if isinstance(f, bool) or not isinstance(f, int) or not -shape[0] <= f < shape[0]:
            raise InputError(f"immutable feature {f!r} is not a feature index in "
                             f"[0, {shape[0]})")
        allowed[f] = False
    return allowed


def _above_one(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 1:
        raise InputError(f"{name} must be a number > 1, got {value!r}")


@register("learned", "counterfactual", paper="Wachter, Mittelstadt, Russell. Counterfactual "
          "explanations without opening the black box: automated decisions and the GDPR. "
          "Harvard Journal of Law & Technology 2017",
          test_params={"steps": 10, "lambda_steps": 2})
class Counterfactual(Learned):
    """Counterfactual explanations: the closest input that the model puts in a desired class.

    Solves Wachter et al.'s ``argmin_x' max_lambda  lambda (f(x') - y')^2 + d(x, x')`` per
    sample, batched: ``f`` is the model's logit margin of the desired class ``z_desired
    - max_(j != desired) z_j`` (``output="margin"``, the default: its gradient does not
    vanish on a confident model) or its softmax probability (``output="probability"``,
    closest to the paper's model output, but far from the desired class its gradient is
    tiny and the lambda search must climb many decades), ``y'`` is ``target_value``.
    ``d`` is the l1 (``distance="l1"``, the paper's choice for tables) or l2 distance of
    ``(x' - x) / s``, where ``s`` is the per-feature median absolute deviation of the
    training ``data`` (``weighting="mad"``,
    eq. 4 of the paper; see :func:`mad_scale`) or 1 (``"none"``); ``"auto"`` takes MAD for
    tables and none for images.

    The lambda search is the paper's: start at ``lambda_init``, minimise ``steps`` steps,
    and while a sample's constraint ``|f(x') - y'| <= tolerance`` (with ``x'`` classified
    as the desired class) fails, multiply its lambda by ``lambda_factor`` and continue
    from where it stopped, at most ``lambda_steps`` values. Each sample keeps the closest
    iterate that met the constraint. The minimiser is Adam on the prediction term with a
    proximal step for the l1 distance (soft-thresholding with Adam's per-feature step, so
    unchanged features stay exactly unchanged: sparse counterfactuals); the l2 distance is
    minimised by Adam directly. Iterates are projected into the model's bounds, and
    features outside the mask (``mask`` or ``immutable`` at call time) never move. The
    start is ``x`` itself (the paper samples random starts; this keeps the result close
    and deterministic).

    Call: ``Counterfactual()(model, data, x=x, desired=c)``: ``data`` the training data
    (an ArrayDataset: MAD and the nearest training example of the desired class), ``x`` the
    inputs ``(N, ...)``, ``desired`` a class or ``(N,)`` classes; optional ``mask`` (bool,
    broadcastable to ``x``: True where a feature may change) and ``immutable`` (feature
    indices or names of a table that never change).

    Parameters
    ----------
    distance : {"l1", "l2"}
        Norm of the scaled change ``(x' - x) / s``.
    weighting : {"auto", "mad", "none"}
        Per-feature scale ``s``: MAD over the training data, ones, or MAD for tables only.
    output : {"margin", "probability"}
        The model output ``f`` the prediction term matches to ``target_value``.
    target_value : float or None
        ``y'``; None: 0.6 for a probability, 1.0 for a margin.
    tolerance : float or None
        The constraint's tolerance on ``|f(x') - y'|``; None: 0.1 for a probability,
        0.5 for a margin.
    lambda_init : float
        First lambda of the search.
    lambda_factor : float
        Factor lambda grows by while the constraint fails.
    lambda_steps : int
        Number of lambda values tried at most.
    steps : int
        Optimisation steps per lambda value.
    lr : float
        Adam's step size (input units).

    References
    ----------
    .. [1] Wachter, Mittelstadt, Russell. Counterfactual explanations without opening the
       black box: automated decisions and the GDPR. Harvard Journal of Law & Technology
       31(2), 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="train")
    >>> x = load_digits(split="test").x[:4]
    >>> r = Counterfactual()(model, data, x=x, desired=3)
    >>> bool(r.success.all()), model.predict(r.x_cf).tolist()
    (True, [3, 3, 3, 3])
    >>> bool((r.distance < r.nearest_distance).all())
    True
    """

    distance: str = param("l1", choices=("l1", "l2"))
    weighting: str = param("auto", choices=("auto", "mad", "none"))
    output: str = param("margin", choices=("margin", "probability"))
    target_value: float | None = param(None, kind=float)
    tolerance: float | None = param(None, positive=True)
    lambda_init: float = param(0.01, positive=True)
    lambda_factor: float = param(10.0, check=_above_one)
    lambda_steps: int = param(6, integer=True, positive=True)
    steps: int = param(50, integer=True, positive=True)
    lr: float = param(0.05, positive=True)

    def _post_init(self) -> None:
        if self.output == "probability" and self.target_value is not None \
                and not 0 < self.target_value <= 1:
            raise InputError(f"target_value must be a probability in (0, 1], got "
                             f"{self.target_value!r}")

    @property
    def goal(self) -> tuple[float, float]:
        """``(y', tolerance)`` with the output's defaults filled in."""
        prob = self.output == "probability"
        y = self.target_value if self.target_value is not None else (0.6 if prob else 1.0)
        tol = self.tolerance if self.tolerance is not None else (0.1 if prob else 0.5)
        return float(y), float(tol)

    def _outputs(self, model: TorchModel, x: torch.Tensor, desired: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(x)`` for the desired classes and whether ``x`` is classified as them."""
        z = model(x)
        zd = z.gather(1, desired[:, None])[:, 0]
        hit = z.argmax(1) == desired
        if self.output == "probability":
            return z.softmax(1).gather(1, desired[:, None])[:, 0], hit
        other = z.scatter(1, desired[:, None], float("-inf")).amax(1)
        return zd - other, hit

    def _dist(self, delta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        u = (delta / scale).reshape(len(delta), -1)
        return u.abs().sum(1) if self.distance == "l1" else u.pow(2).sum(1).sqrt()

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             x: torch.Tensor | None = None, desired: int | Sequence[int] | torch.Tensor | None
             = None, mask: torch.Tensor | None = None, immutable: Sequence[int | str] = ()
             ) -> CounterfactualResult:
        if data is None:
            raise InputError("counterfactual needs the training data (MAD and the nearest "
                             "training example): call method(model, data, x=..., desired=...)")
        x = _check_x(x, data)
        n, dev = len(x), model.device
        desired = _check_desired(desired, n, model, x)
        allowed = _immutable_mask(immutable, data, x.shape[1:])
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise InputError(f"mask must be a bool tensor, got {type(mask).__name__}")
            try:
                allowed = allowed & mask.bool().cpu()
                allowed = allowed.expand_as(x)
            except RuntimeError as e:
                raise InputError(f"mask of shape {tuple(mask.shape)} does not broadcast to "
                                 f"the inputs {tuple(x.shape)}") from e
        allowed = allowed.expand_as(x).to(dev)
        use_mad = self.weighting == "mad" or (self.weighting == "auto" and x.dim() == 2)
        scale = mad_scale(data.x) if use_mad else torch.ones(x.shape[1:], dtype=x.dtype)
        scale = scale.to(dev, x.dtype)
        x = x.to(dev)
        lo, hi = model.bounds
        y_goal, tol = self.goal

        delta = torch.zeros_like(x)
        lam = torch.full((n,), float(self.lambda_init), device=dev, dtype=x.dtype)
        best = x.clone()
        best_d = torch.full((n,), float("inf"), device=dev, dtype=x.dtype)
        best_lam = lam.clone()
        active = torch.ones(n, dtype=torch.bool, device=dev)
        view = (-1,) + (1,) * (x.dim() - 1)
        b1, b2, eps = 0.9, 0.999, 1e-8
        for _ in range(self.lambda_steps):
            m, v = torch.zeros_like(x), torch.zeros_like(x)
            for t in range(1, self.steps + 1):
                rows = active.nonzero()[:, 0]
                if len(rows) == 0:
                    break
                d = delta[rows].requires_grad_(True)
                f, hit = self._outputs(model, x[rows] + d, desired[rows])
                loss = lam[rows] * (f - y_goal) ** 2
                if self.distance == "l2":
                    u = (d / scale).reshape(len(rows), -1)
                    loss = loss + (u.pow(2).sum(1) + 1e-12).sqrt()
                (g,) = torch.autograd.grad(loss.sum(), d)
                with torch.no_grad():
                    # the current iterate (before this step) is a candidate
                    ok = hit & ((f - y_goal).abs() <= tol)
                    dist = self._dist(delta[rows], scale)
                    better = ok & (dist < best_d[rows])
                    r = rows[better]
                    best[r], best_d[r], best_lam[r] = x[r] + delta[r], dist[better], lam[r]
                    g = g * allowed[rows]
                    m[rows] = b1 * m[rows] + (1 - b1) * g
                    v[rows] = b2 * v[rows] + (1 - b2) * g * g
                    step = self.lr / ((v[rows] / (1 - b2 ** t)).sqrt() + eps)
                    new = delta[rows] - step * m[rows] / (1 - b1 ** t)
                    if self.distance == "l1":  # prox of sum_k |delta_k| / s_k, Adam's metric
                        new = new.sign() * (new.abs() - step / scale).clamp(min=0)
                    new = ((x[rows] + new).clamp(lo, hi) - x[rows]) * allowed[rows]
                    delta[rows] = new
            with torch.no_grad():  # the last iterate is a candidate too
                f, hit = self._outputs(model, x + delta, desired)
                ok = active & hit & ((f - y_goal).abs() <= tol)
                dist = self._dist(delta, scale)
                better = ok & (dist < best_d)
                best[better], best_d[better], best_lam[better] = (x + delta)[better], \
                    dist[better], lam[better]
            active = active & ~torch.isfinite(best_d)
            if not bool(active.any()):
                break
            lam = torch.where(active, lam * self.lambda_factor, lam)
        failed = ~torch.isfinite(best_d)
        x_cf = torch.where(failed.view(view), x + delta, best)
        best_lam = torch.where(failed, lam, best_lam)
        with torch.no_grad():
            f, hit = self._outputs(model, x_cf, desired)
            success = hit & ((f - y_goal).abs() <= tol)
            dist = self._dist(x_cf - x, scale)
            changed = ((x_cf - x).reshape(n, -1).abs() > 0).sum(1)
            near_d, near_i = self._nearest(x, desired, data, scale)
        return CounterfactualResult(
            x_cf=x_cf.detach(), desired=desired, success=success, distance=dist, lam=best_lam,
            changed=changed, output=f.detach(), nearest_distance=near_d, nearest_index=near_i,
            scale=scale, meta={"method": "counterfactual", **self.get_params(),
                               "target_value": y_goal, "tolerance": tol, "mad": use_mad})

    def _nearest(self, x: torch.Tensor, desired: torch.Tensor, data: ArrayDataset,
                 scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance and index of each sample's nearest training example of its desired class."""
        xs = data.x.to(x.device, x.dtype)
        ys = data.y.to(x.device)
        dist = torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        idx = torch.full((len(x),), -1, device=x.device, dtype=torch.long)
        for i in range(len(x)):
            rows = (ys == desired[i]).nonzero()[:, 0]
            if len(rows):
                d = self._dist(xs[rows] - x[i], scale)
                k = int(d.argmin())
                dist[i], idx[i] = d[k], rows[k]
        return dist, idx

    @classmethod
    def common_call(cls, method: Learned, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> LearnedResult:
        return method(model, data, seed=seed, x=data.x[:3], desired=(data.y[:3] + 1) % 3)


def _check_x(x: Any, data: ArrayDataset) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("x must be a floating-point tensor of inputs (N, ...), got "
                         f"{type(x).__name__}")
    if x.dim() == data.x.dim() - 1:
        x = x[None]
    if tuple(x.shape[1:]) != tuple(data.x.shape[1:]):
        raise InputError(f"x must have the data's input shape {tuple(data.x.shape[1:])}, got "
                         f"{tuple(x.shape[1:])}")
    if not bool(torch.isfinite(x).all()):
        raise InputError("x contains NaN or infinite values")
    return x.detach().to(data.x.dtype if data.x.is_floating_point() else x.dtype, copy=True)


def _check_desired(desired: Any, n: int, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
    if desired is None:
        raise InputError("counterfactual needs the desired class: desired=<class or (N,) "
                         "classes>")
    t = torch.as_tensor(desired)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise InputError(f"desired must be integer classes, got {desired!r}")
    t = t.long().reshape(-1)
    if len(t) == 1:
        t = t.expand(n)
    if len(t) != n:
        raise InputError(f"desired must be one class or {n} classes, got {len(t)}")
    k = model.num_classes if getattr(model, "num_classes", None) else \
        int(model(x[:1].to(model.device)).shape[1])
    if bool(((t < 0) | (t >= k)).any()):
        raise InputError(f"desired classes must be in [0, {k}), got {t.tolist()}")
    return t.to(model.device).clone()


def counterfactual(model: Any, data: ArrayDataset, x: torch.Tensor, desired: Any, *,
                   seed: int | None = 0, mask: torch.Tensor | None = None,
                   immutable: Sequence[int | str] = (), **hyperparameters: Any
                   ) -> CounterfactualResult:
    """Function twin of :class:`Counterfactual`:
    ``counterfactual(model, data, x, desired, **hyperparameters)``."""
    return Counterfactual(**hyperparameters)(model, data, seed=seed, x=x, desired=desired,
                                            mask=mask, immutable=immutable)
