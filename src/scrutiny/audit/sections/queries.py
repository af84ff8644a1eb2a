"""Black-box success against the number of queries, at the reference eps."""

from __future__ import annotations

import time
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register


@register
class Queries(Section):
    """Each query attack on every sample through a query-only view of the model."""

    name = "queries"
    title = "Black-box success against queries"
    display = 20
    black_box = True  # queries only: it also runs on an endpoint

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.config.query_attacks)

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.config.query_attacks else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        for name in ctx.config.query_attacks:
            bar.step(f"{name} (queries)")
            if registry.get(name, "attack").cls.tags.image_only and not ctx.data.is_image:
                out.notes.append(f"{name} needs images and was skipped on tabular data")
            else:
                out.data[name] = query_curve(ctx, name)
            bar.advance()
        if out.data:
            cfg = ctx.config
            out.figures.append(Figure(
                "query_curves", "Black-box success against queries",
                f"Share of the correctly classified samples each black-box attack fooled within "
                f"a given number of queries per sample ({cfg.norm} eps={cfg.reference_eps:g}); "
                "it sees only the model's outputs.",
                *figures.robustness_curve({k: v["curve"] for k, v in out.data.items()}, cfg.norm,
                                          "success rate against queries", xlabel="queries per "
                                          "sample", ylabel="success rate", logx=True)))
        return out


def query_attack(ctx: AuditContext, name: str) -> Any:
    """The black-box attack ``name`` as the section runs it: the configuration's parameters,
    a budget of 1000 queries per sample unless they set ``max_queries``."""
    params = {"max_queries": 1000, **ctx.config.params.get(name, {})}
    accepted = registry.get(name, "attack").params()
    return registry.create(f"attack:{name}", **{k: v for k, v in params.items() if k in accepted})


def query_curve(ctx: AuditContext, name: str) -> dict[str, Any]:
    """Success rate of a black-box attack within 1, 10, 100, ... queries per sample.

    Also ``budget_exhausted``: the samples a query budget cut short (not broken,
    with queries the budget refused), and ``evaluator_queries``: the evaluator's
    looks at the clean and the attacked inputs, outside the attack's count by design.
    """
    attack = query_attack(ctx, name)
    ts = time.perf_counter()
    x, y = ctx.x, ctx.y
    res = attack(ctx.model, x, y, threat=ctx.threat(), seed=ctx.seed)
    q = res.queries.double().cpu() if res.queries is not None else torch.zeros(len(x))
    ok = res.clean_correct.cpu()
    hit = res.success.cpu() & ok
    top = max(1, int(q.max())) if len(q) else 1
    budgets = [b for b in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000) if b < top] + [top]
    denom = max(1, int(ok.sum()))
    curve = [(float(b), float((hit & (q <= b)).sum()) / denom) for b in budgets]
    qs = q[hit]
    cut = res.budget_exhausted
    return {"curve": curve, "success_rate": float(hit.sum()) / denom,
            "mean_queries": float(qs.mean()) if len(qs) else None,
            "median_queries": float(qs.median()) if len(qs) else None,
            "total_queries": int(q.sum()),
            "budget_exhausted": int(cut.sum()) if cut is not None else 0,
            "evaluator_queries": int(res.meta.get("evaluator_queries", 0)),
            "seconds": time.perf_counter() - ts}
