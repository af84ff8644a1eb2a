"""Explanations of the example samples, clean and adversarial."""

from __future__ import annotations

import time
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.checks import Flag
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.base import grad_wrt
from scrutiny.errors import InputError, NotDifferentiableError, QueryBudgetExceeded
from scrutiny.metrics.base import degenerate, describe_degenerate
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel


def zero_input_gradient(model: TorchModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) whether the gradient of the ``target`` logit w.r.t. the input is exactly zero."""
    if not len(x):
        return torch.zeros(0, dtype=torch.bool)
    with model.evaluating(), torch.enable_grad():
        xg = x.detach().to(model.device).clone().requires_grad_(True)
        out = model(xg).gather(1, target.to(model.device)[:, None])
        try:
            g = grad_wrt(out, xg).flatten(1)
        except NotDifferentiableError:  # no gradient at all (a detach inside)
            return torch.ones(len(x), dtype=torch.bool)
    return (g == 0).all(dim=1).cpu()


def degenerate_flag(name: str, model: TorchModel, x: torch.Tensor, target: torch.Tensor,
                    attributions: torch.Tensor) -> tuple[dict[str, int], Flag | None]:
    """Count the maps of ``attributions`` that say nothing (all zero, constant, non-finite).

    Returns the counts (with ``"maps"``, the number checked) and, when some map is
    degenerate, a raised :class:`Flag` whose message names the explainer, the counts and,
    measured on those inputs, whether the model's input gradient is exactly zero there.
    """
    masks = degenerate(attributions)
    counts = {"maps": len(attributions), **{k: int(m.sum()) for k, m in masks.items()}}
    what = describe_degenerate(masks)
    if what is None:
        return counts, None
    bad = torch.stack(list(masks.values())).any(dim=0).cpu()
    if isinstance(model, QueryModel):  # an endpoint: no gradient to look at
        return counts, Flag(f"degenerate explanations: {name}", True,
                            f"{what}: the model's output does not change under the "
                            "explainer's perturbations there; this explanation says nothing "
                            "about the prediction", dict(counts))
    k, nb = int(zero_input_gradient(model, x[bad], target[bad]).sum()), int(bad.sum())
    counts["zero_input_gradient"] = k
    cause = (f"the model's input gradient of the explained class is exactly zero at {k} of "
             f"these {nb} inputs (masked gradients? see the gradient-masking checks)" if k else
             "the model's input gradient is not zero there, so the explainer itself found "
             "nothing")
    return counts, Flag(f"degenerate explanations: {name}", True,
                        f"{what}: {cause}; this explanation says nothing about the "
                        "prediction", dict(counts))


@register
class Explanations(Section):
    """Each explainer's map of the true class on the examples and their adversarial versions.

    Maps that say nothing (all zero, constant or non-finite: e.g. every gradient map of a
    model whose input gradient vanishes) are counted per explainer in its ``degenerate``
    entry and raise a :class:`~scrutiny.audit.checks.Flag`, shown beside the gallery.

    Tensors: ``clean/<explainer>`` and ``adv/<explainer>`` (pixel maps).

    On an endpoint (a model only queried) the black-box explainers explain the first
    ``n_examples`` samples, clean only (no adversarial examples without gradients); each
    row records the explainer's ``queries``. Background rows go to the explainers that
    take them on tabular data only (an image explainer uses its fill).
    """

    name = "explanations"
    title = "Why this prediction?"
    nav = "Explanations"
    group = "why"
    needs = ("examples",)
    display = 70
    black_box = True  # the black-box explainers run on an endpoint (ctx.explainers)

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.explainers())

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.explainers else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        x, y = ctx.x, ctx.y
        ex_res = done.get("examples")  # absent on an endpoint: clean samples only
        ex = ex_res.tensors["ex"] if ex_res is not None else torch.arange(
            min(ctx.config.n_examples, len(x)))
        x_adv = ex_res.tensors["x_adv"] if ex_res is not None else None
        info: dict[str, dict[str, Any]] = {}
        for name, explainer in ctx.explainers().items():
            bar.step(name)
            ts = time.perf_counter()
            data_kw = ({"background": ctx.background} if "background" in explainer.call_data
                       and not ctx.data.is_image else {})
            try:
                e_clean = explainer(ctx.model, x[ex], y[ex], seed=ctx.seed, **data_kw)
                e_adv = (explainer(ctx.model, x_adv[ex], y[ex], seed=ctx.seed, **data_kw)
                         if x_adv is not None else None)
            except InputError as e:  # e.g. Grad-CAM on a model without convolutions
                out.notes.append(f"{name} was skipped: {e}")
                bar.advance()
                continue
            except QueryBudgetExceeded as e:  # an endpoint's budget: the others may still fit
                out.notes.append(f"{name} was left out: {e}")
                bar.advance()
                continue
            row: dict[str, Any] = {"seconds": time.perf_counter() - ts,
                                   "paper": registry.get(name, "explainer").paper}
            if "queries" in e_clean.meta:
                row["queries"] = int(e_clean.meta["queries"]) + (
                    int(e_adv.meta["queries"]) if e_adv is not None else 0)
            if e_clean.delta is not None and len(ex):
                base = e_clean.meta.get("baseline_output")
                span = (e_clean.outputs - base).abs() if base is not None else e_clean.outputs.abs()
                row["completeness_error"] = float((e_clean.delta.abs() / span.clamp_min(1e-12))
                                                  .mean())
            both = torch.cat([e_clean.attributions,
                              *([e_adv.attributions] if e_adv is not None else [])])
            xs = torch.cat([x[ex], x_adv[ex]]) if x_adv is not None else x[ex]
            row["degenerate"], flag = degenerate_flag(
                name, ctx.model, xs, y[ex].repeat(len(xs) // max(len(ex), 1)), both)
            if flag is not None:
                row["degenerate"]["message"] = flag.message
                out.flags.append(flag)
            info[name] = row
            out.tensors[f"clean/{name}"] = e_clean.pixel_map().cpu()
            if e_adv is not None:
                out.tensors[f"adv/{name}"] = e_adv.pixel_map().cpu()
            bar.advance()
        out.data = info
        maps = {k: out.tensors[f"clean/{k}"] for k in info}
        if maps and ctx.data.is_image and len(ex) and x_adv is None:
            names = ctx.class_names()
            out.figures.append(Figure(
                "explanations", "Explanations of clean inputs",
                "Each row: an input, titled with the endpoint's prediction, and the "
                "attribution maps of the true class (red: evidence for, blue: against). The "
                "model is an endpoint: no adversarial examples without gradients.",
                *figures.explanation_grid(x[ex], maps, "attributions for the true class",
                                          [f"clean: {names[int(ctx.pred[i])]}"
                                           for i in ex.tolist()])))
        elif maps and ctx.data.is_image and len(ex):
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
