"""Integrated Gradients on the 28x28 BigCNN: scrutiny's defaults against Captum (issue 17).

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_ig.py            # 3 rounds, 1 thread

The model is :mod:`bigcnn` (Carlini-Wagner's MNIST CNN trained on 28x28 digits); the
inputs the first ``--n`` test images (128), the target the predicted class, the baseline
zero. Cases:

- scrutiny ``IntegratedGradients()`` (defaults);
- Captum ``IntegratedGradients.attribute(..., n_steps=50, method="gausslegendre",
  internal_batch_size=B)`` for B in 128 (= N, the smallest Captum accepts), 256 and 512.

How it is timed, fairly to the allocator: every case runs in a fresh Python process
(``--case``), which loads the model and the images, runs the case once on all the
images as a warm-up (one-time setup of each pass shape; the heap grows by that case's
own pattern only) and then times a second, identical run: wall time
(``time.perf_counter``) and the process's CPU time (``time.process_time``, user +
system; on a machine shared with other jobs it leaves out the waits for a core, so its
ratios are steadier), and the system time alone (page faults). A round runs every case
once, in an order rotated per round; ratios are taken per round to the time, in the same
round, of Captum's batching with the lowest median time over all rounds, then the median
over the rounds (``--rounds``, at least 3). (Not to the fastest of the three batchings in
each round: with ~20 % noise between processes, a minimum over three draws favours the
reference.) glibc's malloc returns freed heap to the kernel and faults it back in, which
on these passes costs Captum's large batches up to half their time (the ``system`` column)
and scrutiny's passes of ~41 points almost nothing; run once as is and once with
``MALLOC_TRIM_THRESHOLD_=1000000000 MALLOC_MMAP_THRESHOLD_=1000000000`` (the cases inherit
it) to see both sides.

Errors, in float64 from each case's attributions (``run.completeness``): relative
completeness error and the attribution error ``||attr - ref||_1 / ||ref||_1`` against
the trapezoid rule on 2,049 nodes (float32 model), computed on the first ``--ref-n`` (32)
images and cached in ``benchmarks/results/``.

Results: ``benchmarks/results/ig.md`` and ``ig.json``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bigcnn import load_bigcnn  # noqa: E402
from peers import optional  # noqa: E402
from run import CpuShare, PassCounter, allocator_text, completeness, machine_info, version  # noqa: E402

from scrutiny.data import load_digits  # noqa: E402
from scrutiny.explain.gradient.integrated import IntegratedGradients  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REF_STEPS = 2049
captum_attr = optional("captum.attr")


def reference(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IG by the trapezoid rule on ``REF_STEPS`` uniform nodes (cached)."""
    from safetensors.torch import load_file, save_file

    path = RESULTS / f"ig-reference-bigcnn-{REF_STEPS}-f32-n{len(x)}.safetensors"
    if path.is_file():
        d = load_file(path)
        if torch.equal(d["x"], x) and torch.equal(d["target"], target):
            return d["ref"]
    t0 = time.perf_counter()
    ref = IntegratedGradients(steps=REF_STEPS, rule="riemann_trapezoid", batch_size=256)(
        model, x, target).attributions
    print(f"reference: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    save_file({"ref": ref.contiguous(), "x": x, "target": target}, path)
    return ref


CASES = {"scrutiny IntegratedGradients() [defaults]": None,
         **{f"Captum n_steps=50 gausslegendre internal_batch_size={b}": b
            for b in (128, 256, 512)}}


def run_case(name: str, n: int, ref_n: int, threads: int) -> dict:
    """Warm up, then time one run of case ``name`` in this process (see the module doc)."""
    torch.set_num_threads(threads)
    model = load_bigcnn()
    x = load_digits(size=28, split="test").x[:n].contiguous()
    with torch.no_grad():
        target = model(x).argmax(1)
    if CASES[name] is None:
        def case():
            return IntegratedGradients()(model, x, target).attributions
    else:
        cig = captum_attr.IntegratedGradients(model)

        def case():
            return cig.attribute(x, baselines=0.0, target=target, n_steps=50,
                                 method="gausslegendre", internal_batch_size=CASES[name])
    case()  # warm-up
    cnt = PassCounter()
    h = model.register_forward_hook(cnt)
    sys0, t0, c0 = os.times().system, time.perf_counter(), time.process_time()
    attr = case()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    system = os.times().system - sys0
    h.remove()
    k = min(ref_n, n)
    ref = reference(model, x[:k], target[:k])
    return {"wall": wall, "cpu": cpu, "sys": system, "points": cnt.grad_samples / n,
            "errors": completeness(model, x[:k], attr[:k].detach(), target[:k], ref)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--ref-n", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", help="internal: time this case in this process, print JSON")
    args = p.parse_args(argv)
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.n, args.ref_n, args.threads)))
        return 0
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    model = load_bigcnn()
    x = load_digits(size=28, split="test").x[:args.n].contiguous()
    with torch.no_grad():
        target = model(x).argmax(1)
    k = min(args.ref_n, len(x))
    reference(model, x[:k], target[:k])  # computed once here, cached for the cases
    names = [c for c in CASES if CASES[c] is None or captum_attr is not None]
    res = {c: [] for c in names}
    busy = []
    for r in range(args.rounds):
        share = CpuShare()
        for c in names[r % len(names):] + names[:r % len(names)]:
            out = subprocess.run([sys.executable, __file__, "--case", c, "--n", str(args.n),
                                  "--ref-n", str(args.ref_n), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            res[c].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"[round {r + 1}] {c}: {res[c][-1]['wall']:.1f} s (CPU "
                  f"{res[c][-1]['cpu']:.1f} s, system {res[c][-1]['sys']:.2f} s)",
                  file=sys.stderr, flush=True)
        busy.append(share.others())
    caps = [c for c in names if c.startswith("Captum")]
    ratios, refs = {}, {}
    for key in ("wall", "cpu"):
        if caps:  # the reference: Captum's batching with the lowest median time over the rounds
            refs[key] = ref = min(caps, key=lambda c: statistics.median(e[key] for e in res[c]))
            ratios[key] = {c: [res[c][r][key] / res[ref][r][key] for r in range(args.rounds)]
                           for c in names}

    def ratio(key, c):
        if key not in ratios:
            return "n/a"
        v = ratios[key][c]
        return f"{statistics.median(v):.2f}× ({', '.join(f'{e:.2f}' for e in v)})"

    lines = [f"BigCNN on 28x28 digits (benchmarks/bigcnn.py), N = {len(x)}, zero baseline, "
             f"target = predicted class; errors on the first {k} images against the trapezoid "
             f"rule on {REF_STEPS} nodes. Machine: {info['cpu']}, {info['cores']} cores, torch "
             f"threads = {args.threads}; torch {info['torch']}, Captum "
             f"{version('captum') if captum_attr is not None else 'not installed'}; {info['date']}"
             f"; {args.rounds} interleaved rounds, each case in a fresh process after a warm-up "
             "run; other processes' CPU share per round: "
             + ", ".join("n/a" if b is None else f"{b:.0%}" for b in busy), "",
             f"Reference: Captum's fastest batching by median time ({refs.get('cpu', 'n/a')}"
             + ("" if refs.get("cpu") == refs.get("wall")
                else f" in CPU time, {refs.get('wall')} in wall time")
             + "); ratios per round to its time in the same round. Allocator: "
             + allocator_text(info["allocator"]) + ".", "",
             "| method | median s | median CPU s (system) | grad samples / N | wall ÷ reference: "
             "median (per round) | CPU ÷ reference | completeness err: "
             "mean | max | attribution err: mean | max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in names:
        e = res[c][-1]["errors"]
        med = {key: statistics.median(v[key] for v in res[c]) for key in ("wall", "cpu", "sys")}
        lines.append(f"| {c} | {med['wall']:.1f} | {med['cpu']:.1f} ({med['sys']:.2f}) | "
                     f"{res[c][-1]['points']:.1f} | {ratio('wall', c)} | {ratio('cpu', c)} | "
                     f"{e['completeness_rel_mean']:.2e} | {e['completeness_rel_max']:.2e} | "
                     f"{e['attribution_rel_l1_mean']:.2e} | {e['attribution_rel_l1_max']:.2e} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ig.md").write_text(table + "\n")
    (RESULTS / "ig.json").write_text(json.dumps(
        {"machine": info, "runs": res, "ratios_to_captum_best": ratios,
         "reference": refs, "other_processes_cpu": busy}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
