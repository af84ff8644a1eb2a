"""Speed and quality of scrutiny's PGD and Integrated Gradients against torchattacks and Captum.

Run from the repository root::

    benchmarks/.venv-peers/bin/python benchmarks/run.py            # with the peers
    .venv/bin/python benchmarks/run.py                             # scrutiny only

Every time is the median of ``--repeats`` wall-clock runs on one batch of the
embedded digits test split, with ``torch.set_num_threads(--threads)``. The
repeats are interleaved (round robin over all methods), so a slow stretch of
the machine hits every method alike. Times are also given in units of one
forward + backward pass w.r.t. the input on the same batch ("unit"), which is
the floor of a gradient attack: ``k`` steps cost about ``k`` units.

Results: a markdown table on stdout and in ``benchmarks/results/latest.md``, the
raw numbers in ``benchmarks/results/latest.json``; ``--update-docs`` rewrites
the results section of ``docs/benchmarks.md``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import hashlib
import importlib.metadata as _md
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from scrutiny.attacks.whitebox.pgd import PGD
from scrutiny.data import load_digits
from scrutiny.explain.gradient.integrated import IntegratedGradients
from scrutiny.models import SmallCNN, TorchModel, pretrained
from scrutiny.types import ThreatModel

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
DOC_START = "<!-- results:start (written by benchmarks/run.py --update-docs) -->"
DOC_END = "<!-- results:end -->"

PGD_STEPS = 40
PGD_REL_STEP = 2.5 / PGD_STEPS
IG_STEPS = 50
CAPTUM_BATCHES: tuple[int | None, ...] = (None, 512, 1024, 2048)  # Captum: >= N
REF_STEPS = 2049  # trapezoid nodes of the float64 reference attributions
BUSY_WARN = 0.10  # share of the CPU used by other processes above which times are suspect

try:  # the peers are optional: not project dependencies
    import torchattacks
except ImportError:  # pragma: no cover - depends on the environment
    torchattacks = None
try:
    from captum.attr import IntegratedGradients as CaptumIG
except ImportError:  # pragma: no cover - depends on the environment
    CaptumIG = None


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def version(dist: str) -> str:
    try:
        return _md.version(dist)
    except _md.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


class CpuShare:
    """CPU time that *other* processes used while we ran, from /proc/stat (Linux only).

    With torch's threads busy-waiting at barriers, even a little competition
    for the cores inflates every time several-fold, so the report shows it.
    """

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(t) for t in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system

    def others(self) -> float | None:
        """Fraction of all cores used by other processes since construction."""
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        other = (busy - self.busy0) - (self._own() - self.own0)
        return max(0.0, other / (wall * (os.cpu_count() or 1)))


def wait_until_quiet(max_wait: float, window: float = 1.0, quiet: bool = False) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < BUSY_WARN of the CPU.

    Returns the seconds waited beyond the first look (``window``)."""
    t0 = time.perf_counter()
    deadline = t0 + max_wait
    said = quiet
    while max_wait > 0:
        share = CpuShare()
        time.sleep(window)
        busy = share.others()
        if busy is None or busy < BUSY_WARN:
            break
        if time.perf_counter() >= deadline:
            if not quiet:
                log(f"machine still busy ({busy:.0%} of the CPU used by other processes); "
                    "going on")
            break
        if not said:
            log(f"machine busy ({busy:.0%} of the CPU used by other processes); waiting ...")
            said = True
    return max(0.0, time.perf_counter() - t0 - window)


def allocator() -> dict[str, str]:
    """glibc malloc's settings from the environment (``MALLOC_*``; empty: its defaults).

    With its defaults malloc hands freed heap back to the kernel and faults it in again,
    which moves the time of one run by up to ~50 % on small models (bench_ig, bench_worstcase)."""
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def allocator_text(settings: dict[str, str]) -> str:
    """``settings`` (:func:`allocator`) for a report."""
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "glibc defaults"


