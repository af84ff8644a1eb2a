"""Can the explanations be trusted? Trust measures of every explainer, and the gallery."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.errors import InputError
from scrutiny.metrics.base import DEGENERATE

_SHORT = {"model_randomization": "rand. corr", "data_randomization": "data-rand. corr",
          "pointing_game": "pointing", "max_sensitivity": "max-sens."}
#: The row of the trust table (and key of ``scores``) holding the random pixel order.
RANDOM_ORDER = "random order"
#: Metrics measured with a random order too, and whether lower is better: an explainer
#: that does not beat the random order is flagged.
BEAT_RANDOM = {"deletion": True, "insertion": False}
_METRIC_NOTES = {
    "deletion": "deletion AUC (lower is better; FLAG: not below the random pixel order's)",
    "insertion": "insertion AUC (higher is better; FLAG: not above the random pixel order's)",
    "model_randomization": "rand. corr: rank correlation with the map of the randomized model "
                           "(low is good; FLAG: the map does not depend on the weights)",
    "data_randomization": "rank correlation with the map of a model trained on permuted labels",
    "pointing_game": "pointing-game hit rate",
    "infidelity": "infidelity (lower is better)",
    "max_sensitivity": "max-sensitivity (lower is better)",
}


def random_order(metric: Any, model: Any, x: torch.Tensor, y: torch.Tensor, *,
                 seed: int | None) -> float:
    """The aggregate of a deletion or insertion ``metric`` with the units in a random order.

    The metric ranks units by attribution and breaks ties in a seeded random order, so
    constant (all-zero) attributions give a uniformly random order: the chance level an
    explainer's order must beat (lower deletion, higher insertion) to say anything.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.metrics import Deletion
    >>> data, model = load_digits(split="test"), pretrained("digits-cnn", progress=False)
    >>> x, y = data.x[:16], data.y[:16]
    >>> ig = Deletion()(model, x, y, explainer="integrated_gradients").aggregate
    >>> ig < random_order(Deletion(), model, x, y, seed=0)
    True
    """
    return float(metric(model, x, y, attributions=torch.zeros_like(x), seed=seed).aggregate)


def _no_better(value: float, chance: float, lower_is_better: bool) -> bool | None:
    """Whether ``value`` fails to beat the random order's ``chance`` (None: undecided)."""
    if math.isnan(value) or math.isnan(chance):
        return None
    return value >= chance if lower_is_better else value <= chance


def _degenerate_note(row: dict[str, Any]) -> list[str]:
    """The gallery's line for an explainer whose maps say nothing (see the explanations section)."""
    deg = row.get("degenerate") or {}
    bad = sum(int(deg.get(k, 0)) for k in DEGENERATE)
    what = "all zero" if int(deg.get("zero", 0)) == bad else "constant or non-finite"
    return [f"FLAG: {bad}/{deg['maps']} maps {what}"] if bad else []


@register
class Trust(Section):
    """Each metric's aggregate for each explainer that ran, on the first ``trust_samples``.

    ``data["scores"][explainer][metric]``: ``value`` (None where the metric is undefined,
    never NaN), ``undefined`` (the metric's reason, or None) and ``flag`` where the metric
    raises one (None when it could not be decided). Deletion and insertion are also
    measured once with the pixels in a random order (:func:`random_order`), under
    ``data["scores"]["random order"]``; an explainer whose deletion AUC is not below it
    (insertion: not above it) is flagged: its order is no better than chance.
    """

    name = "trust"
    title = "Can the explanations be trusted?"
    group = "why"
    needs = ("explanations",)
    display = 80

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.explainers()) if ctx.config.metrics else 0

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.metrics and ctx.config.explainers else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        out = SectionResult(self.name)
        ran = done["explanations"].data
        n = min(cfg.trust_samples, len(ctx.x))
        xt, yt = ctx.x[:n], ctx.y[:n]
        metrics = {m: ctx.create("metric", m) for m in cfg.metrics}
        seconds: dict[str, float] = {}
        chance: dict[str, float] = {}  # once per audit: the order every explainer must beat
        for mname in [m for m in metrics if m in BEAT_RANDOM]:
            try:
                chance[mname] = random_order(metrics[mname], ctx.model, xt, yt, seed=ctx.seed)
            except InputError as e:
                out.notes.append(f"{mname} with a random order was skipped: {e}")
        for name, explainer in ctx.explainers().items():
            if name not in ran:
                continue
            bar.step(f"trust {name}")
            ts = time.perf_counter()
            data_kw = {"background": ctx.background} if "background" in explainer.call_data else {}
            attr = explainer(ctx.model, xt, yt, seed=ctx.seed, **data_kw).attributions
            scores: dict[str, Any] = {}
            for mname, metric in metrics.items():
                kw: dict[str, Any] = {}
                if "masks" in metric.call_data:
                    if ctx.data.masks is None:
                        continue
                    kw["masks"] = ctx.data.masks[ctx.idx[:n]]
                judged = ({"explainer": explainer} if metric.needs_explainer
                          else {"attributions": attr})
                if metric.needs_explainer:  # the explainer's call-time data (LIME's background)
                    kw.update(data_kw)
                try:
                    res = metric(ctx.model, xt, yt, seed=ctx.seed, **judged, **kw)
                except InputError as e:  # a metric the explainer or the data cannot serve
                    out.notes.append(f"{mname} of {name} was skipped: {e}")
                    continue
                agg = res.aggregate
                scores[mname] = {"value": None if math.isnan(agg) else agg,
                                 "undefined": res.undefined}
                if hasattr(res, "flag"):
                    scores[mname]["flag"] = None if res.flag is None else bool(res.flag)
                if mname in chance:
                    scores[mname]["flag"] = _no_better(agg, chance[mname], BEAT_RANDOM[mname])
            seconds[name] = time.perf_counter() - ts
            out.data[name] = scores
            bar.advance()
        if chance and out.data:
            out.data[RANDOM_ORDER] = {m: {"value": None if math.isnan(v) else v,
                                          "undefined": None if not math.isnan(v) else
                                          "no sample has a defined score"}
                                      for m, v in chance.items()}
        out.tensors = {}
        ex_res = done["examples"] if "examples" in done else None
        maps = {k: done["explanations"].tensors[f"clean/{k}"] for k in ran}
        if maps and ctx.data.is_image and ex_res is not None and len(ex_res.tensors["ex"]):
            ex = ex_res.tensors["ex"]
            notes_by = {k: "\n".join([f"{_SHORT.get(m, m)} " + (
                                          "n/a" if v["value"] is None else f"{v['value']:.2f}")
                                      + (" FLAG" if v.get("flag") else "")
                                      for m, v in out.data.get(k, {}).items()]
                                     + _degenerate_note(ran[k])) for k in maps}
            out.figures.append(Figure(
                "gallery", "Gallery: explanations and whether to trust them",
                "Each column: one explainer's map of the true class over the input (red: evidence "
                "for, blue: against), titled with its trust scores on "
                f"{n} samples: " + "; ".join(_METRIC_NOTES.get(m, m) for m in metrics) + ".",
                *figures.explanation_grid(ctx.x[ex], maps, "explanations of the true class",
                                          [ctx.class_names()[int(ctx.y[i])] for i in ex.tolist()],
                                          column_notes=notes_by, overlay=True)))
        out.data = {"scores": out.data, "seconds": seconds}
        return out
