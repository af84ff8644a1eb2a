"""The verdict: what the numbers say, whether to trust them, and what to do next."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from scipy.stats import beta, norm

from scrutiny.audit.checks import Flag
from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import SECTIONS, Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.audit.sections.trust import RANDOM_ORDER
from scrutiny.errors import InputError

#: Confidence level of the robust accuracy's interval.
CONFIDENCE = 0.95
#: Half-width of the interval (in accuracy) above which the verdict asks for more samples.
WIDE = 0.03
#: Report anchor of a section's piece (``id`` in ``templates/report.html``).
ANCHOR = "section-{}"

#: What each check's flag means, in one sentence (keyed by :attr:`Flag.check`, or its
#: part before ": ").
MEANING = {
    "randomized model": "two passes of the same input differ, so every number is one seeded "
                        "draw and the attacks averaged their gradients over draws (EOT).",
    "masked gradients (probe)": "the model's input gradients vanish (a rounding or quantizing "
                                "front end), so plain gradient attacks get no signal; the "
                                "audit attacked through it with BPDA and a black-box attack.",
    "zero or non-finite gradients": "the loss has no usable input gradient on many samples, so "
                                    "gradient attacks get no signal and their robust accuracy "
                                    "is an upper bound at best.",
    "success not monotone in eps": "an attack broke fewer samples at a larger eps, which a "
                                   "working attack never does: its optimization is failing.",
    "unbounded attack below 100%": "with an unbounded budget every sample should fall; one "
                                   "that stands points to masked gradients or a broken attack.",
    "large variance across seeds": "the robust accuracy moves with the attack's random start, "
                                   "so one run does not find the worst case.",
    "black-box beats white-box": "an attack that sees only the outputs broke samples the "
                                 "gradient attacks could not: the gradients mislead them.",
    "certified above empirical": "a certificate above what the attacks leave is a "
                                 "contradiction: the certifier or an attack is wrong.",
    "degenerate explanations": "the explainer's maps are all zero, constant or not finite, so "
                               "they say nothing about the prediction.",
    "perturbation above eps": "an adversarial input lies outside the threat model, so the "
                              "robust accuracy is too low: a bug in an attack.",
    "backdoor suspected": "a label is reached by a far smaller trigger than every other label "
                          "(Neural Cleanse), the signature of a backdoor planted in training: "
                          "inputs carrying a hidden trigger may all go to that label.",
}
#: Trust measures whose flag is a sanity check of the explainer, and what a raised one means.
SANITY = {
    "model_randomization": "its maps stay correlated with those of a model with randomized "
                           "weights (Adebayo et al. 2018), so they do not show what the model "
                           "learned.",
    "data_randomization": "its maps stay correlated with those of a model trained on permuted "
                          "labels (Adebayo et al. 2018), so they do not show what the data "
                          "taught the model.",
}
#: Trust measures flagged when an explainer's pixel order does no better than a random one
#: (the trust section's ``"random order"`` row), and what a raised flag means.
NO_BETTER_THAN_RANDOM = {
    "deletion": "removing the pixels its maps rank highest lowers the prediction no faster than "
                "removing them in a random order, so the maps do not single out what the model "
                "relies on.",
    "insertion": "inserting the pixels its maps rank highest raises the prediction no faster "
                 "than inserting them in a random order, so the maps do not single out what "
                 "the model relies on.",
}
#: Openings of the audit-wide notes that repeat a probe flag (written by ``build_context``).
_PROBE_NOTES = ("The model is randomized", "The model's input gradients are masked")


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval of a proportion of ``k`` in ``n``.

    It covers the true proportion with probability at least ``confidence`` for every
    value of it (conservative, unlike the normal approximation near 0 and 1).

    References
    ----------
    .. [1] Clopper, Pearson. "The use of confidence or fiducial limits illustrated in the
       case of the binomial". Biometrika, 1934.

    Examples
    --------
    >>> [round(v, 4) for v in clopper_pearson(5, 10)]
    [0.1871, 0.8129]
    >>> clopper_pearson(0, 10)[0], round(clopper_pearson(0, 10)[1], 4)  # 1 - 0.025 ** (1 / 10)
    (0.0, 0.3085)
    """
    if not isinstance(n, int) or n < 1 or not isinstance(k, int) or not 0 <= k <= n:
        raise InputError(f"clopper_pearson needs integers 0 <= k <= n, n >= 1; got k={k!r}, "
                         f"n={n!r}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be in (0, 1), got {confidence!r}")
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def samples_for(p: float, half_width: float = WIDE) -> int:
    """Samples whose normal-approximation interval around ``p`` is ``half_width`` wide
    (``p`` clipped to [0.05, 0.95], where the approximation holds)."""
    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    p = min(max(p, 0.05), 0.95)
    return math.ceil(p * (1 - p) * (z / half_width) ** 2)


