"""Robust accuracy of every attack at every eps, and the per-sample worst case."""

from __future__ import annotations

import time
from typing import Any

import torch

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register


def robust_key(eps: float) -> str:
    """Name of the per-sample robust mask at ``eps`` in :attr:`SectionResult.tensors`."""
    return f"robust@{eps!r}"


@register
class Robustness(Section):
    """The robustness curve: every attack of the configuration at every eps.

    Tensors: ``robust@<eps>`` (bool per sample: every attack failed and the
    clean prediction was right) and ``x_adv`` (the worst case's adversarial
    inputs at the reference eps).
    """

    name = "robustness"
    title = "Robust accuracy against eps"
    display = 10

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.config.attacks) * len(ctx.config.eps)

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg, x, y = ctx.config, ctx.x, ctx.y
        rows: dict[str, list[dict[str, Any]]] = {a: [] for a in cfg.attacks}
        rows["worst case"] = []
        out = SectionResult(self.name)
        clean_ok = (ctx.pred == y).cpu()
        for eps in cfg.eps:
            robust_all = clean_ok.clone()
            worst_x = x.clone()
            for name, attack in ctx.attacks().items():
                ts = time.perf_counter()
                res = attack(ctx.model, x, y, threat=ctx.threat(eps), seed=ctx.seed)
                robust = (res.clean_correct & res.adv_correct).cpu()
                rows[name].append({
                    "eps": eps, "robust_accuracy": float(robust.float().mean()),
                    "success_rate": res.success_rate(),
                    "median_norm": float(res.norms.median()) if len(res.norms) else None,
                    "seconds": time.perf_counter() - ts})
                broken = robust_all & ~robust
                worst_x[broken] = res.x_adv[broken.to(res.x_adv.device)].to(worst_x)
                robust_all &= robust
                bar.advance(f"{name} eps={eps:g}")
            rows["worst case"].append({"eps": eps, "robust_accuracy": float(robust_all.float().mean())})
            out.tensors[robust_key(eps)] = robust_all
            if eps == cfg.reference_eps:
                out.tensors["x_adv"] = worst_x
        out.data = {"rows": rows}
        out.figures.append(curve_figure(ctx, rows))
        return out


def curves(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[float, float]]]:
    """``{attack: [(eps, robust accuracy), ...]}`` of the section's rows."""
    return {k: [(r["eps"], r["robust_accuracy"]) for r in v] for k, v in rows.items()}


def curve_figure(ctx: AuditContext, rows: dict[str, list[dict[str, Any]]]) -> Figure:
    cfg = ctx.config
    return Figure("robustness_curve", "Robust accuracy against eps",
                  f"Robust accuracy of each attack and of the per-sample worst case "
                  f"({cfg.norm}), on {len(ctx.x)} test samples.",
                  *figures.robustness_curve(curves(rows), cfg.norm))


def robust_at(ctx: AuditContext, done: dict[str, SectionResult], eps: float) -> torch.Tensor:
    """Per-sample robustness at ``eps`` after every attack that ran there (the headline
    attack's included at the reference eps)."""
    if eps == ctx.config.reference_eps and "headline" in done:
        return done["headline"].tensors["robust"]
    return done["robustness"].tensors[robust_key(eps)]


def rows_at(done: dict[str, SectionResult]) -> dict[str, list[dict[str, Any]]]:
    """The curve's rows (copies), the worst case with the headline attack included when it ran."""
    rows = {k: [dict(r) for r in v] for k, v in done["robustness"].data["rows"].items()}
    if "headline" in done:
        rows["worst case"] = [dict(r) for r in done["headline"].data["worst_case_rows"]]
    return rows


def adversarial_at_reference(done: dict[str, SectionResult]) -> torch.Tensor:
    """The worst-case adversarial inputs at the reference eps (the headline attack's included)."""
    return done["headline"].tensors["x_adv"] if "headline" in done \
        else done["robustness"].tensors["x_adv"]
