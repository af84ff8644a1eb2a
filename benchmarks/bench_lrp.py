"""LRP-epsilon: scrutiny against Zennit and Captum on the digits CNN (conservation and time).

Run from the repository root (the peers are optional; missing ones read "not installed")::

    benchmarks/.venv-peers/bin/python benchmarks/bench_lrp.py [--n 256] [--repeats 5]

All methods explain the predicted class of the same ``--n`` digits test samples
with the epsilon rule (eps = 1e-6) on every Conv/Linear/average-pool layer,
ReLU passed through and max pooling winner-take-all (Zennit: the gradient;
Captum: its epsilon rule on MaxPool, which is the same up to eps). The output
relevance is the target logit ``f_c(x)``.

Conservation error per sample: ``|sum R_input - f_c(x)| / |f_c(x)|`` (mean and
max over samples), on the trained CNN (biases absorb relevance, so this is not
0 for any method) and on a bias-free variant (same weights, biases zeroed),
where it must be ~0. For scrutiny also the accounted error
``|sum R_input + bias share + stabilizer share - f_c(x)| / |f_c(x)|`` and the
worst per-layer error ``|R_in + shares - R_out| / |R_out|``. Times are medians
of interleaved repeats on one thread, after one warm-up call each.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata as md
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn

from scrutiny.data import load_digits
from scrutiny.explain.lrp import LRP
from scrutiny.models import TorchModel, pretrained

EPS = 1e-6

try:  # torchvision stand-in for zennit's top-level import (benchmarks/peers.py), if present
    import peers  # noqa: F401
except ImportError:  # pragma: no cover
    pass
try:  # optional peers
    from zennit.attribution import Gradient as ZennitGradient
    from zennit.core import Composite as ZComposite
    from zennit.rules import Epsilon as ZEpsilon
    from zennit.rules import Pass as ZPass
    from zennit.types import Activation as ZActivation
    from zennit.types import AvgPool as ZAvgPool
    from zennit.types import Convolution as ZConvolution
except ImportError:  # pragma: no cover
    ZennitGradient = None
try:
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import EpsilonRule as CaptumEpsilon
except ImportError:  # pragma: no cover
    CaptumLRP = None


def version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


class _FunctionalFlatten(nn.Module):
    """SmallCNN with ``torch.flatten`` instead of the Flatten module (Captum has no rule for it)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.features, self.pool, self.classifier = net.features, net.pool, net.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def scrutiny_runner(model: TorchModel, precision: str):
    m = LRP(rule="epsilon", epsilon=EPS, precision=precision, batch_size=4096)

    def run(x, t):
        e = m(model, x, t)
        return e.attributions, e
    return run


def zennit_runner(net: nn.Module):
    # zennit.composites.LayerMapComposite imports torchvision (not installed): the same
    # type -> rule map written with zennit.core.Composite
    layer_map = [(ZActivation, ZPass()), (ZConvolution, ZEpsilon(EPS)), (nn.Linear, ZEpsilon(EPS)),
                 (ZAvgPool, ZEpsilon(EPS))]

    def module_map(_ctx, _name, module):
        return next((hook for types, hook in layer_map if isinstance(module, types)), None)
    composite = ZComposite(module_map=module_map)

    def run(x, t):
        with ZennitGradient(model=net, composite=composite) as attributor:
            onehot = torch.eye(10)[t]
            _, rel = attributor(x, lambda out: out * onehot)
        return rel, None
    return run


def captum_runner(net: nn.Module):
    net = _FunctionalFlatten(copy.deepcopy(net))
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d | nn.Linear | nn.MaxPool2d | nn.AdaptiveAvgPool2d):
            mod.rule = CaptumEpsilon(epsilon=EPS)
    explainer = CaptumLRP(net)

    def run(x, t):
        return explainer.attribute(x, target=t), None
    return run


def conservation(rel: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (rel.detach().double().flatten(1).sum(1) - f.double()).abs() / f.double().abs()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = pretrained("digits-cnn", progress=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = load_digits(split="test").x[:args.n]
    nobias_net = copy.deepcopy(model.module)
    with torch.no_grad():
        for mod in nobias_net.modules():
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    variants = {"with biases": model.module, "bias-free": nobias_net}

    rows = []
    for vname, net in variants.items():
        tm = TorchModel(net)
        with torch.no_grad():
            out = net(x)
        t = out.argmax(1)
        f = out.gather(1, t[:, None])[:, 0]
        runners = {"scrutiny (float64)": scrutiny_runner(tm, "float64"),
                   "scrutiny (float32)": scrutiny_runner(tm, "float32")}
        if ZennitGradient is not None:
            runners[f"zennit {version('zennit')}"] = zennit_runner(net)
        if CaptumLRP is not None:
            runners[f"captum {version('captum')}"] = captum_runner(net)
        times: dict[str, list[float]] = {k: [] for k in runners}
        results: dict[str, tuple[torch.Tensor, object]] = {}
        for run in runners.values():  # warm-up (lazy imports, allocator)
            run(x[:8].clone(), t[:8])
        for _ in range(args.repeats):  # interleaved repeats
            for k, run in runners.items():
                t0 = time.perf_counter()
                rel, e = run(x.clone(), t)
                results[k] = (rel.detach(), e)
                times[k].append(time.perf_counter() - t0)
        ref = results["scrutiny (float64)"][0].double()
        for k, (rel, e) in results.items():
            c = conservation(rel, f)
            row = {"model": vname, "method": k, "time_ms": 1e3 * statistics.median(times[k]),
                   "cons_mean": float(c.mean()), "cons_max": float(c.max()),
                   "diff": float((rel.double() - ref).abs().max() / ref.abs().max()),
                   "accounted": None, "layer": None}
            if e is not None:
                acc = e.meta["conservation_residual"].abs() / f.double().abs()
                row["accounted"] = float(acc.max())
                worst = 0.0
                for name in e.meta["layers"]:
                    total = (e.meta["layer_relevance"][name] + e.meta["bias_relevance"][name]
                             + e.meta["stabilizer_relevance"][name])
                    out_r = e.meta["layer_relevance_out"][name]
                    err = (total - out_r).abs() / out_r.abs().clamp_min(1e-30)
                    worst = max(worst, float(err.max()))
                row["layer"] = worst
            rows.append(row)

    load = os.getloadavg()
    print(f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; "
          f"torch {torch.__version__}, {args.threads} thread(s), python {sys.version.split()[0]}; "
          f"n={args.n} digits test samples, median of {args.repeats} interleaved repeats.\n")
    print("| model | method | time (ms) | conservation err mean | max | accounted err max "
          "| worst layer err | max diff to scrutiny f64 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def fmt(v):
        return "n/a" if v is None else f"{v:.1e}"
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['time_ms']:.1f} | {fmt(r['cons_mean'])} | "
              f"{fmt(r['cons_max'])} | {fmt(r['accounted'])} | {fmt(r['layer'])} | {fmt(r['diff'])} |")


if __name__ == "__main__":
    main()
