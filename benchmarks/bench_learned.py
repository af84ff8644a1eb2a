"""Influence, feature visualisation and global surrogates: scrutiny against its peers.

Run from the repository root (peers from ``bash benchmarks/setup_peers.sh``; a missing
peer reads "not installed")::

    benchmarks/.venv-peers/bin/python benchmarks/bench_learned.py [--repeats 3] [--threads 1]

Workloads, all on the digits CNN (``pretrained("digits-cnn")``) and the digits splits:

- **Influence** of ``--n-train`` training digits on the loss of ``--n-test`` test
  digits, theta = the last linear layer (``classifier``, 650 parameters), damping
  ``--damping``: scrutiny ``Influence`` (exact solver; conjugate gradients) against
  Captum's ``NaiveInfluenceFunction`` (explicit Hessian) and kronfluence (EKFAC). Captum
  scores ``g_test' (H_sum + reg I)^-1 g_train`` with ``H_sum`` the Hessian of the *summed*
  training loss and positive scores for helpful points; scrutiny's ``up_loss`` is
  ``-g_test' (H_mean + damping I)^-1 g_train``. With ``reg = n * damping`` and every
  eigenvector kept (``projection_dim`` = 650) Captum's score is ``-up_loss / n``; Captum is
  also run with its defaults (50 eigenvectors, ``hessian_reg`` 1e-6). kronfluence
  preconditions with the mean (true-Fisher) curvature: its score is ``-up_loss`` at
  ``damping_factor = damping``. Agreement: Pearson and Spearman correlation of the
  mapped scores per test digit (median and worst over the test digits), relative L2
  error, and the overlap of the 10 most helpful training digits.
- **Feature visualisation**: the mean of channel ``--channel`` of ``features.5`` (the
  last convolution), ``--am-steps`` Adam steps at lr ``--lr``, pixel parametrisation
  (``sigmoid(z)``, ``z ~ N(0, 0.01^2)``), no transforms or penalties, one image: scrutiny
  ``ActivationMaximization`` against Lucent's ``render_vis`` (``param.image(8,
  channels=1, fft=False)``, ``transforms=[]``, ``preprocess=False``,
  ``fixed_image_size=8`` so that it does not upsample to 224). The model's weights are
  frozen for both (scrutiny freezes them itself). Compared: time per step and the final
  objective.
- **Global surrogates**: ``SurrogateTree(max_depth=3)`` and ``LinearSurrogate(C=0.1)``
  on the digits training split, against the same scikit-learn estimator fitted by hand
  on the model's predictions (same split, same settings): scrutiny's overhead and the
  fidelity of both.

Every case is warmed once, then timed in ``--repeats`` interleaved rounds (round robin,
``benchmarks/run.py``'s ``time_cases``); times are medians and ratios the median of the
per-round ratios. Output: a markdown table on stdout and in
``benchmarks/results/learned.md``, the raw numbers in ``benchmarks/results/learned.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402  (also installs the torchvision stand-in)
from run import (  # noqa: E402
    RESULTS,
    Case,
    CpuShare,
    Gate,
    fmt_s,
    log,
    machine_info,
    paired,
    time_cases,
    version,
)

from scrutiny.data import ArrayDataset, load_digits  # noqa: E402
from scrutiny.explain.features import ActivationMaximization, channel  # noqa: E402
from scrutiny.explain.features.visualize import objective_on  # noqa: E402
from scrutiny.explain.influence import Influence  # noqa: E402
from scrutiny.explain.surrogate import LinearSurrogate, SurrogateTree  # noqa: E402
from scrutiny.models import TorchModel, pretrained  # noqa: E402

LAYER = "classifier"
CONV = "features.5"


def _lucent():
    """Lucent's ``render``/``param`` modules, or None. Lucent imports
    ``torchvision.transforms.Normalize`` (used only by its ``preprocess`` step, off here);
    the stand-in of ``peers.py`` gets a minimal one when the real torchvision is absent."""
    tv = sys.modules.get("torchvision.transforms")
    if tv is not None and not hasattr(tv, "Normalize"):
        class Normalize(nn.Module):  # never used: preprocess=False
            def __init__(self, mean, std) -> None:
                super().__init__()
                self.mean, self.std = mean, std

        tv.Normalize = Normalize
    render, param = optional("lucent.optvis.render"), optional("lucent.optvis.param")
    return None if render is None or param is None else (render, param)


captum_influence = optional("captum.influence")
kron = optional("kronfluence.analyzer")
kron_args = optional("kronfluence.arguments")
kron_task = optional("kronfluence.task")
lucent = _lucent()


# --------------------------------------------------------------------------- agreement


def _rank(v: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(v)
    r[torch.argsort(v, dim=-1)] = torch.arange(len(v), dtype=v.dtype)
    return r


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def agreement(ref: torch.Tensor, other: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Agreement of two ``(n_test, n_train)`` score matrices on the same scale and sign
    (larger = more helpful): per-row Pearson and Spearman (median and worst row), the
    relative L2 error of ``other`` to ``ref`` and the mean overlap of the top-``k``."""
    ref, other = ref.double(), other.double()
    pear = [_pearson(a, b) for a, b in zip(ref, other, strict=True)]
    spear = [_pearson(_rank(a), _rank(b)) for a, b in zip(ref, other, strict=True)]
    top_r, top_o = ref.topk(k, dim=1).indices, other.topk(k, dim=1).indices
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_r, top_o, strict=True)]
    return {"pearson_median": statistics.median(pear), "pearson_min": min(pear),
            "spearman_median": statistics.median(spear), "spearman_min": min(spear),
            "rel_l2": float((other - ref).norm() / ref.norm()),
            f"top{k}_overlap": statistics.mean(overlap)}


