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
3. ``--lirpa``: IBP, CROWN and alpha-CROWN against auto_LiRPA (its PyPI build
   does not install beside torch 2.x; ``benchmarks/fetch_lirpa.sh`` puts its
   source in ``benchmarks/.venv-peers/src``, which this script puts on
   ``sys.path``; run it with ``benchmarks/.venv-peers/bin/python``). Same
   model, images and work: the logit and margin rows, lower and upper, for
   IBP and CROWN (max bound difference, time ratio per round, rounds
   interleaved scrutiny / auto_LiRPA); for alpha-CROWN the margins' lower
   bounds (certified accuracy and time), next to CROWN's and APGD's robust
   accuracy.

Times are wall-clock medians of ``--repeats`` runs; on a shared machine they
are inflated by the other processes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from scrutiny.attacks import APGD
from scrutiny.base import seeded
from scrutiny.certify import CROWN, IBP, AlphaCROWN, RandomizedSmoothing
from scrutiny.certify.propagation import margin_spec
from scrutiny.data import load_digits
from scrutiny.models import pretrained
from scrutiny.types import ThreatModel

RESULTS = Path(__file__).resolve().parent / "results"
#: Where benchmarks/fetch_lirpa.sh puts auto_LiRPA's source (git-ignored).
LIRPA_SRC = Path(__file__).resolve().parent / ".venv-peers" / "src"


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


def import_lirpa():
    """auto_LiRPA from benchmarks/.venv-peers/src (fetch_lirpa.sh), or None."""
    if LIRPA_SRC.is_dir() and str(LIRPA_SRC) not in sys.path:
        sys.path.insert(0, str(LIRPA_SRC))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import peers  # noqa: F401  (torchvision stand-in)

    warnings.filterwarnings("ignore")
    return peers.optional("auto_LiRPA")


def _max_diff(ours, lb, ub, y) -> float:
    """Largest difference over the logit rows and the margin rows (j != y), lower and upper."""
    k = ours.logits_lower.shape[1]
    off = ~torch.nn.functional.one_hot(y, k).bool()
    lb, ub = lb.detach(), ub.detach()
    return max(float((lb[:, :k] - ours.logits_lower).abs().max()),
               float((ub[:, :k] - ours.logits_upper).abs().max()),
               float((lb[:, k:] - ours.margin_lower)[off].abs().max()),
               float((ub[:, k:] - ours.margin_upper)[off].abs().max()))


