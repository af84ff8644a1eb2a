"""Sharded audits: the per-sample sections run on shards of the samples, here or on Ray.

An audit with a shard size (``run_audit(..., shard_size=k)``, ``scrutiny audit
--shard-size k``) splits its samples, in the audit's order, into shards of ``k``
(the last one shorter). The per-sample sections (:data:`MERGERS`: the robustness
curve, the headline attack, certification) run on each shard as one unit of work,
on a copy of the context that holds the shard's samples only and the seed
:func:`shard_seed` derives from the audit's seed and the dataset index of the
shard's first sample; :func:`merge` joins the shards' results into the results of
the whole audit. The model-level sections (checks, examples, explanations and
trust on the example samples, the game matrix, queries, learned features,
backdoor scan, privacy, the verdict) then run once on the merged results.

A backend runs the shards: :class:`LocalBackend` one after the other in this
process, :class:`RayBackend` on the actors of a Ray cluster (``pip install
"scrutiny[ray]"``). Both run the same :func:`run_shard` on the same shard
contexts and the driver merges with the same :func:`merge`, so for a given shard
size the numbers do not depend on the backend nor on the number of workers (on
the same kind of device, with deterministic kernels). They do depend on the
shard size: the attacks draw one generator per batch, and a shard is a batch.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch

from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.errors import InputError

__all__ = ["DEFAULT_SHARD_SIZE", "MERGERS", "LocalBackend", "RayBackend", "get_backend", "merge", "run_shard",
           "shard_bounds", "shard_context", "shard_seed"]


#: The shard size of a run with a backend and no shard size (``--backend ray`` alone): the
#: local run with ``--shard-size 64`` gives its numbers.
DEFAULT_SHARD_SIZE = 64


def shard_seed(seed: int, first: int) -> int:
    """The seed of the shard whose first sample is ``first`` in the dataset, under the audit's
    ``seed``: a hash of both, so it does not depend on the shard's position or size.

    Examples
    --------
    >>> shard_seed(0, 17) == shard_seed(0, 17), shard_seed(0, 17) == shard_seed(1, 17)
    (True, False)
    """
    digest = hashlib.sha256(f"scrutiny-shard|{int(seed)}|{int(first)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shard_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each shard of ``n`` samples in shards of ``size``.

    Examples
    --------
    >>> shard_bounds(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    if int(size) < 1:
        raise InputError(f"the shard size must be >= 1, got {size}")
    return [(a, min(a + int(size), n)) for a in range(0, n, int(size))]


def shard_context(ctx: AuditContext, start: int, stop: int) -> AuditContext:
    """The context of the shard ``ctx.x[start:stop]``: its samples, clean predictions and
    dataset indices, the seed :func:`shard_seed`, and the certified samples (the audit's
    first ``cert_samples``) that fall in it; everything else is the audit's."""
    cfg = ctx.config
    n = stop - start
    cert = max(0, min(cfg.cert_samples - start, n))
    sub = replace(cfg, seed=shard_seed(cfg.seed, int(ctx.idx[start])), n_samples=n,
                  cert_samples=max(cert, 1),
                  certifier=cfg.certifier if cert else None)
    pred = ctx.pred[start:stop]
    y = ctx.y[start:stop]
    return replace(ctx, config=sub, idx=ctx.idx[start:stop], x=ctx.x[start:stop], y=y, pred=pred,
                   clean_accuracy=float((pred == y).float().mean()), notes=[], draw=False,
                   _methods={})


class _NoBar:
    """The progress bar of a shard: shows nothing."""

    completed = 0

    def step(self, text: str) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def run_shard(ctx: AuditContext, names: list[str], start: int, stop: int
              ) -> dict[str, SectionResult]:
    """Run the per-sample sections ``names`` (in order) on the shard ``[start, stop)`` of the
    audit's samples; their results by name (a section the shard skips is left out)."""
    from scrutiny.audit.sections import SECTIONS

    sub = shard_context(ctx, start, stop)
    done: dict[str, SectionResult] = {}
    for name in names:
        section = SECTIONS[name]()
        if section.skip_reason(sub) is not None:
            continue
        ts = time.perf_counter()
        result = section.run(sub, done, _NoBar())
        result.seconds = time.perf_counter() - ts
        done[name] = result
    return done


