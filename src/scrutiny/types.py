"""Core value types: threat models, capability tags and result dataclasses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from scrutiny.errors import InputError
from scrutiny.geometry import project_wasserstein_ball, wasserstein_distance
from scrutiny.validation import DEFAULT_BOUNDS, check_bounds

NORMS: tuple[str, ...] = ("linf", "l2", "l1")
#: Every norm a ThreatModel accepts: the Lp norms and the (local) Wasserstein distance
#: of Wong et al. 2019. ``Tags.norms`` defaults to :data:`NORMS` only.
THREAT_NORMS: tuple[str, ...] = (*NORMS, "wasserstein")


@dataclass(frozen=True)
class Tags:
    """Capabilities a method declares; read by the base classes and the test suite.

    Attributes
    ----------
    white_box : bool
        Needs gradients of the model (a :class:`torch.nn.Module`).
    norms : tuple of str
        Norms of :class:`ThreatModel` the attack supports.
    targeted : bool
        Accepts ``target=``.
    stochastic : bool
        Output depends on ``seed``.
    image_only : bool
        Needs inputs of shape ``(N, C, H, W)``.
    minimum_norm : bool
        Finds the smallest perturbation instead of staying inside a fixed eps.
    output : {"logits", "probs", "label"}
        Black-box attacks (``white_box=False``): the least a query must reveal.
        ``"probs"`` means scores (a QueryModel answering probabilities or
        logits will do); ``"label"`` means the top label only (decision-based
        attacks, which then work on every QueryModel). A QueryModel that
        reveals less is refused with an InputError. Ignored by white-box methods.
    """

    white_box: bool = True
    norms: tuple[str, ...] = NORMS
    targeted: bool = False
    stochastic: bool = False
    image_only: bool = False
    minimum_norm: bool = False
    output: str = "logits"

    def __post_init__(self) -> None:
        if self.output not in ("logits", "probs", "label"):
            raise InputError(f"unknown output {self.output!r}; accepted: logits, probs, label")


def summary_repr(kind: str, fields: dict[str, Any]) -> str:
    """One line ``Kind(key=value, ...)`` for a result: shapes and summary numbers, no tensors.

    Floats get 4 significant digits, tensors their shape, None values are left out.
    """

    def show(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return "(" + ", ".join(map(str, v.shape)) + ")"
        if isinstance(v, float):
            return f"{v:.4g}"
        return repr(v)

    return f"{kind}(" + ", ".join(f"{k}={show(v)}" for k, v in fields.items()
                                  if v is not None) + ")"


def _flat(t: torch.Tensor) -> torch.Tensor:
    """``(N, prod(rest))``; explicit sizes, so an empty batch reshapes too."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``delta`` (first dimension is the batch)."""
    d = _flat(delta)
    if norm == "linf":
        return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
    if norm == "l2":
        return d.norm(p=2, dim=1)
    if norm == "l1":
        return d.abs().sum(dim=1)
    raise InputError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)}")


def project_l1_box(v: torch.Tensor, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                   iters: int = 60) -> torch.Tensor:
    """Exact Euclidean projection of ``v`` onto ``{d : ||d||_1 <= eps, lo <= d <= hi}``.

    ``lo <= 0 <= hi`` elementwise. The solution is
    ``d_i = sign(v_i) * clip(|v_i| - lam, 0, u_i)`` with ``u_i`` the box limit on
    the side of ``v_i``; ``lam >= 0`` is the root of a monotone piecewise-linear
    function, found by bisection to float precision (``iters`` halvings).

    References
    ----------
    .. [1] Croce, Hein. "Mind the box: l1-APGD for sparse adversarial attacks
       on image classifiers", ICML 2021 (projection onto the l1-ball and box).
    """
    shape = v.shape
    v, lo, hi = _flat(v), _flat(lo.expand(shape)), _flat(hi.expand(shape))
    eps = eps.reshape(-1, 1).to(v)
    u = torch.where(v >= 0, hi, -lo).clamp_min(0)
    a = v.abs()
    boxed = torch.minimum(a, u)
    inside = boxed.sum(dim=1, keepdim=True) <= eps
    lam_lo = torch.zeros_like(eps)
    lam_hi = a.amax(dim=1, keepdim=True)
    for _ in range(iters):
        lam = (lam_lo + lam_hi) / 2
        s = (a - lam).clamp_min(0).minimum(u).sum(dim=1, keepdim=True)
        too_big = s > eps
        lam_lo = torch.where(too_big, lam, lam_lo)
        lam_hi = torch.where(too_big, lam_hi, lam)
    mag = torch.where(inside, boxed, (a - lam_hi).clamp_min(0).minimum(u))
    return (torch.sign(v) * mag).reshape(shape)


