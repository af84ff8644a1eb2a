"""The headline number: the strong attack at the reference eps on what the curve left robust."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit.checks import Flag
from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import curve_figure, robust_key

#: Samples per saved chunk of the headline attack. Smaller chunks lose less work to a
#: kill but cost more: the ensemble's query stage (Square) spends its time in per-iteration
#: Python work that does not shrink with the batch. 128 keeps the default audit's headline
#: in two or three chunks of a few minutes each on one CPU core.
CHUNK = 128


def perturbation_flags(ctx: AuditContext, x_adv: torch.Tensor) -> list[Flag]:
    """A "perturbation above eps" flag when an adversarial input of ``x_adv`` (the audit's
    samples' worst case at the reference eps) is farther than eps from its sample."""
    cfg = ctx.config
    largest = max_perturbation(x_adv, ctx.x, cfg.norm, cfg.reference_eps)
    if largest["within_eps"]:
        return []
    return [Flag("perturbation above eps", True,
                 f"the largest {cfg.norm} perturbation of the adversarial inputs is "
                 f"{largest['value']:.4g} > eps = {cfg.reference_eps:g}: an attack left the "
                 "threat model, so the robust accuracy is too low; report it as a bug",
                 dict(largest))]


@register
class Headline(Section):
    """Worst case over the curve's attacks and the headline attack (default ``worst_case``).

    The headline attack only tries the samples the curve's attacks left robust at
    the reference eps; when they broke every sample it has nothing to do. It runs on
    chunks of :data:`CHUNK` samples, each saved as soon as it is done
    (:attr:`Section.partial`), so a killed audit loses at most one chunk's work.
    The stage log (``data["strong_attack"]["stages"]``) follows AutoAttack's: after each
    stage, ``overall_robust_accuracy`` over every audited sample (the curve's attacks broke
    the others; ``overall_before`` is the level the stages start from), next to
    ``robust_accuracy`` over the attacked samples, ``robust_samples``, ``seconds``,
    ``queries`` and ``budget_exhausted``. ``data["max_perturbation"]`` is the largest
    perturbation norm of the adversarial inputs checked against eps
    (:func:`max_perturbation`); one above eps raises a flag.

    Tensors: ``robust`` and ``x_adv`` at the reference eps.
    """

    name = "headline"
    title = "Headline"
    group = "top"
    needs = ("robustness",)
    display = 0

    def steps(self, ctx: AuditContext) -> int:
        # one step per chunk; how many samples the curve leaves is known only when it ran,
        # so the bar counts the most there can be
        return -(-len(ctx.x) // CHUNK) if ctx.config.headline_attack else 0

    def _chunk(self, ctx: AuditContext, attack: Any, i: int, rows: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """The headline attack on one chunk of samples: loaded when a killed run finished it."""
        unit = self.partial.load(f"chunk{i}")
        if unit is not None and len(unit["held"]) == len(rows) and "stage_names" in unit:
            return unit
        ts = time.perf_counter()
        res = attack(ctx.model, ctx.x[rows], ctx.y[rows], threat=ctx.threat(), seed=ctx.seed)
        log = res.meta.get("stages", [])
        unit = {"held": (res.clean_correct & res.adv_correct).cpu(),
                "x_adv": res.x_adv.detach().cpu(),
                "seconds": torch.tensor(time.perf_counter() - ts),
                # per stage: samples left robust, seconds, queries, budget cuts
                "stages": torch.tensor([[round(st["robust_accuracy"] * len(rows)), st["seconds"],
                                         st.get("queries", 0), st.get("budget_exhausted", 0)]
                                        for st in log], dtype=torch.float64).reshape(-1, 4),
                # and their names, as the ensemble wrote them (utf-8 bytes of a JSON list)
                "stage_names": torch.tensor(list(json.dumps([st["name"] for st in log]).encode()),
                                            dtype=torch.uint8)}
        self.partial.save(f"chunk{i}", unit)
        return unit

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
                attack = headline_attack(ctx)
                for i in range(0, len(todo), CHUNK):
                    rows = todo[i:i + CHUNK]
                    bar.step(f"{cfg.headline_attack} {min(i + CHUNK, len(todo))}/{len(todo)}")
                    unit = self._chunk(ctx, attack, i // CHUNK, rows)
                    held = unit["held"].bool()
                    broken = rows[~held]
                    x_adv[broken] = unit["x_adv"][~held].to(x_adv)
                    robust[broken] = False
                    stages = _add_stages(stages, unit)
                    bar.advance()
                for st in stages:  # robust counts -> accuracies over the attacked samples, and
                    # (AutoAttack's log) over every audited sample: the others are broken already
                    st["robust_samples"] = round(st.pop("robust"))
                    st["robust_accuracy"] = st["robust_samples"] / len(todo)
                    st["overall_robust_accuracy"] = st["robust_samples"] / len(ctx.x)
            else:
                out.notes.append(f"{cfg.headline_attack} had nothing to attack: the curve's "
                                 f"attacks broke every sample at eps={cfg.reference_eps:g}")
            strong = {"name": cfg.headline_attack, "seconds": time.perf_counter() - ts,
                      "samples_attacked": len(todo),
                      "overall_before": len(todo) / len(ctx.x) if len(ctx.x) else None,
                      "stages": stages}
            used.append(cfg.headline_attack)
        out.tensors = {"robust": robust, "x_adv": x_adv}
        largest = max_perturbation(x_adv, ctx.x, cfg.norm, cfg.reference_eps)
        out.flags += perturbation_flags(ctx, x_adv)
        # the worst case at the reference eps now includes the headline attack: the curve too
        rows = {k: [dict(r) for r in v] for k, v in base.data["rows"].items()}
        for row in rows["worst case"]:
            if row["eps"] == cfg.reference_eps:
                row["robust_accuracy"] = int(robust.sum()) / len(robust)
        out.figures.append(curve_figure(ctx, rows))
        out.data = {"attack": "worst case over " + ", ".join(dict.fromkeys(used)), "norm": cfg.norm,
                    "eps": cfg.reference_eps,
                    "robust_accuracy": int(robust.sum()) / len(robust) if len(robust) else None,
                    "strong_attack": strong, "clean_accuracy": ctx.clean_accuracy,
                    "attacks_used": used, "worst_case_rows": rows["worst case"],
                    "max_perturbation": largest}
        return out


#: Slack of :func:`max_perturbation`'s check: float32 rounding of ``x + delta`` (clipped to
#: the bounds) moves a norm by a few units in the last place.
NORM_TOLERANCE = 1e-5


def max_perturbation(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float
                     ) -> dict[str, Any]:
    """The largest ``norm`` of ``x_adv - x`` over the samples, checked against ``eps``.

    Returns ``norm``, ``value`` (0 when no input was changed), ``eps``, ``changed`` (the
    samples whose input differs) and ``within_eps`` (``value <= eps`` up to
    :data:`NORM_TOLERANCE`, relative and absolute), as AutoAttack checks its output.

    Examples
    --------
    >>> x = torch.zeros(3, 4)
    >>> x_adv = x.clone(); x_adv[0, 1] = 0.1; x_adv[2] = -0.05
    >>> m = max_perturbation(x_adv, x, "linf", 0.1)
    >>> round(m["value"], 4), m["changed"], m["within_eps"]
    (0.1, 2, True)
    >>> max_perturbation(x_adv, x, "l2", 0.1)["within_eps"]  # sample 2: 0.05 * sqrt(4)
    True
    """
    delta = (x_adv.detach().cpu().double() - x.detach().cpu().double()).flatten(1)
    order = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}[norm]
    norms = torch.linalg.vector_norm(delta, ord=order, dim=1) if len(delta) \
        else torch.zeros(0, dtype=torch.float64)
    value = float(norms.max()) if len(norms) else 0.0
    return {"norm": norm, "value": value, "eps": float(eps), "changed": int((norms > 0).sum()),
            "within_eps": value <= eps * (1 + NORM_TOLERANCE) + NORM_TOLERANCE}


#: AutoAttack's version for randomized defenses (Croce, Hein 2020, "rand"): APGD with the
#: cross-entropy and with the DLR loss, each differentiating EOT-averaged gradients.
RANDOMIZED_STAGES: tuple[Any, ...] = ("apgd", ("apgd", {"loss": "dlr"}))


def headline_attack(ctx: AuditContext) -> Any:
    """The configured headline attack; for a randomized model and the default worst-case
    ensemble without parameters, AutoAttack's "rand" stages (the others' cost times the EOT
    draws would be out of proportion, and a black-box stage reads noisy scores)."""
    cfg = ctx.config
    if ctx.probe.randomized and cfg.headline_attack == "worst_case" \
            and "worst_case" not in cfg.params:
        return registry.create("attack:worst_case", attacks=RANDOMIZED_STAGES)
    return ctx.create("attack", cfg.headline_attack)


def _add_stages(stages: list[dict[str, Any]], unit: dict[str, torch.Tensor]
                ) -> list[dict[str, Any]]:
    """Add one chunk's stage log (robust counts, seconds, queries, cuts) to the running total."""
    names = json.loads(bytes(unit["stage_names"].tolist()).decode())
    out = stages or [{"name": k, "robust": 0.0, "seconds": 0.0, "queries": 0,
                      "budget_exhausted": 0} for k in names]
    for st, (robust, secs, queries, cut) in zip(out, unit["stages"].tolist(), strict=False):
        st["robust"] += robust
        st["seconds"] += secs
        st["queries"] += int(queries)
        st["budget_exhausted"] += int(cut)
    return out