def lirpa_compare(lirpa, model, x, y, eps_list, rounds: int, crown_rounds: int,
                  check_n: int, alpha: bool = True, methods: tuple[str, ...] = ("IBP", "CROWN"),
                  rebound: str = "live") -> dict:
    """IBP and CROWN bounds (logit and margin rows, lower and upper) and alpha-CROWN
    certification, scrutiny against auto_LiRPA, interleaved rounds."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    net = model.module.eval()
    k = 10
    out: dict = {"bounds": [], "alpha": []}

    def lirpa_bounds(module, xs, ys, eps, method, C, **kw):
        """In chunks of 32 images, as scrutiny's CROWN (at 128 at once auto_LiRPA's CROWN
        takes 20 GB)."""
        outs = []
        for i in range(0, len(xs), 32):
            xc = xs[i:i + 32]
            ptb = PerturbationLpNorm(norm=math.inf, eps=eps, x_L=(xc - eps).clamp(0, 1),
                                     x_U=(xc + eps).clamp(0, 1))
            outs.append(module.compute_bounds(x=(BoundedTensor(xc, ptb),), method=method,
                                              C=C[i:i + 32], **kw))
        return tuple(None if outs[0][j] is None else torch.cat([o[j] for o in outs]).detach()
                     for j in range(2))

    t = time.perf_counter()
    default = BoundedModule(net, x[:1], device="cpu", verbose=0)
    build_s = time.perf_counter() - t
    # the same intermediate bounds as scrutiny's CROWN on this max-pooling net: every neuron
    # re-bounded (its default re-bounds only the neurons IBP finds unstable, and max pooling's
    # relaxation then sees IBP's looser bounds of the active ones)
    dense = BoundedModule(net, x[:1], device="cpu", verbose=0,
                          bound_opts={"sparse_intermediate_bounds_with_ibp": False})
    out["lirpa_build_s"] = build_s
    for eps in eps_list:
        spec = margin_spec(y, k, torch.float32)
        for method, cert in (("IBP", IBP(batch_size=len(x))), ("CROWN", CROWN(rebound=rebound))):
            if method not in methods:
                continue
            ts, tl = [], []
            for _ in range(rounds if method == "IBP" else crown_rounds):
                t = time.perf_counter()
                ours = cert.bounds(model, x, eps, y=y)
                ts.append(time.perf_counter() - t)
                t = time.perf_counter()
                lb, ub = lirpa_bounds(default, x, y, eps, method, C=spec)
                tl.append(time.perf_counter() - t)
            row = {"eps": eps, "method": method, "n": len(x), "scrutiny_s": ts, "lirpa_s": tl,
                   "ratios": [a / b for a, b in zip(ts, tl, strict=True)],
                   "max_diff_default": _max_diff(ours, lb, ub, y),
                   "tighter_than_default": float(
                       (ours.margin_lower - lb[:, k:]).amax())}
            if method == "CROWN" and check_n > 0:  # equality with the dense configuration
                xs, ys = x[:check_n], y[:check_n]
                small = cert.bounds(model, xs, eps, y=ys)
                t = time.perf_counter()
                lb2, ub2 = lirpa_bounds(dense, xs, ys, eps, method, C=spec[:check_n])
                row["dense_check_n"], row["dense_lirpa_s"] = check_n, time.perf_counter() - t
                row["max_diff_dense"] = _max_diff(small, lb2, ub2, ys)
            out["bounds"].append(row)
            print(f"  {method} eps {eps}: ratios {[round(r, 2) for r in row['ratios']]}, "
                  f"max diff {row.get('max_diff_dense', row['max_diff_default']):.1e}",
                  flush=True)
        if not alpha:
            continue
        # alpha-CROWN: the margins' lower bounds, 20 iterations, certified accuracy
        threat = ThreatModel("linf", eps)
        t = time.perf_counter()
        crown = CROWN().certify(model, x, y, threat)
        crown_s = time.perf_counter() - t
        t = time.perf_counter()
        ours = AlphaCROWN(iterations=20).certify(model, x, y, threat)
        ours_s = time.perf_counter() - t
        # the ReLU slopes only, as scrutiny's alpha-CROWN (optimising max pooling's needs
        # conv_mode="matrix" there, which took 455 s for 4 images of this CNN)
        fresh = BoundedModule(net, x[:1], device="cpu", verbose=0)
        for node in fresh.nodes():
            if type(node).__name__ == "BoundMaxPool":
                node.optimizable = False
        fresh.optimizable_activations = [m for m in fresh.optimizable_activations
                                         if m.optimizable]
        fresh.set_bound_opts({"optimize_bound_args": {"iteration": 20}})
        t = time.perf_counter()
        lb, _ = lirpa_bounds(fresh, x, y, eps, "alpha-CROWN", C=spec[:, k:], bound_upper=False)
        lirpa_s = time.perf_counter() - t
        lm = lb.detach().scatter(1, y[:, None], math.inf)
        lirpa_cert = ((lm.amin(1) > 0) & (model.predict(x) == y)).float().mean().item()
        adv = APGD(steps=100)(model, x, y, threat=threat, seed=0)
        row = {"eps": eps, "n": len(x), "crown_acc": crown.certified_accuracy(),
               "crown_s": crown_s, "alpha_acc": ours.certified_accuracy(), "alpha_s": ours_s,
               "lirpa_alpha_acc": lirpa_cert, "lirpa_alpha_s": lirpa_s,
               "apgd_robust_acc": adv.robust_accuracy()}
        out["alpha"].append(row)
        print(f"  alpha-CROWN eps {eps}: {row}", flush=True)
    return out


def lirpa_markdown(name: str, res: dict) -> str:
    lines = [f"### {name}\n", "| method | eps | n | max bound diff | scrutiny s | auto_LiRPA s | "
             "ratio per round |", "|---|---|---|---|---|---|---|"]
    for r in res["bounds"]:
        diff = (f"{r['max_diff_dense']:.1e} (dense, {r['dense_check_n']} images); default: "
                f"scrutiny tighter by up to {r['tighter_than_default']:.2f}"
                if "max_diff_dense" in r else f"{r['max_diff_default']:.1e}")
        lines.append(f"| {r['method']} | {r['eps']} | {r['n']} | {diff} | "
                     f"{statistics.median(r['scrutiny_s']):.3f} | "
                     f"{statistics.median(r['lirpa_s']):.3f} | "
                     f"{', '.join(f'{q:.2f}' for q in r['ratios'])} |")
    if not res["alpha"]:
        return "\n".join(lines)
    lines += ["", "| eps | n | CROWN cert. | alpha-CROWN cert. (s) | auto_LiRPA alpha-CROWN cert. "
              "(s) | time ratio | APGD robust |", "|---|---|---|---|---|---|---|"]
    for r in res["alpha"]:
        lines.append(f"| {r['eps']} | {r['n']} | {r['crown_acc']:.3f} | {r['alpha_acc']:.3f} "
                     f"({r['alpha_s']:.1f}) | {r['lirpa_alpha_acc']:.3f} ({r['lirpa_alpha_s']:.1f}) "
                     f"| {r['alpha_s'] / r['lirpa_alpha_s']:.2f} | {r['apgd_robust_acc']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="test samples for the tightness table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--noise", type=int, default=1000, help="noise samples per input (throughput)")
    p.add_argument("--skip-tightness", action="store_true", help="only the throughput part")
    p.add_argument("--save", action="store_true", help="write benchmarks/results/certify.json")
    p.add_argument("--lirpa", action="store_true",
                   help="only the comparison with auto_LiRPA (see fetch_lirpa.sh)")
    p.add_argument("--models", default="digits-cnn,digits-cnn-pgd",
                   help="zoo models of the auto_LiRPA comparison, or 'bigcnn' (benchmarks/bigcnn.py "
                        "on 28x28 digits)")
    p.add_argument("--methods", default="IBP,CROWN",
                   help="bound methods of the auto_LiRPA comparison (IBP, CROWN)")
    p.add_argument("--eps", default="0.01,0.05", help="linf radii of the auto_LiRPA comparison")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of IBP (auto_LiRPA)")
    p.add_argument("--crown-rounds", type=int, default=2, help="interleaved rounds of CROWN")
    p.add_argument("--no-alpha", action="store_true", help="no alpha-CROWN comparison")
    p.add_argument("--crown-rebound", default="live", choices=("live", "unstable"),
                   help="scrutiny CROWN's rebound (unstable: auto_LiRPA default's work)")
    p.add_argument("--tag", default="", help="suffix of the results file")
    p.add_argument("--check-n", type=int, default=16,
                   help="images of the equality check against auto_LiRPA's dense CROWN (0: none)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.lirpa:
        lirpa = import_lirpa()
        if lirpa is None:
            raise SystemExit("auto_LiRPA does not import: run benchmarks/fetch_lirpa.sh and use "
                             "benchmarks/.venv-peers/bin/python")
        report = {"auto_LiRPA": lirpa.__version__, "torch": torch.__version__,
                  "threads": a.threads, "cpu": platform.processor() or platform.machine(),
                  "date": time.strftime("%Y-%m-%d"), "crown_rebound": a.crown_rebound, "models": {}}
        for name in a.models.split(","):
            if name == "bigcnn":  # the 28x28 workload of issue 17
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                from bigcnn import load_bigcnn

                model, data = load_bigcnn(), load_digits(size=28, split="test")
            else:
                model, data = pretrained(name, progress=False), load_digits(split="test")
            x, y = data.x[:a.n], data.y[:a.n]
            print(f"{name}, {len(x)} test images, {a.threads} thread(s)", flush=True)
            res = lirpa_compare(lirpa, model, x, y, [float(e) for e in a.eps.split(",")],
                                a.rounds, a.crown_rounds, a.check_n, not a.no_alpha,
                                tuple(a.methods.split(",")), a.crown_rebound)
            report["models"][name] = res
            print(lirpa_markdown(name, res), flush=True)
            if a.save:
                RESULTS.mkdir(exist_ok=True)
                (RESULTS / f"certify-lirpa{a.tag}.json").write_text(json.dumps(report, indent=1))
        return
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
    print("\nauto_LiRPA: see --lirpa")
    if a.save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "certify.json").write_text(json.dumps(
            {"tightness": rows, "throughput": thr, "device": a.device, "threads": a.threads},
            indent=1))


if __name__ == "__main__":
    main()
