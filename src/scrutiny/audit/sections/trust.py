"""Can the explanations be trusted? Trust measures of every explainer, and the gallery."""

from __future__ import annotations

import math
import time
from typing import Any

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.errors import InputError
from scrutiny.metrics.base import DEGENERATE

_SHORT = {"model_randomization": "rand. corr", "data_randomization": "data-rand. corr",
          "pointing_game": "pointing", "max_sensitivity": "max-sens."}
_METRIC_NOTES = {
    "deletion": "deletion AUC (lower is better)",
    "insertion": "insertion AUC (higher is better)",
    "model_randomization": "rand. corr: rank correlation with the map of the randomized model "
                           "(low is good; FLAG: the map does not depend on the weights)",
    "data_randomization": "rank correlation with the map of a model trained on permuted labels",
    "pointing_game": "pointing-game hit rate",
    "infidelity": "infidelity (lower is better)",
    "max_sensitivity": "max-sensitivity (lower is better)",
}


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
    raises one (None when it could not be decided).
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
        for name, explainer in ctx.explainers().items():
            if name not in ran:
                continue
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
            seconds[name] = time.perf_counter() - ts
            out.data[name] = scores
            bar.advance(f"trust {name}")
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