def _union(lists: Any) -> list[Any]:
    """Items of the lists in order, each once."""
    out: list[Any] = []
    for items in lists:
        out += [i for i in items if i not in out]
    return out


def _weighted_median(values: list[tuple[float, int]]) -> float | None:
    """The median of ``values`` (value, weight), each counted weight times."""
    if not values:
        return None
    values = sorted(values)
    half, acc = sum(w for _, w in values) / 2, 0
    for v, w in values:
        acc += w
        if acc >= half:
            return v
    return values[-1][0]


def _merge_robustness(ctx: AuditContext, parts: list[SectionResult], sizes: list[int],
                      done: dict[str, SectionResult]) -> SectionResult:
    """The curve of the whole audit: each attack's robust count and seconds summed over the
    shards, its success rate the shard-size weighted mean and its median norm the weighted
    median of the shards' medians; the worst case from the joined per-sample masks."""
    from scrutiny.audit.sections.robustness import attack_sets, curve_figure, robust_key

    total = sum(sizes)
    rows: dict[str, list[dict[str, Any]]] = {}
    for name, first in parts[0].data["rows"].items():
        if name == "worst case":
            continue
        rows[name] = []
        for j, row in enumerate(first):
            rs = [p.data["rows"][name][j] for p in parts]
            robust = sum(round(r["robust_accuracy"] * n) for r, n in zip(rs, sizes, strict=True))
            rows[name].append({
                "eps": row["eps"], "robust_accuracy": robust / total,
                "success_rate": sum(r["success_rate"] * n for r, n in zip(rs, sizes, strict=True))
                / total,
                "median_norm": _weighted_median([(r["median_norm"], n) for r, n in
                                                 zip(rs, sizes, strict=True)
                                                 if r["median_norm"] is not None]),
                "seconds": sum(r["seconds"] for r in rs),
                "adaptive": next((r["adaptive"] for r in rs if r.get("adaptive")), None)})
    out = SectionResult(parts[0].name, notes=_union(p.notes for p in parts),
                        tensors={k: torch.cat([p.tensors[k] for p in parts])
                                 for k in parts[0].tensors})
    rows["worst case"] = [{"eps": e, "robust_accuracy":
                           float(out.tensors[robust_key(e)].float().mean())}
                          for e in ctx.config.eps]
    out.data = {"rows": rows, "attack_sets": attack_sets(ctx, rows)}
    out.figures.append(curve_figure(ctx, rows))
    return out


def _merge_headline(ctx: AuditContext, parts: list[SectionResult], sizes: list[int],
                    done: dict[str, SectionResult]) -> SectionResult:
    """The headline of the whole audit from the joined per-sample masks and adversarial
    inputs; the strong attack's stage log summed over the shards."""
    from scrutiny.audit.sections.headline import max_perturbation, perturbation_flags
    from scrutiny.audit.sections.robustness import curve_figure

    cfg, n = ctx.config, sum(sizes)
    robust = torch.cat([p.tensors["robust"] for p in parts])
    x_adv = torch.cat([p.tensors["x_adv"] for p in parts])
    first = parts[0].data
    strong, attacked = None, 0
    if first.get("strong_attack") is not None:
        attacked = sum(p.data["strong_attack"]["samples_attacked"] for p in parts)
        stages: dict[str, dict[str, Any]] = {}
        for p in parts:
            for st in p.data["strong_attack"]["stages"]:
                acc = stages.setdefault(st["name"], {"name": st["name"], "robust_samples": 0,
                                                     "seconds": 0.0, "queries": 0,
                                                     "budget_exhausted": 0})
                for k in ("robust_samples", "seconds", "queries", "budget_exhausted"):
                    acc[k] += st.get(k, 0)
        for st in stages.values():
            st["robust_accuracy"] = st["robust_samples"] / attacked if attacked else None
            st["overall_robust_accuracy"] = st["robust_samples"] / n
        strong = {**first["strong_attack"],
                  "seconds": sum(p.data["strong_attack"]["seconds"] for p in parts),
                  "samples_attacked": attacked, "overall_before": attacked / n if n else None,
                  "stages": list(stages.values())}
    notes = [t for t in _union(p.notes for p in parts)  # a shard's is not the audit's
             if not (attacked and t.startswith(f"{cfg.headline_attack} had nothing to attack"))]
    out = SectionResult(parts[0].name, notes=notes, tensors={"robust": robust, "x_adv": x_adv})
    largest = max_perturbation(x_adv, ctx.x, cfg.norm, cfg.reference_eps)
    out.flags += perturbation_flags(ctx, x_adv)
    rows = {k: [dict(r) for r in v] for k, v in done["robustness"].data["rows"].items()}
    for row in rows["worst case"]:
        if row["eps"] == cfg.reference_eps:
            row["robust_accuracy"] = int(robust.sum()) / n
    out.figures.append(curve_figure(ctx, rows))
    out.data = {**first, "robust_accuracy": int(robust.sum()) / n if n else None,
                "strong_attack": strong, "clean_accuracy": ctx.clean_accuracy,
                "worst_case_rows": rows["worst case"], "max_perturbation": largest}
    return out


