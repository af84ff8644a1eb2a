"""The Metric base class: owns the invariants, a subclass writes ``_evaluate``.

A metric measures how far an explanation can be trusted. It takes the model,
the inputs and the explanation to judge at call time: either an explainer
(an :class:`~scrutiny.explain.base.Explainer` instance or a registered name
such as ``"saliency"``) or, where the metric allows it, precomputed
attributions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from scrutiny import registry
from scrutiny.base import Method
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer
from scrutiny.models.calls import as_batch, prepare
from scrutiny.models.memory import retry_smaller
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import Explanation, Tags, summary_repr


@dataclass(kw_only=True)
class MetricResult:
    """What every metric returns.

    Attributes
    ----------
    scores : Tensor
        (N,) the metric per sample (NaN where it is undefined for a sample).
    aggregate : float
        The dataset-level number (the mean of ``scores`` over the defined
        samples unless a subclass says otherwise).
    target : Tensor
        (N,) the class whose explanation was judged.
    meta : dict
        Method name, hyperparameters worth reporting, timings.
    undefined : str or None
        Why some ``scores`` are NaN (the metric is undefined for those
        samples, e.g. the rank correlation of a constant map) and, when all
        are, why ``aggregate`` is NaN; None when every score is defined. A
        metric states its own reason; :meth:`Metric.evaluate` writes a generic
        one ("k of n samples ...") where a metric left NaN scores unexplained,
        so a NaN never comes without a reason.
    """

    scores: torch.Tensor
    aggregate: float
    target: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    undefined: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a subclass's @dataclass would write a field-dumping __repr__; one set here, before
        # the decorator runs, is kept (dataclasses never overwrite a class's own __repr__)
        super().__init_subclass__(**kwargs)
        cls.__repr__ = MetricResult.__repr__  # type: ignore[method-assign]

    def __repr__(self) -> str:
        """One line: the metric, the judged explainer, n, the aggregate (no tensors)."""
        nan = int(torch.isnan(self.scores).sum()) if self.scores.is_floating_point() else 0
        return summary_repr(type(self).__name__, {
            "metric": self.meta.get("metric"), "explainer": self.meta.get("explainer"),
            "n": len(self.scores), "aggregate": float(self.aggregate),
            "undefined_scores": nan or None})

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers (JSON-ready: an undefined or infinite aggregate is None, with
        the reason under ``"undefined"``)."""
        agg = self.aggregate
        out: dict[str, Any] = {"n": len(self.scores),
                               "aggregate": agg if math.isfinite(agg) else None}
        why = self.undefined or ("infinite" if math.isinf(agg) else None)
        if why is not None:
            out["undefined"] = why
        out.update({k: v for k, v in self.meta.items() if isinstance(v, int | float | str | bool)})
        return out


def nanmean(t: torch.Tensor) -> float:
    """Mean over the finite entries (NaN when there are none)."""
    ok = torch.isfinite(t)
    return float(t[ok].double().mean()) if bool(ok.any()) else float("nan")


#: What :func:`degenerate` tells apart, as read in a sentence ("3 of 16 maps are all zero").
DEGENERATE: dict[str, str] = {"zero": "all zero", "constant": "constant",
                              "non_finite": "non-finite (NaN or infinite values)"}