# --------------------------------------------------------------------------- influence


def influence_cases(model: TorchModel, train: ArrayDataset, xt: torch.Tensor, yt: torch.Tensor,
                    damping: float, ref: dict[str, torch.Tensor], tmp: Path) -> list[Case]:
    """``ref["exact"]`` is filled with scrutiny's exact scores mapped to Captum's convention
    (``-up_loss / n``, larger = more helpful) the first time that case runs (warm-up)."""
    n = len(train)
    cases = []
    for solver in ("exact", "cg"):
        method = Influence(layers=(LAYER,), solver=solver, damping=damping, top_k=10)

        def run(method=method):
            return method(model, train, x_test=xt, y_test=yt)

        def metrics(r, solver=solver) -> dict[str, Any]:
            mapped = -r.up_loss.double() / n
            if solver == "exact":
                ref.setdefault("exact", mapped)
            out = agreement(ref["exact"], mapped)
            if solver == "cg":
                out["cg_iterations"] = r.meta.get("cg_iterations")
                out["cg_residual"] = r.meta.get("cg_residual")
            return out

        def warm(run=run, solver=solver):
            r = run()
            if solver == "exact":
                ref["exact"] = -r.up_loss.double() / n
            return r

        cases.append(Case(f"influence:scrutiny:{solver}", "influence", "scrutiny",
                          f"scrutiny Influence(solver={solver!r})", run, warm=warm,
                          metrics=metrics))

    net = model.module
    xs, ys = train.x.float(), train.y.long()
    if captum_influence is not None:
        dataset = torch.utils.data.TensorDataset(xs, ys)
        p = sum(q.numel() for q in net.get_submodule(LAYER).parameters())

        def captum_case(key: str, label: str, **kw: Any) -> Case:
            def run():
                m = copy.deepcopy(net).eval()
                with warnings.catch_warnings():  # "Setting required grads for layer"
                    warnings.simplefilter("ignore")
                    inf = captum_influence.NaiveInfluenceFunction(
                        m, dataset, checkpoint="", checkpoints_load_func=lambda *_: 1.0,
                        layers=[LAYER], loss_fn=nn.CrossEntropyLoss(reduction="none"),
                        batch_size=n, **kw)
                    return inf.influence((xt, yt))

            return Case(key, "influence", "captum", label, run,
                        metrics=lambda s: agreement(ref["exact"], s))

        cases.append(captum_case(
            "influence:captum:matched",
            f"Captum NaiveInfluenceFunction (projection_dim={p}, hessian_reg=n*damping)",
            projection_dim=p, hessian_reg=n * damping, hessian_inverse_tol=1e-12))
        cases.append(captum_case("influence:captum:defaults",
                                 "Captum NaiveInfluenceFunction (its defaults: 50 eigenvectors, "
                                 "hessian_reg 1e-6)"))
    if kron is not None and kron_args is not None and kron_task is not None:
        class DigitsTask(kron_task.Task):
            def compute_train_loss(self, batch, model, sample=False):
                x, y = batch
                logits = model(x)
                if sample:  # the true Fisher: labels drawn from the model
                    with torch.no_grad():
                        y = torch.multinomial(F.softmax(logits.detach(), -1), 1).flatten()
                return F.cross_entropy(logits, y, reduction="sum")

            def compute_measurement(self, batch, model):
                x, y = batch
                return F.cross_entropy(model(x), y, reduction="sum")

            def get_influence_tracked_modules(self):
                return [LAYER]

        task = DigitsTask()
        train_ds = torch.utils.data.TensorDataset(xs, ys)
        test_ds = torch.utils.data.TensorDataset(xt.float(), yt.long())

        def kron_run():
            with warnings.catch_warnings():  # torch.cuda.amp.GradScaler deprecation
                warnings.simplefilter("ignore", FutureWarning)
                return _kron_scores()

        def _kron_scores():
            torch.manual_seed(0)
            m = kron.prepare_model(copy.deepcopy(net), task)
            out = tmp / "kron"
            an = kron.Analyzer(analysis_name="digits", model=m, task=task, cpu=True,
                               disable_tqdm=True, output_dir=str(out), log_level=40)
            an.fit_all_factors(factors_name="f", dataset=train_ds, per_device_batch_size=n,
                               factor_args=kron_args.FactorArguments(strategy="ekfac"),
                               overwrite_output_dir=True)
            an.compute_pairwise_scores(
                scores_name="s", factors_name="f", query_dataset=test_ds, train_dataset=train_ds,
                per_device_query_batch_size=len(xt), per_device_train_batch_size=n,
                score_args=kron_args.ScoreArguments(damping_factor=damping),
                overwrite_output_dir=True)
            return an.load_pairwise_scores("s")["all_modules"]

        cases.append(Case("influence:kronfluence", "influence", "kronfluence",
                          "kronfluence EKFAC (true Fisher, damping_factor=damping)", kron_run,
                          metrics=lambda s: agreement(ref["exact"], s.double() / n)))
    return cases