def _merge_certification(ctx: AuditContext, parts: list[SectionResult], sizes: list[int],
                         done: dict[str, SectionResult]) -> SectionResult:
    """Certification of the audit's first ``cert_samples``: the shards' per-sample
    certificates joined (``certified``: radii x samples), the rows recomputed from them;
    a shard that certified nothing (a skip, with its note) leaves the section's notes only."""
    from scrutiny.audit.sections.robustness import robust_at

    out = SectionResult(parts[0].name, notes=_union(p.notes for p in parts),
                        flags=[f for p in parts for f in p.flags])
    if not all("certified" in p.tensors for p in parts):
        return out
    # each shard's first n columns: its certified samples (a last chunk may hold more)
    certified = torch.cat([p.tensors["certified"][:, :p.data["n"]] for p in parts], dim=1)
    n = certified.shape[1]
    first = parts[0].data
    extra: dict[str, Any] = {}
    if "samples" in first:  # per-sample lists (radii x samples): joined, the rows from them
        from scrutiny.audit.sections.certification import certification_rows

        samples = {k: ([sum((p.data["samples"][k][j] for p in parts), [])
                        for j in range(len(v))] if k != "eps" and isinstance(v, list) else v)
                   for k, v in first["samples"].items()}
        if "sound" in samples:
            samples["sound"] = all(p.data["samples"]["sound"] for p in parts)
        rows = [{**old, **new} for old, new in zip(first["rows"], certification_rows(samples),
                                                   strict=True)]
        extra = {"samples": samples, "runs": [r for p in parts for r in p.data.get("runs", [])],
                 "skipped": [r for p in parts for r in p.data.get("skipped", [])]}
    else:
        rows = [{**row, "certified_accuracy": float(certified[j].float().mean()),
                 "robust_accuracy": float(robust_at(ctx, done, row["eps"])[:n].float().mean())}
                for j, row in enumerate(first["rows"])]
    chosen = _union([[p.data.get("certifier")] for p in parts])
    if len(chosen) > 1:
        out.notes.append(f"the shards were certified by different methods: {chosen}")
    out.data = {**first, "n": n, "rows": rows, **extra,
                "seconds": sum(p.data["seconds"] for p in parts)}
    out.tensors = {"certified": certified}
    return out


#: The per-sample sections a sharded audit runs on each shard, and how each joins its shards'
#: results into the audit's (``merger(ctx, parts, sizes, done)``; ``done`` holds the merged
#: sections it reads). The others run once, on the merged results.
MERGERS: dict[str, Callable[..., SectionResult]] = {
    "robustness": _merge_robustness, "headline": _merge_headline,
    "certification": _merge_certification}


def merge(ctx: AuditContext, names: list[str], bounds: list[tuple[int, int]],
          shards: list[dict[str, SectionResult]]) -> dict[str, SectionResult]:
    """Join the shards' results (``shards[i]`` ran on ``bounds[i]``) into the audit's, by name.

    A section only some shards ran (certification: the shards holding the first
    ``cert_samples``) is merged over those."""
    done: dict[str, SectionResult] = {}
    for name in names:
        got = [(s[name], b - a) for s, (a, b) in zip(shards, bounds, strict=True) if name in s]
        if not got:
            continue
        parts, sizes = [p for p, _ in got], [k for _, k in got]
        done[name] = MERGERS[name](ctx, parts, sizes, done)
        done[name].seconds = sum(p.seconds for p in parts)
    return done


