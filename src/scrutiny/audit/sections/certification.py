"""Certified accuracy on the first samples, next to the attacks' robust accuracy there."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.errors import InputError

#: Samples certified per saved chunk: a killed audit loses at most one chunk's work.
CHUNK = 16


@register
class Certification(Section):
    """What can be proven at the smallest nonzero eps and the reference eps, within a budget.

    The configured certifier (the base, default CROWN) certifies every one of the
    first ``cert_samples`` samples at both radii through the certifier protocol
    only (:class:`scrutiny.certify.base.Certifier`): the certifier declares the
    norms it certifies (``tags.norms``; a note when the audit's norm is not one
    of them), its parameters come from the audit's ``params``, and every sample's
    certificate at every radius comes from ``certified_at`` on chunks of
    :data:`CHUNK` samples, each saved as soon as it is done
    (:attr:`Section.partial`), so a killed audit resumes after the last finished
    chunk. Chunk ``i`` is certified with seed ``seed + i``.

    Then, while the section's budget (``AuditConfig.certify_seconds``, on top of the
    base's time) lasts, the stronger registered certifiers of :data:`LADDER` (IBP <
    CROWN < alpha-CROWN < beta-CROWN) try the samples still uncertified that no
    attack broke (a sample an attack broke cannot be certified): each is timed on
    a probe of :data:`PROBE` such samples, and the strongest whose estimate fits
    runs on the rest (see :meth:`_climb`). A sample is certified when any of the
    sound methods certifies it (the union; per sample, the first method that did);
    a randomized-smoothing base (it certifies the smoothed classifier) runs alone.

    Data (``result.json``): per radius, the certified accuracy beside the attacks'
    robust accuracy on the same samples, the gap between them (upper minus lower
    bound), which methods certified how many, the methods run and their seconds
    (:func:`certification_rows`), computed from the per-sample lists ``samples``
    (certified, by which method, seconds, methods tried, robust; radii x samples,
    indexed like the audit's first samples), so the lists of shards concatenated
    give the rows of the whole; every probe and run (``runs``) and every method
    not run on all the samples left, with its estimate and why (``skipped``).

    A sample certified that an attack broke is a soundness bug of a certifier
    (or an attack): a note here, and the masking checks flag it.
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
        spent = 0.0  # seconds of the finished units, loaded ones included (a resumed run agrees)
        log = _Log(len(radii), n)
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
                    t0 = time.perf_counter()
                    got = cert.certified_at(ctx.model, ctx.x[start:start + CHUNK],
                                            ctx.y[start:start + CHUNK], radii, norm=cfg.norm,
                                            bounds=ctx.model.bounds, seed=ctx.seed + i)
                    part = {"certified": torch.stack([got[e] for e in radii]),
                            "seconds": torch.tensor(time.perf_counter() - t0)}
                    self.partial.save(f"chunk{i}", part)
                masks.append(part["certified"])
                rows = torch.arange(start, min(start + CHUNK, n))
                secs = float(part.get("seconds", torch.tensor(0.0)))
                spent += secs
                for j in range(len(radii)):  # the chunk's time, shared by its samples and radii
                    log.add(j, cfg.certifier, rows, part["certified"][j][:len(rows)],
                            secs / len(radii))
                bar.advance()
                advanced += 1
        except InputError as e:  # unsupported layers
            out.notes.append(f"{cfg.certifier} certification was skipped: {e}")
            return out
        finally:
            bar.advance(n=len(chunks) - advanced)
        robust = torch.stack([robust_at(ctx, done, e)[:n].bool().cpu() for e in radii])
        ladder = stronger(cfg.certifier, cfg.norm, cert)
        if ladder:
            bar.step("certify: stronger methods within the budget")
            # the budget is on top of the base's time; a probe costs at least what the base
            # spent per sample and radius
            self._climb(ctx, radii, robust, ladder, log, spent / max(n * len(radii), 1))
        # a stochastic certifier (smoothing) certifies another classifier than the one attacked
        samples = {"eps": radii, **log.lists(), "robust": robust.tolist(),
                   "sound": not cert.tags.stochastic}
        rows = certification_rows(samples)
        for row in rows:
            row["attacks"] = _attacks(ctx, done, row["eps"])
        ran = [m for m in (cfg.certifier, *ladder) if any(m in r["methods_run"] for r in rows)]
        out.data = {"certifier": "+".join(ran), "base": cfg.certifier,
                    "params": cert.get_params(),
                    "params_by_method": {m: ctx.create("certifier", m).get_params()
                                         for m in ran},
                    "ladder": [cfg.certifier, *ladder], "budget_seconds": cfg.certify_seconds,
                    "n": n, "chunk": CHUNK, "rows": rows, "samples": samples,
                    "runs": log.runs, "skipped": log.skipped,
                    "seconds": time.perf_counter() - ts}
        for row in rows:
            if row["certified_broken"]:
                out.notes.append(
                    f"SOUNDNESS BUG: at eps={row['eps']:g}, samples {row['certified_broken']} "
                    "are certified and yet an attack broke them: a certifier "
                    f"({', '.join(row['methods_run'])}) or an attack is wrong, and neither "
                    "number can be trusted until it is found")
        out.tensors = {"certified": log.certified.clone()}
        return out

    def _climb(self, ctx: AuditContext, radii: list[float], robust: torch.Tensor,
               ladder: list[str], log: _Log, base_cost: float) -> float:
        """The stronger methods of ``ladder`` (weakest first) on the samples still uncertified
        and empirically robust, radius by radius (smallest first), within the budget left.

        Each radius gets an equal share of what is left (a share it leaves goes on to the
        next). A method is timed on a probe (:data:`PROBE` such samples and :data:`SPOT`
        correctly classified samples an attack broke: a soundness spot check; the probe's
        certificates count), and the strongest whose estimate (seconds per probed sample
        times the samples left) fits the share runs on the rest, chunk by chunk, stopping
        when the share is spent; the stronger methods are then estimated again on what is
        left. A method costs at least what a weaker one does per sample (``base_cost``
        seconds for the base) times its ``iterations`` (each step of alpha- or beta-CROWN's
        optimisation is at least one bound pass), so a probe that cannot fit is not started and the first
        method that does not fit ends the probes. Returns the seconds spent (the budget's
        measure: the units' recorded seconds, so a resumed run decides as the killed one
        did)."""
        budget, spent = ctx.config.certify_seconds, 0.0
        for j, eps in enumerate(radii):
            share_end = spent + (budget - spent) / (len(radii) - j)
            ok = (ctx.pred[:log.n] == ctx.y[:log.n]).cpu()
            broken = (~robust[j] & ok).nonzero()[:, 0].tolist()
            cost: dict[str, float] = {}  # seconds per sample, from the probe
            why: dict[str, dict[str, Any]] = {}  # the methods not run on every sample left

            first = 0  # ladder[first:] are the candidates
            while first < len(ladder) and bool((robust[j] & ~log.certified[j]).any()):
                best = None
                for m in ladder[first:]:
                    if m not in cost:
                        probe = log.left(j, m, robust[j])[:PROBE] + [
                            r for r in broken if r not in log.tried(j, m)][:SPOT]
                        # each of an optimising method's iterations costs at least one pass
                        # of the weaker method: a probe that cannot fit is not started
                        floor = max([c for c in cost.values() if math.isfinite(c)],
                                    default=base_cost) * _iterations(ctx, m)
                        if spent + floor * len(probe) >= share_end:
                            why[m] = {"estimate": floor * len(probe),
                                      "reason": "no time left to probe it (its probe would take "
                                                "at least its iterations times a weaker "
                                                "method's time per sample)"}
                            break
                        secs = self._unit(ctx, j, eps, m, probe, log, "probe",
                                          (share_end - spent) / max(len(probe), 1))
                        if not probe:
                            cost[m] = 0.0
                            continue
                        if secs is None:
                            cost[m] = math.inf
                            why[m] = {"estimate": None, "reason": log.refused[m]}
                            continue
                        spent += secs
                        cost[m] = secs / len(probe)
                    if not math.isfinite(cost[m]):
                        continue
                    estimate = cost[m] * len(log.left(j, m, robust[j]))
                    if estimate <= share_end - spent:
                        best = ladder.index(m)
                        continue
                    why[m] = {"estimate": estimate,
                              "reason": "its estimate does not fit the budget left"}
                    break
                if best is None:
                    break
                m, todo = ladder[best], log.left(j, ladder[best], robust[j])
                why.pop(m, None)
                for c in range(0, len(todo), CHUNK):
                    if spent >= share_end:
                        why[m] = {"estimate": None,
                                  "reason": f"budget spent after {c} of {len(todo)} samples"}
                        break
                    rows = todo[c:c + CHUNK]
                    spent += self._unit(ctx, j, eps, m, rows, log, "rest",
                                        (share_end - spent) / len(rows)) or 0.0
                first = best + 1
            if (robust[j] & ~log.certified[j]).any():
                for m in ladder:
                    if m not in cost and m not in why:
                        why[m] = {"estimate": None,
                                  "reason": "not probed: a weaker method did not fit"}
            for m, w in why.items():  # the timings under "seconds" (they vary run to run)
                log.skipped.append({"eps": eps, "method": m, "reason": w["reason"],
                                    "seconds": {"estimate": w["estimate"],
                                                "left": max(share_end - spent, 0.0)}})
        return spent

    def _unit(self, ctx: AuditContext, j: int, eps: float, method: str, rows: list[int],
              log: _Log, kind: str, cap: float | None = None) -> float | None:
        """``method`` certifying the samples ``rows`` at ``radii[j] = eps``: loaded when a
        killed run finished it, else run and saved; logged. A method with a per-sample
        ``time_budget`` (beta-CROWN's branch and bound) gets at most ``cap`` seconds per
        sample unless the audit's ``params`` set it. Its seconds, or None (with a note in
        the log) when the method refuses the model."""
        if not rows:
            return 0.0
        key = f"r{j}_{method}_{rows[0]}_{len(rows)}"
        part = self.partial.load(key)
        if part is None:
            t0 = time.perf_counter()
            idx = torch.tensor(rows)
            try:
                got = _capped(ctx, method, cap).certified_at(
                    ctx.model, ctx.x[idx], ctx.y[idx], [eps], norm=ctx.config.norm,
                    bounds=ctx.model.bounds, seed=ctx.seed + 1000 * (j + 1) + rows[0])[eps]
            except InputError as e:  # unsupported layers, norm
                log.refused[method] = f"refused the model: {e}"
                return None
            part = {"certified": got.bool(), "seconds": torch.tensor(time.perf_counter() - t0)}
            self.partial.save(key, part)
        secs = float(part["seconds"])
        log.add(j, method, torch.tensor(rows), part["certified"], secs)
        log.runs.append({"eps": eps, "method": method, "kind": kind, "samples": len(rows),
                         "certified": int(part["certified"].sum()), "seconds": secs})
        return secs


#: The deterministic certifiers by strength, weakest first: for the same sample and eps a
#: stronger one certifies whatever a weaker one does (CROWN intersects IBP's bounds,
#: alpha-CROWN starts from CROWN's slopes, beta-CROWN's branch and bound from alpha-CROWN's
#: bounds). The section looks them up by name: one not registered is left out.
LADDER = ("ibp", "crown", "alpha_crown", "beta_crown")
#: Samples a stronger method is timed on before the section decides whether it fits.
PROBE = 2
def _iterations(ctx: AuditContext, method: str) -> int:
    """The optimisation steps of ``method`` as the audit creates it (``iterations``: alpha- and
    beta-CROWN), 1 for a method that has none."""
    steps = ctx.create("certifier", method).get_params().get("iterations", 1)
    return max(1, int(steps)) if isinstance(steps, int | float) else 1


#: Correctly classified samples an attack broke that each stronger method's probe also
#: certifies: a spot check of its soundness (a certificate there is a bug).
SPOT = 1


def stronger(name: str, norm: str, base: Any = None) -> list[str]:
    """The registered certifiers of :data:`LADDER` above ``name`` that certify ``norm``, weakest
    first; none for a certifier outside the ladder (randomized smoothing certifies another
    classifier, the smoothed one, and a certifier of one's own is run alone) or a
    stochastic ``base``.

    Examples
    --------
    >>> stronger("crown", "linf")[:1], stronger("smoothing", "l2")
    (['alpha_crown'], [])
    """
    if name not in LADDER or (base is not None and base.tags.stochastic):
        return []
    have = set(registry.list_methods("certifier"))
    return [m for m in LADDER[LADDER.index(name) + 1:] if f"certifier:{m}" in have
            and norm in registry.get(m, "certifier").cls.tags.norms]


class _Log:
    """Per radius and sample: certified (the union), by which method first, seconds spent,
    methods tried; and the section's runs, skipped methods and refusals."""

    def __init__(self, radii: int, n: int) -> None:
        self.n = n
        self.certified = torch.zeros(radii, n, dtype=torch.bool)
        self.method: list[list[str | None]] = [[None] * n for _ in range(radii)]
        self.seconds = torch.zeros(radii, n, dtype=torch.float64)
        self._tried: list[list[list[str]]] = [[[] for _ in range(n)] for _ in range(radii)]
        self.runs: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.refused: dict[str, str] = {}

    def add(self, j: int, method: str, rows: torch.Tensor, certified: torch.Tensor,
            seconds: float) -> None:
        """``method`` tried ``rows`` at radius ``j`` in ``seconds``, certifying ``certified``."""
        for r, c in zip(rows.tolist(), certified.tolist(), strict=True):
            self._tried[j][r].append(method)
            if c and not self.certified[j, r]:
                self.certified[j, r] = True
                self.method[j][r] = method
        self.seconds[j, rows] += seconds / max(len(rows), 1)

    def tried(self, j: int, method: str) -> set[int]:
        """Samples ``method`` tried at radius ``j``."""
        return {r for r, ms in enumerate(self._tried[j]) if method in ms}

    def left(self, j: int, method: str, robust: torch.Tensor) -> list[int]:
        """Samples empirically robust (``robust``), not certified at radius ``j`` and not
        tried by ``method``."""
        tried = self.tried(j, method)
        return [r for r in (robust & ~self.certified[j]).nonzero()[:, 0].tolist()
                if r not in tried]

    def lists(self) -> dict[str, list[Any]]:
        """The per-sample lists of ``result.json`` (radii x samples)."""
        return {"certified": self.certified.tolist(), "method": self.method,
                "seconds": self.seconds.tolist(), "tried": self._tried}


def certification_rows(samples: dict[str, Any]) -> list[dict[str, Any]]:
    """The section's rows (one per radius) from its per-sample lists.

    ``samples`` holds ``eps`` (the radii) and, radii x samples, ``certified``,
    ``method`` (which certified it, None), ``seconds``, ``tried`` (the methods that
    tried it) and ``robust`` (no attack broke it). Lists of several runs on
    disjoint samples (shards) concatenated along the samples give the rows of all.
    A row: ``certified_accuracy`` (the union of the methods' certificates),
    ``robust_accuracy`` (the attacks'), their ``gap`` (upper minus lower bound),
    ``certified_by`` (method: count), ``methods_run`` (weakest first), ``seconds``,
    ``certified_broken`` (samples certified that an attack broke: a soundness bug; None
    where ``samples["sound"]`` is False: the certificates are about another classifier,
    the smoothed one, than the attacks').

    Examples
    --------
    >>> rows = certification_rows({"eps": [0.1], "certified": [[True, False]],
    ...     "method": [["crown", None]], "seconds": [[1.0, 2.0]],
    ...     "tried": [[["crown"], ["crown", "alpha_crown"]]], "robust": [[True, True]],
    ...     "sound": True})
    >>> {k: rows[0][k] for k in ("certified_accuracy", "gap", "methods_run", "seconds")}
    {'certified_accuracy': 0.5, 'gap': 0.5, 'methods_run': ['crown', 'alpha_crown'], 'seconds': 3.0}
    """
    rows = []
    for j, eps in enumerate(samples["eps"]):
        cert, robust = samples["certified"][j], samples["robust"][j]
        n = len(cert)
        ca = sum(cert) / n if n else math.nan
        ra = sum(robust) / n if n else math.nan
        by: dict[str, int] = {}
        for m in samples["method"][j]:
            if m is not None:
                by[m] = by.get(m, 0) + 1
        ran: list[str] = []
        for ms in samples["tried"][j]:
            ran += [m for m in ms if m not in ran]
        ran.sort(key=lambda m: LADDER.index(m) if m in LADDER else -1)
        rows.append({"eps": eps, "certified_accuracy": ca, "robust_accuracy": ra,
                     "gap": ra - ca, "certified_by": by, "methods_run": ran,
                     "seconds": float(sum(samples["seconds"][j])),
                     "certified_broken": [i for i in range(n) if cert[i] and not robust[i]]
                     if samples.get("sound", True) else None})
    return rows


def _attacks(ctx: AuditContext, done: dict[str, SectionResult], eps: float) -> str:
    """The attacks behind the robust accuracy at ``eps`` (:func:`robust_at`'s)."""
    names = list(ctx.attacks())
    if eps == ctx.config.reference_eps and "headline" in done and ctx.config.headline_attack:
        names.append(ctx.config.headline_attack)
    return ", ".join(names)


def _capped(ctx: AuditContext, method: str, cap: float | None) -> Any:
    """The audit's ``method``, its per-sample ``time_budget`` (when it has one and the audit's
    params leave it) at most ``cap`` seconds."""
    cert = ctx.create("certifier", method)
    own = getattr(cert, "time_budget", None)
    if cap is None or not isinstance(own, int | float) or own <= cap \
            or "time_budget" in ctx.config.params.get(method, {}):
        return cert
    return registry.create(f"certifier:{method}",
                           **{**ctx.config.params.get(method, {}), "time_budget": max(cap, 0.01)})