# --------------------------------------------------------------------------- feature vis


def featvis_cases(model: TorchModel, unit: int, steps: int, lr: float) -> list[Case]:
    obj = channel(CONV, unit)
    am = ActivationMaximization(steps=steps, lr=lr, parametrization="pixel")
    warm_am = ActivationMaximization(steps=2, lr=lr, parametrization="pixel")

    def value(images: torch.Tensor) -> dict[str, Any]:
        return {"objective": float(objective_on(model, obj, images)[0])}

    cases = [Case("featvis:scrutiny", "featvis", "scrutiny",
                  f"scrutiny ActivationMaximization(steps={steps}, lr={lr}, pixel)",
                  run=lambda: am(model, objective=obj, shape=(1, 8, 8), seed=0).images,
                  warm=lambda: warm_am(model, objective=obj, shape=(1, 8, 8), seed=0),
                  metrics=value)]
    if lucent is not None:
        render, param = lucent
        net = copy.deepcopy(model.module).eval()
        for q in net.parameters():
            q.requires_grad_(False)
        layer = CONV.replace(".", "_")

        def lucent_run(k: int = steps) -> torch.Tensor:
            torch.manual_seed(0)
            imgs = render.render_vis(
                net, f"{layer}:{unit}",
                param_f=lambda: param.image(8, channels=1, fft=False, decorrelate=False),
                optimizer=lambda ps: torch.optim.Adam(ps, lr=lr), transforms=[],
                preprocess=False, fixed_image_size=8, thresholds=(k,), progress=False,
                show_image=False)
            return torch.from_numpy(imgs[-1]).permute(0, 3, 1, 2).float()

        cases.append(Case("featvis:lucent", "featvis", "lucent",
                          f"Lucent render_vis({steps} steps, lr={lr}, pixel, no transforms)",
                          run=lucent_run, warm=lambda: lucent_run(2), metrics=value))
    return cases


