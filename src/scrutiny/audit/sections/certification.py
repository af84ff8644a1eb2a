"""Certified accuracy on the first samples, next to the attacks' robust accuracy there."""

from __future__ import annotations

import time
from typing import Any

from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.errors import InputError


@register
class Certification(Section):
    """The configured certifier at the smallest nonzero eps and the reference eps.

    A certified accuracy above the attacks' robust accuracy on the same samples
    is a bug in one of them; the masking checks flag it.
    """

    name = "certification"
    title = "What can be proven"
    needs = ("robustness",)
    uses = ("headline",)
    display = 30

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not ctx.config.certifier:
            return ""
        if not [e for e in ctx.config.eps if e > 0]:
            return "certification needs a nonzero eps"
        return None

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        out = SectionResult(self.name)
        cert = ctx.create("certifier", cfg.certifier)
        n = min(cfg.cert_samples, len(ctx.x))
        x, y = ctx.x[:n], ctx.y[:n]
        nz = [e for e in cfg.eps if e > 0]
        radii = sorted({nz[0], cfg.reference_eps})
        ts = time.perf_counter()
        try:
            if cfg.certifier == "smoothing":
                if cfg.norm != "l2":
                    out.notes.append("randomized smoothing certifies l2 radii; the audit's norm is "
                                     f"{cfg.norm}, so it was skipped")
                    return out
                acc = cert.certified_accuracy(ctx.model, x, y, radii, seed=ctx.seed)
            else:
                acc = cert.certified_accuracy(ctx.model, x, y, radii, norm=cfg.norm)
        except InputError as e:  # unsupported layers, norms
            out.notes.append(f"{cfg.certifier} certification was skipped: {e}")
            return out
        finally:
            bar.advance(f"certify ({cfg.certifier})")
        rows = [{"eps": e, "certified_accuracy": acc[e],
                 "robust_accuracy": float(robust_at(ctx, done, e)[:n].float().mean())}
                for e in radii]
        out.data = {"certifier": cfg.certifier, "n": n, "rows": rows,
                    "seconds": time.perf_counter() - ts}
        return out
