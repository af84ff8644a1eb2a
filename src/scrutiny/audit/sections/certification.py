"""Certified accuracy on the first samples, next to the attacks' robust accuracy there."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.errors import InputError

#: Samples certified per saved chunk: a killed audit loses at most one chunk's work.
CHUNK = 16


@register
class Certification(Section):
    """The configured certifier at the smallest nonzero eps and the reference eps.

    Only the certifier protocol is used (:class:`scrutiny.certify.base.Certifier`):
    the certifier declares the norms it certifies (``tags.norms``; a note when the
    audit's norm is not one of them), its parameters come from the audit's
    ``params``, and every sample's certificate at every radius comes from
    ``certified_at`` on chunks of :data:`CHUNK` samples, each saved as soon as it is
    done (:attr:`Section.partial`), so a killed audit resumes after the last
    finished chunk. Chunk ``i`` is certified with seed ``seed + i``.

    A certified accuracy above the attacks' robust accuracy on the same samples
    is a bug in one of them; the masking checks flag it.
    """

    name = "certification"
    title = "What can be proven"
    needs = ("robustness",)
    uses = ("headline",)
    display = 30
    endpoint_needs = "the model's weights"

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not ctx.config.certifier:
            return ""
        if not [e for e in ctx.config.eps if e > 0]:
            return "certification needs a nonzero eps"
        return None

    def steps(self, ctx: AuditContext) -> int:
        return math.ceil(min(ctx.config.cert_samples, len(ctx.x)) / CHUNK)

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        out = SectionResult(self.name)
        cert = ctx.create("certifier", cfg.certifier)
        n = min(cfg.cert_samples, len(ctx.x))
        nz = [e for e in cfg.eps if e > 0]
        radii = sorted({nz[0], cfg.reference_eps})
        chunks = list(range(0, n, CHUNK))
        advanced = 0
        ts = time.perf_counter()
        masks: list[torch.Tensor] = []  # (len(radii), chunk) per chunk
        try:
            if cfg.norm not in cert.tags.norms:
                out.notes.append(f"{cfg.certifier} certifies {', '.join(cert.tags.norms)} radii "
                                 f"only; the audit's norm is {cfg.norm}, so certification was "
                                 "skipped")
                return out
            for i, start in enumerate(chunks):
                bar.step(f"certify ({cfg.certifier}) {min(start + CHUNK, n)}/{n}")
                part = self.partial.load(f"chunk{i}")
                if part is None:
                    got = cert.certified_at(ctx.model, ctx.x[start:start + CHUNK],
                                            ctx.y[start:start + CHUNK], radii, norm=cfg.norm,
                                            bounds=ctx.model.bounds, seed=ctx.seed + i)
                    part = {"certified": torch.stack([got[e] for e in radii])}
                    self.partial.save(f"chunk{i}", part)
                masks.append(part["certified"])
                bar.advance()
                advanced += 1
        except InputError as e:  # unsupported layers
            out.notes.append(f"{cfg.certifier} certification was skipped: {e}")
            return out
        finally:
            bar.advance(n=len(chunks) - advanced)
        certified = torch.cat(masks, dim=1)
        rows = [{"eps": e, "certified_accuracy": float(certified[j].float().mean()),
                 "robust_accuracy": float(robust_at(ctx, done, e)[:n].float().mean())}
                for j, e in enumerate(radii)]
        out.data = {"certifier": cfg.certifier, "params": cert.get_params(), "n": n,
                    "chunk": CHUNK, "rows": rows, "seconds": time.perf_counter() - ts}
        out.tensors = {"certified": certified}
        return out
