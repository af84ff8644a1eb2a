"""Gradient-masking checks: can the robustness number be trusted?"""

from __future__ import annotations

from typing import Any

from scrutiny.audit.checks import black_box_from_stages, check_certified, gradient_masking_checks
from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import curves, robust_at, rows_at


@register
class MaskingChecks(Section):
    """The symptoms of obfuscated gradients at the reference eps (see :mod:`scrutiny.audit.checks`).

    The black-box check reads the worst case's black-box stage when it ran (no
    second run); a certificate above the attacks' robust accuracy is flagged.
    """

    name = "checks"
    title = "Can the robustness number be trusted?"
    nav = "Masking checks"
    group = "trusted"
    needs = ("robustness",)
    uses = ("headline", "certification")
    display = 60

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.checks else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        out = SectionResult(self.name)
        bar.step("gradient-masking checks")
        head = done.get("headline")
        strong = head.data.get("strong_attack") if head else None
        robust = robust_at(ctx, done, cfg.reference_eps)
        rows = rows_at(done)
        from_stages = black_box_from_stages(
            strong["stages"] if strong else [], strong["samples_attacked"] if strong else 0,
            len(ctx.x), float(robust.float().mean()), cfg.black_box or "") \
            if cfg.black_box else None
        out.flags = gradient_masking_checks(
            ctx.model, ctx.x, ctx.y, ctx.threat(), curves=curves(rows),
            white_box_robust=robust.clone(), black_box=None if from_stages else cfg.black_box,
            black_box_params=cfg.params.get(cfg.black_box or "", {}), seed=ctx.seed)
        if from_stages:
            out.flags.append(from_stages)
        cert = done.get("certification")
        if cert and cert.data.get("rows"):
            ref = cert.data["rows"][-1]
            out.flags.append(check_certified(ref["certified_accuracy"], ref["robust_accuracy"],
                                             ref["eps"], ref.get("certified_broken")))
        bar.advance()
        return out
