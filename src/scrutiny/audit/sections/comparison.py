"""Standard against robust model: both given the same evaluation, side by side."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult, build_context
from scrutiny.audit.sections.base import SECTIONS, Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.audit.store import PartialStore

#: The audited model's sections the compared model gets too, in run order, each when it ran
#: for the audited model (the curve always does).
SAME_EVALUATION = ("robustness", "headline", "certification", "checks")


@register
class Comparison(Section):
    """With ``--robust-model``: the compared model gets the audited model's evaluation.

    The sections of :data:`SAME_EVALUATION` that ran for the audited model run again for
    the compared one, with the same samples, seed and configuration (a context built
    the same way, so a randomized or gradient-masking compared model gets EOT, BPDA and
    the black-box stage too): the curve's attacks at every eps, the headline attack on
    what they left robust at the reference eps, the certifier and the gradient-masking
    checks. The report shows both curves (the accuracy-robustness trade-off, Tsipras et
    al. 2019), a table of both models' numbers, and both models' input gradients.
    Each sub-section's units of work are saved like the section's own, so a killed
    audit resumes inside the compared model's evaluation too.

    The compared model is evaluated on the first ``compare_samples`` audited samples
    (:class:`~scrutiny.audit.config.AuditConfig`, default 100; all of them when there are
    fewer), and the audited model's numbers beside it are read from its per-sample results
    on the same samples: a robust model leaves most samples for the headline ensemble,
    whose black-box stage spends its whole query budget on each sample it cannot break (on
    the digits CNNs, minutes per hundred samples on a CPU), and ``make demo`` must stay a
    few minutes.
    """

    name = "comparison"
    title = "Standard and robust model"
    needs = ("robustness", "examples")
    uses = ("headline", "certification", "checks")
    display = 35

    def steps(self, ctx: AuditContext) -> int:
        # the compared model's units; which sections ran for the audited model is known at
        # run time only, so the bar counts those the configuration would run
        k = min(ctx.config.compare_samples, len(ctx.x))
        small = replace(ctx, x=ctx.x[:k], y=ctx.y[:k])
        return sum(SECTIONS[n]().steps(small) for n in SAME_EVALUATION
                   if n == "robustness" or SECTIONS[n]().skip_reason(small) is None)

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.robust_model is not None else ""

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        from scrutiny.explain import Gradient

        cfg, x, y = ctx.config, ctx.x, ctx.y
        k = min(cfg.compare_samples, len(x))
        # the first k audited samples: build_context takes the same seeded permutation's head
        other = build_context(ctx.robust_model, ctx.data, replace(cfg, n_samples=k))
        robust = other.model
        theirs: dict[str, SectionResult] = {}
        for name in SAME_EVALUATION:
            if name != "robustness" and name not in done:
                continue
            section = SECTIONS[name]()
            # units under "<this section's stem>.part-<name>": this section's clear() removes them
            section.partial = PartialStore(self.partial.directory,
                                           f"{self.partial.stem}.part-{name}")
            theirs[name] = section.run(other, theirs, bar)
        summary = {"audited": _summary(ctx, done, k), "compared": _summary(other, theirs, k)}
        label = _attack_label(summary["audited"], cfg.reference_eps)
        trade = {f"{s['model']} ({role})": [(r["eps"], r["robust_accuracy"])
                                             for r in s["worst_case"]]
                 for role, s in summary.items()}
        out = SectionResult(self.name)
        out.figures.append(Figure(
            "tradeoff", "Accuracy-robustness trade-off",
            f"Robust accuracy against eps of the audited model and of {robust.name}, each the "
            f"per-sample worst case of the curve's attacks ({', '.join(other.attacks())}){label}, "
            f"on the same {k} samples" + (f" (the first of the {len(x)} audited)" if k < len(x)
                                          else "") + " with the same seed; the value at eps = 0 "
            "is the clean accuracy (Tsipras et al. 2019).",
            *figures.robustness_curve(trade, cfg.norm, "standard vs robust model")))
        ex = done["examples"].tensors["ex"]
        if ctx.data.is_image and len(ex):
            grads = {m.name: Gradient()(m, x[ex], y[ex], seed=ctx.seed).pixel_map()
                     for m in (ctx.model, robust)}
            out.figures.append(Figure(
                "robust_gradients", "Input gradients of the standard and the robust model",
                "The gradient of the true class's logit with respect to the input. A robust "
                "model's gradients look like the object (perceptually aligned gradients, Tsipras "
                "et al. 2019); a standard model's look like noise.",
                *figures.explanation_grid(x[ex], grads, "input gradients of the true class")))
        out.notes += [f"{robust.name} (compared): {n}" for n in other.notes]
        out.notes += [f"{robust.name} (compared): {n}" for s in theirs.values() for n in s.notes]
        out.notes += [f"{robust.name} (compared) FLAGGED {f.check}: {f.message}"
                      for f in summary["compared"]["flags"] if f["flagged"]]
        out.data = {"model": robust.name, "audited_model": ctx.model.name,
                    "curve": trade[f"{robust.name} (compared)"],
                    "clean_accuracy": other.clean_accuracy, "samples": k,
                    "sections": list(theirs), **summary}
        return out


def _summary(ctx: AuditContext, done: dict[str, SectionResult], k: int) -> dict[str, Any]:
    """One model's numbers in the comparison table, on its first ``k`` samples."""
    cfg = ctx.config
    head = done["headline"].data if "headline" in done else None
    clean = float((ctx.pred[:k] == ctx.y[:k]).float().mean())
    worst = [{"eps": e, "robust_accuracy": float(robust_at(ctx, done, e)[:k].float().mean())}
             for e in cfg.eps]
    cert = done["certification"].data if "certification" in done else {}
    ref_cert = next((r for r in cert.get("rows", []) if r["eps"] == cfg.reference_eps), None)
    flags = ctx.probe.flags() + (done["checks"].flags if "checks" in done else [])
    return {"model": ctx.model.name, "clean_accuracy": clean, "worst_case": worst,
            "headline": None if head is None else {
                "attack": head["attack"],
                "strong_attack": (head["strong_attack"] or {}).get("name"),
                "robust_accuracy": float(robust_at(ctx, done, cfg.reference_eps)[:k]
                                         .float().mean())},
            "certified": None if ref_cert is None else {
                "certifier": cert["certifier"], "n": cert["n"],
                "certified_accuracy": ref_cert["certified_accuracy"],
                "robust_accuracy": ref_cert["robust_accuracy"]},
            "flags": [{"check": f.check, "flagged": f.flagged, "message": f.message}
                      for f in flags]}


def _attack_label(summary: dict[str, Any], eps: float) -> str:
    head = summary["headline"]
    if head is None or not head["strong_attack"]:
        return ""
    return f", and {head['strong_attack']} at eps = {eps:g}"
