"""Robust accuracy of every attack at every eps, and the per-sample worst case."""

from __future__ import annotations

import time
from typing import Any

import torch

from scrutiny.attacks.base import adaptive_model
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register


def robust_key(eps: float) -> str:
    """Name of the per-sample robust mask at ``eps`` in :attr:`SectionResult.tensors`."""
    return f"robust@{eps!r}"


@register
class Robustness(Section):
    """The robustness curve: every attack of the configuration at every eps.

    Each attack at each eps is one unit of work, saved as soon as it is done
    (:attr:`Section.partial`), so a killed audit resumes after the last finished one.

    Tensors: ``robust@<eps>`` (bool per sample: every attack failed and the
    clean prediction was right) and ``x_adv`` (the worst case's adversarial
    inputs at the reference eps).
    """

    name = "robustness"
    title = "Robust accuracy against eps"
    display = 10

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.attacks()) * len(ctx.config.eps)

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg, x, y = ctx.config, ctx.x, ctx.y
        rows: dict[str, list[dict[str, Any]]] = {a: [] for a in ctx.attacks()}
        rows["worst case"] = []
        out = SectionResult(self.name)
        clean_ok = (ctx.pred == y).cpu()
        for i, eps in enumerate(cfg.eps):
            robust_all = clean_ok.clone()
            worst_x = x.clone()
            for name, attack in ctx.attacks().items():
                bar.step(f"{name} eps={eps:g}")
                # the black-box stage only tries what the white-box attacks left robust
                todo = robust_all if name == ctx.black_box_stage() else None
                unit = self._unit(ctx, name, i, eps, attack, keep_x=eps == cfg.reference_eps,
                                  todo=todo)
                robust = unit["robust"].bool()
                rows[name].append({
                    "eps": eps, "robust_accuracy": int(robust.sum()) / max(len(robust), 1),
                    "success_rate": float(unit["success_rate"]),
                    "median_norm": None if unit["median_norm"].isnan() else
                    float(unit["median_norm"]), "seconds": float(unit["seconds"]),
                    "adaptive": self._adaptive(ctx, attack)})
                if "x_adv" in unit:
                    broken = robust_all & ~robust
                    worst_x[broken] = unit["x_adv"][broken].to(worst_x)
                robust_all &= robust
                bar.advance()
            rows["worst case"].append({"eps": eps, "robust_accuracy": float(robust_all.float().mean())})
            out.tensors[robust_key(eps)] = robust_all
            if eps == cfg.reference_eps:
                out.tensors["x_adv"] = worst_x
        out.data = {"rows": rows, "attack_sets": attack_sets(ctx, rows)}
        out.figures.append(curve_figure(ctx, rows))
        return out

    def _unit(self, ctx: AuditContext, name: str, i: int, eps: float, attack: Any,
              keep_x: bool, todo: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One attack at one eps (on the samples ``todo`` marks; default all): loaded when a
        killed run finished it, else run and saved. Samples not attacked keep their
        robustness in ``todo``'s sense (True) and their clean input."""
        key = f"{name}_{i}"
        unit = self.partial.load(key)
        if unit is not None and (not keep_x or "x_adv" in unit):
            return unit
        ts = time.perf_counter()
        rows = torch.arange(len(ctx.x)) if todo is None else todo.nonzero()[:, 0]
        res = attack(ctx.model, ctx.x[rows], ctx.y[rows], threat=ctx.threat(eps), seed=ctx.seed)
        robust = torch.zeros(len(ctx.x), dtype=torch.bool) if todo is None else todo.clone()
        robust[rows] = (res.clean_correct & res.adv_correct).cpu()
        unit = {"robust": robust,
                "success_rate": torch.tensor(res.success_rate() if len(rows) else 0.0),
                "median_norm": torch.tensor(float(res.norms.median()) if len(res.norms)
                                            else float("nan")),
                "seconds": torch.tensor(time.perf_counter() - ts)}
        if keep_x:
            x_adv = ctx.x.clone().cpu()
            x_adv[rows] = res.x_adv.detach().cpu().to(x_adv)
            unit["x_adv"] = x_adv
        self.partial.save(key, unit)
        return unit

    @staticmethod
    def _adaptive(ctx: AuditContext, attack: Any) -> str | None:
        """How a white-box attack adapts to the audited model (BPDA, EOT), as the attack base
        decides it."""
        return adaptive_model(ctx.model)[1] if attack.tags.white_box else None


def attack_sets(ctx: AuditContext, rows: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """How each row's numbers were found: ``{attack: "white-box, BPDA+EOT (32 draws)"}``."""
    out = {}
    for name, rs in rows.items():
        if name == "worst case":
            continue
        info = ctx.create("attack", name)
        kind = "white-box" if info.tags.white_box else "black-box (no gradients)"
        if name == ctx.black_box_stage():
            kind += ", added for masked gradients, on the samples the white-box attacks left"
        how = next((r["adaptive"] for r in rs if r.get("adaptive")), None)
        if how:
            kind += f", {how}"
            if "EOT" in how:
                kind += f" ({ctx.probe.eot_samples} draws)"
        out[name] = kind
    return out


def curves(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[float, float]]]:
    """``{attack: [(eps, robust accuracy), ...]}`` of the section's rows."""
    return {k: [(r["eps"], r["robust_accuracy"]) for r in v] for k, v in rows.items()}


def curve_figure(ctx: AuditContext, rows: dict[str, list[dict[str, Any]]]) -> Figure:
    cfg = ctx.config
    if not ctx.draw:  # a shard's: the merged result draws the audit's
        return Figure("robustness_curve", "", "", b"", {})
    return Figure("robustness_curve", "Robust accuracy against eps",
                  f"Robust accuracy of each attack and of the per-sample worst case "
                  f"({cfg.norm}), on {len(ctx.x)} test samples.",
                  *figures.robustness_curve(curves(rows), cfg.norm))


def robust_at(ctx: AuditContext, done: dict[str, SectionResult], eps: float) -> torch.Tensor:
    """Per-sample robustness at ``eps`` after every attack that ran there (the headline
    attack's included at the reference eps)."""
    if eps == ctx.config.reference_eps and "headline" in done:
        return done["headline"].tensors["robust"]
    return done["robustness"].tensors[robust_key(eps)]


def rows_at(done: dict[str, SectionResult]) -> dict[str, list[dict[str, Any]]]:
    """The curve's rows (copies), the worst case with the headline attack included when it ran."""
    rows = {k: [dict(r) for r in v] for k, v in done["robustness"].data["rows"].items()}
    if "headline" in done:
        rows["worst case"] = [dict(r) for r in done["headline"].data["worst_case_rows"]]
    return rows


def adversarial_at_reference(done: dict[str, SectionResult]) -> torch.Tensor:
    """The worst-case adversarial inputs at the reference eps (the headline attack's included)."""
    return done["headline"].tensors["x_adv"] if "headline" in done \
        else done["robustness"].tensors["x_adv"]
