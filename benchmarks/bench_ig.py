"""Integrated Gradients on the 28x28 BigCNN: scrutiny's defaults against Captum (issue 17).

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_ig.py            # 3 rounds, 1 thread

The model is :mod:`bigcnn` (Carlini-Wagner's MNIST CNN trained on 28x28 digits); the
inputs the first ``--n`` test images (128), the target the predicted class, the baseline
zero. Cases, timed in interleaved rounds (every case once per round, the order rotated),
ratios per round to Captum's best batching of that round, median over rounds:

- scrutiny ``IntegratedGradients()`` (defaults) and, for comparison, with the old
  ``batch_size=512``;
- Captum ``IntegratedGradients.attribute(..., n_steps=50, method="gausslegendre",
  internal_batch_size=B)`` for B in 128 (= N, the smallest Captum accepts), 256 and 512.

Errors, in float64 from each case's attributions (``run.completeness``): relative
completeness error and the attribution error ``||attr - ref||_1 / ||ref||_1`` against
the trapezoid rule on 2,049 nodes (float32 model), computed on the first ``--ref-n`` (32)
images and cached in ``benchmarks/results/``.

Results: ``benchmarks/results/ig.md`` and ``ig.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bigcnn import load_bigcnn  # noqa: E402
from peers import optional  # noqa: E402
from run import CpuShare, PassCounter, completeness, machine_info, version  # noqa: E402

from scrutiny.data import load_digits  # noqa: E402
from scrutiny.explain.gradient.integrated import IntegratedGradients, path_batch  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--ref-n", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    model = load_bigcnn()
    x = load_digits(size=28, split="test").x[:args.n].contiguous()
    with torch.no_grad():
        target = model(x).argmax(1)
    k = min(args.ref_n, len(x))
    ref = reference(model, x[:k], target[:k])

    cases = {"scrutiny IntegratedGradients() [defaults: batch_size=None → "
             f"{path_batch(None, x[0].numel())}]": lambda: IntegratedGradients()(model, x, target)
             .attributions,
             "scrutiny IntegratedGradients(batch_size=512) [the old default]":
             lambda: IntegratedGradients(batch_size=512)(model, x, target).attributions}
    if captum_attr is not None:
        cig = captum_attr.IntegratedGradients(model)
        for b in (128, 256, 512):
            cases[f"Captum n_steps=50 gausslegendre internal_batch_size={b}"] = (
                lambda b=b: cig.attribute(x, baselines=0.0, target=target, n_steps=50,
                                          method="gausslegendre", internal_batch_size=b))
    names = list(cases)
    times = {c: [] for c in names}
    points, errors = {}, {}
    busy = []
    for r in range(args.rounds):
        share = CpuShare()
        for c in names[r % len(names):] + names[:r % len(names)]:
            cnt = PassCounter()
            h = model.register_forward_hook(cnt)
            t0 = time.perf_counter()
            attr = cases[c]()
            times[c].append(time.perf_counter() - t0)
            h.remove()
            points[c] = cnt.grad_samples / len(x)
            errors[c] = completeness(model, x[:k], attr[:k].detach(), target[:k], ref)
            print(f"[round {r + 1}] {c}: {times[c][-1]:.1f} s", file=sys.stderr, flush=True)
        busy.append(share.others())
    caps = [c for c in names if c.startswith("Captum")]
    ratios = {}
    if caps:
        best = [min(times[c][r] for c in caps) for r in range(args.rounds)]
        ratios = {c: statistics.median(times[c][r] / best[r] for r in range(args.rounds))
                  for c in names}
    lines = [f"BigCNN on 28x28 digits (benchmarks/bigcnn.py), N = {len(x)}, zero baseline, "
             f"target = predicted class; errors on the first {k} images against the trapezoid "
             f"rule on {REF_STEPS} nodes. Machine: {info['cpu']}, {info['cores']} cores, torch "
             f"threads = {args.threads}; torch {info['torch']}, Captum "
             f"{version('captum') if captum_attr is not None else 'not installed'}; {info['date']}"
             f"; {args.rounds} interleaved rounds; other processes' CPU share per round: "
             + ", ".join("n/a" if b is None else f"{b:.0%}" for b in busy), "",
             "| method | median s | grad samples / N | time ÷ Captum's best of the round "
             "(median) | completeness err: mean | max | attribution err: mean | max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in names:
        e = errors[c]
        lines.append(f"| {c} | {statistics.median(times[c]):.1f} | {points[c]:.1f} | "
                     f"{ratios.get(c, float('nan')):.2f}× | {e['completeness_rel_mean']:.2e} | "
                     f"{e['completeness_rel_max']:.2e} | {e['attribution_rel_l1_mean']:.2e} | "
                     f"{e['attribution_rel_l1_max']:.2e} |")
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ig.md").write_text(table + "\n")
    (RESULTS / "ig.json").write_text(json.dumps(
        {"machine": info, "times_s": times, "grad_samples_per_n": points, "errors": errors,
         "ratio_to_captum_best": ratios, "other_processes_cpu": busy}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
