"""Attack strength and time side by side with torchattacks, ART and Foolbox.

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``)::

    benchmarks/.venv-peers/bin/python benchmarks/strength.py
    benchmarks/.venv-peers/bin/python benchmarks/strength.py --n 200 --only pgd,apgd

Every library attacks the same frozen model (the zoo's digits CNN) on the same
samples at the same budget. Strength (robust accuracy, success rate, median
L2) does not depend on the load of the machine; times are single wall-clock
runs, also given in units of one forward + backward pass on the same batch
measured in the same run, and the CPU share of other processes is printed
(times are only comparable within one run). A library that is not installed
gets a "not installed" row.

Cases
-----
- PGD linf eps=0.1, 40 steps, step 2.5*eps/40, one random start;
- APGD-CE linf eps=0.1, 100 iterations, one restart;
- worst case at linf eps=0.1: scrutiny ``worst_case`` vs torchattacks'
  ``AutoAttack(version="standard")`` (APGD-CE, APGD-T, FAB-T at torchattacks' default of 10
  iterations, Square 5000 queries; benchmarks/bench_worstcase.py adds the 100-iteration version);
- C&W L2 with binary search (9 constants x 100 iterations, lr 0.01,
  initial constant 1e-3; torchattacks' CW has no binary search: c=1, 100
  steps) on the first ``--n-cw`` samples: success rate and median L2 of the
  successful samples, next to scrutiny's PGD-L2 minimal eps over a grid.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402  (also installs the torchvision stand-in)
from run import CpuShare, machine_info, version  # noqa: E402

from scrutiny.attacks import APGD, PGD, CarliniWagnerL2, WorstCase  # noqa: E402
from scrutiny.data import load_digits  # noqa: E402
from scrutiny.models import pretrained  # noqa: E402
from scrutiny.types import ThreatModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


ta = optional("torchattacks")
fb = optional("foolbox")
art_attacks = optional("art.attacks.evasion")
art_estimators = optional("art.estimators.classification")


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out.detach().cpu(), time.perf_counter() - t0


def art_classifier(model):
    return art_estimators.PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(),
                                            input_shape=(1, 8, 8), nb_classes=10,
                                            clip_values=(0.0, 1.0), device_type="cpu")


def np_run(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.asarray(fn(x.numpy()), dtype=np.float32))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=450, help="samples for PGD/APGD/worst case")
    p.add_argument("--n-cw", type=int, default=100, help="samples for C&W")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="pgd,apgd,worst,cw")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    torch.set_num_threads(args.threads)
    share = CpuShare()
    info = machine_info(args.threads)
    model = pretrained("digits-cnn", progress=False).eval()
    for q in model.parameters():
        q.requires_grad_(False)
    data = load_digits(split="test")
    x, y = data.x[: args.n].contiguous(), data.y[: args.n]

    def unit() -> float:
        xs = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        torch.autograd.grad(F.cross_entropy(model(xs), y, reduction="sum"), xs)
        return time.perf_counter() - t0

    unit()
    u = statistics.median(unit() for _ in range(7))

    def robust(xa: torch.Tensor, idx: slice | None = None) -> float:
        yy = y if idx is None else y[idx]
        with torch.no_grad():
            return float((model(xa).argmax(1) == yy).float().mean())

    rows: list[str] = []

    def row(case: str, lib: str, xa: torch.Tensor | None, t: float | None, extra: str = "",
            idx: slice | None = None) -> None:
        if xa is None:
            rows.append(f"| {case} | {lib} | not installed | | | |")
            return
        rows.append(f"| {case} | {lib} | {robust(xa, idx):.3f} | {t:.2f} | {t / u:.0f} | {extra} |")
        print(rows[-1], file=sys.stderr, flush=True)

    eps = 0.1
    threat = ThreatModel("linf", eps)
    if "pgd" in only:
        steps, alpha = 40, 2.5 * eps / 40
        case = "PGD-40 linf 0.1"
        xa, t = timed(lambda: PGD(steps=40, early_stop=False)(model, x, y, threat=threat).x_adv)
        row(case, "scrutiny (early_stop=False)", xa, t)
        xa, t = timed(lambda: PGD(steps=40)(model, x, y, threat=threat).x_adv)
        row(case, "scrutiny (default early_stop)", xa, t)
        if ta is not None:
            torch.manual_seed(0)
            xa, t = timed(lambda: ta.PGD(model, eps=eps, alpha=alpha, steps=steps,
                                         random_start=True)(x, y))
            row(case, f"torchattacks {version('torchattacks')}", xa, t)
        if art_attacks is not None:
            atk = art_attacks.ProjectedGradientDescent(
                art_classifier(model), norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps,
                num_random_init=1, batch_size=len(x), verbose=False)
            xa, t = timed(lambda: np_run(lambda a: atk.generate(a, y=y.numpy()), x))
            row(case, f"ART {version('adversarial-robustness-toolbox')}", xa, t)
        if fb is not None:
            fm = fb.PyTorchModel(model, bounds=(0, 1))
            atk = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
            torch.manual_seed(0)
            xa, t = timed(lambda: atk(fm, x, y, epsilons=eps)[1])
            row(case, f"Foolbox {version('foolbox')}", xa, t)
    if "apgd" in only:
        case = "APGD-CE-100 linf 0.1"
        xa, t = timed(lambda: APGD(steps=100)(model, x, y, threat=threat).x_adv)
        row(case, "scrutiny", xa, t)
        if ta is not None:
            xa, t = timed(lambda: ta.APGD(model, norm="Linf", eps=eps, steps=100, n_restarts=1,
                                          loss="ce", seed=0)(x, y))
            row(case, f"torchattacks {version('torchattacks')}", xa, t)
        if art_attacks is not None:
            atk = art_attacks.AutoProjectedGradientDescent(
                art_classifier(model), norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100,
                nb_random_init=1, loss_type="cross_entropy", batch_size=len(x), verbose=False)
            xa, t = timed(lambda: np_run(lambda a: atk.generate(a, y=y.numpy()), x))
            row(case, f"ART {version('adversarial-robustness-toolbox')}", xa, t)
    if "worst" in only:
        case = "worst case linf 0.1"
        xa, t = timed(lambda: WorstCase()(model, x, y, threat=threat).x_adv)
        row(case, "scrutiny worst_case", xa, t)
        if ta is not None:
            xa, t = timed(lambda: ta.AutoAttack(model, norm="Linf", eps=eps, version="standard",
                                                n_classes=10, seed=0)(x, y))
            row(case, f"torchattacks AutoAttack {version('torchattacks')}", xa, t)
    if "cw" in only:
        n = min(args.n_cw, len(x))
        sl = slice(0, n)
        xc, yc = x[sl], y[sl]
        case = f"C&W L2 (N={n})"

        def l2_row(lib: str, xa: torch.Tensor | None, t: float | None) -> None:
            if xa is None:
                rows.append(f"| {case} | {lib} | not installed | | | |")
                return
            with torch.no_grad():
                ok = model(xa).argmax(1) != yc
            d = (xa - xc).flatten(1).norm(dim=1)
            med = float(d[ok].median()) if ok.any() else float("nan")
            row(case, lib, xa, t, f"success {float(ok.float().mean()):.2f}, median L2 {med:.3f}", sl)

        inf2 = ThreatModel("l2", float("inf"))
        xa, t = timed(lambda: CarliniWagnerL2(search_steps=9, steps=100,
                                              lr=0.01, initial_const=1e-3)(
            model, xc, yc, threat=inf2).x_adv)
        l2_row("scrutiny cw", xa, t)
        if ta is not None:
            xa, t = timed(lambda: ta.CW(model, c=1, kappa=0, steps=100, lr=0.01)(xc, yc))
            l2_row(f"torchattacks CW (no binary search) {version('torchattacks')}", xa, t)
        if art_attacks is not None:
            atk = art_attacks.CarliniL2Method(art_classifier(model), confidence=0.0,
                                              learning_rate=0.01, binary_search_steps=9,
                                              max_iter=100, initial_const=1e-3, batch_size=n,
                                              verbose=False)
            xa, t = timed(lambda: np_run(lambda a: atk.generate(a, y=yc.numpy()), xc))
            l2_row(f"ART {version('adversarial-robustness-toolbox')}", xa, t)
        if fb is not None:
            fm = fb.PyTorchModel(model, bounds=(0, 1))
            atk = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=9, steps=100, stepsize=0.01,
                                                   confidence=0, initial_const=1e-3)
            xa, t = timed(lambda: atk(fm, xc, yc, epsilons=None)[0])
            l2_row(f"Foolbox {version('foolbox')}", xa, t)

    busy = share.others()
    head = (f"Model: pretrained('digits-cnn'); digits 8x8 test split, N = {len(x)}; unit (one "
            f"forward+backward on N) = {u * 1000:.1f} ms.  \nMachine: {info['cpu']}, {info['cores']} "
            f"cores, torch threads = {args.threads}; torch {info['torch']}; {info['date']}; other "
            f"processes' CPU share during the run: {'n/a' if busy is None else f'{busy:.0%}'} "
            "(times are single runs; compare only within this table).\n\n"
            "| case | library | robust accuracy | time s | × unit | notes |\n|---|---|---:|---:|---:|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "strength.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
