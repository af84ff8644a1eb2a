"""Throughput of a sharded audit against the number of workers (issue 16), and the cost model
of a CIFAR-10 audit on a cluster.

Measured here, one torch thread per process: the per-sample sections (robustness curve,
headline attack, certification) of the default digits audit (``AuditConfig()``'s attacks,
eps grid, headline attack and certifier) on ``--n`` samples in shards of ``--shard-size``,
run by the local backend (1 worker), and by Ray with 1 and 2 actors (a local Ray instance
with 2 CPUs, started once; each run's time includes starting its actors, which load the
model). Then the per-sample cost of a forward plus backward pass of the 8x8 digits CNN and of
``scrutiny.models.zoo.ResNet`` on 3x32x32, the ratio that scales the per-sample audit cost
from one to the other (attacks, certification and explanations are forward/backward passes).

    .venv/bin/python benchmarks/bench_ray.py --n 64 --shard-size 16 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch


def pass_cost(model: torch.nn.Module, shape: tuple[int, ...], batch: int = 64,
              repeats: int = 5) -> float:
    """Seconds per sample of a forward and input-gradient backward pass at ``batch``."""
    model.eval()
    x = torch.rand(batch, *shape)
    best = float("inf")
    for _ in range(repeats + 1):
        xg = x.clone().requires_grad_(True)
        t = time.perf_counter()
        model(xg).logsumexp(1).sum().backward()
        best = min(best, time.perf_counter() - t)
    return best / batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--gpus", type=int, default=64, help="cluster of the estimate")
    p.add_argument("--gpu-speedup", type=float, default=50.0,
                   help="ASSUMED speed-up of one GPU over one CPU thread (not measured)")
    p.add_argument("--cifar-n", type=int, default=10_000)
    p.add_argument("--out", default="benchmarks/results/ray.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.audit.shards import LocalBackend, RayBackend
    from scrutiny.data import load_digits
    from scrutiny.models import pretrained
    from scrutiny.models.zoo import ResNet

    model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    cfg = AuditConfig(n_samples=a.n, sections=("robustness", "headline", "certification"),
                      cert_samples=a.n)
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    ray_init = time.perf_counter() - t
    runs = {"local, 1 worker": lambda: LocalBackend(), "ray, 1 worker": lambda: RayBackend(workers=1),
            "ray, 2 workers": lambda: RayBackend(workers=2)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    for _ in range(a.repeats):  # interleaved, so load changes hit every row alike
        for name, make in runs.items():
            t = time.perf_counter()
            res = run_audit(model, data, cfg, progress=False, shard_size=a.shard_size,
                            backend=make())
            times[name].append(time.perf_counter() - t)
            results[name] = res.headline["robust_accuracy"]
    ray.shutdown()
    rows = {k: {"seconds": min(v), "all_seconds": v, "samples_per_s": a.n / min(v)}
            for k, v in times.items()}
    base = rows["local, 1 worker"]["seconds"]
    for r in rows.values():
        r["speedup_vs_local"] = base / r["seconds"]
    digits = pass_cost(model.eval(), (1, 8, 8))
    resnet = pass_cost(ResNet(in_channels=3, num_classes=10), (3, 32, 32))
    per_sample_cpu = base / a.n  # one thread, the per-sample sections of the default audit
    cifar_cpu = per_sample_cpu * resnet / digits  # the same sections on a CIFAR ResNet
    cluster_s = a.cifar_n * cifar_cpu / a.gpu_speedup / a.gpus
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"torch {torch.__version__}, load {os.getloadavg()[0]:.1f}",
           "n": a.n, "shard_size": a.shard_size, "ray_init_seconds": ray_init, "rows": rows,
           "same_headline": len(set(results.values())) == 1, "headline": results,
           "pass_seconds_per_sample": {"digits-cnn 1x8x8": digits, "ResNet 3x32x32": resnet},
           "resnet_over_digits": resnet / digits,
           "estimate": {"per_sample_cpu_digits_s": per_sample_cpu,
                        "per_sample_cpu_resnet_s": cifar_cpu,
                        "assumed_gpu_speedup": a.gpu_speedup, "gpus": a.gpus, "samples": a.cifar_n,
                        "cluster_hours": cluster_s / 3600,
                        "one_cpu_thread_hours": a.cifar_n * cifar_cpu / 3600}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
