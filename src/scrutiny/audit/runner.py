"""The main job: build the audit's context once, run its sections, collect the result."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from scrutiny import registry
from scrutiny.audit.checks import Flag
from scrutiny.audit.config import DEFAULT_EPS, AuditConfig
from scrutiny.audit.context import AuditContext, Figure, SectionResult, _digest, build_context
from scrutiny.audit.sections import SECTIONS, resolve
from scrutiny.audit.sections.base import endpoint_skip
from scrutiny.audit.sections.robustness import rows_at
from scrutiny.audit.shards import MERGERS, get_backend, merge, shard_bounds
from scrutiny.audit.store import SectionStore, ShardStore, section_key
from scrutiny.data import ArrayDataset
from scrutiny.errors import ModelUnavailableError
from scrutiny.progress import progress_bar

__all__ = ["DEFAULT_EPS", "AuditConfig", "AuditResult", "Figure", "build_context", "run_audit"]


@dataclass
class AuditResult:
    """Everything the report shows: each section's result, and the summary fields.

    ``sections`` maps a section's name to its :class:`SectionResult`; the other
    fields are views of them kept for the report and ``result.json``. ``probe``
    is what the audit measured of the model before any attack
    (:class:`~scrutiny.audit.checks.ModelProbe`: randomness, masked gradients).
    ``endpoint``, for a model only queried, is what it was asked in this run (URL,
    queries, requests, seconds per query: ``HttpModel.usage``; never a credential).
    """

    model: str
    dataset: str
    n_samples: int
    clean_accuracy: float
    robustness: dict[str, list[dict[str, Any]]]
    headline: dict[str, Any]
    explanations: dict[str, dict[str, Any]]
    methods: list[dict[str, str]]
    trust: dict[str, dict[str, Any]]
    matrix: dict[str, Any] | None
    comparison: dict[str, Any] | None
    certification: dict[str, Any] | None
    queries: dict[str, dict[str, Any]]
    config: AuditConfig
    probe: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    seconds: float = 0.0
    sections: dict[str, SectionResult] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    endpoint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (figures as their names, no pixels or per-sample tensors)."""
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self)
             if f.name not in ("figures", "sections")}
        d["figures"] = [f.name for f in self.figures]
        d["sections"] = {k: {"seconds": s.seconds, "resumed": s.resumed}
                         for k, s in self.sections.items()}
        for k, s in self.sections.items():  # the sections without a field of their own
            d.setdefault(k, s.data)
        return d