#: Sample-count settings and the section that uses them.
SAMPLE_SETTINGS = {"cert_samples": "certification", "trust_samples": "trust",
                   "compare_samples": "comparison"}


def sample_counts(ctx: AuditContext, ran: Collection[str]) -> dict[str, dict[str, int]]:
    """Samples ``requested`` and ``used`` of ``n_samples`` and of the sample-count settings
    of the sections in ``ran`` (each uses the first of the audited samples)."""
    cfg, n = ctx.config, len(ctx.x)
    out = {"n_samples": {"requested": cfg.n_samples, "used": n}}
    for key, section in SAMPLE_SETTINGS.items():
        if section in ran:
            out[key] = {"requested": getattr(cfg, key), "used": min(getattr(cfg, key), n)}
    return out


def fewer_samples(ctx: AuditContext, ran: Collection[str]) -> list[str]:
    """A note for each sample count of :func:`sample_counts` below what was requested."""
    have = len(ctx.data)
    notes = []
    for key, c in sample_counts(ctx, ran).items():
        if c["used"] >= c["requested"]:
            continue
        why = (f"the data has {have} test samples" if key == "n_samples" else
               f"{len(ctx.x)} samples were audited (n_samples = {ctx.config.n_samples}, "
               f"the data has {have})")
        notes.append(f"Fewer samples than requested: {key} = {c['requested']} was requested; "
                     f"{why}, so {c['used']} were used")
    return notes


class _EveryOtherSection:
    """``Verdict.uses``: every other registered section, those added later included."""

    def __get__(self, obj: Any, owner: type) -> tuple[str, ...]:
        return tuple(n for n in SECTIONS if n != owner.name)


def _first_sentence(text: str, limit: int = 200) -> str:
    """The measured part of a flag's message: up to its first sentence end, or a colon that
    ends a clause (not one after a short label such as ``"input gradients: "``)."""
    colon = text.find(": ", 20)
    cut = min((i for i in (text.find(". "), colon) if i > 0), default=len(text))
    head = text[:cut].rstrip(".")
    return head if len(head) <= limit else head[:limit - 3] + "..."