def machine_info(threads: int) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "threads": threads,
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "scrutiny": version("scrutiny"),
        "torchattacks": version("torchattacks") if torchattacks is not None else "not installed",
        "captum": version("captum") if CaptumIG is not None else "not installed",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_1min_start": loadavg(),
        "allocator": allocator(),
    }


class PassCounter:
    """Forward hook counting the samples a model sees, with and without autograd."""

    def __init__(self) -> None:
        self.grad_samples = 0
        self.nograd_samples = 0
        self.calls = 0

    def __call__(self, _module, inputs, _out) -> None:
        n = int(inputs[0].shape[0])
        self.calls += 1
        if torch.is_grad_enabled() and inputs[0].requires_grad:
            self.grad_samples += n
        else:
            self.nograd_samples += n


@contextlib.contextmanager
def counting(model: nn.Module) -> Iterator[PassCounter]:
    c = PassCounter()
    h = model.register_forward_hook(c)
    try:
        yield c
    finally:
        h.remove()


@dataclass
class Case:
    """One timed thing. ``run`` returns whatever ``metrics`` needs."""

    key: str
    group: str  # "reference", "pgd:<threat>", "ig"
    impl: str  # "torch", "scrutiny", "torchattacks", "captum"
    label: str
    run: Callable[[], Any]
    warm: Callable[[], Any] | None = None
    metrics: Callable[[Any], dict[str, Any]] | None = None
    repeats: int | None = None  # None: the global --repeats
    inner: int = 1  # calls per timed sample (short passes), time divided by it
    times: list[float] = field(default_factory=list)
    busy: list[float | None] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Gate:
    """Retry a timed sample when other processes used the CPU meanwhile.

    torch's worker threads wait for each other at every parallel region; when
    another process takes one of the cores, each wait can last a scheduler
    time slice, and a pass of tens of milliseconds becomes hundreds. A sample
    during which other processes used more than ``BUSY_WARN`` of the CPU is
    thrown away, the machine is waited on until it is quiet, and the sample is
    taken again (up to ``retries`` times; then it is kept and flagged).
    """

    retries: int = 0
    wait_budget: float = 300.0  # seconds of waiting for the whole run; then keep what we get
    rejected: int = 0
    kept_busy: int = 0
    waited: float = 0.0
    clock: Callable[[], float] = time.perf_counter

    def measure(self, fn: Callable[[], Any], inner: int) -> tuple[Any, float, float | None]:
        for attempt in range(self.retries + 1):
            left = self.wait_budget - self.waited
            if self.retries and left > 0:  # start only on a quiet machine
                self.waited += wait_until_quiet(min(left, 60.0), window=0.3, quiet=True)
            share = CpuShare()
            t0 = self.clock()
            for _ in range(inner):
                out = fn()
            dt = (self.clock() - t0) / inner
            busy = share.others()
            if busy is None or busy <= BUSY_WARN:
                return out, dt, busy
            if attempt < self.retries and self.wait_budget > self.waited:
                self.rejected += 1
            else:
                break
        self.kept_busy += 1
        return out, dt, busy


