"""Score-based black-box attacks: scrutiny against ART and torchattacks at the same budget.

Run from the repository root with the peers venv (see README.md)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_blackbox.py [--n 100] [--queries 1000]

On the zoo's digits CNN and the first ``--n`` test digits:

* Square Attack, linf eps=0.1 and l2 eps=1.0, ``--queries`` queries per sample,
  p_init=0.8: scrutiny's ``Square``, ART's ``SquareAttack`` (``max_iter`` =
  queries) and torchattacks' ``Square`` (``n_queries`` = queries);
* ZOO (ADAM, l2, 128 -> 32 coordinates per iteration on 8x8 digits), scrutiny's
  ``ZOO`` and ART's ``ZooAttack`` with the same iterations, step and ``c``.

Reported: robust accuracy, success rate on correctly classified samples, queries
per sample (scrutiny: its per-sample counts; every library: rows that reached
the model, counted by a wrapper, divided by n, which includes the peers' clean
and bookkeeping queries), and wall time. Peers missing from the venv are skipped.
Timings on a shared machine are inflated by the other processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from torch import nn

from scrutiny.attacks.blackbox import ZOO, HopSkipJump, Square
from scrutiny.data import load_digits
from scrutiny.models import QueryModel, pretrained
from scrutiny.types import ThreatModel


class Counting(nn.Module):
    """Counts every row that reaches the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.model(x.float())  # ART's HopSkipJump passes float64


def _row(lib, attack, model, x, y, x_adv, rows, seconds, per_sample=None):
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        adv = model(x_adv).argmax(1) == y
    fooled = clean & ~adv
    out = {"library": lib, "attack": attack, "robust_acc": float(adv.float().mean()),
           "success_on_correct": float(fooled.sum() / clean.sum().clamp_min(1)),
           "queries_per_sample": rows / len(x), "seconds": seconds}
    if per_sample is not None and fooled.any():
        q = per_sample[fooled].float()
        out["mean_q_success"], out["median_q_success"] = float(q.mean()), float(q.median())
    return out


def bench_square(model, x, y, norm, eps, queries):
    rows = []
    t = time.perf_counter()
    qm = QueryModel(model, output="probs")
    res = Square(max_queries=queries, p_init=0.8)(qm, x, y, threat=ThreatModel(norm, eps))
    rows.append(_row("scrutiny", f"square {norm} {eps}", model, x, y, res.x_adv, qm.queries,
                     time.perf_counter() - t, res.queries))
    try:
        import torchattacks
        counted = Counting(model).eval()
        atk = torchattacks.Square(counted, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                  n_queries=queries, n_restarts=1, p_init=0.8, loss="margin",
                                  resc_schedule=True, seed=0, verbose=False)
        t = time.perf_counter()
        xa = atk(x, y)
        rows.append(_row(f"torchattacks {torchattacks.__version__}", f"square {norm} {eps}",
                         model, x, y, xa, counted.rows, time.perf_counter() - t))
    except ImportError:
        pass
    try:
        import art
        from art.attacks.evasion import SquareAttack
        from art.estimators.classification import PyTorchClassifier
        counted = Counting(model).eval()
        clf = PyTorchClassifier(counted, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0))
        atk = SquareAttack(clf, norm=np.inf if norm == "linf" else 2, max_iter=queries, eps=eps,
                           p_init=0.8, nb_restarts=1, batch_size=len(x), verbose=False)
        t = time.perf_counter()
        xa = torch.as_tensor(atk.generate(x.numpy(), y=y.numpy()))
        rows.append(_row(f"ART {art.__version__}", f"square {norm} {eps}", model, x, y, xa,
                         counted.rows, time.perf_counter() - t))
    except ImportError:
        pass
    return rows