@register
class Verdict(Section):
    """The conclusion the report and the CLI summary open with, computed from the results.

    ``data``: the robust accuracy at the reference eps over the audited samples with its
    95% Clopper-Pearson interval (:func:`clopper_pearson`; the samples are finite),
    ``trust`` (``"flagged"``: a probe or masking-check flag is raised, ``"no flag"``,
    ``"not checked"``), the certified lower bound at the reference eps when certification
    ran, the explainers that ``passed``, ``failed`` or were not checked by a sanity check
    (the trust section's model/data randomization flags, degenerate maps), ``next_steps``,
    ``samples`` (:func:`sample_counts`), ``items`` (every raised flag of every section and
    of the model probe, and every note, a sample count below the one requested included
    (:func:`fewer_samples`), each explained in one sentence, with ``where`` the report
    shows it and its ``anchor``; a trust flag of deletion or insertion, an explainer no
    better than the random pixel order, with both numbers) and ``lines``, the summary as
    text. It runs last (it uses every other section), whenever any other section runs
    (unless skipped), and is shown first.
    """

    name = "verdict"
    title = "Verdict"
    group = "top"
    uses = _EveryOtherSection()  # type: ignore[assignment]
    display = -10
    always = True  # --sections robustness gets its verdict too; --skip verdict drops it
    black_box = True  # it reads the other sections' results, never the model

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg = ctx.config
        n = len(ctx.x)
        out = SectionResult(self.name)
        v: dict[str, Any] = {"norm": cfg.norm, "eps": cfg.reference_eps, "n_samples": n,
                             "clean_accuracy": ctx.clean_accuracy, "confidence": CONFIDENCE,
                             "interval_method": "Clopper-Pearson (exact binomial)"}
        if "robustness" in done and n:
            k = int(robust_at(ctx, done, cfg.reference_eps).sum())
            used = done["headline"].data["attacks_used"] if "headline" in done \
                else list(ctx.attacks())
            v.update(robust_samples=k, robust_accuracy=k / n,
                     interval=list(clopper_pearson(k, n)),
                     attack="worst case over " + ", ".join(used))
        else:
            v.update(robust_samples=None, robust_accuracy=None, interval=None, attack=None)
        items = self._items(ctx, done)
        raised = [it for it in items if it["kind"] == "flag" and it["section"] in
                  ("probe", "checks", "headline")]
        v["trust"] = "flagged" if raised else ("no flag" if "checks" in done else "not checked")
        v["trust_reasons"] = [it["check"] for it in raised]
        v["samples"] = sample_counts(ctx, done)
        v["certified"] = self._certified(ctx, done)
        v["explainers"] = self._explainers(ctx, done)
        v["items"] = items
        v["next_steps"] = self._next(ctx, done, v)
        v["lines"] = self._lines(v)
        bar.advance()
        out.data = v
        return out

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _where(name: str, done: dict[str, SectionResult]) -> dict[str, str | None]:
        """``where`` the report shows what section ``name`` raised, and its ``anchor``; the
        probe's flags show in the checks' table (or the headline, without the checks)."""
        if name == "probe":
            name = next((s for s in ("checks", "headline", "robustness") if s in done), "")
        if name not in done:
            return {"where": None, "anchor": None}
        return {"where": name, "anchor": ANCHOR.format(name)}

    def _items(self, ctx: AuditContext, done: dict[str, SectionResult]) -> list[dict[str, Any]]:
        """Every raised flag and every note, each with one sentence and its section's anchor."""
        flags: list[tuple[str, Flag]] = [("probe", f) for f in ctx.probe.flags()]
        flags += [(name, f) for name, res in done.items() for f in res.flags]
        items = []
        for section, f in flags:
            if not f.flagged:
                continue
            meaning = MEANING.get(f.check) or MEANING.get(f.check.split(": ", 1)[0]) \
                or _first_sentence(f.message) + "."
            items.append({"kind": "flag", "section": section, "check": f.check,
                          "sentence": meaning[0].upper() + meaning[1:],
                          "measured": _first_sentence(f.message),
                          **self._where(section, done)})
        trust = done["trust"].data.get("scores", {}) if "trust" in done else {}
        chance = trust.get(RANDOM_ORDER, {})
        for expl, scores in trust.items():
            for metric, sc in scores.items():
                if sc.get("flag"):
                    measured = f"{metric} {sc['value']:.2f}" if sc.get("value") is not None \
                        else ""
                    if measured and (chance.get(metric) or {}).get("value") is not None:
                        measured += f", random order {chance[metric]['value']:.2f}"
                    items.append({"kind": "flag", "section": "trust",
                                  "check": f"{metric}: {expl}",
                                  "sentence": f"{expl} failed the {metric.replace('_', ' ')} "
                                  "check: " + (SANITY.get(metric)
                                               or NO_BETTER_THAN_RANDOM.get(metric)
                                               or "its trust measure raised a flag."),
                                  "measured": measured, **self._where("trust", done)})
        notes = [("", note) for note in ctx.notes if not note.startswith(_PROBE_NOTES)]
        notes += [("", note) for note in fewer_samples(ctx, done)]
        notes += [(name, note) for name, res in done.items() for note in res.notes]
        for section, note in notes:
            items.append({"kind": "note", "section": section or "audit", "check": "note",
                          "sentence": note[0].upper() + note[1:].rstrip(".") + ".",
                          "measured": "", **(self._where(section, done) if section
                                             else {"where": "notes", "anchor": "notes"})})
        return items

    @staticmethod
    def _certified(ctx: AuditContext, done: dict[str, SectionResult]) -> dict[str, Any] | None:
        cert = done.get("certification")
        rows = cert.data.get("rows") if cert else None
        row = next((r for r in rows or [] if r["eps"] == ctx.config.reference_eps), None)
        if row is None:
            return None
        return {"certifier": cert.data["certifier"], "eps": row["eps"], "n": cert.data["n"],
                "certified_accuracy": row["certified_accuracy"],
                "robust_accuracy": row["robust_accuracy"]}

    @staticmethod
    def _explainers(ctx: AuditContext, done: dict[str, SectionResult]) -> dict[str, list[str]]:
        ran = list(done["explanations"].data) if "explanations" in done else []
        scores = done["trust"].data.get("scores", {}) if "trust" in done else {}
        degenerate = {f.check.split(": ", 1)[-1] for f in
                      (done["explanations"].flags if "explanations" in done else []) if f.flagged}
        out: dict[str, list[str]] = {"passed": [], "failed": [], "unchecked": []}
        for name in ran:
            verdicts = [sc["flag"] for m, sc in scores.get(name, {}).items()
                        if m in SANITY and sc.get("flag") is not None]
            if name in degenerate or any(verdicts):
                out["failed"].append(name)
            elif verdicts:
                out["passed"].append(name)
            else:
                out["unchecked"].append(name)
        return out

    @staticmethod
    def _next(ctx: AuditContext, done: dict[str, SectionResult], v: dict[str, Any]) -> list[str]:
        """Concrete next steps, most important first."""
        cfg, probe, steps = ctx.config, ctx.probe, []
        checks = [it["check"] for it in v["items"]
                  if it["kind"] == "flag" and it["section"] in ("checks", "headline")]
        if probe.masked:
            ops = ", ".join(sorted(probe.bpda_ops)) or "none found"
            steps.append(f"The gradients are masked: the audit made the rounding ops it found "
                         f"straight-through (BPDA: {ops}); if the model's front end is anything "
                         "else (JPEG, a lookup, a non-torch step), declare it "
                         "(scrutiny.models.adaptive.declare, or wrap it as a scrutiny defense) "
                         "and read the black-box numbers meanwhile.")
        if checks:
            steps.append(f"The checks flagged {', '.join(checks)}: rerun with stronger attacks, "
                         "e.g. -p pgd.steps=200 -p pgd.restarts=5 -p \"worst_case.attacks="
                         "(('apgd', {'restarts': 5}), 'apgd_t', 'fmn', "
                         "('square', {'max_queries': 10000}))\", and trust the lowest number.")
        if probe.randomized:
            steps.append("The model is randomized: numbers are per seeded draw; rerun with "
                         "other --seed values to see how much they move.")
        if v["robust_accuracy"] is not None and "headline" not in done \
                and cfg.headline_attack:
            steps.append(f"The headline rests on {v['attack']} only: run the "
                         f"headline section ({cfg.headline_attack}) for a stronger attack.")
        if v["interval"] is not None:
            lo, hi = v["interval"]
            want, have = samples_for(v["robust_accuracy"]), len(ctx.data)
            if (hi - lo) / 2 > WIDE and len(ctx.x) < have:
                more = (f"--n {want} narrows it to about +/-{100 * WIDE:.0f} points"
                        if want <= have else f"all {have} test samples (--n {have}) narrow it")
                steps.append(f"The {100 * CONFIDENCE:.0f}% interval is {100 * (hi - lo):.1f} "
                             f"points wide ({v['n_samples']} samples): {more}.")
        if v["certified"] is None and "certification" not in done and v["robust_accuracy"]:
            steps.append("No certificate: add a lower bound beside the attacks' upper bound "
                         "with --certifier crown (or ibp; smoothing for l2).")
        backdoor = done.get("backdoor")
        if backdoor is not None and backdoor.data.get("flagged"):
            steps.append(f"Neural Cleanse flagged label(s) "
                         f"{', '.join(backdoor.data['flagged_names'])}: do not ship the model "
                         "before its training data is checked (scrutiny scan "
                         "activation_clustering or spectral_signatures on that set flag the "
                         "poison points); retrain on trusted data.")
        failed = v["explainers"]["failed"]
        if failed:
            ok = v["explainers"]["passed"]
            steps.append(f"Do not read the maps of {', '.join(failed)} as explanations of this "
                         "model" + (f"; {', '.join(ok)} passed." if ok else "."))
        if not steps:
            steps.append("Nothing flagged: for a stronger claim, attack the model adaptively "
                         "(a loss or attack designed for its defense) or certify more samples "
                         "(AuditConfig.cert_samples).")
        return steps

    @staticmethod
    def _lines(v: dict[str, Any]) -> list[str]:
        """The verdict as plain text (the CLI prints it first)."""
        lines = []
        if v["robust_accuracy"] is None:
            lines.append(f"Clean accuracy {100 * v['clean_accuracy']:.1f}%; no robust accuracy "
                         "was measured (the robustness section did not run).")
        else:
            lo, hi = v["interval"]
            lines.append(
                f"Robust accuracy {100 * v['robust_accuracy']:.1f}% "
                f"({v['robust_samples']}/{v['n_samples']}; {100 * v['confidence']:.0f}% "
                f"Clopper-Pearson interval {100 * lo:.1f}-{100 * hi:.1f}%) at {v['norm']} "
                f"eps = {v['eps']:g}, under the {v['attack']}; clean accuracy "
                f"{100 * v['clean_accuracy']:.1f}%.")
        c = v["certified"]
        if c is not None:
            lines.append(f"Certified ({c['certifier']}) at eps = {c['eps']:g}: "
                         f"{100 * c['certified_accuracy']:.1f}% of the first {c['n']} samples, "
                         f"where the attacks leave {100 * c['robust_accuracy']:.1f}%; the true "
                         "robust accuracy lies between.")
        if v["trust"] == "flagged":
            lines.append("The robust accuracy cannot be trusted as it stands: "
                         f"{', '.join(v['trust_reasons'])} (see the checks).")
        elif v["trust"] == "no flag":
            lines.append("The gradient-masking checks raised no flag.")
        else:
            lines.append("The gradient-masking checks did not run: the number is not checked.")
        ex = v["explainers"]
        if any(ex.values()):
            parts = [f"{', '.join(ex[k])} {what}" for k, what in
                     (("passed", "passed"), ("failed", "FAILED"), ("unchecked", "not checked"))
                     if ex[k]]
            lines.append("Explainers' sanity checks: " + "; ".join(parts) + ".")
        lines += [f"Next: {s}" for s in v["next_steps"]]
        for it in v["items"]:
            see = f" (see {it['where']})" if it["where"] and it["where"] != "notes" else ""
            lines.append(f"FLAGGED {it['check']}: {it['sentence']}{see}" if it["kind"] == "flag"
                         else f"Note: {it['sentence']}{see}")
        return lines