def time_cases(cases: list[Case], repeats: int, model: nn.Module, gate: Gate) -> None:
    """Warm every case, then time them round robin; metrics from the last run of each."""
    for c in cases:
        log(f"  warm-up  {c.key}")
        (c.warm or c.run)()
    total = max(c.repeats or repeats for c in cases)
    for r in range(total):
        t_round, share = time.perf_counter(), CpuShare()
        for c in cases:
            want = c.repeats or repeats
            if r >= want:
                continue
            gc.collect()
            is_last = r == want - 1
            with counting(model) if is_last else contextlib.nullcontext() as cnt:
                out, dt, busy = gate.measure(c.run, c.inner)
            c.times.append(dt)
            c.busy.append(busy)
            if is_last:
                c.passes = {"grad_samples": cnt.grad_samples // c.inner,
                            "nograd_samples": cnt.nograd_samples // c.inner,
                            "forward_calls": cnt.calls // c.inner}
                if c.metrics is not None:
                    c.result.update(c.metrics(out))
        busy = share.others()
        log(f"  round {r + 1}/{total} {time.perf_counter() - t_round:6.1f}s"
            + ("" if busy is None else f", other processes used {busy:.0%} of the CPU")
            + f"; samples retaken so far: {gate.rejected}")


# --------------------------------------------------------------------------- the model


def load_model(size: int, train_epochs: int) -> tuple[TorchModel, str]:
    """The zoo's digits CNN (8x8), or a SmallCNN trained here (28x28 or as a fallback)."""
    if size == 8:
        try:
            model = pretrained("digits-cnn", progress=False)
            return model, "scrutiny.models.pretrained('digits-cnn')"
        except Exception as e:  # fall back to training here, and say why
            log(f"pretrained('digits-cnn') failed ({type(e).__name__}: {e}); training a SmallCNN")
    from scrutiny.models.training import train

    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = RESULTS / f"digits{size}-smallcnn-e{train_epochs}.pt"
    net = SmallCNN(in_channels=1, num_classes=10)
    if cache.is_file():
        net.load_state_dict(torch.load(cache, map_location="cpu", weights_only=True))
        how = f"SmallCNN trained {train_epochs} epochs on digits {size}x{size} (cached)"
    else:
        log(f"training SmallCNN on digits {size}x{size} for {train_epochs} epochs ...")
        train(net, load_digits(size=size, split="train"), epochs=train_epochs, progress=False)
        torch.save(net.state_dict(), cache)
        how = f"SmallCNN trained {train_epochs} epochs on digits {size}x{size}"
    return TorchModel(net, num_classes=10, name=f"digits{size}-cnn"), how


# --------------------------------------------------------------------------- cases


def reference_cases(model: TorchModel, x: torch.Tensor, y: torch.Tensor, with_ig: bool
                    ) -> list[Case]:
    def unit() -> torch.Tensor:
        xx = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xx), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xx)
        return g

    def fwd() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    xs = x.repeat(IG_STEPS, 1, 1, 1)
    ts = torch.randint(0, 10, (len(xs),), generator=torch.Generator().manual_seed(0))

    def floor_ig() -> torch.Tensor:
        xx = xs.detach().requires_grad_(True)
        out = model(xx).gather(1, ts[:, None]).sum()
        (g,) = torch.autograd.grad(out, xx)
        return g

    cases = [
        Case("unit", "reference", "torch", f"forward+backward w.r.t. input, N={len(x)}", unit,
             inner=10),
        Case("forward", "reference", "torch", f"forward only (no grad), N={len(x)}", fwd,
             inner=10),
    ]
    if with_ig:
        cases.append(Case("floor_ig", "reference", "torch",
                          f"forward+backward on {IG_STEPS}*N = {len(xs)} inputs at once", floor_ig))
    return cases