class LocalBackend:
    """Runs the shards one after the other in this process.

    Examples
    --------
    >>> LocalBackend().workers
    1
    """

    workers = 1

    def run(self, ctx: AuditContext, names: list[str], todo: list[tuple[int, int]]
            ) -> Iterator[tuple[tuple[int, int], dict[str, SectionResult]]]:
        """Each shard of ``todo`` with its results, as each finishes."""
        for start, stop in todo:
            yield (start, stop), run_shard(ctx, names, start, stop)


class _ShardWorker:
    """A Ray actor's state: the audit's context, received once (the model loaded once)."""

    def __init__(self, ctx: AuditContext, threads: int, gpu: bool) -> None:
        torch.set_num_threads(threads)
        if gpu and torch.cuda.is_available() and isinstance(ctx.model, torch.nn.Module):
            ctx.model.to("cuda")  # the GPU Ray gave this actor
        self.ctx = ctx

    def run(self, start: int, stop: int, names: list[str]
            ) -> tuple[tuple[int, int], dict[str, SectionResult]]:
        return (start, stop), run_shard(self.ctx, names, start, stop)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise InputError("--backend ray needs Ray: pip install 'scrutiny[ray]' (the 'ray' "
                         "extra)") from e
    return ray


class RayBackend:
    """Runs the shards on ``workers`` Ray actors, each holding the model (on a GPU where the
    cluster has one: ``num_gpus=1`` per actor) and running one shard at a time with
    ``threads`` torch threads.

    ``address`` connects to a running cluster (``ray://host:10001`` or ``auto``); without it a
    local Ray instance starts with ``num_cpus=workers``, no dashboard, no usage statistics
    and an object store of ``object_store_mb`` MiB, and stops when the run ends. When Ray is
    already initialised in this process, that instance is used as it is. Results come back
    as each shard finishes, so the driver saves them at once: a killed driver or worker
    loses only the shards in progress.
    """

    def __init__(self, *, address: str | None = None, workers: int = 2, threads: int = 1,
                 object_store_mb: int = 256) -> None:
        if int(workers) < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.address, self.workers, self.threads = address, int(workers), int(threads)
        self.object_store_mb = int(object_store_mb)
        self.actors: list[Any] = []

    def check(self) -> None:
        """Raise an :class:`InputError` naming the ``ray`` extra when Ray is not installed."""
        _import_ray()

    def _init(self, ray: Any) -> bool:
        """Start or join Ray; True when this call started it (and must stop it)."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
        if self.address is not None:
            ray.init(address=self.address, **kw)
        else:
            ray.init(num_cpus=self.workers, object_store_memory=self.object_store_mb * 2**20, **kw)
        return True

    def run(self, ctx: AuditContext, names: list[str], todo: list[tuple[int, int]]
            ) -> Iterator[tuple[tuple[int, int], dict[str, SectionResult]]]:
        """Each shard of ``todo`` with its results, in the order they finish."""
        if not todo:
            return
        ray = _import_ray()
        started = self._init(ray)
        try:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            worker = ray.remote(num_cpus=1, num_gpus=gpus)(_ShardWorker)
            ref = ray.put(replace(ctx, _methods={}))
            self.actors = [worker.remote(ref, self.threads, bool(gpus))
                           for _ in range(min(self.workers, len(todo)))]
            queue = list(todo)
            running: dict[Any, Any] = {}
            for actor in self.actors:  # one shard per actor at a time, the next when it is done
                if queue:
                    running[actor.run.remote(*queue.pop(0), names)] = actor
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(ready[0])
                bounds, results = ray.get(ready[0])
                if queue:
                    running[actor.run.remote(*queue.pop(0), names)] = actor
                yield bounds, results
        finally:
            for actor in self.actors:
                ray.kill(actor)
            self.actors = []
            if started:
                ray.shutdown()


def get_backend(name: str, *, address: str | None = None, workers: int | None = None
                ) -> LocalBackend | RayBackend:
    """The backend ``name`` (``local`` or ``ray``; see :class:`RayBackend` for the others).

    Examples
    --------
    >>> type(get_backend("local")).__name__
    'LocalBackend'
    """
    if name == "local":
        if address is not None:
            raise InputError(f"--address {address} is for --backend ray")
        return LocalBackend()
    if name == "ray":
        return RayBackend(address=address, workers=2 if workers is None else workers)
    raise InputError(f"unknown backend {name!r}; accepted: local, ray")