def bench_zoo(model, x, y, iters):
    rows = []
    t = time.perf_counter()
    qm = QueryModel(model, output="probs")
    res = ZOO(steps=iters, coords_per_iteration=32, lr=0.1, initial_const=10.0,
              search_steps=1, early_stop=True)(qm, x, y, threat=ThreatModel("l2", float("inf")))
    rows.append(_row("scrutiny", "zoo-adam l2", model, x, y, res.x_adv, qm.queries,
                     time.perf_counter() - t, res.queries))
    try:
        import art
        from art.attacks.evasion import ZooAttack
        from art.estimators.classification import PyTorchClassifier
        counted = Counting(nn.Sequential(model, nn.Softmax(dim=1))).eval()
        clf = PyTorchClassifier(counted, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0))
        atk = ZooAttack(clf, confidence=0.0, learning_rate=0.1, max_iter=iters,
                        binary_search_steps=1, initial_const=10.0, abort_early=True,
                        use_resize=False, use_importance=False, nb_parallel=32, batch_size=1,
                        variable_h=1e-4, verbose=False)
        t = time.perf_counter()
        xa = torch.as_tensor(atk.generate(x.numpy(), y=y.numpy())).float()
        rows.append(_row(f"ART {art.__version__}", "zoo-adam l2", model, x, y, xa, counted.rows,
                         time.perf_counter() - t))
    except ImportError:
        pass
    return rows


def bench_hsj(model, x, y, art_iters):
    """HopSkipJump l2, label only: ART first, then scrutiny with the queries ART used."""
    rows, per = [], None

    def median_l2(xa, out):
        with torch.no_grad():
            ok = (model(x).argmax(1) == y) & (model(xa).argmax(1) != y)
        d = (xa - x).flatten(1).norm(dim=1)[ok]
        out["attack"] += f" (median l2 {float(d.median()):.3f})" if len(d) else " (no success)"
        return out

    try:
        import art
        from art.attacks.evasion import HopSkipJump as ArtHSJ
        from art.estimators.classification import PyTorchClassifier
        counted = Counting(model).eval()
        clf = PyTorchClassifier(counted, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                nb_classes=10, clip_values=(0.0, 1.0))
        atk = ArtHSJ(clf, norm=2, max_iter=art_iters, max_eval=1000, init_eval=100,
                     batch_size=len(x), verbose=False)
        t = time.perf_counter()
        xa = torch.as_tensor(atk.generate(x.numpy(), y=y.numpy())).float()
        per = counted.rows / len(x)
        rows.append(median_l2(xa, _row(f"ART {art.__version__}", "hop_skip_jump l2", model, x, y,
                                       xa, counted.rows, time.perf_counter() - t)))
    except ImportError:
        pass
    budget = int(per or 2000) * len(x)
    qm = QueryModel(model, output="label", budget=budget)
    t = time.perf_counter()
    res = HopSkipJump()(qm, x, y, threat=ThreatModel("l2", float("inf")))
    rows.append(median_l2(res.x_adv, _row("scrutiny", "hop_skip_jump l2", model, x, y, res.x_adv,
                                          qm.queries, time.perf_counter() - t, res.queries)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--zoo-iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hsj-n", type=int, default=20, help="samples for HopSkipJump")
    ap.add_argument("--hsj-iters", type=int, default=10, help="ART HopSkipJump max_iter")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = pretrained("digits-cnn", progress=False)
    data = load_digits(split="test")
    x, y = data.x[:args.n], data.y[:args.n]
    rows = bench_square(model, x, y, "linf", 0.1, args.queries)
    rows += bench_square(model, x, y, "l2", 1.0, args.queries)
    rows += bench_zoo(model, x[:min(args.n, 32)], y[:min(args.n, 32)], args.zoo_iters)
    rows += bench_hsj(model, x[:args.hsj_n], y[:args.hsj_n], args.hsj_iters)
    print(f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}; n={args.n} "
          f"(ZOO: {min(args.n, 32)}; HopSkipJump: {args.hsj_n}, scrutiny given the queries ART "
          f"used), {args.queries} queries per sample for Square.\n")
    print("| library | attack | robust acc | success on correct | queries/sample (all rows) "
          "| mean / median queries of successes | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mq = (f"{r['mean_q_success']:.1f} / {r['median_q_success']:.0f}"
              if "mean_q_success" in r else "n/a")
        print(f"| {r['library']} | {r['attack']} | {r['robust_acc']:.3f} | "
              f"{r['success_on_correct']:.3f} | {r['queries_per_sample']:.1f} | {mq} | "
              f"{r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
