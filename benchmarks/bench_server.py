"""Queries per second and a Square attack's wall time: the digits CNN behind a real MLServer
(Open Inference Protocol, JSON over HTTP on 127.0.0.1) and behind scrutiny's own ``serve``
(JSON, and the binary tensor data extension), against the same model queried in process.

Run from the repository root with the development venv (MLServer: ``pip install
scrutiny[server]``, pinned in requirements/dev.lock)::

    .venv/bin/python benchmarks/bench_server.py [--n 20] [--queries 200] [--repeats 50]

Reported: rows answered per second for requests of 1 and of 64 inputs (``--repeats``
requests each, after one warm-up; 64 test digits, whose pixels are multiples of 1/16 with
short decimals, and the same plus uniform noise in [0, 0.1], clipped: an attack's queries,
~9 decimals a value in JSON), and the wall time of ``Square(max_queries=--queries)``
(linf eps 0.1) on the first ``--n`` test digits, whose query calls hold one row per
sample (``--n`` rows a request); the ratio is each endpoint's time over the in-process time.
Every path uses one torch thread; the server runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.models.mlserver_process

from scrutiny.attacks.blackbox import Square  # noqa: E402
from scrutiny.data import load_digits  # noqa: E402
from scrutiny.models import HttpModel, QueryModel, pretrained, serve  # noqa: E402
from scrutiny.types import ThreatModel  # noqa: E402


def rows_per_second(model, x: torch.Tensor, repeats: int) -> float:
    model.predict(x)  # warm-up (and the endpoint's metadata)
    t = time.perf_counter()
    for _ in range(repeats):
        model.predict(x)
    return repeats * len(x) / (time.perf_counter() - t)


def attack_seconds(model, x, y, queries: int) -> tuple[float, float, int]:
    t = time.perf_counter()
    res = Square(max_queries=queries)(model, x, y, threat=ThreatModel("linf", 0.1), seed=0)
    return time.perf_counter() - t, res.success_rate(), int(res.queries.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = pretrained("digits-cnn", progress=False)
    data = load_digits(split="test")
    x, y = data.x[:args.n], data.y[:args.n]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, python {platform.python_version()}, torch "
          f"{torch.__version__}, one torch thread per process")
    from tests.models.mlserver_process import start_mlserver

    t = time.perf_counter()
    mls = start_mlserver(Path(tempfile.mkdtemp()), {"digits": "logits"})
    print(f"MLServer ready in {time.perf_counter() - t:.1f} s")
    local = serve(net, name="digits", input_shape=(1, 8, 8))
    paths = {"in process": lambda: QueryModel(net, output="logits"),
             "scrutiny serve, JSON": lambda: HttpModel(local.url, batch_size=64, binary=False),
             "scrutiny serve, binary": lambda: HttpModel(local.url, batch_size=64, binary=True),
             "MLServer 1.7.1 (JSON)": lambda: HttpModel(mls.url, batch_size=64)}
    x64 = data.x[:64]
    noisy = (x64 + 0.1 * torch.rand(x64.shape, generator=torch.Generator().manual_seed(0))
             ).clamp(0, 1)
    rows = []
    try:
        for name, make in paths.items():
            one = rows_per_second(make(), x[:1], args.repeats)
            batch = rows_per_second(make(), x64, max(args.repeats // 5, 5))
            perturbed = rows_per_second(make(), noisy, max(args.repeats // 5, 5))
            m = make()
            secs, rate, q = attack_seconds(m, x, y, args.queries)
            if isinstance(m, HttpModel) and m.binary_used is not (name.endswith("binary")):
                raise RuntimeError(f"{name}: binary_used={m.binary_used}")
            rows.append((name, one, batch, perturbed, secs, rate, q))
    finally:
        local.close()
        mls.close()
    base = rows[0][4]
    print("\n| path | rows/s, 1 a request | rows/s, 64 a request | rows/s, 64 perturbed a "
          "request | Square wall (s) | x in-process | success | queries |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, one, batch, perturbed, secs, rate, q in rows:
        print(f"| {name} | {one:.0f} | {batch:.0f} | {perturbed:.0f} | {secs:.2f} | "
              f"{secs / base:.1f} | {rate:.2f} | {q} |")


if __name__ == "__main__":
    main()