# --------------------------------------------------------------------------- surrogates


def surrogate_cases(model: TorchModel, data: ArrayDataset) -> list[Case]:
    from sklearn.base import clone

    cases = []
    for name, method, setting in (("tree", SurrogateTree(max_depth=3), "max_depth=3"),
                                  ("linear", LinearSurrogate(C=0.1), "C=0.1")):
        first = method(model, data, seed=0)  # its split and estimator settings, untimed
        train, test = first.train_index, first.test_index
        template = clone(first.estimator)

        def by_hand(template=template, train=train, test=test):
            with torch.no_grad():
                pred = model.module(data.x).argmax(1).numpy()
            X = data.x.reshape(len(data), -1).double().numpy()
            est = clone(template).fit(X[train], pred[train])
            return est, float((est.predict(X[test]) == pred[test]).mean()), X[test]

        def ours_metrics(r) -> dict[str, Any]:
            return {"fidelity": r.fidelity}

        def hand_metrics(out, first=first) -> dict[str, Any]:
            est, fid, xtest = out
            same = bool((est.predict(xtest) == first.estimator.predict(xtest)).all())
            return {"fidelity": fid, "same_predictions_as_scrutiny": same}

        label = type(template).__name__
        cases.append(Case(f"surrogate:{name}:scrutiny", f"surrogate:{name}", "scrutiny",
                          f"scrutiny {type(method).__name__}({setting})",
                          run=lambda method=method: method(model, data, seed=0),
                          metrics=ours_metrics))
        cases.append(Case(f"surrogate:{name}:sklearn", f"surrogate:{name}", "scikit-learn",
                          f"scikit-learn {label} by hand (predict + fit + fidelity)",
                          run=by_hand, metrics=hand_metrics))
    return cases


# --------------------------------------------------------------------------- report


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}" if abs(v) >= 10 ** -nd or v == 0 else f"{v:.1e}"
    return str(v)


