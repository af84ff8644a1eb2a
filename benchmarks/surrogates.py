"""LIME and KernelSHAP side by side with the lime and shap packages and Captum.

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``)::

    benchmarks/.venv-peers/bin/python benchmarks/surrogates.py

Cases (same model, same rows, same sample count for every library):

- **tabular LIME**, breast-cancer MLP of the zoo, 5000 perturbations (lime's
  default), quartile discretisation, class 1's probability: scrutiny
  ``Lime(n_samples=5000)`` with ``background=`` the training rows vs
  ``lime.lime_tabular.LimeTabularExplainer`` (``explain_instance``, all 30
  features). Fidelity: the surrogate's weighted R^2 (``meta["r2"]``, lime's
  ``exp.score``). scrutiny's kernel is the paper's ``exp(-D^2/w^2)``; lime's is
  its square root, so lime runs with ``kernel_width`` multiplied by sqrt(2)
  to fit the same surrogate.
- **tabular KernelSHAP**, same model, 50 background rows, ``nsamples = 2 M +
  2048`` (shap's default): scrutiny ``KernelShap`` vs ``shap.KernelExplainer``
  and Captum's ``KernelShap`` (its default ``perturbations_per_eval=1``, and
  with every sample in one batch). Fidelity: efficiency error
  ``|sum(phi) - (f(x) - E f)|`` and the correlation of phi with shap's.
- **image LIME**, digits CNN (8x8), 16 SLIC superpixels (the same segments
  for every library, given to Captum as its ``feature_mask``), 1000
  perturbations: scrutiny ``Lime`` vs Captum ``Lime`` with its defaults
  (``perturbations_per_eval=1``) and with all samples in one batch.

Times are wall clock per explanation; the CPU share of other processes during
the run is printed with the table (compare times only within one run).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402  (also installs the torchvision stand-in)
from run import CpuShare, machine_info, version  # noqa: E402

from scrutiny.data import load_breast_cancer, load_digits  # noqa: E402
from scrutiny.explain import KernelShap, Lime  # noqa: E402
from scrutiny.explain.surrogate._features import segment_images  # noqa: E402
from scrutiny.models import pretrained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


lime_tabular = optional("lime.lime_tabular")
shap = optional("shap")
captum_attr = optional("captum.attr")


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=20, help="rows / images explained")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    share = CpuShare()
    info = machine_info(args.threads)
    rows: list[str] = []

    def add(case: str, lib: str, t: float | None, n: int, fidelity: str) -> None:
        if t is None:
            rows.append(f"| {case} | {lib} | not installed | | |")
        else:
            rows.append(f"| {case} | {lib} | {1000 * t / n:.1f} | {fidelity} | |")
        print(rows[-1], file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ tabular
    mlp = pretrained("breast-cancer-mlp", progress=False).eval()
    train = load_breast_cancer(split="train")
    test = load_breast_cancer(split="test")
    x = test.x[: args.n]
    n, d = x.shape
    target = torch.ones(n, dtype=torch.long)

    def prob(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(mlp(torch.as_tensor(a, dtype=torch.float32)), 1).numpy()

    case = f"tabular LIME, 5000 samples, N={n}"
    e, t = clock(lambda: Lime(n_samples=5000)(mlp, x, target, background=train.x))
    add(case, "scrutiny", t, n, f"R^2 mean {float(e.meta['r2'].mean()):.3f}")
    if lime_tabular is not None:
        expl = lime_tabular.LimeTabularExplainer(
            train.x.numpy(), mode="classification", discretize_continuous=True,
            discretizer="quartile", kernel_width=0.75 * math.sqrt(d) * math.sqrt(2),
            random_state=0)
        scores = []

        def run_lime():
            for row in x.numpy():
                ex = expl.explain_instance(row, prob, labels=(1,), num_features=d,
                                           num_samples=5000)
                scores.append(ex.score)

        _, t = clock(run_lime)
        add(case, f"lime {version('lime')}", t, n, f"R^2 mean {np.mean(scores):.3f}")
    else:
        add(case, "lime", None, n, "")

    bg = train.x[:50]
    ns = 2 * d + 2048
    case = f"tabular KernelSHAP, {ns} samples, 50 background rows, N={n}"
    e, t = clock(lambda: KernelShap(n_samples=ns, output="probability")(mlp, x, target,
                                                                      background=bg))
    ours = e.attributions.numpy()
    add(case, "scrutiny", t, n, f"efficiency err max {float(e.delta.abs().max()):.1e}")
    if shap is not None:
        ke = shap.KernelExplainer(lambda a: prob(a)[:, 1], bg.numpy())
        phi, t = clock(lambda: np.asarray(ke.shap_values(x.numpy(), nsamples=ns, silent=True)))
        with torch.no_grad():
            fx = prob(x.numpy())[:, 1]
        eff = np.abs(phi.sum(1) - (fx - ke.expected_value)).max()
        corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, phi, strict=True)])
        add(case, f"shap {version('shap')}", t, n,
            f"efficiency err max {eff:.1e}; corr(phi, scrutiny) {corr:.3f}")
    if captum_attr is not None:
        def f_prob(a):
            return torch.softmax(mlp(a), 1)

        ks = captum_attr.KernelShap(f_prob)
        for ppe, label in ((1, "default perturbations_per_eval=1"), (ns, "one batch")):
            def run_captum(ppe=ppe):
                return torch.cat([ks.attribute(x[i:i + 1], baselines=bg.mean(0, keepdim=True),
                                               target=1, n_samples=ns, perturbations_per_eval=ppe)
                                  for i in range(n)])

            phi, t = clock(run_captum)
            corr = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, phi.numpy(), strict=True)])
            add(case, f"Captum {version('captum')} ({label}, mean-row baseline)", t, n,
                f"corr(phi, scrutiny) {corr:.3f}")

    # ------------------------------------------------------------------ images
    cnn = pretrained("digits-cnn", progress=False).eval()
    xi = load_digits(split="test").x[: args.n]
    with torch.no_grad():
        ti = cnn(xi).argmax(1)
    case = f"image LIME, 1000 samples, 16 SLIC superpixels, N={len(xi)}"
    e, t = clock(lambda: Lime(n_samples=1000, fill="zero")(cnn, xi, ti))
    add(case, "scrutiny", t, len(xi), f"R^2 mean {float(e.meta['r2'].mean()):.3f}")
    if captum_attr is not None:
        seg = segment_images(xi, "slic", 16, None)
        cl = captum_attr.Lime(lambda a: torch.softmax(cnn(a), 1))
        for ppe, label in ((1, "default perturbations_per_eval=1"), (1000, "one batch")):
            def run_captum(ppe=ppe):
                return [cl.attribute(xi[i:i + 1], target=int(ti[i]), n_samples=1000,
                                     feature_mask=seg[i][None, None], perturbations_per_eval=ppe)
                        for i in range(len(xi))]

            _, t = clock(run_captum)
            add(case, f"Captum {version('captum')} ({label})", t, len(xi), "")

    busy = share.others()
    head = (f"Machine: {info['cpu']}, {info['cores']} cores, torch threads = {args.threads}; "
            f"torch {info['torch']}; {info['date']}; other processes' CPU share during the run: "
            f"{'n/a' if busy is None else f'{busy:.0%}'}.\n\n"
            "| case | library | ms per explanation | fidelity | |\n|---|---|---:|---|---|\n")
    table = head + "\n".join(rows) + "\n"
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "surrogates.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