def _plain(v: Any) -> Any:
    """Dataclasses (the configuration, flags) as dicts; the rest as is."""
    if is_dataclass(v) and not isinstance(v, type):
        return asdict(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def run_audit(model, data: ArrayDataset, config: AuditConfig | None = None, *,
              robust_model=None, progress: bool | None = None,
              state_dir: str | Path | None = None, shard_size: int | None = None,
              backend: Any = None) -> AuditResult:
    """Run the audit of ``model`` on ``data`` (its test split), section by section.

    The sections (:data:`scrutiny.audit.sections.SECTIONS`): robust accuracy of
    every attack at every eps and the per-sample worst case; the headline attack
    at the reference eps; the game matrix of attacks against defenses; black-box
    success against queries; certification; the gradient-masking checks; example
    adversarial inputs; explanations of clean and adversarial inputs and their
    trust scores; with ``robust_model`` (e.g. the zoo's ``digits-cnn-pgd``), the
    accuracy-robustness trade-off and both models' input gradients.

    Parameters
    ----------
    progress : bool, optional
        Show a progress bar; default: :func:`scrutiny.progress.enabled` (off
        inside :func:`scrutiny.progress.quiet`).
    state_dir : str or Path, optional
        Where finished sections are saved (:class:`~scrutiny.audit.store.SectionStore`).
        A rerun with the same model, data and configuration loads them instead of
        computing them again, so an audit killed mid-way resumes after its last
        finished section with the same numbers; a long section (certification)
        also saves its finished chunks of samples and resumes inside itself.
    shard_size : int, optional
        Run the per-sample sections (robustness, headline, certification) on shards of
        this many samples, each with its own seed, and merge them
        (:mod:`scrutiny.audit.shards`); with ``state_dir``, each finished shard is saved
        and a rerun computes only the missing ones. The numbers depend on the shard size,
        not on the backend. Default: not sharded, or
        :data:`~scrutiny.audit.shards.DEFAULT_SHARD_SIZE` with a ``backend``.
    backend : LocalBackend or RayBackend or str, optional
        What runs the shards (:func:`~scrutiny.audit.shards.get_backend`): ``"local"``
        (this process, the default) or ``"ray"``.

    Examples
    --------
    The whole audit takes minutes; one section (``sections=``) takes seconds:

    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> cfg = AuditConfig(n_samples=32, eps=(0.0, 0.1), sections=("robustness",))
    >>> res = run_audit(pretrained("digits-cnn", progress=False), load_digits(split="test"),
    ...                 cfg, progress=False)
    >>> list(res.sections), list(res.robustness)
    (['robustness', 'verdict'], ['fgsm', 'pgd', 'worst case'])
    >>> res.robustness["worst case"][-1]["robust_accuracy"] < res.clean_accuracy - 0.3
    True
    """
    cfg = config or AuditConfig()
    t0 = time.perf_counter()
    ctx = build_context(model, data, cfg, robust_model)
    order = resolve(cfg.sections, cfg.skip)
    sections = {name: SECTIONS[name]() for name in order}
    reasons = {name: endpoint_skip(s, ctx) for name, s in sections.items()}
    for name, why in reasons.items():
        if why:
            ctx.notes.append(f"section {name} was skipped: {why}")
    running = [n for n in order if reasons[n] is None]
    store = SectionStore(state_dir) if state_dir is not None else None
    if backend is not None and shard_size is None:
        from scrutiny.audit.shards import DEFAULT_SHARD_SIZE

        shard_size = DEFAULT_SHARD_SIZE
    sharded = [n for n in running if n in MERGERS] if shard_size is not None else []
    context_key = ctx.fingerprint() if store is not None else ""
    if sharded:
        bounds = shard_bounds(len(ctx.x), shard_size)
        context_key = hashlib.sha256(f"{context_key}|shards={int(shard_size)}".encode()
                                     ).hexdigest()
        ctx.notes.append(f"The per-sample sections ({', '.join(sharded)}) ran on {len(bounds)} "
                         f"shard(s) of {int(shard_size)} samples, each with its own seed: any "
                         f"backend gives these numbers with this shard size.")
    keys: dict[str, str] = {}
    for name in running:
        upstream = [keys[n] for n in (*sections[name].needs, *sections[name].uses) if n in keys]
        keys[name] = section_key(type(sections[name]), context_key, upstream)
    done: dict[str, SectionResult] = {}
    total = sum(sections[n].steps(ctx) for n in running)
    with progress_bar(total, "audit", enabled=progress) as bar:
        merged = _run_shards(ctx, sharded, {n: sections[n].steps(ctx) for n in sharded}, keys,
                             store, backend, shard_size, bar) if sharded else {}
        for name in running:
            if name in merged:  # computed (and saved) shard by shard
                done[name] = merged[name]
                continue
            section = sections[name]
            bar.step(name)  # the section's own steps name its parts
            share = bar.completed + section.steps(ctx)
            result = store.load(name, keys[name]) if store is not None else None
            if result is None:
                if store is not None:  # units of work the section finished before a kill
                    section.partial = store.partial(name, keys[name])
                ts = time.perf_counter()
                try:
                    result = section.run(ctx, done, bar)
                except ModelUnavailableError as e:  # the endpoint went down: stop, resumable
                    raise _stopped(name, e, done, store) from e
                result.seconds = time.perf_counter() - ts
                if store is not None:
                    store.save(result, keys[name])
                    section.partial.clear()
            bar.advance(n=max(share - bar.completed, 0))  # units it counted but did not run
            done[name] = result
    res = _assemble(ctx, done, sections, time.perf_counter() - t0)
    if sharded:
        res.provenance["shard_size"] = int(shard_size)
    return res


def _run_shards(ctx: AuditContext, names: list[str], steps: dict[str, int], keys: dict[str, str],
                store: SectionStore | None, backend: Any, size: int, bar: Any
                ) -> dict[str, SectionResult]:
    """The per-sample sections ``names`` of a sharded audit, merged: loaded when a finished
    run saved them; else each shard loaded from the :class:`ShardStore` or run by the
    ``backend`` and saved as it arrives, then merged, saved, and the shards removed."""
    if store is not None:
        loaded = {n: store.load(n, keys[n]) for n in names}
        if all(r is not None for r in loaded.values()):
            bar.advance(n=sum(steps.values()))
            return loaded  # type: ignore[return-value]
    if backend is None or isinstance(backend, str):
        backend = get_backend(backend or "local")
    bounds = shard_bounds(len(ctx.x), size)
    shards = ShardStore(store.directory, hashlib.sha256("|".join(keys[n] for n in names)
                                                        .encode()).hexdigest()[:16]) \
        if store is not None else None
    results = {b: r for b in bounds if shards is not None
               and (r := shards.load(*b)) is not None}
    todo = [b for b in bounds if b not in results]
    total, start = sum(steps.values()), bar.completed
    bar.step(f"{', '.join(names)}: {len(todo)} of {len(bounds)} shard(s) to run")
    for b, got in backend.run(ctx, names, todo):
        if shards is not None:
            shards.save(*b, got)  # as soon as it arrives: a kill loses only unfinished shards
        results[b] = got
        bar.advance(n=max(start + round(total * len(results) / len(bounds)) - bar.completed, 0))
    bar.advance(n=max(start + total - bar.completed, 0))
    merged = merge(ctx, names, bounds, [results[b] for b in bounds])
    if store is not None:
        for name, result in merged.items():
            store.save(result, keys[name])
        shards.clear()
    return merged


def _stopped(name: str, error: ModelUnavailableError, done: dict[str, SectionResult],
             store: SectionStore | None) -> ModelUnavailableError:
    """The error that stops an audit whose model stopped answering in section ``name``."""
    saved = (f"; the {len(done)} finished section(s) are saved in {store.directory}: rerun "
             "the same audit once the model answers to resume after them" if store is not None
             and done else "; rerun the audit once the model answers")
    return ModelUnavailableError(f"the audit stopped in section {name!r}: {error}{saved}")


def _assemble(ctx: AuditContext, done: dict[str, SectionResult], sections: dict[str, Any],
              seconds: float) -> AuditResult:
    cfg = ctx.config

    def data(name: str, default: Any = None) -> Any:
        return done[name].data if name in done else default

    robustness = rows_at(done) if "robustness" in done else {}
    headline = dict(data("headline", {})) or {
        "attack": "worst case over " + ", ".join(cfg.attacks), "norm": cfg.norm,
        "eps": cfg.reference_eps, "strong_attack": None, "clean_accuracy": ctx.clean_accuracy,
        "robust_accuracy": next((r["robust_accuracy"] for r in robustness.get("worst case", [])
                                 if r["eps"] == cfg.reference_eps), None)}
    explanations = {k: dict(v) for k, v in data("explanations", {}).items()}
    trust = data("trust", {"scores": {}, "seconds": {}})
    for name, secs in trust["seconds"].items():
        if name in explanations:
            explanations[name]["trust_seconds"] = secs
    by_display = sorted(done, key=lambda n: sections[n].display)
    figs: dict[str, Figure] = {}
    for name in done:  # run order: a later section's figure of the same name replaces
        for f in done[name].figures:
            figs[f.name] = f
    order = {f.name: i for i, f in enumerate(f for n in by_display for f in done[n].figures)}
    figures = sorted(figs.values(), key=lambda f: order[f.name])
    notes = list(ctx.notes) + [n for name in done for n in done[name].notes]
    flags = ctx.probe.flags() + [f for name in done for f in done[name].flags]
    used = headline.get("attacks_used", list(cfg.attacks))
    explainers = [e for e in cfg.explainers if e in explanations]
    methods = [{"name": m, "kind": k, "paper": registry.get(m, k).paper}
               for k, names in (("attack", used), ("explainer", explainers),
                                ("metric", cfg.metrics if "trust" in done else ()),
                                ("defense", cfg.defenses if "matrix" in done else ()))
               for m in names]
    provenance, fewer = _provenance(ctx, done)
    notes += fewer
    return AuditResult(model=ctx.model.name, dataset=ctx.data.name, n_samples=len(ctx.x),
                       clean_accuracy=ctx.clean_accuracy, robustness=robustness,
                       headline=headline, explanations=explanations, methods=methods,
                       trust=trust["scores"], matrix=data("matrix"),
                       comparison=data("comparison"), certification=data("certification") or None,
                       queries=data("queries", {}), config=cfg, probe=asdict(ctx.probe),
                       verdict=data("verdict"),
                       figures=figures, notes=notes,
                       flags=flags, seconds=seconds, sections=done, provenance=provenance,
                       endpoint=_usage(ctx.model) if ctx.endpoint else None)


def _usage(model: Any) -> dict[str, Any]:
    """What a model only queried was asked (``HttpModel.usage``; a plain QueryModel: its
    counters)."""
    if hasattr(model, "usage"):
        return model.usage()
    return {"url": None, "name": str(model.name), "output": model.output, "budget": model.budget,
            "queries": model.queries, "evaluations": model.evaluations}


def _provenance(ctx: AuditContext, done: dict[str, SectionResult]
                ) -> tuple[dict[str, Any], list[str]]:
    """What the numbers rest on: sha256 of the weights (the model's state tensors by name:
    dtype, shape, bytes) and of the audited samples, the samples used against those
    requested, and every method the sections that ran construct (``role``, ``method``,
    ``params``: its :meth:`~scrutiny.base.Method.get_params`); and a note for each sample
    count the data cut short."""
    from scrutiny.audit.sections.headline import headline_attack
    from scrutiny.audit.sections.queries import query_attack
    from scrutiny.audit.sections.verdict import fewer_samples, sample_counts

    cfg = ctx.config
    state = {} if ctx.endpoint else ctx.model.state_dict()
    used: list[tuple[str, str, Any]] = []
    if "robustness" in done:
        bb = ctx.black_box_stage()
        used += [("black-box stage" if a == bb else "curve attack", f"attack:{a}", m)
                 for a, m in ctx.attacks().items()]
    if "headline" in done and cfg.headline_attack:
        used.append(("headline attack", f"attack:{cfg.headline_attack}", headline_attack(ctx)))
    if "queries" in done:
        used += [("query attack", f"attack:{a}", query_attack(ctx, a)) for a in cfg.query_attacks
                 if ctx.x.dim() == 4 or not registry.get(a, "attack").cls.tags.image_only]
    if "matrix" in done:
        used += [("defense", f"defense:{d}", registry.create(f"defense:{d}",
                                                             **cfg.params.get(d, {})))
                 for d in cfg.defenses]
    if "certification" in done and cfg.certifier:
        used.append(("certifier", f"certifier:{cfg.certifier}",
                     ctx.create("certifier", cfg.certifier)))
    if "checks" in done and cfg.black_box and f"attack:{cfg.black_box}" in registry.list_methods():
        used.append(("black-box check", f"attack:{cfg.black_box}",
                     registry.create(f"attack:{cfg.black_box}", **cfg.params.get(cfg.black_box, {}))))
    if "explanations" in done or "explorer" in done:
        used += [("explainer", f"explainer:{e}", m) for e, m in ctx.explainers().items()]
    if "trust" in done:
        used += [("metric", f"metric:{m}", ctx.create("metric", m)) for m in cfg.metrics]
    if "backdoor" in done:
        used.append(("backdoor scan", "backdoor_scan:k_arm", ctx.create("backdoor_scan", "k_arm")))
    if "privacy" in done:  # the parts that ran (an endpoint leaves iDLG out)
        from scrutiny.audit.sections.privacy import IDLG

        ran = done["privacy"].data or {}
        if "membership_inference" in ran:
            used.append(("privacy attack", "privacy:membership_inference",
                         ctx.create("privacy", "membership_inference")))
        if "idlg" in ran:
            used.append(("privacy attack", "privacy:idlg",
                         registry.create("privacy:idlg", **{**IDLG, **cfg.params.get("idlg", {})})))
    samples, notes = sample_counts(ctx, done), fewer_samples(ctx, done)
    return {"model_sha256": None if ctx.endpoint else _digest(*(state[k] for k in sorted(state))),
            "data_sha256": _digest(ctx.x, ctx.y), "device": str(ctx.model.device),
            "samples": samples,
            "methods": [{"role": role, "method": spec, "params": m.get_params()}
                        for role, spec, m in used]}, notes