def pgd_cases(model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
              seed: int) -> list[Case]:
    tag = f"pgd:{threat.norm}:{threat.eps:g}"
    alpha = threat.eps * PGD_REL_STEP

    def scrutiny_case(early_stop: bool) -> Case:
        atk = PGD(steps=PGD_STEPS, rel_step_size=PGD_REL_STEP, random_start=True,
                  early_stop=early_stop)
        warm_atk = PGD(steps=2, rel_step_size=PGD_REL_STEP, early_stop=early_stop)

        def metrics(res) -> dict[str, Any]:
            return {"robust_accuracy": res.robust_accuracy(),
                    "clean_accuracy": res.clean_accuracy()}

        return Case(f"{tag}:scrutiny:es={early_stop}", tag, "scrutiny",
                    f"scrutiny PGD(steps={PGD_STEPS}, early_stop={early_stop})",
                    run=lambda: atk(model, x, y, threat=threat, seed=seed),
                    warm=lambda: warm_atk(model, x, y, threat=threat, seed=seed),
                    metrics=metrics)

    cases = [scrutiny_case(False), scrutiny_case(True)]
    if torchattacks is not None:
        cls = {"linf": torchattacks.PGD, "l2": torchattacks.PGDL2}[threat.norm]
        atk = cls(model, eps=threat.eps, alpha=alpha, steps=PGD_STEPS, random_start=True)
        warm_atk = cls(model, eps=threat.eps, alpha=alpha, steps=2, random_start=True)

        def ta_run() -> torch.Tensor:
            torch.manual_seed(seed)
            return atk(x, y)

        def ta_metrics(x_adv: torch.Tensor) -> dict[str, Any]:
            with torch.no_grad():
                pred = model(x_adv).argmax(1)
                clean = model(x).argmax(1)
            return {"robust_accuracy": float((pred == y).float().mean()),
                    "clean_accuracy": float((clean == y).float().mean()),
                    "in_threat": bool(threat.contains(x, x_adv).all())}

        cases.append(Case(f"{tag}:torchattacks", tag, "torchattacks",
                          f"torchattacks.{cls.__name__}(steps={PGD_STEPS}, random_start=True)",
                          run=ta_run, warm=lambda: warm_atk(x, y), metrics=ta_metrics))
    return cases


