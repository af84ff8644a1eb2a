"""The headline number: the strong attack at the reference eps on what the curve left robust."""

from __future__ import annotations

import time
from typing import Any

from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import curve_figure, robust_key


@register
class Headline(Section):
    """Worst case over the curve's attacks and the headline attack (default ``worst_case``).

    The headline attack only tries the samples the curve's attacks left robust at
    the reference eps; when they broke every sample it has nothing to do.
    Tensors: ``robust`` and ``x_adv`` at the reference eps.
    """

    name = "headline"
    title = "Headline"
    group = "top"
    needs = ("robustness",)
    display = 0

    def steps(self, ctx: AuditContext) -> int:
        return 1 if ctx.config.headline_attack else 0

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        base = done["robustness"]
        robust = base.tensors[robust_key(cfg.reference_eps)].clone()
        x_adv = base.tensors["x_adv"].clone()
        used, strong = list(cfg.attacks), None
        out = SectionResult(self.name)
        if cfg.headline_attack:
            todo = robust.nonzero()[:, 0]
            ts = time.perf_counter()
            stages: list[dict[str, Any]] = []
            if len(todo):
                res = ctx.create("attack", cfg.headline_attack)(
                    ctx.model, ctx.x[todo], ctx.y[todo], threat=ctx.threat(), seed=ctx.seed)
                held = (res.clean_correct & res.adv_correct).cpu()
                broken = todo[~held]
                x_adv[broken] = res.x_adv[~held.to(res.x_adv.device)].to(x_adv)
                robust[broken] = False
                stages = res.meta.get("stages", [])
            else:
                out.notes.append(f"{cfg.headline_attack} had nothing to attack: the curve's "
                                 f"attacks broke every sample at eps={cfg.reference_eps:g}")
            strong = {"name": cfg.headline_attack, "seconds": time.perf_counter() - ts,
                      "samples_attacked": len(todo), "stages": stages}
            used.append(cfg.headline_attack)
            bar.advance(cfg.headline_attack)
        out.tensors = {"robust": robust, "x_adv": x_adv}
        # the worst case at the reference eps now includes the headline attack: the curve too
        rows = {k: [dict(r) for r in v] for k, v in base.data["rows"].items()}
        for row in rows["worst case"]:
            if row["eps"] == cfg.reference_eps:
                row["robust_accuracy"] = float(robust.float().mean())
        out.figures.append(curve_figure(ctx, rows))
        out.data = {"attack": "worst case over " + ", ".join(used), "norm": cfg.norm,
                    "eps": cfg.reference_eps, "robust_accuracy": float(robust.float().mean()),
                    "strong_attack": strong, "clean_accuracy": ctx.clean_accuracy,
                    "attacks_used": used, "worst_case_rows": rows["worst case"]}
        return out
