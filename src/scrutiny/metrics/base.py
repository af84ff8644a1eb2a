"""The Metric base class: owns the invariants, a subclass writes ``_evaluate``.

A metric measures how far an explanation can be trusted. It takes the model,
the inputs and the explanation to judge at call time: either an explainer
(an :class:`~scrutiny.explain.base.Explainer` instance or a registered name
such as ``"saliency"``) or, where the metric allows it, precomputed
attributions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from scrutiny import registry
from scrutiny.base import Method, seeded
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import Explanation, Tags
from scrutiny.validation import check_labels, check_outputs, check_positive, check_x


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
    """

    scores: torch.Tensor
    aggregate: float
    target: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers (JSON-ready)."""
        out: dict[str, Any] = {"n": len(self.scores), "aggregate": self.aggregate}
        out.update({k: v for k, v in self.meta.items() if isinstance(v, int | float | str | bool)})
        return out


def nanmean(t: torch.Tensor) -> float:
    """Mean over the finite entries (NaN when there are none)."""
    ok = torch.isfinite(t)
    return float(t[ok].double().mean()) if bool(ok.any()) else float("nan")


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
        x : Tensor
            Inputs ``(N, ...)`` within the model's bounds; not modified.
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
            Call-time data the metric declares in ``call_data``.
        """
        unknown = [k for k in data if k not in self.call_data]
        if unknown:
            raise InputError(f"{type(self).__name__} does not accept "
                             f"{', '.join(map(repr, unknown))}; accepted data keywords: "
                             f"{', '.join(self.call_data) or 'none'}")
        model = as_model(model)
        check_x(x, model.bounds, image=self.tags.image_only)
        if explainer is None and attributions is None:
            raise InputError(f"{type(self).__name__} needs explainer= (an Explainer or a "
                             "registered name such as 'saliency')"
                             + ("" if self.needs_explainer else " or attributions="))
        if explainer is not None and attributions is not None:
            raise InputError("give explainer= or attributions=, not both")
        if attributions is not None and self.needs_explainer:
            raise InputError(f"{type(self).__name__} recomputes explanations, so it needs "
                             "explainer=, not precomputed attributions")
        exp = resolve_explainer(explainer) if explainer is not None else None
        dev = model.device
        x0 = x.detach().to(dev).clone()
        attr = None if attributions is None else check_attributions(attributions, x0).detach().to(dev)
        with model.evaluating(), seeded(seed, dev):
            with torch.no_grad():
                logits = check_outputs(model(x0), len(x0))
            if target is None:
                target = logits.argmax(dim=1)
            target = check_labels(target, len(x0), logits.shape[1], "target").to(dev)
            res = self._evaluate(model, x0, target, exp, attr, seed, **data)
        res.meta = {"metric": self.name, **({"explainer": exp.name} if exp else {}), **res.meta}
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


def check_batch_size(batch_size: int) -> None:
    check_positive("batch_size", batch_size, integer=True)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"unknown {name} {value!r}; accepted: {', '.join(choices)}")


def metric_twin(cls: type[Metric], name: str):
    """The quick-use function of a metric class.

    ``twin(model, x, target=None, *, explainer=None, attributions=None, seed=0, **kw)``
    builds ``cls`` from the hyperparameters in ``kw`` and passes its declared
    call-time data (``cls.call_data``) to ``evaluate``.
    """

    def twin(model, x, target=None, *, explainer=None, attributions=None,
             seed: int | None = 0, **kw: Any):
        data = {k: kw.pop(k) for k in cls.call_data if k in kw}
        return cls(**kw).evaluate(model, x, target, explainer=explainer,
                                  attributions=attributions, seed=seed, **data)

    twin.__name__ = twin.__qualname__ = name
    twin.__doc__ = (f"Function twin of :class:`{cls.__name__}`: ``{name}(model, x, target, "
                    "explainer=... or attributions=..., seed=0, **hyperparameters_and_data)``.")
    return twin
