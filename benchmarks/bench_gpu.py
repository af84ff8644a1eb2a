"""PGD, the AutoAttack-style worst case and Integrated Gradients on a CUDA GPU, against
torchattacks and Captum on the same card (issue 16, "The GPU").

Run from the repository root on a machine with a CUDA device (peers from
``bash benchmarks/setup_peers.sh``, which installs torchattacks and Captum)::

    benchmarks/.venv-peers/bin/python benchmarks/bench_gpu.py               # 3 rounds
    benchmarks/.venv-peers/bin/python benchmarks/bench_gpu.py --n 512 --rounds 5

Without a CUDA device it exits with status 2 and says so. The model is
:class:`scrutiny.models.zoo.ResNet` (3x32x32, 10 classes, widths 16/32/64; untrained
weights seeded with 0: only the cost is measured), the inputs ``--n`` uniform images, the
labels the model's predictions. Pairs, each timed in interleaved rounds (the two sides
alternate, the order flips every round; ``torch.cuda.synchronize`` around each call), the
ratio scrutiny / peer per round and its median:

- PGD, linf eps 8/255, 10 steps, step 2/255, random start: scrutiny ``PGD`` against
  ``torchattacks.PGD``;
- the worst case (AutoAttack protocol, linf eps 8/255): scrutiny ``attack:worst_case``
  (defaults) against ``torchattacks.AutoAttack(version="standard")``;
- Integrated Gradients, 50 Gauss-Legendre nodes, zero baseline, target the prediction:
  scrutiny ``IntegratedGradients(steps=50, rule="gausslegendre")`` against Captum's
  ``IntegratedGradients.attribute(n_steps=50, method="gausslegendre",
  internal_batch_size=N)``.

Results: ``benchmarks/results/gpu.md`` and ``gpu.json`` (machine: GPU name, memory,
CUDA and torch versions, CPU). Copy the table into docs/benchmarks.md, section "GPU".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402

from scrutiny import registry  # noqa: E402
from scrutiny.attacks import PGD  # noqa: E402
from scrutiny.explain.gradient.integrated import IntegratedGradients  # noqa: E402
from scrutiny.models import TorchModel  # noqa: E402
from scrutiny.models.zoo import ResNet  # noqa: E402
from scrutiny.types import ThreatModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 8 / 255


def machine() -> dict[str, object]:
    p = torch.cuda.get_device_properties(0)
    return {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}


def timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def pairs(model: TorchModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, tuple[Callable, Callable]]:
    ta, captum = optional("torchattacks"), optional("captum.attr")
    net = model.module
    threat = ThreatModel("linf", EPS)
    pgd = PGD(steps=10, step_size=2 / 255, random_start=True)
    worst = registry.create("attack:worst_case")
    ig = IntegratedGradients(steps=50, rule="gausslegendre")
    ta_pgd = ta.PGD(net, eps=EPS, alpha=2 / 255, steps=10, random_start=True)
    ta_aa = ta.AutoAttack(net, norm="Linf", eps=EPS, version="standard", n_classes=10, seed=0)
    cig = captum.IntegratedGradients(net)
    return {
        "PGD (10 steps)": (lambda: pgd(model, x, y, threat=threat), lambda: ta_pgd(x, y)),
        "worst case vs AutoAttack standard": (lambda: worst(model, x, y, threat=threat),
                                              lambda: ta_aa(x, y)),
        "Integrated Gradients (50 nodes)": (
            lambda: ig(model, x, y),
            lambda: cig.attribute(x, target=y, n_steps=50, method="gausslegendre",
                                  internal_batch_size=len(x))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="images (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible to torch (torch.cuda.is_available() is False); "
              "run it on a machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = TorchModel(ResNet(in_channels=3, num_classes=10), name="resnet-cifar").to("cuda").eval()
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).cuda()
    y = model.predict(x)
    rows = []
    for name, (mine, peer) in pairs(model, x, y).items():
        mine(), peer()  # warm-up: cuDNN autotuning, allocator
        ratios, ts, tp = [], [], []
        for r in range(args.rounds):
            order = (mine, peer) if r % 2 == 0 else (peer, mine)
            t = {id(f): timed(f) for f in order}
            ts.append(t[id(mine)])
            tp.append(t[id(peer)])
            ratios.append(ts[-1] / tp[-1])
        rows.append({"case": name, "scrutiny_s": statistics.median(ts),
                     "peer_s": statistics.median(tp), "ratio": statistics.median(ratios),
                     "ratios": ratios})
        print(f"{name}: scrutiny {rows[-1]['scrutiny_s']:.3f}s, peer {rows[-1]['peer_s']:.3f}s, "
              f"ratio {rows[-1]['ratio']:.2f}", flush=True)
    info = {**machine(), "n": args.n, "rounds": args.rounds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = [f"Machine: {info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {info['cuda']}, torch "
             f"{info['torch']}; ResNet 3x32x32, n={args.n}, {args.rounds} rounds.", "",
             "| case | scrutiny (s) | peer (s) | ratio scrutiny/peer (median) |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['scrutiny_s']:.3f} | {r['peer_s']:.3f} | {r['ratio']:.2f} |"
              for r in rows]
    (RESULTS / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