@dataclass(frozen=True)
class ThreatModel:
    """The set of allowed inputs around a clean point ``x0``.

    ``{x : ||(x - x0)||_p <= eps, lo <= x <= hi, x = x0 outside mask}``.

    Parameters
    ----------
    norm : {"linf", "l2", "l1", "wasserstein"}
        The norm that measures the perturbation. ``"wasserstein"`` is the
        Wasserstein distance of Wong, Schmidt & Kolter (ICML 2019) between
        the images seen as mass distributions (``x / sum(x0)`` per sample, so
        ``x`` must have ``x0``'s mass in every channel): mass moves within a
        channel, inside a ``wasserstein_kernel`` square window, at cost
        ``||(di, dj)||_p`` (``p = wasserstein_p``) per unit; eps 0.1 moves 10%
        of the mass by one pixel. Needs images ``(N, C, H, W)`` and bounds
        ``lo >= 0``; no mask.
    eps : float
        Radius, in input units (the model wrapper normalises internally).
    bounds : (float, float), optional
        Valid input range. The model owns its bounds: leave this None (the
        default) and every method called with a model fills in the model's
        (:meth:`resolve`; ``AttackResult.threat`` holds the resolved threat
        model). Explicit bounds must equal the model's (an
        :class:`~scrutiny.errors.InputError` otherwise), and declare the
        bounds of a plain ``nn.Module``, which has none of its own. Used on
        its own (``project``, ``contains``), a threat model without bounds
        keeps inputs in [0, 1], the bounds of a model that declares none.
    mask : torch.Tensor, optional
        Broadcastable to one input (e.g. ``(1, H, W)``); 1 where pixels may
        change, 0 where they must not.
    wasserstein_kernel : int
        Odd side of the local transport window (the paper's 5).
    wasserstein_p : float
        The cost's p-norm of the pixel offset (the paper's 2).

    Examples
    --------
    >>> import torch
    >>> tm = ThreatModel("linf", 0.1)
    >>> x0 = torch.full((1, 1, 2, 2), 0.5)
    >>> tm.project(x0, x0 + 1).max().item()
    0.6000000238418579
    >>> tm.bounds is None, tm.resolve((-1.0, 1.0)).bounds  # the model's bounds, filled in
    (True, (-1.0, 1.0))
    """

    norm: str
    eps: float
    bounds: tuple[float, float] | None = None
    mask: torch.Tensor | None = field(default=None, compare=False)
    wasserstein_kernel: int = 5
    wasserstein_p: float = 2.0

    def __post_init__(self) -> None:
        if self.norm not in THREAT_NORMS:
            raise InputError(f"unknown norm {self.norm!r}; accepted: {', '.join(THREAT_NORMS)}")
        eps = float(self.eps)
        if not eps >= 0:  # also rejects NaN; inf means unbounded (minimum-norm attacks)
            raise InputError(f"eps must be a number >= 0 (inf for unbounded), got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        if self.bounds is not None:
            object.__setattr__(self, "bounds", check_bounds(self.bounds))
        if self.mask is not None:
            m = torch.as_tensor(self.mask, dtype=torch.float32)
            if not torch.all((m == 0) | (m == 1)):
                raise InputError("mask must contain only 0 and 1")
            object.__setattr__(self, "mask", m)
        k = self.wasserstein_kernel
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise InputError(f"wasserstein_kernel must be an odd integer >= 1, got {k!r}")
        if not 1 <= float(self.wasserstein_p) < float("inf"):
            raise InputError(f"wasserstein_p must be a finite number >= 1, got "
                             f"{self.wasserstein_p!r}")
        object.__setattr__(self, "wasserstein_p", float(self.wasserstein_p))
        if self.norm == "wasserstein":
            if self.box[0] < 0:
                raise InputError(f"the wasserstein norm treats pixels as mass and needs bounds "
                                 f"with low >= 0, got {self.box!r}")
            if self.mask is not None:
                raise InputError("the wasserstein norm does not support a mask")

    def with_eps(self, eps: float) -> ThreatModel:
        """The same threat model with another radius."""
        return replace(self, eps=eps)

    @property
    def box(self) -> tuple[float, float]:
        """The bounds :meth:`project` and :meth:`contains` keep inputs in: :attr:`bounds`,
        or [0, 1] (a model that declares none) when they are not resolved yet."""
        return DEFAULT_BOUNDS if self.bounds is None else self.bounds

    def resolve(self, bounds: tuple[float, float]) -> ThreatModel:
        """This threat model on a model whose inputs lie in ``bounds`` (the model's).

        Without bounds of its own it takes ``bounds``; with the same ones it is
        returned as is. The model owns its bounds, so different explicit ones
        are refused: an :class:`~scrutiny.errors.InputError` naming both.
        Every method's call preamble (:func:`scrutiny.models.calls.prepare`)
        resolves the threat model this way, so a method's body always sees
        the model's bounds in :attr:`bounds`.
        """
        bounds = check_bounds(bounds)
        if self.bounds is None:
            return replace(self, bounds=bounds)
        if self.bounds != bounds:
            raise InputError(f"the threat model's bounds [{self.bounds[0]:g}, {self.bounds[1]:g}] "
                             f"differ from the model's bounds [{bounds[0]:g}, {bounds[1]:g}]; "
                             "the model owns its bounds: build the ThreatModel without bounds= "
                             "(it takes the model's) or with the model's")
        return self

    def mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """The mask broadcast to one input of ``x`` (None if unmasked)."""
        if self.mask is None:
            return None
        return self.mask.to(device=x.device, dtype=x.dtype).expand(x.shape[1:])

    def distance(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||x - x0||`` in this threat model's norm.

        For ``"wasserstein"``: the exact local Wasserstein distance by linear
        programming (``inf`` if the mass changed), see
        :func:`scrutiny.geometry.wasserstein_distance`.
        """
        if self.norm == "wasserstein":
            d = wasserstein_distance(x0, x, kernel_size=self.wasserstein_kernel,
                                     p=self.wasserstein_p)
            return d.to(device=x.device)
        return lp_norm(x - x0, self.norm)

    def contains(self, x0: torch.Tensor, x: torch.Tensor, tol: float = 1e-5) -> torch.Tensor:
        """Per-sample bool: ``x`` lies in the ball, the bounds (:attr:`box`) and the mask."""
        lo, hi = self.box
        d = self.distance(x0, x)
        ok = d <= self.eps * (1 + tol) + tol
        if self.norm == "wasserstein":  # mass changed or no local plan: outside, even for eps=inf
            ok &= torch.isfinite(d)
        ok &= _flat((x >= lo - tol) & (x <= hi + tol)).all(dim=1)
        m = self.mask_for(x)
        if m is not None:
            ok &= _flat(((x - x0) * (1 - m)).abs() <= tol).all(dim=1)
        return ok

    def project(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Closest point (Euclidean) to ``x`` in the threat set around ``x0``.

        Exact for linf and l1 (ball intersected with the box) and for l2 up to
        the box: the l2 ball is projected first, then the box, which can only
        shrink the perturbation, so the result stays in the set. For
        ``"wasserstein"``, points inside are kept and the others are projected
        approximately by projected Sinkhorn and rounded to an exactly feasible
        point (:func:`scrutiny.geometry.projected_sinkhorn`).
        """
        if self.norm == "wasserstein":
            return project_wasserstein_ball(x0, x, self.eps, self.box,
                                            kernel_size=self.wasserstein_kernel,
                                            p=self.wasserstein_p, inside=self.contains(x0, x))
        lo, hi = self.box
        delta = x - x0
        m = self.mask_for(x)
        if m is not None:
            delta = delta * m
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        elif self.norm == "l2":
            n = lp_norm(delta, "l2").clamp_min(1e-12)
            factor = torch.clamp(self.eps / n, max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        else:
            eps = torch.full((x.shape[0],), self.eps, device=x.device, dtype=x.dtype)
            delta = project_l1_box(delta, eps, lo - x0, hi - x0)
        return (x0 + delta).clamp(lo, hi)


@dataclass
class AttackResult:
    """What an attack returns; every field is recomputed by the base class.

    Attributes
    ----------
    x_adv : Tensor
        Adversarial inputs, inside the threat model.
    success : Tensor
        bool (N,): untargeted, the prediction differs from ``y``; targeted, it
        equals ``target``.
    norms : Tensor
        (N,) distance of ``x_adv`` from ``x`` in the threat model's norm.
    logits : Tensor
        (N, K) model output on ``x_adv``.
    clean_correct : Tensor
        bool (N,): the clean input was classified correctly.
    adv_correct : Tensor
        bool (N,): ``x_adv`` is still classified as ``y``. Not robustness on its
        own: a clean error that the perturbation happens to fix has
        ``adv_correct`` True; use :attr:`robust`.
    queries : Tensor, optional
        (N,) model queries the attack spent per sample (black-box attacks):
        the queries its budget limits. The evaluator's two looks per sample
        (the clean prediction and the check of ``x_adv``) are not among them,
        by design; ``meta["evaluator_queries"]`` counts them.
    budget_exhausted : Tensor, optional
        bool (N,) (black-box attacks): the query budget cut the attack short
        on this sample, i.e. it refused a query the attack wanted to make
        for it and the sample is not broken (at ``eps = inf``, broken or not:
        more queries could still shrink the norm). Its robustness is then the
        budget's, not the attack's; ``meta["stopped_by_budget"]`` says whether
        the budget refused any query.

    Notes
    -----
    Robustness follows AutoAttack's convention: a sample is robust only if
    its clean input is classified correctly *and* the attack failed on it
    (:attr:`robust` is ``clean_correct & adv_correct``), so
    :meth:`robust_accuracy` never exceeds :meth:`clean_accuracy`.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    logits: torch.Tensor
    clean_correct: torch.Tensor
    adv_correct: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    threat: ThreatModel | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    budget_exhausted: torch.Tensor | None = None

    @property
    def robust(self) -> torch.Tensor:
        """bool (N,): robust samples, classified correctly clean and under attack.

        ``clean_correct & adv_correct``: a clean error is never robust, even
        if ``x_adv`` happens to be classified as ``y``.
        """
        return self.clean_correct & self.adv_correct

    def robust_accuracy(self) -> float:
        """Fraction of robust samples (:attr:`robust`); at most :meth:`clean_accuracy`."""
        return float(self.robust.float().mean()) if len(self.y) else float("nan")

    def clean_accuracy(self) -> float:
        """Fraction of clean samples classified correctly."""
        return float(self.clean_correct.float().mean()) if len(self.y) else float("nan")

    def robust_accuracy_at(self, eps: float) -> float:
        """Robust accuracy if the threat had radius ``eps`` (<= the attack's eps).

        A sample counts as broken at ``eps`` when the attack succeeded with a
        perturbation of norm <= eps. Exact for minimum-norm attacks, whose one
        run gives the whole robust-accuracy-versus-eps curve; for fixed-eps
        attacks it is an upper bound.
        """
        if self.threat is not None and eps > self.threat.eps:
            raise InputError(f"eps={eps} is above the attack's eps={self.threat.eps}")
        if self.target is not None:
            raise InputError("robust_accuracy_at is defined for untargeted attacks")
        broken = (self.success & (self.norms <= eps * (1 + 1e-6) + 1e-12)) | ~self.clean_correct
        return float((~broken).float().mean()) if len(self.y) else float("nan")

    def success_rate(self) -> float:
        """Fraction of samples on which the attack reached its goal."""
        return float(self.success.float().mean()) if len(self.y) else float("nan")

    def __repr__(self) -> str:
        """One line: the attack, n, the threat model and the summary numbers (no tensors)."""
        t = self.threat
        ok = self.norms[self.success]
        return summary_repr("AttackResult", {
            "attack": self.meta.get("attack"), "n": len(self.y),
            "threat": f"{t.norm} eps={t.eps:g}" if t is not None else None,
            "clean_accuracy": self.clean_accuracy(), "robust_accuracy": self.robust_accuracy(),
            "success_rate": self.success_rate(),
            "median_norm": float(ok.median()) if len(ok) else None,
            "targeted": True if self.target is not None else None,
            "mean_queries": (float(self.queries.float().mean())
                             if self.queries is not None and len(self.queries) else None),
            "x_adv": self.x_adv})

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers (JSON-ready)."""
        ok = self.norms[self.success]
        out: dict[str, Any] = {
            "n": len(self.y),
            "clean_accuracy": self.clean_accuracy(),
            "robust_accuracy": self.robust_accuracy(),
            "success_rate": self.success_rate(),
            "median_norm_of_successes": float(ok.median()) if len(ok) else None,
            "norm": self.threat.norm if self.threat else None,
            "eps": self.threat.eps if self.threat else None,
        }
        if self.queries is not None:
            out["mean_queries"] = float(self.queries.float().mean())
        if self.budget_exhausted is not None:  # how many samples the query budget cut short
            out["budget_exhausted"] = int(self.budget_exhausted.sum())
        out.update({k: v for k, v in self.meta.items() if isinstance(v, int | float | str | bool)})
        return out


@dataclass
class Explanation:
    """What an explainer returns.

    Attributes
    ----------
    attributions : Tensor
        Relevance per input element (same shape as ``x``) or per pixel
        (``(N, H, W)``) for methods that reduce over channels; per element of a
        layer's output (its shape) for a gradient method given ``layer=``.
    target : Tensor
        (N,) explained class.
    outputs : Tensor
        (N,) model output (logit) of the target class at ``x``.
    delta : Tensor, optional
        (N,) completeness error ``sum(attributions) - (f(x) - f(baseline))``
        for methods that claim completeness.
    location : str
        Where attributions live: ``"input"`` or a layer name.
    """

    attributions: torch.Tensor
    target: torch.Tensor
    outputs: torch.Tensor
    delta: torch.Tensor | None = None
    location: str = "input"
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: the explainer, n, the attributions' shape and location, max |delta|."""
        d = self.delta
        return summary_repr("Explanation", {
            "explainer": self.meta.get("explainer"), "n": len(self.target),
            "attributions": self.attributions,
            "location": self.location,
            "max_abs_delta": float(d.abs().max()) if d is not None and len(d) else None})

    def pixel_map(self) -> torch.Tensor:
        """(N, H, W) map for display: channel-summed for image attributions."""
        a = self.attributions
        return a.sum(dim=1) if a.dim() == 4 else a