def completeness(model: TorchModel, x: torch.Tensor, attr: torch.Tensor,
                 target: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Completeness and attribution errors, in float64.

    Completeness: ``|sum(attr) - (f(x) - f(0))| / |f(x) - f(0)|``. Attribution:
    ``||attr - ref||_1 / ||ref||_1`` against the reference attributions ``ref``
    (completeness only checks the sum; a rule can meet it with wrong maps).
    """
    with torch.no_grad():
        fx = model(x).gather(1, target[:, None])[:, 0].double()
        fb = model(torch.zeros_like(x)).gather(1, target[:, None])[:, 0].double()
    gap = fx - fb
    a = attr.double().reshape(len(x), -1)
    err = (a.sum(1) - gap).abs() / gap.abs().clamp_min(1e-12)
    feat = (a - ref.reshape(len(x), -1)).abs().sum(1) / ref.reshape(len(x), -1).abs().sum(1)
    return {"completeness_rel_mean": float(err.mean()), "completeness_rel_median":
            float(err.median()), "completeness_rel_max": float(err.max()),
            "attribution_rel_l1_mean": float(feat.mean()),
            "attribution_rel_l1_median": float(feat.median()),
            "attribution_rel_l1_max": float(feat.max())}


def reference_ig(model: TorchModel, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IG by the trapezoid rule on ``REF_STEPS`` uniform nodes, on a float64 copy of the model.

    Independent of the adaptive rule's weights. Checked once against 4,097 nodes with the
    one-switch weights on the zoo's digits CNN: 1.4e-4 mean relative L1 error. It takes
    ~5 min on 2 cores, so it is cached in ``RESULTS`` under a hash of the weights and inputs.
    """
    from safetensors.torch import load_file, save_file

    h = hashlib.sha256()
    for t in (*model.state_dict().values(), x, target):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    path = RESULTS / f"ig-reference-{REF_STEPS}-{h.hexdigest()[:16]}.safetensors"
    if path.is_file():
        return load_file(path)["ref"]
    t0 = time.perf_counter()
    ref = IntegratedGradients(steps=REF_STEPS, rule="riemann_trapezoid")(
        copy.deepcopy(model).double(), x.double(), target).attributions
    log(f"reference IG ({REF_STEPS} trapezoid nodes, float64): {time.perf_counter() - t0:.0f} s")
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_file({"ref": ref.contiguous()}, path)
    return ref


def ig_cases(model: TorchModel, x: torch.Tensor, target: torch.Tensor,
             captum_repeats: int | None) -> list[Case]:
    small = x[:16]
    ref = reference_ig(model, x, target)

    def scrutiny_case(key: str, label: str, ig: IntegratedGradients) -> Case:
        def metrics(e) -> dict[str, Any]:
            out = completeness(model, x, e.attributions, target, ref)
            out["params"] = {k: v for k, v in ig.get_params().items()
                             if isinstance(v, int | float | str)}
            return out

        return Case(key, "ig", "scrutiny", label,
                    run=lambda: ig(model, x, target),
                    warm=lambda: ig(model, small, target[:16]), metrics=metrics)

    default = IntegratedGradients()
    d = default.get_params()
    shown = ", ".join(f"{k}={v!r}" for k, v in d.items()
                      if k not in ("baseline", "blur_sigma", "layer"))
    cases = [
        scrutiny_case("ig:scrutiny:default-rule", f"scrutiny IntegratedGradients(steps={IG_STEPS})"
                      f" [rule={d['rule']!r}]", IntegratedGradients(steps=IG_STEPS)),
    ]
    for rule in ("gausslegendre", "riemann_trapezoid"):
        if rule != d["rule"]:
            cases.append(scrutiny_case(
                f"ig:scrutiny:{rule}", f"scrutiny IntegratedGradients(steps={IG_STEPS}, "
                f"rule={rule!r})", IntegratedGradients(steps=IG_STEPS, rule=rule)))
    cases.append(scrutiny_case("ig:scrutiny:defaults", f"scrutiny IntegratedGradients() "
                               f"[defaults: {shown}]", default))
    if CaptumIG is not None:
        cig = CaptumIG(model)

        def captum_metrics(out) -> dict[str, Any]:
            attr, delta = out
            m = completeness(model, x, attr, target, ref)
            m["captum_delta_abs_mean"] = float(delta.abs().mean())
            return m

        def captum_case(steps: int, ibs: int | None, key: str, note: str = "") -> Case:
            def run():
                return cig.attribute(x, baselines=0.0, target=target, n_steps=steps,
                                     method="gausslegendre", internal_batch_size=ibs,
                                     return_convergence_delta=True)

            def warm():
                return cig.attribute(small, baselines=0.0, target=target[:16], n_steps=steps,
                                     method="gausslegendre", internal_batch_size=ibs)

            return Case(key, "ig", "captum", f"Captum IntegratedGradients(n_steps={steps}, "
                        f"method='gausslegendre', internal_batch_size={ibs}){note}",
                        run=run, warm=warm, metrics=captum_metrics, repeats=captum_repeats)

        for ibs in CAPTUM_BATCHES:
            cases.append(captum_case(IG_STEPS, ibs, f"ig:captum:ibs={ibs}"))
        if d["steps"] != IG_STEPS:  # the peer at scrutiny's default budget, for its default row
            cases.append(captum_case(d["steps"], 512, f"ig:captum:steps={d['steps']}",
                                     " [scrutiny's default node budget]"))
    return cases


# --------------------------------------------------------------------------- report


def paired(a: Case, b: Case) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round.

    Samples of one round were taken seconds apart, so the ratio cancels the
    drift of a shared machine's speed that the separate medians would keep.
    """
    return statistics.median(ta / tb for ta, tb in zip(a.times, b.times, strict=False))


def fmt_s(t: float) -> str:
    return f"{t:.3f}" if t < 10 else f"{t:.2f}"


def spread(c: Case) -> str:
    return f"{fmt_s(min(c.times))}–{fmt_s(max(c.times))}"


def report(cases: list[Case], info: dict[str, Any], cfg: dict[str, Any]) -> str:
    nan = float("nan")
    by = {c.key: c for c in cases}
    unit_case = by["unit"]
    unit = unit_case.median
    lines: list[str] = []
    add = lines.append
    add(f"Model: {cfg['model']}; data: digits {cfg['size']}x{cfg['size']} test split, "
        f"N = {cfg['n']} (clean accuracy {cfg['clean_accuracy']:.3f}).  ")
    add(f"Machine: {info['cpu']}, {info['cores']} cores, torch threads = {info['threads']}; "
        f"Python {info['python']}, torch {info['torch']}, scrutiny {info['scrutiny']}, "
        f"torchattacks {info['torchattacks']}, Captum {info['captum']}; {info['date']}.  ")
    mean, peak = info.get("other_processes_cpu_kept_mean"), info.get("other_processes_cpu_kept_max")
    noise = ("?" if mean is None else f"mean {mean:.0%}, max {peak:.0%}")
    add(f"Timing: wall-clock, median of {cfg['repeats']} interleaved repeats after a warm-up "
        f"(min–max shown); ratios (× unit, vs peer) are medians of same-round ratios; a "
        f"sample during which other processes used > {BUSY_WARN:.0%} of the "
        f"CPU was retaken ({info.get('samples_retaken', 0)} retaken, "
        f"{info.get('samples_kept_busy', 0)} kept although busy); other processes' CPU share "
        f"during the kept samples: {noise}; whole run {info.get('wall_s', 0):.0f} s"
        f"{' (**busy machine: some times inflated**)' if info.get('samples_kept_busy') else ''}.")
    add("")
    add("**Reference passes**")
    add("")
    add("| pass | median s | min–max s | × unit |")
    add("|---|---:|---:|---:|")
    for c in cases:
        if c.group == "reference":
            add(f"| {c.label} | {fmt_s(c.median)} | {spread(c)} | {paired(c, unit_case):.2f} |")

    for group in dict.fromkeys(c.group for c in cases if c.group.startswith("pgd:")):
        _, norm, eps = group.split(":")
        rows = [c for c in cases if c.group == group]
        ta = next((c for c in rows if c.impl == "torchattacks"), None)
        add("")
        add(f"**PGD {norm} eps={eps}, {PGD_STEPS} steps, step {2.5:g}·eps/{PGD_STEPS}, random "
            f"start** (floor: {PGD_STEPS} units = {fmt_s(PGD_STEPS * unit)} s; target for "
            f"early_stop=False: ≤ {1.1 * PGD_STEPS:.0f} units and no slower than torchattacks)")
        add("")
        add("| method | median s | min–max s | × unit | ÷ 40 units | vs torchattacks "
            "| grad samples / N | robust acc |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c in rows:
            vs = f"{paired(c, ta):.2f}×" if ta is not None else "—"
            gs = c.passes.get("grad_samples", 0) / cfg["n"]
            u = paired(c, unit_case)
            add(f"| {c.label} | {fmt_s(c.median)} | {spread(c)} | {u:.1f} | "
                f"{u / PGD_STEPS:.2f} | {vs} | {gs:.1f} | "
                f"{c.result.get('robust_accuracy', nan):.3f} |")
        if ta is None:
            add("| torchattacks | not installed | | | | | | |")

    ig = [c for c in cases if c.group == "ig"]
    if ig:
        one_batch = by["floor_ig"].median
        caps = [c for c in ig if c.impl == "captum" and c.key.startswith("ig:captum:ibs=")]
        best = min(caps, key=lambda c: c.median) if caps else None
        add("")
        add(f"**Integrated Gradients, {IG_STEPS} steps, zero baseline, target = predicted "
            f"class** (floor: {IG_STEPS} passes per sample = {IG_STEPS} units = "
            f"{fmt_s(IG_STEPS * unit)} s; the same {IG_STEPS}·N inputs as one batch take "
            f"{fmt_s(one_batch)} s = {paired(by['floor_ig'], unit_case):.0f} units. Target: no "
            f"slower than Captum's best batching, smaller completeness error. \"grad samples / "
            f"N\": path points evaluated per input, {IG_STEPS} for a fixed {IG_STEPS}-node rule, "
            f"fewer or more for an adaptive one. \"attribution err\": ||attr - ref||_1 / "
            f"||ref||_1 against the trapezoid rule on {REF_STEPS} nodes in float64, itself "
            f"~1.4e-4 from the exact integral)")
        add("")
        add("| method | median s | min–max s | × unit | grad samples / N | × unit per grad "
            "sample/N | vs Captum best | completeness err: mean rel. | median | max "
            "| attribution err: mean | max |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for c in ig:
            vs = f"{paired(c, best):.2f}×" if best is not None else "—"
            mark = " **(best)**" if c is best else ""
            u = paired(c, unit_case)
            gs = c.passes.get("grad_samples", 0) / cfg["n"]
            per = f"{u / gs:.2f}" if gs else "—"
            add(f"| {c.label}{mark} | {fmt_s(c.median)} | {spread(c)} | {u:.1f} | {gs:.1f} | "
                f"{per} | {vs} | {c.result.get('completeness_rel_mean', nan):.2e} | "
                f"{c.result.get('completeness_rel_median', nan):.2e} | "
                f"{c.result.get('completeness_rel_max', nan):.2e} | "
                f"{c.result.get('attribution_rel_l1_mean', nan):.2e} | "
                f"{c.result.get('attribution_rel_l1_max', nan):.2e} |")
        if not caps:
            add("| Captum | not installed | | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def update_docs(table: str) -> None:
    text = DOCS.read_text() if DOCS.is_file() else ""
    if DOC_START not in text or DOC_END not in text:
        raise SystemExit(f"{DOCS} has no results markers ({DOC_START} ... {DOC_END})")
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    DOCS.write_text(f"{head}{DOC_START}\n\n{table}\n{DOC_END}{tail}")
    log(f"updated {DOCS.relative_to(ROOT)}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    p.add_argument("--captum-repeats", type=int, default=None,
                   help="timed runs per Captum batching (default: --repeats)")
    p.add_argument("--batch", type=int, default=512,
                   help="samples attacked/explained (capped at the test split's size)")
    p.add_argument("--size", type=int, default=8, choices=(8, 28),
                   help="digits image side; 28 trains a SmallCNN here (slow: ~10x the work)")
    p.add_argument("--train-epochs", type=int, default=5, help="epochs for a model trained here")
    p.add_argument("--only", choices=("all", "pgd", "ig"), default="all")
    p.add_argument("--threats", default="linf:0.1,linf:0.3,l2:1.0",
                   help="PGD threat models, NORM:EPS comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retries", type=int, default=10,
                   help="times a sample is retaken when other processes used more than "
                   f"{BUSY_WARN * 100:.0f}%% of the CPU during it (0: keep every sample)")
    p.add_argument("--wait-quiet", type=float, default=60.0, metavar="SECONDS",
                   help="wait at most SECONDS for a quiet machine before starting")
    p.add_argument("--wait-budget", type=float, default=300.0, metavar="SECONDS",
                   help="total seconds the run may wait for quiet before retaking samples")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of latest.md / latest.json")
    p.add_argument("--render", type=Path, default=None, metavar="JSON",
                   help="only rebuild the tables from a saved latest.json (with --update-docs: "
                   "also rewrite docs/benchmarks.md)")
    p.add_argument("--update-docs", action="store_true",
                   help="rewrite the results section of docs/benchmarks.md")
    return p.parse_args(argv)


def render(path: Path, docs: bool) -> int:
    """Rebuild the tables from a saved ``latest.json`` (no timing)."""
    payload = json.loads(path.read_text())
    fixed = {"key", "group", "impl", "label", "times_s", "median_s", "median_units",
             "other_processes_cpu", "passes_last_run"}
    cases = [Case(c["key"], c["group"], c["impl"], c["label"], run=lambda: None,
                  times=c["times_s"], busy=c.get("other_processes_cpu", []),
                  passes=c.get("passes_last_run", {}),
                  result={k: v for k, v in c.items() if k not in fixed})
             for c in payload["cases"]]
    table = report(cases, payload["machine"], payload["config"])
    print(table)
    if docs:
        update_docs(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        return render(args.render, args.update_docs)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):  # only settable before any parallel work
        torch.set_num_interop_threads(1)
    wait_until_quiet(args.wait_quiet)
    share = CpuShare()  # over the whole run, waits included
    info = machine_info(args.threads)
    log(f"scrutiny benchmark: {info['cpu']}, threads={args.threads}, torch {info['torch']}, "
        f"torchattacks {info['torchattacks']}, captum {info['captum']}")

    model, how = load_model(args.size, args.train_epochs)
    model.eval()
    for p in model.parameters():  # every implementation starts from the same frozen model
        p.requires_grad_(False)
    data = load_digits(size=args.size, split="test")
    n = min(args.batch, len(data.x))
    if n < args.batch:
        log(f"the test split has {len(data.x)} samples: batch = {n} (asked {args.batch})")
    x, y = data.x[:n].contiguous(), data.y[:n]
    with torch.no_grad():
        pred = model(x).argmax(1)
    cfg = {"model": how, "size": args.size, "n": n, "batch_asked": args.batch,
           "repeats": args.repeats, "captum_repeats": args.captum_repeats or args.repeats,
           "seed": args.seed, "clean_accuracy": float((pred == y).float().mean()),
           "pgd_steps": PGD_STEPS, "pgd_rel_step_size": PGD_REL_STEP,
           "ig_steps": IG_STEPS}

    cases = reference_cases(model, x, y, with_ig=args.only in ("all", "ig"))
    if args.only in ("all", "pgd"):
        for spec in args.threats.split(","):
            norm, eps = spec.strip().split(":")
            tm = ThreatModel(norm, float(eps))
            cases += pgd_cases(model, x, y, tm, args.seed)
    if args.only in ("all", "ig"):
        cases += ig_cases(model, x, pred, args.captum_repeats)

    log(f"{len(cases)} cases, {args.repeats} repeats each")
    gate = Gate(retries=args.retries, wait_budget=args.wait_budget)
    time_cases(cases, args.repeats, model, gate)
    info["samples_retaken"] = gate.rejected
    info["samples_kept_busy"] = gate.kept_busy
    info["seconds_waited_for_quiet"] = round(gate.waited, 1)
    info["loadavg_1min_end"] = loadavg()
    whole = share.others()
    info["other_processes_cpu_whole_run"] = None if whole is None else round(whole, 3)
    kept = [(b, t) for c in cases for b, t in zip(c.busy, c.times, strict=True) if b is not None]
    if kept:
        info["other_processes_cpu_kept_mean"] = round(
            sum(b * t for b, t in kept) / sum(t for _, t in kept), 3)
        info["other_processes_cpu_kept_max"] = round(max(b for b, _ in kept), 3)
    if gate.kept_busy:
        log(f"WARNING: {gate.kept_busy} samples were timed while other processes used more "
            f"than {BUSY_WARN:.0%} of the CPU; their times are inflated (docs/benchmarks.md, "
            "'Noise')")
    info["wall_s"] = round(time.perf_counter() - t_start, 1)

    table = report(cases, info, cfg)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(table)
    unit = next(c for c in cases if c.key == "unit").median
    payload = {
        "machine": info, "config": cfg,
        "cases": [{"key": c.key, "group": c.group, "impl": c.impl, "label": c.label,
                   "times_s": c.times, "median_s": c.median, "median_units": c.median / unit,
                   "other_processes_cpu": c.busy, "passes_last_run": c.passes, **c.result}
                  for c in cases],
    }
    (args.out / "latest.json").write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'} "
        f"({info['wall_s']:.0f} s in all)")
    if args.update_docs:
        update_docs(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
