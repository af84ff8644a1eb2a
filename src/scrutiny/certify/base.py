"""Certifier base classes and the result type, :class:`CertResult`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from scrutiny.base import Method
from scrutiny.certify.propagation import Interval, Network, margin_spec
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.progress import progress_bar
from scrutiny.types import Tags, ThreatModel
from scrutiny.validation import check_labels, check_positive, check_x


@dataclass
class CertResult:
    """What a certifier returns, per sample.

    Attributes
    ----------
    label : Tensor
        (N,) the (smoothed) classifier's prediction at ``x``; -1 where it abstains.
    radius : Tensor
        (N,) certified radius in the ``norm``: the prediction is provably
        constant on the ball of this radius (intersected with the input
        bounds); 0 where nothing is certified.
    abstain : Tensor
        bool (N,): randomized smoothing abstained (always False for bound methods).
    certified : Tensor
        bool (N,): bound methods, every margin ``z_y - z_j`` is provably > 0 on
        the ball (so ``label == y``); smoothing, a radius was certified.
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

    def certified_accuracy(self, eps: float | None = None) -> float:
        """Fraction of samples predicted correctly with a certified radius >= ``eps``.

        ``eps`` defaults to the certified eps (fixed-eps results) or 0; at 0 it
        is the accuracy of the (smoothed) classifier on non-abstained samples.
        """
        if self.y is None:
            raise InputError("certified_accuracy needs the labels: pass y to certify")
        r = (self.eps or 0.0) if eps is None else float(eps)
        if self.eps is not None and r > self.eps * (1 + 1e-9):
            raise InputError(f"eps={r} is above the certified eps={self.eps}")
        ok = (self.label == self.y) & ~self.abstain & (self.radius >= r)
        if r > 0:
            ok &= self.certified
        return float(ok.float().mean()) if len(self.y) else float("nan")

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
    """Base of certifiers (kind ``"certifier"``)."""

    kind = "certifier"
    tags = Tags()


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

    A subclass writes ``_lower(net, spec, box, norm, x0, eps)``: lower bounds
    of ``spec @ logits`` over the threat set, ``(N, S)``. This class reads the
    network, chunks the samples by ``batch_size`` and offers
    :meth:`bounds`, :meth:`certify`, :meth:`certified_radius` and
    :meth:`certified_accuracy`.
    """

    tags = Tags(norms=("linf", "l2"))
    batch_size: int
    radius_steps: int
    progress: bool

    def _check_common(self) -> None:
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("radius_steps", self.radius_steps, integer=True)
        if not isinstance(self.progress, bool):
            raise InputError(f"progress must be True or False, got {self.progress!r}")

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ plumbing
    def _setup(self, model, x, norm: str, bounds: tuple[float, float] | None
               ) -> tuple[TorchModel, tuple[float, float]]:
        model = as_model(model, bounds)
        if norm not in self.tags.norms:
            raise InputError(f"{type(self).__name__} supports norms "
                             f"{', '.join(self.tags.norms)}; got {norm!r}")
        lo, hi = model.bounds
        if bounds is not None:  # the threat's box intersected with the model's
            lo, hi = max(lo, float(bounds[0])), min(hi, float(bounds[1]))
        check_x(x, (lo, hi))
        return model, (lo, hi)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor | None, eps: torch.Tensor,
             norm: str, box_bounds: tuple[float, float]) -> Bounds:
        dev = model.device
        dtype = next(iter(model.parameters()), torch.empty(0)).dtype
        x0 = x.detach().to(dev, dtype)
        eps = eps.to(dev, dtype)
        with model.evaluating(), torch.no_grad(), _full_precision():
            k = model(x0[:1]).shape[1]  # one forward tells K (an empty batch's too)
            y = model.predict(x0) if y is None else check_labels(y, len(x0), k).to(dev)
            net = Network(model, x0[:64]) if len(x0) else None
            outs = []
            bs = self.batch_size
            with progress_bar(math.ceil(len(x0) / bs), type(self).__name__,
                              enabled=self.progress) as bar:
                for i in range(0, len(x0), bs):
                    xc, yc, ec = x0[i:i + bs], y[i:i + bs], eps[i:i + bs]
                    spec = margin_spec(yc, k, dtype)
                    box = Network.input_box(xc, ec, box_bounds)
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
            Input box (intersected with the model's bounds).

        Returns
        -------
        Bounds
            On ``x``'s device.
        """
        model, box_bounds = self._setup(model, x, norm, bounds)
        b = self._run(model, x, y, _eps_tensor(eps, len(x), x), norm, box_bounds)
        return Bounds(*(t.to(x.device) for t in (b.logits_lower, b.logits_upper, b.margin_lower,
                                                  b.margin_upper, b.y)))

    def certify(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> CertResult:
        """Whether each prediction is provably ``y`` everywhere in ``threat``.

        Returns a :class:`CertResult` with ``certified`` (every margin lower
        bound > 0), ``margin_lower`` and ``radius = threat.eps`` where certified.
        """
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if threat.mask is not None:
            raise InputError("masked threat models are not supported by certifiers")
        model, box_bounds = self._setup(model, x, threat.norm, threat.bounds)
        y = check_labels(y, len(x), model.num_classes or 10**9)
        b = self._run(model, x, y, _eps_tensor(threat.eps, len(x), x), threat.norm, box_bounds)
        with model.evaluating():
            label = model.predict(x.to(model.device)).cpu() if len(x) else y.cpu()
        cert = b.certified().cpu()
        radius = torch.where(cert, torch.full_like(cert, threat.eps, dtype=torch.float32),
                             torch.zeros(len(cert)))
        return CertResult(label=label, radius=radius, abstain=torch.zeros_like(cert),
                          certified=cert, y=b.y.cpu(), norm=threat.norm, eps=threat.eps,
                          margin_lower=b.margin_lower.cpu(), meta={"certifier": self.name})

    def certified_radius(self, model, x: torch.Tensor, y: torch.Tensor, *, norm: str = "linf",
                         bounds: tuple[float, float] | None = None,
                         max_eps: float | None = None) -> CertResult:
        """Largest certified eps per sample by bisection (batched over samples).

        Every sample keeps an interval ``[lo, hi]`` with ``lo`` certified and
        ``hi`` not; each of ``radius_steps`` rounds certifies all the unsettled
        samples at their midpoints at once. ``radius`` is ``lo``: an eps
        actually certified (0 for a misclassified sample). The search starts at
        ``max_eps`` (default: the whole input box, e.g. 1 for linf on [0, 1]).
        """
        model, box_bounds = self._setup(model, x, norm, bounds)
        n = len(x)
        y = check_labels(y, n, model.num_classes or 10**9)
        width = box_bounds[1] - box_bounds[0]
        d = math.prod(x.shape[1:])
        cap = float(max_eps) if max_eps is not None else width * (1 if norm == "linf" else d ** 0.5)
        if not (math.isfinite(cap) and cap > 0):
            raise InputError(f"max_eps must be a finite number > 0, got {max_eps!r}")

        def cert(idx: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            if not len(idx):
                return torch.zeros(0, dtype=torch.bool)
            return self._run(model, x[idx], y[idx], e, norm, box_bounds).certified().cpu()

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
        with model.evaluating():
            label = model.predict(x.to(model.device)).cpu() if n else y.cpu()
        return CertResult(label=label, radius=lo, abstain=torch.zeros(n, dtype=torch.bool),
                          certified=correct, y=y.cpu(), norm=norm, eps=None,
                          meta={"certifier": self.name, "max_eps": cap,
                                "resolution": cap / 2 ** self.radius_steps})

    def certified_accuracy(self, model, x: torch.Tensor, y: torch.Tensor, eps: list[float], *,
                           norm: str = "linf", bounds: tuple[float, float] | None = None
                           ) -> dict[float, float]:
        """Certified accuracy at each radius of ``eps``: ``{eps: fraction}``."""
        if isinstance(eps, int | float):
            eps = [eps]
        out = {}
        for e in eps:
            threat = ThreatModel(norm, e, bounds if bounds is not None else as_model(model).bounds)
            out[float(e)] = self.certify(model, x, y, threat).certified_accuracy()
        return out
