"""Certifier base classes and the result type, :class:`CertResult`."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from scrutiny.base import Method
from scrutiny.certify.propagation import Interval, Network, compile_network, margin_spec
from scrutiny.errors import InputError
from scrutiny.models.calls import prepare
from scrutiny.models.memory import retry_smaller
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.types import Tags, ThreatModel, summary_repr
from scrutiny.validation import check_labels


@dataclass
class CertResult:
    """What a certifier returns, per sample.

    Attributes
    ----------
    label : Tensor
        (N,) the certified classifier's prediction at ``x`` (the model's for
        bound methods, the smoothed classifier's for smoothing); -1 where it
        abstains. A subclass's ``_certify`` / ``_radius`` may leave it None: the
        public call fills in the model's prediction from its clean forward pass.
    radius : Tensor
        (N,) certified radius in the ``norm``: the prediction is provably
        constant on the ball of this radius (intersected with the input
        bounds); 0 where nothing is certified. Fixed-eps bound certification
        knows one radius only: ``eps`` where certified; a radius search gives
        the largest eps it certified; smoothing gives its own radius.
    abstain : Tensor
        bool (N,): randomized smoothing abstained (always False for bound methods).
    certified : Tensor
        bool (N,): provably classified as ``y`` everywhere in the threat set at
        ``eps`` (bound methods: every margin ``z_y - z_j`` is provably > 0 on the
        ball; smoothing: ``label == y`` with ``radius >= eps``). Implies
        ``label == y`` and not ``abstain``.
    y : Tensor, optional
        (N,) the labels the certificate is about.
    norm : str
        The norm of the radius.
    eps : float, optional
        The radius asked for (fixed-eps certification); None for a radius search.
    margin_lower : Tensor, optional
        (N, K) lower bounds on ``z_y - z_j`` over the ball (column ``y`` is 0).
    meta : dict
        Extra per-run information (method, counts, p-values...).
    max_radius : float, optional
        The largest radius ``radius`` speaks about: ``eps`` for fixed-eps bound
        certification, the top of a radius search; None when ``radius`` is the
        method's own radius, valid at every eps (smoothing).
        :meth:`certified_accuracy` refuses a larger eps.
    """

    label: torch.Tensor
    radius: torch.Tensor
    abstain: torch.Tensor
    certified: torch.Tensor
    y: torch.Tensor | None = None
    norm: str = "linf"
    eps: float | None = None
    margin_lower: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    max_radius: float | None = None

    def certified_at(self, eps: float | None = None) -> torch.Tensor:
        """bool (N,): predicted correctly (not abstained) with a certified radius >= ``eps``.

        ``eps`` defaults to the certified eps (fixed-eps results) or 0; at 0 it
        is the (smoothed) classifier's correctness on non-abstained samples.
        """
        if self.y is None:
            raise InputError("certified_at needs the labels: pass y to certify")
        r = (self.eps or 0.0) if eps is None else float(eps)
        if self.max_radius is not None and r > self.max_radius * (1 + 1e-9):
            raise InputError(f"eps={r} is above the certified eps={self.max_radius}, the largest "
                             "this result knows about")
        return (self.label == self.y) & ~self.abstain & (self.radius >= r)

    def certified_accuracy(self, eps: float | None = None) -> float:
        """Fraction of samples predicted correctly with a certified radius >= ``eps``
        (the mean of :meth:`certified_at`; NaN for no samples)."""
        ok = self.certified_at(eps)
        return float(ok.float().mean()) if len(ok) else float("nan")

    def __repr__(self) -> str:
        """One line: the certifier, n, norm and eps, certified accuracy, radii (no tensors)."""
        n = len(self.label)
        return summary_repr("CertResult", {
            "certifier": self.meta.get("certifier"), "n": n, "norm": self.norm,
            "eps": self.eps,
            "certified_accuracy": (self.certified_accuracy()
                                   if self.y is not None and n and self.eps is not None
                                   else None),
            "certified": int(self.certified.sum()),
            "median_radius": float(self.radius.median()) if n else None,
            "abstained": int(self.abstain.sum()) or None})

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers (JSON-ready)."""
        out: dict[str, Any] = {
            "n": len(self.label), "norm": self.norm, "eps": self.eps,
            "certified_fraction": float(self.certified.float().mean()) if len(self.label) else None,
            "abstain_fraction": float(self.abstain.float().mean()) if len(self.label) else None,
            "median_radius": float(self.radius.median()) if len(self.label) else None,
        }
        if self.y is not None:
            out["certified_accuracy"] = self.certified_accuracy()
        out.update({k: v for k, v in self.meta.items() if isinstance(v, int | float | str | bool)})
        return out


