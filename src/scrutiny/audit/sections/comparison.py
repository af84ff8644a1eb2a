"""Standard against robust model: the accuracy-robustness trade-off and input gradients."""

from __future__ import annotations

from typing import Any

import torch

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import rows_at
from scrutiny.types import ThreatModel


@register
class Comparison(Section):
    """With ``--robust-model``: the curve's attacks on the robust model at every eps, and both
    models' input gradients on the examples (Tsipras et al. 2019)."""

    name = "comparison"
    title = "Standard and robust model"
    needs = ("robustness", "examples")
    uses = ("headline",)
    display = 35

    def steps(self, ctx: AuditContext) -> int:
        return 0

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.robust_model is not None else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        from scrutiny.explain import Gradient

        cfg, x, y = ctx.config, ctx.x, ctx.y
        robust = ctx.robust_model
        worst = []
        for eps in cfg.eps:
            threat = ThreatModel(cfg.norm, eps, robust.bounds)
            ok = torch.ones(len(x), dtype=torch.bool)
            for attack in ctx.attacks().values():
                res = attack(robust, x, y, threat=threat, seed=ctx.seed)
                ok &= (res.clean_correct & res.adv_correct).cpu()
            worst.append((eps, float(ok.float().mean())))
        mine = [(r["eps"], r["robust_accuracy"]) for r in rows_at(done)["worst case"]]
        trade = {f"{ctx.model.name} (worst case of the curve's attacks)": mine,
                 f"{robust.name} (worst case of the curve's attacks)": worst}
        out = SectionResult(self.name)
        out.figures.append(Figure(
            "tradeoff", "Accuracy-robustness trade-off",
            f"Robust accuracy against eps of the audited model and of {robust.name}; the "
            "value at eps = 0 is the clean accuracy (Tsipras et al. 2019).",
            *figures.robustness_curve(trade, cfg.norm, "standard vs robust model")))
        ex = done["examples"].tensors["ex"]
        if ctx.data.is_image and len(ex):
            grads = {name: Gradient()(m, x[ex], y[ex], seed=ctx.seed).pixel_map()
                     for name, m in ((ctx.model.name, ctx.model), (robust.name, robust))}
            out.figures.append(Figure(
                "robust_gradients", "Input gradients of the standard and the robust model",
                "The gradient of the true class's logit with respect to the input. A robust "
                "model's gradients look like the object (perceptually aligned gradients, Tsipras "
                "et al. 2019); a standard model's look like noise.",
                *figures.explanation_grid(x[ex], grads, "input gradients of the true class")))
        out.data = {"model": robust.name, "curve": worst,
                    "clean_accuracy": worst[0][1] if cfg.eps[0] == 0 else None}
        return out
