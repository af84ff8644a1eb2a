"""The game matrix: every attack of the curve against every defense at the reference eps."""

from __future__ import annotations

from typing import Any

from scrutiny import registry
from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.matrix import game_matrix
from scrutiny.audit.sections.base import Section, register


@register
class Defenses(Section):
    """Attacks against defenses (adaptive where a defense declares it needs BPDA or EOT).

    Defenses are fitted on test rows that are not attacked (on the attacked
    ones, with a note, when fewer than 50 are left).
    """

    name = "matrix"
    title = "Attacks against defenses"
    display = 40

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.config.attacks) * (len(ctx.config.defenses) + 1)

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.defenses else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        rest = ctx.rest[:500]
        if len(rest) >= 50:
            fit = (ctx.data.x[rest], ctx.data.y[rest])
        else:
            fit = (ctx.x, ctx.y)
            out.notes.append("too few rows left to fit the defenses on: they were fitted on the "
                             "attacked samples")
        # game_matrix reports each cell when it is done: the bar names the one that runs next
        cells = [f"{d} x {a}" for d in ("none", *(registry.get(d, "defense").name
                                                   for d in ctx.config.defenses))
                 for a in ctx.config.attacks]
        bar.step(cells[0])

        def cell_done(label: str) -> None:
            bar.advance()
            later = cells[cells.index(label) + 1:] if label in cells else []
            if later:
                bar.step(later[0])

        matrix = game_matrix(ctx.model, ctx.x, ctx.y, attacks=tuple(ctx.config.attacks),
                             defenses=ctx.config.defenses, threat=ctx.threat(),
                             fit_data=fit, params=ctx.config.params, seed=ctx.seed,
                             progress=cell_done).to_dict()
        out.notes += [f"defense {d} was skipped: {why}" for d, why in matrix["skipped"].items()]
        out.data = matrix
        return out
