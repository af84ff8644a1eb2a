"""Certification: bound tightness (IBP vs CROWN) and randomized-smoothing throughput.

Run from the repository root::

    .venv/bin/python benchmarks/bench_certify.py [--n 64] [--threads 1] [--device cpu]

1. Tightness on the zoo's digits CNN: mean width of the margin bounds
   ``z_y - z_j`` (``j != y``), certified accuracy and time per sample of IBP,
   CROWN (default: intersected with IBP), pure CROWN and Fast-Lin, next to
   the robust accuracy of APGD at the same eps (an upper bound on any
   certified accuracy).
2. Randomized smoothing: noisy samples classified per second by
   ``RandomizedSmoothing.counts`` against plain forward passes of the same
   number of (pre-drawn noisy) inputs in batches of the same size (ratio
   close to 1 means the sampling, noise and counting add little).
3. CROWN against auto_LiRPA when it is importable (it is not installable next
   to torch 2.x: auto_LiRPA 0.3 on PyPI requires torch < 1.13).

Times are wall-clock medians of ``--repeats`` runs; on a shared machine they
are inflated by the other processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from scrutiny.attacks import APGD
from scrutiny.base import seeded
from scrutiny.certify import CROWN, IBP, RandomizedSmoothing
from scrutiny.data import load_digits
from scrutiny.models import pretrained
from scrutiny.types import ThreatModel

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def tightness(model, x, y, norm: str, eps: float, repeats: int) -> list[dict]:
    rows = []
    off = ~torch.nn.functional.one_hot(y, 10).bool()
    adv = APGD(steps=50)(model, x, y, threat=ThreatModel(norm, eps))
    methods = [("IBP", IBP()), ("CROWN", CROWN()), ("CROWN (pure)", CROWN(intersect_ibp=False)),
               ("Fast-Lin", CROWN(relaxation="fastlin", intersect_ibp=False))]
    for name, cert in methods:
        b, t = _timed(lambda c=cert: c.bounds(model, x, eps, y=y, norm=norm), repeats)
        gap = (b.margin_upper - b.margin_lower)[off.to(b.margin_lower.device)].mean().item()
        acc = (b.certified().cpu() & (model.predict(x).cpu() == y.cpu())).float().mean().item()
        rows.append({"norm": norm, "eps": eps, "method": name, "mean_margin_gap": gap,
                     "certified_accuracy": acc, "apgd_robust_accuracy": adv.robust_accuracy(),
                     "ms_per_sample": 1000 * t / len(x)})
    return rows


def throughput(model, x, n: int, batch_size: int, repeats: int) -> dict:
    rs = RandomizedSmoothing(sigma=0.25, n=n, batch_size=batch_size)
    dev = model.device
    xd = x.to(dev)
    total = len(x) * n

    def smooth():
        with model.evaluating(), torch.no_grad(), seeded(0, dev):
            return rs.counts(model, xd, n)

    # the same number of inputs, noisy too (the speed of a forward pass depends a little on
    # the data): only the sampling and the counting differ
    gen = torch.Generator(device=dev).manual_seed(1)
    plain_inputs = xd.repeat_interleave(n, 0)
    plain_inputs += 0.25 * torch.randn(plain_inputs.shape, generator=gen, device=dev)

    def plain():
        with model.evaluating(), torch.no_grad():
            for i in range(0, total, batch_size):
                model(plain_inputs[i:i + batch_size])

    smooth()
    plain()  # warm-up
    ts, tp = [], []
    for _ in range(repeats):  # interleaved
        ts.append(_timed(smooth, 1)[1])
        tp.append(_timed(plain, 1)[1])
    t_s, t_p = statistics.median(ts), statistics.median(tp)
    return {"noisy_samples": total, "batch_size": batch_size,
            "smoothing_samples_per_s": total / t_s, "plain_forwards_per_s": total / t_p,
            "ratio": (total / t_s) / (total / t_p)}


def lirpa_row(model, x, eps: float) -> str:
    try:
        import auto_LiRPA  # noqa: F401
    except ImportError:
        return "auto_LiRPA: not installed (auto_LiRPA 0.3 on PyPI requires torch < 1.13)"
    return "auto_LiRPA is importable: comparison not implemented for this version"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="test samples for the tightness table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--noise", type=int, default=1000, help="noise samples per input (throughput)")
    p.add_argument("--skip-tightness", action="store_true", help="only the throughput part")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/certify.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model = pretrained("digits-cnn", progress=False, device=a.device)
    data = load_digits(split="test")
    x, y = data.x[:a.n].to(a.device), data.y[:a.n].to(a.device)
    rows = []
    for norm, eps in (() if a.skip_tightness else
                      (("linf", 0.002), ("linf", 0.01), ("linf", 0.03), ("l2", 0.1))):
        rows += tightness(model, x, y, norm, eps, a.repeats)
    print(f"## Bound tightness on the digits CNN ({a.n} test samples, device {a.device}, "
          f"{a.threads} thread(s))\n")
    print("| norm | eps | method | mean margin-bound width | certified acc. | APGD robust acc. "
          "| ms / sample |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['norm']} | {r['eps']} | {r['method']} | {r['mean_margin_gap']:.3f} | "
              f"{r['certified_accuracy']:.3f} | {r['apgd_robust_accuracy']:.3f} | "
              f"{r['ms_per_sample']:.1f} |")
    thr = [throughput(model, x[:16], a.noise, bs, a.repeats) for bs in (100, 1000)]
    print("\n## Randomized smoothing throughput\n")
    print("| batch | noisy samples | smoothing samples/s | plain forwards/s | ratio |\n"
          "|---|---|---|---|---|")
    for t in thr:
        print(f"| {t['batch_size']} | {t['noisy_samples']} | {t['smoothing_samples_per_s']:.0f} | "
              f"{t['plain_forwards_per_s']:.0f} | {t['ratio']:.2f} |")
    print("\n" + lirpa_row(model, x, 0.01))
    if a.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "certify.json").write_text(json.dumps(
            {"tightness": rows, "throughput": thr, "device": a.device, "threads": a.threads},
            indent=1))


if __name__ == "__main__":
    main()