def report(cases: list[Case], info: dict[str, Any], cfg: dict[str, Any],
           missing: list[str]) -> str:
    by = {c.key: c for c in cases}
    busy = [b for c in cases for b in c.busy if b is not None]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} torch thread(s); "
        f"torch {info['torch']}, python {info['python']}; {info['date']}; load average "
        f"{info['loadavg_1min_start']} at the start; other processes used "
        + (f"{statistics.median(busy):.0%} (median) / {max(busy):.0%} (max) of the CPU "
           "during the timed samples" if busy else "an unknown share of the CPU")
        + f". Median of {cfg['repeats']} interleaved rounds; ratio = the median over rounds "
        "of the case's time / scrutiny's in the same round.",
        "",
        f"Peers: captum {version('captum')}, kronfluence {version('kronfluence')}, "
        f"torch-lucent {version('torch-lucent')}, scikit-learn {version('scikit-learn')}"
        + (f"; not installed: {', '.join(missing)}" if missing else "") + ".",
        "",
        f"**Influence** ({cfg['n_train']} training digits, {cfg['n_test']} test digits, theta = "
        f"`{LAYER}` (650 parameters), damping {cfg['damping']}; agreement with scrutiny's exact "
        "solver, mapped to one convention):",
        "",
        "| implementation | time (s) | time / scrutiny exact | Pearson median (worst) "
        "| Spearman median (worst) | rel. L2 error | top-10 overlap |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = by["influence:scrutiny:exact"]
    for c in cases:
        if c.group != "influence":
            continue
        r = c.result
        lines.append(
            f"| {c.label} | {fmt_s(c.median)} | {paired(c, base):.2f} | "
            f"{_f(r['pearson_median'], 4)} ({_f(r['pearson_min'], 4)}) | "
            f"{_f(r['spearman_median'], 4)} ({_f(r['spearman_min'], 4)}) | "
            f"{_f(r['rel_l2'])} | {r['top10_overlap']:.2f} |")
    cg = by["influence:scrutiny:cg"].result
    lines += ["", f"Conjugate gradients: {cg.get('cg_iterations')} iterations, largest relative "
              f"residual {_f(cg.get('cg_residual'))}.", ""]
    lines += [f"**Feature visualisation** (channel {cfg['unit']} of `{CONV}`, {cfg['am_steps']} "
              f"Adam steps, lr {cfg['lr']}, pixel parametrisation, one 8x8 image):", "",
              "| implementation | time (s) | ms / step | time / scrutiny | final objective |",
              "|---|---:|---:|---:|---:|"]
    base = by["featvis:scrutiny"]
    for c in cases:
        if c.group == "featvis":
            lines.append(f"| {c.label} | {fmt_s(c.median)} | {1e3 * c.median / cfg['am_steps']:.2f} "
                         f"| {paired(c, base):.2f} | {c.result['objective']:.2f} |")
    lines += ["", f"**Global surrogates** (digits training split, {cfg['n_surrogate']} images, "
              "30% held out):", "",
              "| implementation | time (ms) | time / scrutiny | held-out fidelity |",
              "|---|---:|---:|---:|"]
    for name in ("tree", "linear"):
        base = by[f"surrogate:{name}:scrutiny"]
        for c in cases:
            if c.group == f"surrogate:{name}":
                same = c.result.get("same_predictions_as_scrutiny")
                lines.append(f"| {c.label} | {1e3 * c.median:.1f} | {paired(c, base):.2f} | "
                             f"{c.result['fidelity']:.4f}"
                             + ("" if same is None else
                                f" ({'same' if same else 'different'} predictions)") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-train", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--am-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--channel", type=int, default=None,
                    help="channel of features.5 (default: the most active on the test split)")
    ap.add_argument("--retries", type=int, default=0,
                    help="retake a sample when other processes used > 10%% of the CPU")
    ap.add_argument("--only", choices=("influence", "featvis", "surrogate"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    share = CpuShare()
    info = machine_info(args.threads)
    for dist in ("kronfluence", "torch-lucent", "scikit-learn"):
        info[dist] = version(dist)

    model = pretrained("digits-cnn", progress=False)
    model.eval()
    train_all, test = load_digits(split="train"), load_digits(split="test")
    train = train_all.subset(range(args.n_train))
    xt, yt = test.x[:args.n_test], test.y[:args.n_test]
    unit = args.channel
    if unit is None:
        with torch.no_grad():
            acts = {}
            h = model.layer(CONV).register_forward_hook(lambda _m, _i, o: acts.setdefault("a", o))
            model(test.x)
            h.remove()
        unit = int(acts["a"].mean((0, 2, 3)).argmax())
    cfg = {"repeats": args.repeats, "n_train": args.n_train, "n_test": args.n_test,
           "damping": args.damping, "am_steps": args.am_steps, "lr": args.lr, "unit": unit,
           "n_surrogate": len(train_all), "threads": args.threads}
    missing = [name for name, mod in (("captum", captum_influence), ("kronfluence", kron),
                                      ("torch-lucent", lucent)) if mod is None]
    tmp = Path(tempfile.mkdtemp(prefix="bench_learned_"))
    ref: dict[str, torch.Tensor] = {}
    try:
        cases: list[Case] = []
        if args.only in (None, "influence"):
            cases += influence_cases(model, train, xt, yt, args.damping, ref, tmp)
        if args.only in (None, "featvis"):
            cases += featvis_cases(model, unit, args.am_steps, args.lr)
        if args.only in (None, "surrogate"):
            cases += surrogate_cases(model, train_all)
        gate = Gate(retries=args.retries)
        time_cases(cases, args.repeats, model.module, gate)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info["cpu_share_others_whole_run"] = share.others()
    if args.only is not None:  # the partial report needs every group; print raw results
        for c in cases:
            print(c.key, fmt_s(c.median), c.result)
        return 0
    table = report(cases, info, cfg, missing)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "learned.md").write_text(table)
    raw = {"machine": info, "config": cfg, "samples_retaken": gate.rejected,
           "cases": [{"key": c.key, "label": c.label, "times": c.times, "busy": c.busy,
                      "median": c.median, "result": c.result} for c in cases]}
    (RESULTS / "learned.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {RESULTS / 'learned.md'} and learned.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
