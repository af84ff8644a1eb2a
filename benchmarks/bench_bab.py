"""beta-CROWN branch and bound against an exact MILP (scipy's HiGHS) on small ReLU MLPs.

Run from the repository root::

    .venv/bin/python benchmarks/bench_bab.py [--threads 1] [--n 6] [--rounds 2]

For each tiny MLP (``tests/certify/helpers.random_mlp``: 4 inputs, hidden
layers as listed, 3 classes) and linf eps: scrutiny's ``BetaCROWN`` and the
big-M MILP of ``tests/certify/test_bab.milp_robust`` (interval bounds as M,
one MILP per margin) decide the same samples; the table gives the verdicts
(certified / falsified / unknown against robust / not robust), whether they
agree, the domains branch and bound used, and the seconds of each, rounds
interleaved (beta-CROWN, MILP, ...), medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scrutiny.certify import CROWN, BetaCROWN  # noqa: E402
from scrutiny.types import ThreatModel  # noqa: E402
from tests.certify.helpers import random_mlp  # noqa: E402
from tests.certify.test_bab import milp_robust  # noqa: E402

NETS = {"4-8-8-3": (6, (8, 8)), "4-16-16-3": (6, (16, 16)), "4-32-32-32-3": (6, (32, 32, 32))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--eps", default="0.05,0.1,0.25")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), {platform.processor() or platform.machine()}")
    print("| net | eps | CROWN cert. | beta-CROWN cert./fals./unknown | MILP robust | agree | "
          "domains | beta-CROWN s | MILP s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (seed, hidden) in NETS.items():
        model = random_mlp(seed=seed, d=4, hidden=hidden, k=3)
        x = torch.rand((a.n, 4), generator=torch.Generator().manual_seed(1))
        y = model.predict(x)
        for eps in (float(e) for e in a.eps.split(",")):
            threat = ThreatModel("linf", eps)
            tb, tm = [], []
            for _ in range(a.rounds):
                t = time.perf_counter()
                res = BetaCROWN(max_domains=5000, time_budget=60.0).certify(model, x, y, threat)
                tb.append(time.perf_counter() - t)
                t = time.perf_counter()
                exact = [milp_robust(model, x[i], int(y[i]), eps) for i in range(len(x))]
                tm.append(time.perf_counter() - t)
            crown = int(CROWN().certify(model, x, y, threat).certified.sum())
            st = res.status
            agree = all((s == "certified") == e and (s != "unknown")
                        for s, e in zip(st, exact, strict=True))
            print(f"| {name} | {eps} | {crown}/{len(x)} | {st.count('certified')}/"
                  f"{st.count('falsified')}/{st.count('unknown')} | {sum(exact)}/{len(x)} | "
                  f"{'yes' if agree else 'NO'} | {int(res.domains.sum())} | "
                  f"{statistics.median(tb):.2f} | {statistics.median(tm):.2f} |", flush=True)


if __name__ == "__main__":
    main()