@dataclass
class Bounds:
    """Bounds over the threat set, per sample.

    Attributes
    ----------
    logits_lower, logits_upper : Tensor
        (N, K) bounds on every logit.
    margin_lower, margin_upper : Tensor
        (N, K) bounds on the margins ``z_y - z_j`` (column ``y`` is 0), bounded
        directly with the specification matrix ``C``, which is tighter than
        subtracting logit bounds.
    y : Tensor
        (N,) the class of the margins.
    """

    logits_lower: torch.Tensor
    logits_upper: torch.Tensor
    margin_lower: torch.Tensor
    margin_upper: torch.Tensor
    y: torch.Tensor

    def certified(self) -> torch.Tensor:
        """bool (N,): every margin against another class is provably > 0."""
        m = self.margin_lower.scatter(1, self.y[:, None].to(self.margin_lower.device), math.inf)
        return m.amin(dim=1) > 0 if m.shape[1] > 1 else torch.ones(len(m), dtype=torch.bool)


class Certifier(Method):
    """Base of certifiers (kind ``"certifier"``): one API for every certifier.

    The public methods own the invariants and start every call with the
    preamble every kind of method shares (:func:`scrutiny.models.calls.prepare`):
    the threat model is checked (a :class:`ThreatModel` of a norm the certifier
    declares in ``tags.norms``, no mask) and takes the model's bounds (the
    model owns them; an explicit different box is an InputError), a plain
    ``nn.Module`` is wrapped with :func:`as_model`, ``x`` must be a finite batch
    inside the bounds, ``y`` labels of the model's classes; the algorithm runs
    in ``model.evaluating()``, without
    gradients and under :func:`seeded` (same seed, same result; the caller's
    RNG untouched); an empty batch gives an empty result without calling it;
    ``certified`` is cut to ``label == y`` and not abstained, and everything
    comes back on the CPU with ``y``, ``norm``, ``eps`` and ``meta["certifier"]``
    filled in. A subclass writes only its algorithm:

    * ``_certify(model, x, y, threat) -> CertResult``: ``label``, ``radius``,
      ``abstain``, ``certified`` at ``threat.eps`` (``threat.bounds`` is the
      model's box);
    * ``_radius(model, x, y, threat) -> CertResult``: the largest certified
      radius per sample, up to ``threat.eps`` (inf: the whole box); the default,
      for certifiers whose ``_certify`` gives its own radius
      (:attr:`gives_radius`), is one ``_certify`` call;
    * ``_classify(model, x)`` when the certificates are about another
      classifier than the model (smoothing: the smoothed one); see :meth:`classify`.

    Examples
    --------
    The same call for every certifier; ask one which norms it certifies:

    >>> from scrutiny import registry
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-mlp", progress=False), load_digits(split="test")
    >>> x, y, threat = data.x[:4], data.y[:4], ThreatModel("l2", 0.25)
    >>> for name, params in (("ibp", {}), ("crown", {}), ("smoothing", {"n0": 20, "n": 200})):
    ...     cert = registry.create(name, kind="certifier", **params)
    ...     res = cert.certify(model, x, y, threat, seed=0)
    ...     print(name, cert.tags.norms, res.certified_accuracy() >= 0.5)
    ibp ('linf', 'l2') False
    crown ('linf', 'l2') True
    smoothing ('l2',) True
    >>> # measured: IBP 0 of 4 (its l2 ball is a box), CROWN 4 of 4, smoothing 3 of 4
    """

    kind = "certifier"
    tags = Tags()
    #: ``_certify`` returns the method's own certified radius, valid at every eps
    #: (randomized smoothing): one run gives the certified accuracy at every
    #: radius. Bound methods certify each eps anew.
    gives_radius: ClassVar[bool] = False

    # ------------------------------------------------------------------ the protocol
    def certify(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                seed: int | None = 0) -> CertResult:
        """Whether each sample is provably classified as ``y`` everywhere in ``threat``.

        Parameters
        ----------
        model : nn.Module or TorchModel
        x : Tensor
            Clean inputs ``(N, ...)`` inside the bounds; not modified.
        y : Tensor
            Labels ``(N,)`` the certificate is about.
        threat : ThreatModel
            Norm (one of ``tags.norms``), eps and bounds of the threat set.
        seed : int, optional
            Seeds a stochastic certifier (smoothing's noise).

        Returns
        -------
        CertResult
            ``certified`` at ``threat.eps`` per sample, ``radius`` (see
            :class:`CertResult`), ``eps = threat.eps``.
        """
        with self._call(model, x, threat, seed) as call:
            y = call.labels(y)
            res = retry_smaller(self, lambda m: m._certify(call.model, call.x0, y, call.threat),
                                seed=seed) if len(call.x0) else _empty()
            res = _clean_label(res, call.logits)
        return self._finish(res, y, call.threat, call.threat.eps,
                            None if self.gives_radius else call.threat.eps)

    def certified_at(self, model, x: torch.Tensor, y: torch.Tensor,
                     eps: ThreatModel | float | Sequence[float], *, norm: str | None = None,
                     bounds: tuple[float, float] | None = None, seed: int | None = 0
                     ) -> dict[float, torch.Tensor]:
        """Per sample, whether it is certified correct at each radius: ``{eps: bool (N,)}``.

        ``eps`` is a :class:`ThreatModel` (its norm, eps and bounds) or one or
        several radii of ``norm`` (default the first declared in ``tags.norms``)
        within ``bounds`` (default the model's). A certifier that
        :attr:`gives_radius` answers every radius from one run; bound methods
        certify each radius.
        """
        threats = self._threats(model, eps, norm, bounds)
        if not threats:
            return {}
        if self.gives_radius:
            res = self.certify(model, x, y, max(threats, key=lambda t: t.eps), seed=seed)
            return {t.eps: res.certified_at(t.eps) for t in threats}
        return {t.eps: self.certify(model, x, y, t, seed=seed).certified_at() for t in threats}

    def certified_accuracy(self, model, x: torch.Tensor, y: torch.Tensor,
                           eps: ThreatModel | float | Sequence[float], *, norm: str | None = None,
                           bounds: tuple[float, float] | None = None, seed: int | None = 0
                           ) -> dict[float, float]:
        """Certified accuracy at each radius: ``{eps: fraction}`` (NaN for no samples).

        The arguments are :meth:`certified_at`'s.
        """
        masks = self.certified_at(model, x, y, eps, norm=norm, bounds=bounds, seed=seed)
        return {e: float(m.float().mean()) if len(m) else float("nan") for e, m in masks.items()}

    def certified_radius(self, model, x: torch.Tensor, y: torch.Tensor, *,
                         norm: str | None = None, bounds: tuple[float, float] | None = None,
                         max_eps: float | None = None, seed: int | None = 0) -> CertResult:
        """The largest certified radius per sample (0 for a misclassified sample).

        ``norm`` defaults to the first declared in ``tags.norms``, ``bounds`` to
        the model's. ``max_eps`` is the largest radius looked at (default: the
        method's own radius, or for a search the whole input box, e.g. 1 for
        linf on [0, 1]); ``max_radius`` of the result. ``eps`` of the result is
        None and ``certified`` says the sample is certified at radius 0.
        """
        if max_eps is not None and not (isinstance(max_eps, numbers.Real)
                                        and math.isfinite(max_eps) and max_eps > 0):
            raise InputError(f"max_eps must be a finite number > 0, got {max_eps!r}")
        (threat,) = self._threats(model, math.inf if max_eps is None else float(max_eps), norm,
                                  bounds)
        with self._call(model, x, threat, seed) as call:
            y = call.labels(y)
            res = retry_smaller(self, lambda m: m._radius(call.model, call.x0, y, call.threat),
                                seed=seed) if len(call.x0) else _empty()
            res = _clean_label(res, call.logits)
        return self._finish(res, y, call.threat, None, res.max_radius)

    def classify(self, model, x: torch.Tensor, *, seed: int | None = 0) -> torch.Tensor:
        """The classifier the certificates are about, at ``x``: labels ``(N,)`` on the CPU,
        -1 where it abstains. Bound methods: the model itself; smoothing: the smoothed
        classifier (PREDICT). A sample certified at eps is classified as ``y`` (or abstained
        on, for a Monte Carlo classifier) at every point of the threat set."""
        with prepare(self, model, x, seed=seed, accepted=(), no_grad=True) as call:
            return retry_smaller(self, lambda m: m._classify(call.model, call.x0),
                                 seed=seed).cpu()

    # ------------------------------------------------------------------ what a subclass writes
    def _classify(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        return model.predict(x)

    def _certify(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                 threat: ThreatModel) -> CertResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def _radius(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                threat: ThreatModel) -> CertResult:
        if not self.gives_radius:  # pragma: no cover - a subclass without a radius search
            raise InputError(f"{type(self).__name__} has no radius search")
        res = self._certify(model, x, y, threat.with_eps(0.0))
        cap = threat.eps if math.isfinite(threat.eps) else None
        radius = res.radius if cap is None else res.radius.clamp(max=cap)
        return replace(res, radius=radius, max_radius=cap)

    # ------------------------------------------------------------------ the preamble
    def _check_norm(self, norm: str) -> None:
        if norm not in self.tags.norms:
            raise InputError(f"{type(self).__name__} supports norms "
                             f"{', '.join(self.tags.norms)}; got {norm!r}")

    def _call(self, model, x: torch.Tensor, threat: ThreatModel, seed: int | None,
              clean: bool = True):
        """The shared preamble (:func:`~scrutiny.models.calls.prepare`) for a threat model
        of a declared norm without a mask; the body runs without gradients. ``clean``: the
        clean forward pass (``call.logits``: the labels' check, the model's predictions)."""
        if isinstance(threat, ThreatModel) and threat.mask is not None:
            raise InputError("masked threat models are not supported by certifiers")
        return prepare(self, model, x, seed=seed, accepted=(), threat=threat,
                       norms=self.tags.norms, no_grad=True, clean=clean)

    def _threats(self, model, eps: Any, norm: str | None, bounds: tuple[float, float] | None
                 ) -> list[ThreatModel]:
        if isinstance(eps, ThreatModel):
            if norm is not None or bounds is not None:
                raise InputError("give the norm and bounds in the ThreatModel or as keywords, "
                                 "not both")
            return [eps]
        radii = [eps] if isinstance(eps, numbers.Real) else eps
        if not isinstance(radii, Sequence) or not all(
                isinstance(e, numbers.Real) and not isinstance(e, bool) for e in radii):
            raise InputError(f"eps must be a ThreatModel, a number or a list of numbers, "
                             f"got {eps!r}")
        norm = self.tags.norms[0] if norm is None else norm
        self._check_norm(norm)
        return [ThreatModel(norm, float(e), None if bounds is None else tuple(bounds))
                for e in radii]

    def _finish(self, res: CertResult, y: torch.Tensor, threat: ThreatModel,
                eps: float | None, max_radius: float | None) -> CertResult:
        y = y.cpu()
        label, abstain = res.label.cpu(), res.abstain.cpu()
        return replace(res, label=label, radius=res.radius.cpu().float(), abstain=abstain,
                       certified=res.certified.cpu() & (label == y) & ~abstain, y=y,
                       norm=threat.norm, eps=eps,
                       margin_lower=None if res.margin_lower is None else res.margin_lower.cpu(),
                       meta={"certifier": self.name, **res.meta}, max_radius=max_radius)


def _clean_label(res: CertResult, logits: torch.Tensor) -> CertResult:
    """``res`` with the model's prediction at ``x`` (from the preamble's clean forward pass)
    as its label where ``_certify`` / ``_radius`` left it None (bound methods: no second
    forward pass)."""
    return res if res.label is not None else replace(res, label=logits.argmax(dim=1))


def _empty() -> CertResult:
    """The result of no samples."""
    return CertResult(label=torch.zeros(0, dtype=torch.long), radius=torch.zeros(0),
                      abstain=torch.zeros(0, dtype=torch.bool),
                      certified=torch.zeros(0, dtype=torch.bool))


def _eps_tensor(eps: float | torch.Tensor, n: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(eps, torch.Tensor):
        e = eps.detach().to(device=like.device, dtype=like.dtype).reshape(-1)
        if e.numel() == 1:
            e = e.expand(n)
        if e.shape != (n,):
            raise InputError(f"eps must be a number or a tensor of shape ({n},), "
                             f"got shape {tuple(eps.shape)}")
    else:
        try:
            e = torch.full((n,), float(eps), device=like.device, dtype=like.dtype)
        except (TypeError, ValueError):
            raise InputError(f"eps must be a number >= 0, got {eps!r}") from None
    if n and not (torch.isfinite(e).all() and (e >= 0).all()):
        raise InputError(f"eps must be finite and >= 0, got {eps!r}")
    return e


@contextlib.contextmanager
def _full_precision() -> Iterator[None]:
    """No TF32 in matrix products and convolutions (CUDA's default for convolutions): bounds
    computed with 10-bit mantissas can be off by 1e-3 and would not be sound."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class BoundCertifier(Certifier):
    """Shared driver of the bound-propagation certifiers (IBP, CROWN).

    A subclass writes ``_lower(net, spec, box, norm, x0, eps, margins=False)``:
    lower bounds of ``spec @ logits`` over the threat set, ``(N, S)``
    (``margins``: the rows are the margins ``z_y - z_j``, row ``y`` zero, and
    only whether they are all > 0 matters). This class gets the model's
    compiled network (:func:`~scrutiny.certify.propagation.compile_network`:
    read once per model, reused across calls, eps values and batches), chunks
    the samples by ``batch_size``, offers :meth:`bounds` (logit and margin
    rows, lower and upper, in one batch of specifications) and gives
    :class:`Certifier`'s API its two steps: ``_certify`` (every margin's
    lower bound > 0 at ``threat.eps``; only the margin lower rows are
    bounded) and ``_radius`` (a bisection over eps).
    """

    #: Bounds propagate through a chain of layers (propagation.SUPPORTED): residual
    #: connections and attention, layer norm, GELU are refused with an UnsupportedModelError.
    architectures: ClassVar[tuple[str, ...]] = ()

    tags = Tags(norms=("linf", "l2"))
    batch_size: int = param(64, integer=True, positive=True)
    radius_steps: int = param(12, integer=True, positive=True)

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor, margins: bool = False
               ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor,
             norm: str, box_bounds: tuple[float, float], margins_only: bool = False) -> Bounds:
        """Bounds of every logit and margin, lower and upper; ``margins_only``: only the
        margins' lower bounds (the other fields are NaN), all certification needs."""
        dev = model.device
        dtype = next(iter(model.parameters()), torch.empty(0)).dtype
        x0 = x.detach().to(dev, dtype)
        eps = eps.to(dev, dtype)
        with model.evaluating(), torch.no_grad(), _full_precision():
            net = compile_network(model, x0[:64]) if len(x0) else None
            # K: the network's output size (one forward for an empty batch)
            k = net.shapes()[-1][0] if net is not None else model(x0[:1]).shape[1]
            y = model.predict(x0) if y is None else check_labels(y, len(x0), k).to(dev)
            outs = []
            bs = self.batch_size
            with progress_bar(math.ceil(len(x0) / bs), type(self).__name__) as bar:
                for i in range(0, len(x0), bs):
                    xc, yc, ec = x0[i:i + bs], y[i:i + bs], eps[i:i + bs]
                    spec = margin_spec(yc, k, dtype)
                    box = Network.input_box(xc, ec, box_bounds)
                    if margins_only:
                        low = self._lower(net, spec[:, k:], box, norm, xc, ec, margins=True)
                        low = torch.cat([low.new_full((len(low), k), math.nan), low,
                                         low.new_full((len(low), 2 * k), math.nan)], dim=1)
                    else:
                        low = self._lower(net, torch.cat([spec, -spec], dim=1), box, norm, xc, ec)
                    outs.append(low)
                    bar.advance()
        low = torch.cat(outs) if outs else x0.new_zeros(0, 4 * k)
        k = low.shape[1] // 4
        # the margin against y itself is exactly 0
        lower, upper = low[:, :2 * k], -low[:, 2 * k:]
        eye = torch.nn.functional.one_hot(y, k).to(torch.bool) if len(y) else \
            torch.zeros(0, k, dtype=torch.bool, device=low.device)
        ml = lower[:, k:].masked_fill(eye, 0.0)
        mu = upper[:, k:].masked_fill(eye, 0.0)
        return Bounds(lower[:, :k], upper[:, :k], ml, mu, y)

    # ------------------------------------------------------------------ public API
    def bounds(self, model, x: torch.Tensor, eps: float | torch.Tensor, *,
               y: torch.Tensor | None = None, norm: str = "linf",
               bounds: tuple[float, float] | None = None) -> Bounds:
        """Lower and upper bounds on the logits and margins over the threat set.

        Parameters
        ----------
        model : nn.Module or TorchModel
            A chain of supported layers (see :mod:`scrutiny.certify.propagation`).
        x : Tensor
            Clean inputs ``(N, ...)`` inside the bounds.
        eps : float or Tensor
            Radius (one, or one per sample), in input units.
        y : Tensor, optional
            Class of the margins ``z_y - z_j``; default the prediction at ``x``.
        norm : {"linf", "l2"}
        bounds : (float, float), optional
            The model's input box (default: the model's own; a different one is
            refused, the model owns its bounds).

        Returns
        -------
        Bounds
            On ``x``'s device.
        """
        self._check_norm(norm)
        threat = ThreatModel(norm, 0.0, None if bounds is None else tuple(bounds))
        with self._call(model, x, threat, None, clean=False) as call:  # no clean outputs read
            b = retry_smaller(self, lambda m: m._run(call.model, x, y, _eps_tensor(eps, len(x), x),
                                                     norm, call.threat.bounds))
        return Bounds(*(t.to(x.device) for t in (b.logits_lower, b.logits_upper, b.margin_lower,
                                                  b.margin_upper, b.y)))

    def _certify(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                 threat: ThreatModel) -> CertResult:
        b = self._run(model, x, y, _eps_tensor(threat.eps, len(x), x), threat.norm, threat.bounds,
                      margins_only=True)
        cert = b.certified().cpu()
        radius = torch.where(cert, torch.full_like(cert, threat.eps, dtype=torch.float32),
                             torch.zeros(len(cert)))
        # label None: the public call fills in the prediction of its clean forward pass
        return CertResult(label=None, radius=radius,  # type: ignore[arg-type]
                          abstain=torch.zeros_like(cert), certified=cert,
                          margin_lower=b.margin_lower)

    def _radius(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                threat: ThreatModel) -> CertResult:
        """Largest certified eps per sample by bisection (batched over samples).

        Every sample keeps an interval ``[lo, hi]`` with ``lo`` certified and
        ``hi`` not; each of ``radius_steps`` rounds certifies all the unsettled
        samples at their midpoints at once. ``radius`` is ``lo``: an eps
        actually certified (0 for a misclassified sample). The search starts at
        ``threat.eps`` (inf: the whole input box, e.g. 1 for linf on [0, 1]).
        """
        n, norm, box_bounds = len(x), threat.norm, threat.bounds
        width = box_bounds[1] - box_bounds[0]
        d = math.prod(x.shape[1:])
        cap = threat.eps if math.isfinite(threat.eps) else \
            width * (1 if norm == "linf" else d ** 0.5)

        def cert(idx: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            if not len(idx):
                return torch.zeros(0, dtype=torch.bool)
            return self._run(model, x[idx], y[idx], e, norm, box_bounds,
                             margins_only=True).certified().cpu()

        all_idx = torch.arange(n)
        correct = cert(all_idx, torch.zeros(n))
        at_cap = torch.zeros(n, dtype=torch.bool)
        at_cap[correct] = cert(all_idx[correct], torch.full((int(correct.sum()),), cap))
        lo, hi = torch.zeros(n), torch.full((n,), cap)
        lo[at_cap] = cap
        active = correct & ~at_cap
        for _ in range(self.radius_steps):
            idx = active.nonzero()[:, 0]
            if not len(idx):
                break
            mid = (lo[idx] + hi[idx]) / 2
            ok = cert(idx, mid)
            lo[idx] = torch.where(ok, mid, lo[idx])
            hi[idx] = torch.where(ok, hi[idx], mid)
        return CertResult(label=None, radius=lo,  # type: ignore[arg-type]  # (see _certify)
                          abstain=torch.zeros(n, dtype=torch.bool), certified=correct,
                          max_radius=cap, meta={"max_eps": cap,
                                                "resolution": cap / 2 ** self.radius_steps})
