"""Explanations of the example samples, clean and adversarial."""

from __future__ import annotations

import time
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.errors import InputError


@register
class Explanations(Section):
    """Each explainer's map of the true class on the examples and their adversarial versions.

    Tensors: ``clean/<explainer>`` and ``adv/<explainer>`` (pixel maps).
    """

    name = "explanations"
    title = "Why this prediction?"
    group = "why"
    needs = ("examples",)
    display = 70

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.explainers())

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.explainers else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        ex_res = done["examples"]
        ex, x_adv = ex_res.tensors["ex"], ex_res.tensors["x_adv"]
        x, y = ctx.x, ctx.y
        info: dict[str, dict[str, Any]] = {}
        for name, explainer in ctx.explainers().items():
            ts = time.perf_counter()
            data_kw = {"background": ctx.background} if "background" in explainer.call_data else {}
            try:
                e_clean = explainer(ctx.model, x[ex], y[ex], seed=ctx.seed, **data_kw)
            except InputError as e:  # e.g. Grad-CAM on a model without convolutions
                out.notes.append(f"{name} was skipped: {e}")
                bar.advance(name)
                continue
            e_adv = explainer(ctx.model, x_adv[ex], y[ex], seed=ctx.seed, **data_kw)
            row: dict[str, Any] = {"seconds": time.perf_counter() - ts,
                                   "paper": registry.get(name, "explainer").paper}
            if e_clean.delta is not None and len(ex):
                base = e_clean.meta.get("baseline_output")
                span = (e_clean.outputs - base).abs() if base is not None else e_clean.outputs.abs()
                row["completeness_error"] = float((e_clean.delta.abs() / span.clamp_min(1e-12))
                                                  .mean())
            info[name] = row
            out.tensors[f"clean/{name}"] = e_clean.pixel_map().cpu()
            out.tensors[f"adv/{name}"] = e_adv.pixel_map().cpu()
            bar.advance(name)
        out.data = info
        maps = {k: out.tensors[f"clean/{k}"] for k in info}
        if maps and ctx.data.is_image and len(ex):
            pred, pred_adv = ctx.pred.cpu(), ex_res.tensors["pred_adv"]
            both_x = torch.stack([x[ex], x_adv[ex]], 1).flatten(0, 1)
            both = {k: torch.stack([maps[k], out.tensors[f"adv/{k}"]], 1).flatten(0, 1)
                    for k in maps}
            labels = []
            for i in ex.tolist():
                names = ctx.class_names()
                labels += [f"clean: {names[int(pred[i])]}", f"adv: {names[int(pred_adv[i])]}"]
            out.figures.append(Figure(
                "explanations", "Explanations of clean and adversarial inputs",
                "Each pair of rows: a clean input and its adversarial version, with the "
                "attribution maps of the true class (red: evidence for, blue: against).",
                *figures.explanation_grid(both_x, both, "attributions for the true class", labels)))
        elif maps and len(ex):
            out.figures.append(Figure(
                "feature_attributions", "Feature attributions",
                "Mean absolute attribution per feature on the example samples (clean).",
                *figures.feature_bars(maps, ctx.data.feature_names or tuple(
                    f"x{i}" for i in range(x.shape[1])), "top features")))
        return out
