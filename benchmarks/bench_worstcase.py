"""The worst case (AutoAttack protocol) against torchattacks' AutoAttack, and Square's cost per query.

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_worstcase.py
    benchmarks/.venv-peers/bin/python benchmarks/bench_worstcase.py --workloads digits-cnn --rounds 3

Workloads (issue 17): 128 test images, linf eps 0.1, on

- ``big``: the benchmarks' BigCNN on 28x28 digits (:mod:`bigcnn`, trained here once and cached);
- ``digits-cnn``: the zoo's 8x8 digits CNN;
- ``digits-cnn-pgd``: the zoo's adversarially trained (PGD) 8x8 digits CNN.

Methods, each on the same frozen model and images:

- scrutiny ``WorstCase()`` with its defaults (APGD-CE, APGD-T, FMN, Square 5000 queries;
  stalled Square searches stop), and ``WorstCase(stop_stalled=False)`` with ``--full``;
- torchattacks ``AutoAttack(version="standard")``: APGD-CE, APGD-T, FAB-T and Square 5000
  queries, the first three at torchattacks' default of 10 iterations ("AA-standard");
- the same four attacks at 100 iterations ("AA-100", AutoAttack's published setting).

Rounds are interleaved (each round runs every method once, in a rotated order); the
ratios are taken per round and their median reported. One torch thread by default.

``--square`` adds Square's cost per query (``--square-only``: that alone): scrutiny's
``Square`` and torchattacks' ``Square`` on the same batch at an eps where nothing breaks (so
every sample is queried in every iteration), queries counted by a forward hook. Each run is
a fresh process (a warm-up run, then the timed one), the order alternating by round, ratios
per round, median over ``--rounds``. glibc's malloc returns freed heap to the kernel and
faults it back in, and where a process lands in that cycle moves its time by up to ~50 %
on these models (either library): the report gives each run's minor page faults, and a run
with ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_MMAP_THRESHOLD_`` set (inherited by the runs)
measures both libraries without that cycle.

Results: ``benchmarks/results/worstcase.md`` and ``worstcase.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402  (also installs the torchvision stand-in)
from run import CpuShare, PassCounter, allocator, allocator_text, machine_info, version  # noqa: E402

from scrutiny.attacks import WorstCase  # noqa: E402
from scrutiny.attacks.blackbox.square import Square  # noqa: E402
from scrutiny.data import load_digits  # noqa: E402
from scrutiny.models import pretrained  # noqa: E402
from scrutiny.types import ThreatModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ta = optional("torchattacks")


def workload(name: str, n: int):
    if name == "big":
        from bigcnn import EPOCHS, load_bigcnn

        model, data = load_bigcnn(), load_digits(size=28, split="test")
        how = f"BigCNN (benchmarks/bigcnn.py, {EPOCHS} epochs) on 28x28 digits"
    else:
        model, data = pretrained(name, progress=False), load_digits(split="test")
        how = f"pretrained({name!r}) on 8x8 digits"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, data.x[:n].contiguous(), data.y[:n], how


def aa(model, eps: float, steps: int | None):
    """torchattacks' AutoAttack: the library's standard version (steps None) or at ``steps``."""
    if steps is None:
        return ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    return ta.MultiAttack([
        ta.APGD(model, norm="Linf", eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0),
        ta.APGDT(model, norm="Linf", eps=eps, steps=steps, n_classes=10, n_restarts=1, seed=0),
        ta.FAB(model, norm="Linf", eps=eps, steps=steps, multi_targeted=True, n_classes=10,
               n_restarts=1, seed=0),
        ta.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0)])


def robust(model, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float) -> float:
    assert float((x_adv - x).abs().max()) <= eps + 1e-6 and 0 <= float(x_adv.min())
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def bench_workload(name: str, args) -> dict[str, Any]:
    model, x, y, how = workload(name, args.n)
    eps = args.eps
    threat = ThreatModel("linf", eps)
    stages: list[list[dict[str, Any]]] = []

    def scrutiny(stop: bool):
        def run():
            res = WorstCase(stop_stalled=stop)(model, x, y, threat=threat, seed=0)
            stages.append(res.meta["stages"])
            return res.x_adv
        return run

    methods = {"scrutiny WorstCase()": scrutiny(True)}
    if args.full:
        methods["scrutiny WorstCase(stop_stalled=False)"] = scrutiny(False)
    if ta is not None:
        methods["torchattacks AutoAttack standard (10 iterations)"] = \
            lambda: aa(model, eps, None)(x, y)
        methods["torchattacks AutoAttack, 100 iterations"] = lambda: aa(model, eps, 100)(x, y)
    names = list(methods)
    times: dict[str, list[float]] = {k: [] for k in names}
    acc: dict[str, float] = {}
    busy = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        share = CpuShare()
        for k in order:
            t0 = time.perf_counter()
            xa = methods[k]()
            times[k].append(time.perf_counter() - t0)
            acc[k] = robust(model, xa.detach().cpu(), x, y, eps)
            print(f"[{name} round {r + 1}] {k}: robust {acc[k]:.4f}, {times[k][-1]:.1f} s",
                  file=sys.stderr, flush=True)
        busy.append(share.others())
    ref = next((k for k in names if k.startswith("torchattacks AutoAttack standard")), None)
    ratios = {}
    if ref is not None:
        for k in names:
            ratios[k] = statistics.median(a / b for a, b in zip(times[k], times[ref], strict=True))
    return {"workload": name, "model": how, "n": len(x), "eps": eps,
            "clean_accuracy": robust(model, x, x, y, eps), "methods": names, "times_s": times,
            "robust_accuracy": acc, "ratio_to_aa_standard": ratios, "reference": ref,
            "scrutiny_stages_last_round": stages[-1] if stages else [],
            "other_processes_cpu": busy}


SQUARES = ("scrutiny Square", "torchattacks Square")


def square_run(name: str, which: str, args) -> dict[str, float]:
    """In this (fresh) process: one warm-up run of ``which`` on workload ``name``, then a timed one.

    Returns the timed run's queries, wall and CPU seconds (``time.process_time``, user +
    system), system seconds and minor page faults (glibc hands freed heap back to the
    kernel and faults it in again; where a process lands in that cycle moves its time by up
    to ~50 % on these small models, for either library).
    """
    import resource

    model, x, y, _ = workload(name, args.n)
    eps, q = 0.02, args.square_queries

    def run():
        if which == SQUARES[0]:
            Square(max_queries=q)(model, x, y, threat=ThreatModel("linf", eps), seed=0)
        else:
            ta.Square(model, norm="Linf", eps=eps, n_queries=q, n_restarts=1, seed=0)(x, y)

    run()  # warm-up: one-time setup of each shape; the heap grows by this library's pattern only
    c = PassCounter()
    h = model.register_forward_hook(c)
    f0, s0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, os.times().system
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    h.remove()
    return {"queries": c.nograd_samples + c.grad_samples, "wall": wall, "cpu": cpu,
            "sys": os.times().system - s0,
            "minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}


def square_cost(name: str, args) -> dict[str, Any]:
    """Seconds per query of scrutiny's and torchattacks' Square on the same batch: each run in
    a fresh process (:func:`square_run`), the order alternating by round."""
    names = [k for k in SQUARES if k == SQUARES[0] or ta is not None]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in names}
    for r in range(args.rounds):
        for k in names[r % 2:] + names[:r % 2]:
            out = subprocess.run(
                [sys.executable, __file__, "--square-case", k, "--workloads", name, "--n",
                 str(args.n), "--square-queries", str(args.square_queries), "--threads",
                 str(args.threads)], capture_output=True, text=True, check=True)
            runs[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[{name}, round {r + 1}] {k}: {1e6 * runs[k][-1]['cpu'] / runs[k][-1]['queries']:.0f}"
                  f" µs CPU per query, {runs[k][-1]['minflt']} minor faults", file=sys.stderr, flush=True)
    out = {"workload": name, "n": args.n, "eps": 0.02, "queries_per_sample": args.square_queries,
           "runs": runs, "allocator": allocator(),
           "us_per_query": {k: [1e6 * e["wall"] / e["queries"] for e in v] for k, v in runs.items()},
           "cpu_us_per_query": {k: [1e6 * e["cpu"] / e["queries"] for e in v]
                                for k, v in runs.items()}}
    if len(names) == 2:
        for key, field in (("ratio", "us_per_query"), ("cpu_ratio", "cpu_us_per_query")):
            a, b = out[field][names[0]], out[field][names[1]]
            out[key + "_rounds"] = [u / v for u, v in zip(a, b, strict=True)]
            out[key] = statistics.median(out[key + "_rounds"])
    return out


def report(results: list[dict[str, Any]], squares: list[dict[str, Any]], info: dict) -> str:
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores, torch threads = {info['threads']}; "
             f"torch {info['torch']}, scrutiny {info['scrutiny']}, torchattacks "
             f"{version('torchattacks') if ta is not None else 'not installed'}; {info['date']}.", ""]
    for r in results:
        busy = [b for b in r["other_processes_cpu"] if b is not None]
        lines += [f"**{r['model']}**, N = {r['n']}, linf eps = {r['eps']}, clean accuracy "
                  f"{r['clean_accuracy']:.3f}; {len(r['times_s'][r['methods'][0]])} interleaved "
                  f"round(s); other processes' CPU share per round: "
                  f"{', '.join(f'{b:.0%}' for b in busy) or 'n/a'}", "",
                  "| method | robust accuracy | median s | time ÷ AA-standard (median of rounds) |",
                  "|---|---:|---:|---:|"]
        for k in r["methods"]:
            ratio = r["ratio_to_aa_standard"].get(k)
            lines.append(f"| {k} | {r['robust_accuracy'][k]:.4f} | "
                         f"{statistics.median(r['times_s'][k]):.1f} | "
                         f"{'—' if ratio is None else f'{ratio:.2f}×'} |")
        st = r["scrutiny_stages_last_round"]
        if st:
            lines += ["", "scrutiny's stages (last round): " + "; ".join(
                f"{s['name']} {s['seconds']:.1f} s → {s['robust_accuracy']:.4f}"
                + (f" ({s['stalled']} stalled, {s['queries']} queries)" if s.get("queries") else "")
                for s in st)]
        lines.append("")
    for s in squares:
        us = s["us_per_query"]
        lines += [f"**Square, cost per query**, {s['workload']}, N = {s['n']}, linf eps = {s['eps']} "
                  f"(nothing breaks), {s['queries_per_sample']} queries per sample: "
                  + "; ".join(f"{k} {statistics.median(v):.0f} µs" for k, v in us.items())
                  + (f"; ratio (median of rounds) {s['ratio']:.2f}×, in CPU time "
                     f"{s['cpu_ratio']:.2f}× (rounds: "
                     + ", ".join(f"{v:.2f}" for v in s["cpu_ratio_rounds"]) + ")"
                     if "ratio" in s else "")
                  + "; allocator settings: " + allocator_text(s["allocator"])
                  + "; minor page faults per timed run: " + "; ".join(
                      f"{k} " + ", ".join(str(e["minflt"]) for e in v) for k, v in s["runs"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="big,digits-cnn,digits-cnn-pgd")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--full", action="store_true", help="also WorstCase(stop_stalled=False)")
    p.add_argument("--square", action="store_true", help="also Square's cost per query")
    p.add_argument("--square-only", action="store_true")
    p.add_argument("--square-queries", type=int, default=300)
    p.add_argument("--square-case", choices=SQUARES, help="internal: one Square run, print JSON")
    p.add_argument("--out", default="worstcase")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.square_case is not None:
        print(json.dumps(square_run(args.workloads, args.square_case, args)))
        return 0
    info = machine_info(args.threads)
    results, squares = [], []
    for w in args.workloads.split(","):
        if not args.square_only:
            results.append(bench_workload(w, args))
        if args.square or args.square_only:
            squares.append(square_cost(w, args))
    table = report(results, squares, info)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(table + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(
        {"machine": info, "workloads": results, "square": squares}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