def degenerate(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample masks ``(N,)`` of the maps ``(N, ...)`` that rank nothing.

    Keys as in :data:`DEGENERATE`, mutually exclusive: ``"non_finite"`` (a NaN
    or infinite value), ``"zero"`` (all zero), ``"constant"`` (one nonzero
    value everywhere). Such a map says nothing about the prediction, and
    similarities built on rankings (Spearman correlation) are undefined for it.
    """
    f = maps.detach().flatten(1)
    finite = torch.isfinite(f)
    bad = ~finite.all(dim=1)
    safe = torch.where(finite, f, torch.zeros_like(f))
    zero = ~bad & (safe == 0).all(dim=1)
    flat = (safe.amax(dim=1) == safe.amin(dim=1)) if f.shape[1] else torch.ones_like(zero)
    return {"zero": zero, "constant": ~bad & ~zero & flat, "non_finite": bad}


def describe_degenerate(masks: dict[str, torch.Tensor], noun: str = "maps") -> str | None:
    """``"16 of 16 maps are all zero"`` for the masks of :func:`degenerate` ("; "-joined);
    None when no map is degenerate."""
    parts = [f"{int(m.sum())} of {len(m)} {noun} are {DEGENERATE[k]}"
             for k, m in masks.items() if bool(m.any())]
    return "; ".join(parts) or None


def unexplained_nan(scores: torch.Tensor) -> str | None:
    """The generic reason for NaN ``scores`` that a metric did not explain (None if none)."""
    if not len(scores):
        return "no samples"
    k = int(torch.isnan(scores).sum())
    return f"{k} of {len(scores)} samples have no defined score" if k else None


def resolve_explainer(explainer: object) -> Explainer:
    """An :class:`Explainer` from an instance or a registered name (``"saliency"``)."""
    if isinstance(explainer, Explainer):
        return explainer
    if isinstance(explainer, str):
        return registry.create(explainer, kind="explainer")
    raise InputError("explainer must be an Explainer instance or a registered explainer name "
                     f"such as 'saliency', got {type(explainer).__name__}")


def check_attributions(attr: object, x: torch.Tensor) -> torch.Tensor:
    """Attributions of the input's shape, or ``(N, H, W)`` per-pixel maps for images."""
    if isinstance(attr, Explanation):
        attr = attr.attributions
    if not isinstance(attr, torch.Tensor) or not attr.is_floating_point():
        raise InputError("attributions must be a floating-point torch.Tensor (or an Explanation), "
                         f"got {type(attr).__name__}")
    shapes = [tuple(x.shape)] + ([(x.shape[0], *x.shape[2:])] if x.dim() == 4 else [])
    if tuple(attr.shape) not in shapes:
        raise InputError(f"attributions of shape {tuple(attr.shape)} do not fit x of shape "
                         f"{tuple(x.shape)}; expected " + " or ".join(map(str, shapes)))
    if not torch.isfinite(attr).all():
        raise InputError("attributions contain NaN or infinite values")
    return attr


def unit_map(attr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Relevance per *unit*: per pixel ``(N, H, W)`` for images (channels summed, as
    :meth:`Explanation.pixel_map`), per element ``(N, ...)`` otherwise."""
    if x.dim() == 4 and attr.dim() == 4:
        return attr.sum(dim=1)
    return attr


def to_units(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-unit tensor (see :func:`unit_map`) back to the shape of ``x``."""
    if x.dim() == 4 and mask.dim() == 3:
        return mask[:, None].expand_as(x)
    return mask.reshape(x.shape)


def reinitialize(module: nn.Module) -> None:
    """Draw the parameters of ``module`` (not of its children) afresh, with torch's RNG.

    Uses the layer's own ``reset_parameters`` (PyTorch's default initialisation
    of that layer type); a layer without one gets each of its parameters drawn
    from ``N(0, s^2)`` with ``s`` the trained parameter's standard deviation.
    """
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            s = float(p.std()) if p.numel() > 1 else 1.0
            p.copy_(torch.randn_like(p) * s)


def parametrized_layers(model: TorchModel) -> list[str]:
    """Names of the layers that own parameters directly, in registration order."""
    return [n for n, m in model.module.named_modules()
            if n and any(True for _ in m.parameters(recurse=False))]


class Metric(Method):
    """Base class of explanation-trust metrics.

    ``evaluate`` (also ``__call__``) wraps the model, validates ``x`` and the
    target (default: the predicted class), resolves what is judged (an
    explainer or precomputed attributions, as the metric allows), runs
    ``_evaluate`` with the model in eval mode with frozen parameters (restored
    afterwards, even on error) and torch's RNG seeded (the caller's RNG is
    left untouched). Inputs and the user's model are never modified.

    Class attributes a subclass sets:

    ``needs_explainer``
        The metric recomputes explanations (at perturbed inputs or for other
        models), so precomputed attributions are not enough.
    ``call_data``
        Names of further call-time data keywords (e.g. ``("masks",)``).

    The judged explainer's own call-time data (its ``call_data``, e.g. LIME's
    and KernelSHAP's ``background``) is accepted too and bound to it
    (:meth:`Explainer.with_data`), so every explanation the metric computes
    gets it.
    """

    kind = "metric"
    tags = Tags()
    needs_explainer: ClassVar[bool] = False
    call_data: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, model, x: torch.Tensor, target: torch.Tensor | int | None = None, *,
                 explainer: Explainer | str | None = None,
                 attributions: torch.Tensor | Explanation | None = None,
                 seed: int | None = 0, **data: Any) -> MetricResult:
        """Measure the explanation of ``target`` at each input of ``x``.

        Parameters
        ----------
        model : nn.Module or TorchModel
        x : Tensor or DataLoader
            Inputs ``(N, ...)`` within the model's bounds; not modified. A
            DataLoader (any iterable of ``(x, y)`` batches or of input
            tensors) is gathered into one batch
            (:func:`scrutiny.models.calls.as_batch`); its labels are not the
            target.
        target : Tensor or int, optional
            Class explained per sample; default the predicted class.
        explainer : Explainer or str, optional
            The explanation method judged (instance or registered name).
        attributions : Tensor or Explanation, optional
            Precomputed attributions for ``x`` and ``target`` (metrics that do
            not recompute explanations); shape of ``x`` or ``(N, H, W)``.
        seed : int, optional
            Seeds every random choice of the metric (and the explainer's).
        **data
            Call-time data the metric declares in ``call_data``, and the
            explainer's (its ``call_data``, e.g. ``background=``), passed to
            every ``explain`` call the metric makes.
        """
        if explainer is None and attributions is None:
            raise InputError(f"{type(self).__name__} needs explainer= (an Explainer or a "
                             "registered name such as 'saliency')"
                             + ("" if self.needs_explainer else " or attributions="))
        if explainer is not None and attributions is not None:
            raise InputError("give explainer= or attributions=, not both")
        if attributions is not None and self.needs_explainer:
            raise InputError(f"{type(self).__name__} recomputes explanations, so it needs "
                             "explainer=, not precomputed attributions")
        x, _ = as_batch(x)
        exp = resolve_explainer(explainer) if explainer is not None else None
        exp_data = tuple(exp.call_data) if exp is not None else ()
        accepted = (*self.call_data, *(k for k in exp_data if k not in self.call_data))
        with prepare(self, model, x, seed=seed, data=data, accepted=accepted,
                     image=self.tags.image_only) as call:
            if exp is not None and any(k in exp_data for k in data):
                exp = exp.with_data(**{k: v for k, v in data.items() if k in exp_data})
            x0, target = call.x0, call.target(target)
            attr = (None if attributions is None
                    else check_attributions(attributions, x0).detach().to(call.device))
            own = {k: v for k, v in data.items() if k in self.call_data}
            res = retry_smaller(self, lambda m: m._evaluate(call.model, x0, target, exp, attr,
                                                            seed, **own), seed=seed)
        res.meta = {"metric": self.name, **({"explainer": exp.name} if exp else {}), **res.meta}
        if res.undefined is None:
            res.undefined = unexplained_nan(res.scores)
        return res

    __call__ = evaluate

    def _explain(self, exp: Explainer | None, attr: torch.Tensor | None, model: TorchModel,
                 x: torch.Tensor, target: torch.Tensor, seed: int | None) -> torch.Tensor:
        """The attributions to judge: given ones, or the explainer's (shape checked)."""
        if attr is not None:
            return attr
        assert exp is not None
        out = exp.explain(model, x, target, seed=seed).attributions.to(x.device)
        return check_attributions(out, x)

    def _evaluate(self, model: TorchModel, x: torch.Tensor, target: torch.Tensor,
                  explainer: Explainer | None, attributions: torch.Tensor | None,
                  seed: int | None, **data: Any) -> MetricResult:  # pragma: no cover
        raise NotImplementedError


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; accepted: {', '.join(choices)}")


def metric_twin(cls: type[Metric], name: str):
    """The quick-use function of a metric class.

    ``twin(model, x, target=None, *, explainer=None, attributions=None, seed=0, **kw)``
    builds ``cls`` from the hyperparameters in ``kw`` and passes its declared
    call-time data (``cls.call_data``) and the explainer's (its ``call_data``) to
    ``evaluate``.
    """

    def twin(model, x, target=None, *, explainer=None, attributions=None,
             seed: int | None = 0, **kw: Any):
        if explainer is not None:
            explainer = resolve_explainer(explainer)
        keys = (*cls.call_data, *(explainer.call_data if explainer is not None else ()))
        data = {k: kw.pop(k) for k in keys if k in kw}
        return cls(**kw).evaluate(model, x, target, explainer=explainer,
                                  attributions=attributions, seed=seed, **data)

    twin.__name__ = twin.__qualname__ = name
    twin.__doc__ = (f"Function twin of :class:`{cls.__name__}`: ``{name}(model, x, target, "
                    "explainer=... or attributions=..., seed=0, **hyperparameters_and_data)``.")
    return twin
