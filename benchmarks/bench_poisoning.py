"""Poisoning, backdoors and backdoor scans: scrutiny against IBM's Adversarial Robustness Toolbox.

Run from the repository root (ART from ``bash benchmarks/setup_peers.sh``; a missing peer
reads "not installed")::

    benchmarks/.venv-peers/bin/python benchmarks/bench_poisoning.py [--repeats 3] [--epochs 10]

Data: the digits splits (8x8, train 1347, test 450). Network: the zoo's digits CNN
architecture (``build("cnn", (1, 8, 8), 10)``: ``features`` (conv, relu, conv, relu,
pool, conv, relu), ``pool``, ``flatten``, ``classifier`` 64 -> 10). ART wraps the same
torch module in ``PyTorchClassifier``. One torch thread, one BLAS thread.

1. **BadNets poisoning**: scrutiny ``BadNets(target=0, rate=0.1).poison`` (draws 10% of
   the training points of other labels, stamps the 3x3 checkerboard of
   ``Trigger.patch`` one pixel from the bottom-right corner, relabels them 0) against ART
   ``PoisoningAttackBackdoor`` with a perturbation function written here that stamps the
   same 3x3 checkerboard on NCHW arrays, applied to the same indices (scrutiny's draw) and
   written back into a copy of the set. Timed: the poisoning alone. Checked: the two
   poisoned sets are bitwise identical. (ART's own ``add_pattern_bd`` is a different
   trigger: it sets 4 pixels to 1 and leaves the others; the table says how many pixels
   differ.) Then a copy of one freshly initialised network (seeded) is trained on each
   poisoned set with the same loop (scrutiny's ``train_victim``: Adam, cosine schedule,
   ``--epochs`` epochs: 20, as the tests' ``badnets_digits`` fixture, instead of BadNets'
   30; batch 64, seed 0), once, untimed; clean accuracy and attack success on the test
   split.
2. **Training-set scans** on the victim trained on scrutiny's poisoned set, with that set:
   scrutiny ``ActivationClustering()`` (last hidden layer, 64 features; FastICA to 10
   dims; 2-means, 10 restarts; "relative_size" < 0.35) and ``SpectralSignatures(eps=0.1)``
   (flags ``round(1.5 * eps * n)`` per class), against ART ``ActivationDefence`` and
   ``SpectralSignatureDefense(expected_pp_poison=0.1, eps_multiplier=1.5)``. ART reads the
   output of the classifier's *last* layer (``layer_names[-1]``): on this network the
   logits. Rows: ART at its defaults (PCA, "smaller" analysis, logits), ART with FastICA
   (the paper's and the brief's choice), and ART on the truncated network
   (``features, pool, flatten``) so that it reads the same 64 features as scrutiny, with
   FastICA and its "relative-size" analysis; scrutiny at its defaults and with
   ``layer="classifier"`` (the logits ART reads). Figures: time, precision and recall of
   the flagged points against the true poison indices, the flagged classes. The same
   scans are repeated on a second victim poisoned at ``--minority-rate`` (3%: the poison
   is a minority of class 0, as both papers assume; at 10% of the whole set it is about
   half of class 0).
3. **Neural Cleanse**: ART's implementation (``art.defences.transformer.poisoning.
   NeuralCleanse``, ``KerasNeuralCleanse``) accepts Keras classifiers only; the script
   tries it on the PyTorch classifier and records the error. scrutiny ``NeuralCleanse()``
   (its defaults: 30 epochs, 200 inputs) on the backdoored victim and on a victim trained
   the same way on clean data, with the test split: time, flagged labels, the target's
   anomaly index.
4. **SVM poisoning**: 8 vs 3, the first 100 training points of the pair, the other 170
   as validation, linear SVC with C=10 (scrutiny's Notes), one attack point labelled 8
   started at scrutiny's seeded start point (a training 3, label flipped), step 0.1,
   budget ``--svm-iter`` steps: scrutiny ``SVMPoisoning`` (stops early when the hinge
   loss falls, ``eps=0``) against ART ``PoisoningAttackSVM`` (``eps`` set so large that it
   takes every step of the budget; its ``generate_attack_point``, as ``poison`` would log
   a success rate through ``predict_proba``, which a plain SVC lacks). The validation
   error and hinge loss reached are measured the same way for both (an SVC refitted with
   scrutiny's tolerance on the training pair plus the point).
5. **Feature collision**: target test digit 0 (a 1; base class 8, its runner-up),
   ``--fc-poisons`` bases drawn by scrutiny's seeded draw, on the shipped
   ``pretrained("digits-cnn")``: scrutiny ``FeatureCollision.craft`` (all poisons as one
   batch) against ART ``FeatureCollisionAttack`` (one poison at a time) with
   ``feature_layer="flatten"`` (the same 64 features), ``max_iter`` = ``--fc-iter``,
   ``learning_rate`` = scrutiny's ``step_size`` 0.1, ``similarity_coeff`` = ``beta0``
   0.25, ``decay_coeff`` 0.5, ``num_old_obj`` 40, ``stopping_tol`` 1e-6, ``watermark``
   0.3 (ART adds ``0.3 * target`` to the finished poison; scrutiny blends the base with
   the target before optimising: the one setting that does not map). Figures: time per
   iteration, the mean feature distance ``||f(p) - f(t)||`` and input distance
   ``||p - b||`` reached, and whether the target flips after scrutiny's last-layer
   fine-tuning (``FeatureCollision.finetune``, 10 epochs, lr 0.03) on the clean set plus
   each set of poisons.
6. **Adversarial embedding** (Tan & Shokri): ART's ``PoisoningAttackAdversarialEmbedding``
   requires a ``KerasClassifier``; the script tries it and records the error, then runs
   scrutiny ``BackdoorEmbedding(target=0, rate=0.1, epochs=--epochs)`` once.

Every timed case is warmed once, then timed in ``--repeats`` interleaved rounds (round
robin, ``benchmarks/run.py``'s ``time_cases``); times are medians, ratios the median of
the per-round ratios to scrutiny's time. Output: a markdown table on stdout and in
``benchmarks/results/poisoning.md``, the raw numbers in ``benchmarks/results/poisoning.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread (numpy, scikit-learn), before numpy loads

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import optional  # noqa: E402
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

from scrutiny.attacks.poisoning import (  # noqa: E402
    BackdoorEmbedding,
    BadNets,
    FeatureCollision,
    SVMPoisoning,
    accuracy,
    attack_success_rate,
    train_victim,
)
from scrutiny.base import seeded  # noqa: E402
from scrutiny.data import ArrayDataset, load_digits  # noqa: E402
from scrutiny.defenses.backdoor import (  # noqa: E402
    ActivationClustering,
    NeuralCleanse,
    SpectralSignatures,
    precision_recall,
)
from scrutiny.models import TorchModel, build, pretrained  # noqa: E402

art_backdoor = optional("art.attacks.poisoning.backdoor_attack")
art_perturb = optional("art.attacks.poisoning.perturbations.image_perturbations")
art_fc = optional("art.attacks.poisoning.feature_collision_attack")
art_svm = optional("art.attacks.poisoning.poisoning_attack_svm")
art_ac = optional("art.defences.detector.poison.activation_defence")
art_ss = optional("art.defences.detector.poison.spectral_signature_defense")
art_torch = optional("art.estimators.classification.pytorch")
art_sk = optional("art.estimators.classification.scikitlearn")
logging.getLogger("art").setLevel(logging.ERROR)

TARGET = 0
SHAPE = (1, 8, 8)


# --------------------------------------------------------------------------- helpers


def onehot(y: torch.Tensor | np.ndarray, k: int = 10) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), k), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def art_classifier(module: nn.Module, nb_classes: int = 10):
    """ART's ``PyTorchClassifier`` around a copy of ``module`` (eval mode)."""
    net = copy.deepcopy(module).eval()
    return art_torch.PyTorchClassifier(model=net, loss=nn.CrossEntropyLoss(), input_shape=SHAPE,
                                       nb_classes=nb_classes, clip_values=(0.0, 1.0))


def checkerboard_bd(x: np.ndarray, size: int = 3, offset: int = 1, value: float = 1.0,
                    low: float = 0.0) -> np.ndarray:
    """An ART perturbation (NCHW array in, new array out): a ``size`` x ``size``
    checkerboard ``offset`` pixels from the bottom-right corner, ``value`` on the patch's
    bottom-right pixel and every second pixel from it, ``low`` on the others."""
    x = np.copy(x)
    h, w = x.shape[-2:]
    for i in range(size):  # i, j: rows / columns counted from the patch's bottom-right pixel
        for j in range(size):
            x[..., h - offset - 1 - i, w - offset - 1 - j] = value if (i + j) % 2 == 0 else low
    return x


def try_peer(fn) -> str | None:
    """None when ``fn()`` runs; else the error, one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except Exception as e:  # noqa: BLE001 - the peer's own refusal is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def guarded(fn):
    """``fn`` returning its exception instead of raising it (a scan that fails is a row)."""
    def run():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn()
        except Exception as e:  # noqa: BLE001 - reported in the table
            return e
    return run


def failed(out: Any) -> dict[str, Any] | None:
    if isinstance(out, Exception):
        return {"error": f"{type(out).__name__}: {str(out).splitlines()[0] if str(out) else ''}"}
    return None


def scan_metrics(suspicious: np.ndarray | torch.Tensor, flagged: list[int], poisoned: torch.Tensor
                 ) -> dict[str, Any]:
    sus = torch.as_tensor(np.asarray(suspicious), dtype=torch.long)
    p, r = precision_recall(sus, poisoned)
    return {"n_flagged_points": len(sus), "precision": p, "recall": r,
            "flagged_classes": sorted(int(k) for k in flagged)}


# --------------------------------------------------------------------------- 1. BadNets


def badnets_cases(train: ArrayDataset, rate: float, info: dict[str, Any]) -> list[Case]:
    attack = BadNets(target=TARGET, rate=rate)
    ours, idx = attack.poison(train, seed=0)
    info["n_poisoned"] = len(idx)
    info["poison_idx"] = idx
    info["scrutiny_set"] = ours
    cases = [Case("badnets:scrutiny", "badnets", "scrutiny",
                  f"scrutiny BadNets(target={TARGET}, rate={rate}).poison (draw included)",
                  run=lambda: attack.poison(train, seed=0), inner=20,
                  metrics=lambda out: {"n_poisoned": len(out[1])})]
    if art_backdoor is None:
        return cases
    x0, y0 = train.x.numpy(), onehot(train.y)
    pick = idx.numpy()
    target_y = onehot(np.array([TARGET]))[0]

    def art_run(perturbation=checkerboard_bd):
        atk = art_backdoor.PoisoningAttackBackdoor(perturbation)
        x, y = x0.copy(), y0.copy()
        xp, yp = atk.poison(x[pick], y=target_y, broadcast=True)
        x[pick], y[pick] = xp, yp
        return x, y

    def art_metrics(out):
        x, y = out
        same_x = bool(np.array_equal(x, ours.x.numpy()))
        same_y = bool(np.array_equal(y.argmax(1), ours.y.numpy()))
        builtin, _ = art_run(lambda a: art_perturb.add_pattern_bd(a, distance=2, pixel_value=1,
                                                                  channels_first=True))
        diff = int((builtin[pick[0]] != x[pick[0]]).sum())
        info["art_set"] = ArrayDataset(x=torch.from_numpy(x), y=torch.from_numpy(y.argmax(1)),
                                       classes=train.classes, name="digits+art-backdoor")
        return {"identical_inputs": same_x, "identical_labels": same_y,
                "add_pattern_bd_pixels_differing": diff}

    cases.append(Case("badnets:art", "badnets", "ART",
                      "ART PoisoningAttackBackdoor(checkerboard_bd) on the same indices",
                      run=art_run, inner=20, metrics=art_metrics))
    return cases


def train_badnets_victims(train: ArrayDataset, test: ArrayDataset, info: dict[str, Any],
                          epochs: int, minority_rate: float) -> dict[str, Any]:
    """Victims trained once (untimed comparison of time; the loop is the same)."""
    with seeded(0):
        net = build("cnn", SHAPE, 10)
    trig = BadNets(target=TARGET).trigger(SHAPE)
    out: dict[str, Any] = {"trigger": trig}
    sets = {"scrutiny": info["scrutiny_set"], "clean": train}
    if "art_set" in info:
        sets["art"] = info["art_set"]
    minority, midx = BadNets(target=TARGET, rate=minority_rate).poison(train, seed=0)
    sets["minority"] = minority
    out["minority_idx"] = midx
    rows = {}
    for name, data in sets.items():
        t0 = time.perf_counter()
        victim, _ = train_victim(net, data, epochs=epochs, seed=0)
        dt = time.perf_counter() - t0
        out[name] = victim
        rows[name] = {"train_s": dt, "clean_accuracy": accuracy(victim, test),
                      "attack_success": attack_success_rate(victim, test, trig, TARGET)}
        log(f"  trained on {name}: {dt:.1f}s {rows[name]}")
    if "art" in out:
        rows["art"]["identical_weights_to_scrutiny"] = all(
            torch.equal(a, b) for a, b in zip(out["art"].state_dict().values(),
                                              out["scrutiny"].state_dict().values(), strict=True))
    out["rows"] = rows
    return out


# --------------------------------------------------------------------------- 2. scans


def scan_cases(victim: nn.Module, data: ArrayDataset, poisoned: torch.Tensor, tag: str,
               eps: float) -> list[Case]:
    model = TorchModel(victim, num_classes=10)
    group = f"scan:{tag}"
    cases = []
    for key, label, method in (
            ("ac", "scrutiny ActivationClustering() [64 features, ICA 10, relative_size]",
             ActivationClustering()),
            ("ac-logits", "scrutiny ActivationClustering(layer='classifier') [logits, as ART]",
             ActivationClustering(layer="classifier")),
            ("ss", f"scrutiny SpectralSignatures(eps={eps}) [64 features]",
             SpectralSignatures(eps=eps)),
            ("ss-logits", f"scrutiny SpectralSignatures(eps={eps}, layer='classifier') [logits]",
             SpectralSignatures(eps=eps, layer="classifier"))):
        cases.append(Case(f"{group}:{key}:scrutiny", f"{group}:{key.split('-')[0]}", "scrutiny",
                          label, run=guarded(lambda method=method: method(model, data, seed=0)),
                          metrics=lambda r: failed(r) or scan_metrics(r.suspicious, r.flagged,
                                                                      poisoned)))
    if art_ac is None or art_ss is None or art_torch is None:
        return cases
    x, y = data.x.numpy(), onehot(data.y)
    headless = nn.Sequential(victim.features, victim.pool, victim.flatten)

    def art_scan(kind: str, module: nn.Module, **kw: Any):
        def run():
            np.random.seed(0)  # noqa: NPY002 - ART's KMeans / FastICA draw from numpy's global generator
            clf = art_classifier(module)
            if kind == "ac":
                d = art_ac.ActivationDefence(clf, x, y)
            else:
                d = art_ss.SpectralSignatureDefense(clf, x, y, expected_pp_poison=eps,
                                                    eps_multiplier=1.5)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _, is_clean = d.detect_poison(**kw)
            return np.asarray(is_clean)
        return run

    def art_metrics(is_clean: np.ndarray) -> dict[str, Any]:
        if (bad := failed(is_clean)) is not None:
            return bad
        sus = np.flatnonzero(is_clean == 0)
        flagged = sorted(set(data.y[torch.from_numpy(sus)].tolist())) if len(sus) else []
        return scan_metrics(sus, flagged, poisoned)

    for key, label, kind, module, kw in (
            ("ac", "ART ActivationDefence() [its defaults: logits, PCA 10, 'smaller']", "ac",
             victim, {}),
            ("ac-ica", "ART ActivationDefence(reduce='FastICA') [logits, 'smaller']", "ac",
             victim, {"reduce": "FastICA"}),
            ("ac-64", "ART ActivationDefence(reduce='FastICA', cluster_analysis='relative-size')"
             " on features..flatten [64 features]", "ac", headless,
             {"reduce": "FastICA", "cluster_analysis": "relative-size"}),
            ("ss", f"ART SpectralSignatureDefense(expected_pp_poison={eps}) [logits]", "ss",
             victim, {}),
            ("ss-64", f"ART SpectralSignatureDefense(expected_pp_poison={eps}) on "
             "features..flatten [64 features]", "ss", headless, {})):
        cases.append(Case(f"{group}:{key}:art", f"{group}:{key[:2]}", "ART", label,
                          run=guarded(art_scan(kind, module, **kw)), metrics=art_metrics))
    return cases


# --------------------------------------------------------------------------- 3. cleanse


def cleanse_cases(victims: dict[str, nn.Module], test: ArrayDataset) -> list[Case]:
    cases = []
    scan, warm_scan = NeuralCleanse(), NeuralCleanse(epochs=1, n_inputs=50)
    for name in ("scrutiny", "clean"):
        model = TorchModel(victims[name], num_classes=10)

        def metrics(r) -> dict[str, Any]:
            i = r.labels.index(TARGET)
            return {"flagged": [int(k) for k in r.flagged],
                    "anomaly_threshold": float(r.anomaly_threshold),
                    "target_anomaly_index": float(r.anomaly_index[i]),
                    "target_mask_l1": float(r.norms[i]),
                    "median_mask_l1": float(np.median(r.norms))}

        label = "backdoored victim" if name == "scrutiny" else "clean victim"
        cases.append(Case(f"cleanse:{name}", "cleanse", "scrutiny",
                          f"scrutiny NeuralCleanse() on the {label}",
                          run=lambda model=model: scan(model, test, seed=0),
                          warm=lambda model=model: warm_scan(model, test, seed=0),
                          metrics=metrics, repeats=1))
    return cases


def art_cleanse_error(victim: nn.Module, test: ArrayDataset) -> str:
    if art_torch is None:
        return "ART not installed"

    def go():
        from art.defences.transformer.poisoning import NeuralCleanse as ArtNC

        ArtNC(art_classifier(victim))(art_classifier(victim), steps=1)
    return try_peer(go) or "ran"


# --------------------------------------------------------------------------- 4. SVM


def svm_cases(train: ArrayDataset, budget: int) -> tuple[list[Case], dict[str, Any]]:
    pair = (8, 3)
    two = train.subset((train.y == pair[0]) | (train.y == pair[1]))
    tr, val = two.subset(range(100)), two.subset(range(100, len(two)))
    attack = SVMPoisoning(classes=pair, C=10.0, kernel="linear", step=0.1, max_iter=budget)
    first = attack(None, tr, validation=val, seed=0)
    start = first.path[0].double().numpy()
    x_tr, y_tr = attack.binary(tr, pair)
    x_val, y_val = attack.binary(val, pair)
    cfg = {"pair": pair, "n_train": len(x_tr), "n_val": len(x_val), "C": 10.0, "step": 0.1,
           "budget": budget, "clean_validation_error": first.clean_validation_error}

    def measure(point: np.ndarray) -> dict[str, Any]:
        svc = attack.fit(np.vstack([x_tr, point[None]]), np.append(y_tr, -1.0), None)
        loss, err = attack.hinge(svc, x_val, y_val)
        return {"validation_error": err, "hinge_loss": loss,
                "start_validation_error": first.validation_error[0],
                "start_hinge_loss": first.hinge_loss[0],
                "l2_from_start": float(np.linalg.norm(point - start))}

    def ours_metrics(r) -> dict[str, Any]:
        out = measure(r.poison.flatten().double().numpy())
        out["steps"] = r.iterations
        return out

    cases = [Case("svm:scrutiny", "svm", "scrutiny",
                  f"scrutiny SVMPoisoning(linear, C=10, step=0.1, max_iter={budget})",
                  run=lambda: attack(None, tr, validation=val, seed=0), metrics=ours_metrics)]
    if art_svm is not None and art_sk is not None:
        from sklearn.svm import SVC

        y01 = (y_tr > 0).astype(int)  # ART: class 0 = 8 (scrutiny's -1), class 1 = 3
        yv01 = (y_val > 0).astype(int)

        def art_run(k: int = budget):
            np.random.seed(0)  # noqa: NPY002 - ART jitters Q_ss with numpy's global generator
            clf = art_sk.ScikitlearnSVC(model=SVC(C=10.0, kernel="linear"), clip_values=(0.0, 1.0))
            clf.fit(x_tr, onehot(y01, 2))
            atk = art_svm.PoisoningAttackSVM(clf, step=0.1, eps=1e12, x_train=x_tr,
                                             y_train=onehot(y01, 2), x_val=x_val,
                                             y_val=onehot(yv01, 2), max_iter=k,
                                             verbose=False)
            # poison() would log a success rate through predict_proba, which an SVC without
            # probability=True lacks: call the attack's own step, generate_attack_point
            return atk.generate_attack_point(start.copy(), onehot(np.array([0]), 2)[0])[0]

        def art_metrics(point: np.ndarray) -> dict[str, Any]:
            out = measure(np.asarray(point, dtype=np.float64))
            out["steps"] = budget
            return out

        cases.append(Case("svm:art", "svm", "ART",
                          f"ART PoisoningAttackSVM(ScikitlearnSVC(SVC(linear, C=10)), step=0.1, "
                          f"max_iter={budget})", run=art_run, warm=lambda: art_run(2),
                          metrics=art_metrics, repeats=1))
    return cases, cfg


# --------------------------------------------------------------------------- 5. collision


def collision_cases(train: ArrayDataset, test: ArrayDataset, n_poisons: int, iters: int
                    ) -> tuple[list[Case], dict[str, Any]]:
    model = pretrained("digits-cnn", progress=False)
    model.eval()
    fc = FeatureCollision(n_poisons=n_poisons, max_iter=iters, epochs=10, lr=0.03)
    first = fc(model, train, target=0, test=test, seed=0)
    t, bases_idx, base_label = first.target_x, first.base_indices, first.base_label
    bases = train.x[bases_idx]
    with torch.no_grad():
        ft = fc.features(model, t[None])
    cfg = {"target_index": 0, "target_label": first.target_label, "base_label": base_label,
           "n_poisons": len(bases_idx), "max_iter": iters,
           "base_feature_distance": float(first.base_feature_distance.mean())}

    def metrics(poisons: torch.Tensor) -> dict[str, Any]:
        poisons = torch.as_tensor(np.asarray(poisons), dtype=torch.float32).reshape(bases.shape)
        with torch.no_grad():
            fdist = (fc.features(model, poisons) - ft).norm(dim=1)
        data = ArrayDataset(x=torch.cat([train.x, poisons]),
                            y=torch.cat([train.y, torch.full((len(poisons),), base_label)]),
                            classes=train.classes, name="digits+poisons")
        victim, _ = fc.finetune(model, data, seed=0)
        after = int(victim.predict(t[None])[0])
        return {"feature_distance": float(fdist.mean()),
                "input_distance": float((poisons - bases).flatten(1).norm(dim=1).mean()),
                "prediction_after": after, "target_flipped": after == base_label,
                "clean_accuracy_after": accuracy(victim, test)}

    warm = FeatureCollision(n_poisons=n_poisons, max_iter=2)
    cases = [Case("fc:scrutiny", "fc", "scrutiny",
                  f"scrutiny FeatureCollision.craft ({len(bases)} poisons as one batch, "
                  f"{iters} iterations)", run=lambda: fc.craft(model, t, bases, progress=False),
                  warm=lambda: warm.craft(model, t, bases, progress=False), metrics=metrics)]
    if art_fc is not None and art_torch is not None:
        clf = art_classifier(model.module)
        t_np, b_np = t[None].numpy(), bases.numpy()

        def art_case(key: str, lr: float, note: str) -> Case:
            def art_run(k: int = iters):
                atk = art_fc.FeatureCollisionAttack(
                    clf, t_np, "flatten", learning_rate=lr, decay_coeff=0.5, stopping_tol=1e-6,
                    num_old_obj=40, max_iter=k, similarity_coeff=0.25, watermark=0.3,
                    verbose=False)
                return atk.poison(b_np)[0]

            return Case(key, "fc", "ART",
                        f"ART FeatureCollisionAttack(feature_layer='flatten', max_iter={iters}, "
                        f"learning_rate={lr:.3g}, similarity_coeff=0.25, watermark=0.3){note}, "
                        "one poison at a time", run=art_run, warm=lambda: art_run(2),
                        metrics=metrics, repeats=1)

        cases.append(art_case("fc:art", 0.1, " [scrutiny's step_size]"))
        # ART steps along the gradient of ||f(x) - f(t)||, scrutiny along that of its square,
        # 2 ||f(x) - f(t)|| times longer: this rate gives ART scrutiny's first step
        lr = 0.1 * 2 * cfg["base_feature_distance"]
        cases.append(art_case("fc:art:scaled", lr, " [0.1 * 2 * mean base feature distance]"))
    return cases, cfg


# --------------------------------------------------------------------------- 6. embedding


def embedding_run(train: ArrayDataset, test: ArrayDataset, epochs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if art_torch is not None:
        def go():
            from art.attacks.poisoning import PoisoningAttackAdversarialEmbedding

            with seeded(0):
                net = build("cnn", SHAPE, 10)
            PoisoningAttackAdversarialEmbedding(
                art_classifier(net), art_backdoor.PoisoningAttackBackdoor(checkerboard_bd),
                feature_layer="flatten", target=onehot(np.array([TARGET]))[0])
        out["art_error"] = try_peer(go) or "ran"
    else:
        out["art_error"] = "ART not installed"
    with seeded(0):
        net = build("cnn", SHAPE, 10)
    t0 = time.perf_counter()
    r = BackdoorEmbedding(target=TARGET, rate=0.1, epochs=epochs)(net, train, test=test, seed=0)
    out.update({"time_s": time.perf_counter() - t0, "clean_accuracy": r.clean_accuracy,
                "attack_success": r.attack_success, "separation": r.separation})
    log(f"  backdoor embedding: {out}")
    return out


# --------------------------------------------------------------------------- report


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.{nd}f}"
    if isinstance(v, list):
        return "[" + ", ".join(str(k) for k in v) + "]" if v else "none"
    return str(v)


def _ratio(c: Case, base: Case | None) -> str:
    return "1.00" if base is None or c is base else f"{paired(c, base):.2f}"


def report(cases: list[Case], info: dict[str, Any], cfg: dict[str, Any], extra: dict[str, Any]
           ) -> str:
    by = {c.key: c for c in cases}
    busy = [b for c in cases for b in c.busy if b is not None]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} torch thread(s), one "
        f"BLAS thread; torch {info['torch']}, python {info['python']}; {info['date']}; load "
        f"average {info['loadavg_1min_start']} at the start; other processes used "
        + (f"{statistics.median(busy):.0%} (median) / {max(busy):.0%} (max) of the CPU during "
           "the timed samples" if busy else "an unknown share of the CPU")
        + f". Median of {cfg['repeats']} interleaved rounds; ratio = the median over rounds of "
        "the case's time / scrutiny's in the same round (> 1: the peer is slower).",
        "",
        f"Peer: adversarial-robustness-toolbox {version('adversarial-robustness-toolbox')}, "
        f"scikit-learn {version('scikit-learn')}.",
        "",
        f"**1. BadNets poisoning** (digits train, {cfg['n_train']} points, {extra['n_poisoned']} "
        f"poisoned ({cfg['rate']:.0%}), target {TARGET}, 3x3 checkerboard):",
        "",
        "| implementation | time (ms) | time / scrutiny | identical poisoned set |",
        "|---|---:|---:|---|"]
    base = by["badnets:scrutiny"]
    for c in cases:
        if c.group == "badnets":
            same = c.result.get("identical_inputs")
            lines.append(f"| {c.label} | {1e3 * c.median:.2f} | {_ratio(c, base)} | "
                         + ("(reference)" if same is None else
                            f"inputs {_f(same)}, labels {_f(c.result['identical_labels'])}")
                         + " |")
    if "badnets:art" in by:
        lines += ["", f"ART's own `add_pattern_bd(distance=2)` is another trigger: "
                  f"{by['badnets:art'].result['add_pattern_bd_pixels_differing']} of the 9 patch "
                  "pixels differ from the checkerboard (it sets 4 pixels to 1 and leaves the "
                  "others as they were)."]
    rows = extra["victims"]["rows"]
    lines += ["", f"Victims trained once each with the same loop (scrutiny `train_victim`, "
              f"{cfg['epochs']} epochs, Adam lr 3e-3, batch 64, seed 0, same initial weights):",
              "", "| training set | train time (s) | clean accuracy | attack success |",
              "|---|---:|---:|---:|"]
    names = {"scrutiny": "scrutiny's poisoned set", "art": "ART's poisoned set",
             "clean": "clean set", "minority": f"scrutiny's set at rate {cfg['minority_rate']}"}
    for name, row in rows.items():
        lines.append(f"| {names[name]} | {row['train_s']:.1f} | {row['clean_accuracy']:.4f} | "
                     f"{row['attack_success']:.4f} |")
    if "art" in rows:
        same = rows["art"]["identical_weights_to_scrutiny"]
        lines += ["", "The two poisoned sets are identical, and so are the trained weights "
                  f"(bitwise: {_f(same)}): the two attacks are the same attack."]
    for tag, title in (("main", f"rate {cfg['rate']} (the poison is {extra['share_main']:.0%} "
                        f"of class {TARGET})"),
                       ("minority", f"rate {cfg['minority_rate']} (the poison is "
                        f"{extra['share_minority']:.0%} of class {TARGET})")):
        lines += ["", f"**2. Training-set scans**, victim poisoned at {title}:", "",
                  "| implementation | time (s) | time / scrutiny | flagged points | precision "
                  "| recall | flagged classes |", "|---|---:|---:|---:|---:|---:|---|"]
        for kind in ("ac", "ss"):
            group = f"scan:{tag}:{kind}"
            base = by.get(f"{group}:scrutiny")
            for c in cases:
                if c.group == group:
                    r = c.result
                    if "error" in r:
                        lines.append(f"| {c.label} | {fmt_s(c.median)} (fails) | "
                                     f"{_ratio(c, base)} | fails: `{r['error']}` | | | |")
                        continue
                    lines.append(f"| {c.label} | {fmt_s(c.median)} | {_ratio(c, base)} | "
                                 f"{r['n_flagged_points']} | {_f(r['precision'])} | "
                                 f"{_f(r['recall'])} | {_f(r['flagged_classes'])} |")
    lines += ["", "Flagged classes: scrutiny's class verdicts (activation clustering: the smaller "
              "cluster under 35% of its class; spectral signatures: a top-direction variance "
              "share with a MAD anomaly index above the threshold a clean model passes 5% of the "
              "time: 3.88 for 10 classes). ART gives no class verdict: its spectral "
              "signatures flag points in every class and its 'smaller' analysis the smaller "
              "cluster of every class, so its column lists the classes holding flagged points."]
    lines += ["", "**3. Neural Cleanse** (test split; ART: "
              f"`{extra['art_cleanse']}` - not runnable on PyTorch in ART "
              f"{version('adversarial-robustness-toolbox')}):", "",
              "| implementation | time (s) | flagged labels | anomaly index of label 0 | "
              "mask L1 of label 0 / median |", "|---|---:|---|---:|---:|"]
    for c in cases:
        if c.group == "cleanse":
            r = c.result
            lines.append(f"| {c.label} | {fmt_s(c.median)} | {_f(r['flagged'])} | "
                         f"{r['target_anomaly_index']:.2f} | {r['target_mask_l1']:.1f} / "
                         f"{r['median_mask_l1']:.1f} |")
    s = extra["svm"]
    lines += ["", f"**4. SVM poisoning** ({s['pair'][0]} vs {s['pair'][1]}, {s['n_train']} "
              f"training / {s['n_val']} validation points, linear SVC C={s['C']:g}, one point, "
              f"step {s['step']}, budget {s['budget']} steps; clean validation error "
              f"{s['clean_validation_error']:.4f}, at the start point "
              f"{by['svm:scrutiny'].result['start_validation_error']:.4f}):", "",
              "| implementation | time (s) | time / scrutiny | steps | validation error | "
              "mean hinge loss (start) | L2 moved |", "|---|---:|---:|---:|---:|---:|---:|"]
    base = by["svm:scrutiny"]
    for c in cases:
        if c.group == "svm":
            r = c.result
            lines.append(f"| {c.label} | {fmt_s(c.median)} | {_ratio(c, base)} | {r['steps']} | "
                         f"{r['validation_error']:.4f} | {r['hinge_loss']:.3f} "
                         f"({r['start_hinge_loss']:.3f}) | {r['l2_from_start']:.2f} |")
    f = extra["fc"]
    lines += ["", f"**5. Feature collision** (target: test digit {f['target_index']}, a "
              f"{f['target_label']}; base class {f['base_label']}; {f['n_poisons']} poisons; "
              f"{f['max_iter']} iterations; mean feature distance of the bases "
              f"{f['base_feature_distance']:.2f}; fine-tuning: scrutiny's, last layer, 10 epochs):",
              "", "| implementation | time (s) | ms / iteration / poison | time / scrutiny | "
              "feature distance | input distance | target flipped | clean acc. after |",
              "|---|---:|---:|---:|---:|---:|---|---:|"]
    base = by["fc:scrutiny"]
    for c in cases:
        if c.group == "fc":
            r = c.result
            per = 1e3 * c.median / (f["max_iter"] * f["n_poisons"])
            lines.append(f"| {c.label} | {fmt_s(c.median)} | {per:.3f} | {_ratio(c, base)} | "
                         f"{r['feature_distance']:.3f} | {r['input_distance']:.3f} | "
                         f"{_f(r['target_flipped'])} (-> {r['prediction_after']}) | "
                         f"{r['clean_accuracy_after']:.4f} |")
    e = extra["embedding"]
    lines += ["", f"**6. Adversarial embedding**: ART `PoisoningAttackAdversarialEmbedding` on "
              f"the PyTorch classifier: `{e['art_error']}`. scrutiny `BackdoorEmbedding(target=0, "
              f"rate=0.1, epochs={cfg['epochs']})` alone, once: {e['time_s']:.1f} s, clean "
              f"accuracy {e['clean_accuracy']:.4f}, attack success {e['attack_success']:.4f}, "
              f"latent separation (AUROC) {e['separation']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20, help="victim training epochs")
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--minority-rate", type=float, default=0.03)
    ap.add_argument("--svm-iter", type=int, default=10)
    ap.add_argument("--fc-poisons", type=int, default=50)
    ap.add_argument("--fc-iter", type=int, default=50)
    ap.add_argument("--only", choices=("svm", "fc"), default=None,
                    help="one of the workloads that train no victim; print raw results")
    ap.add_argument("--retries", type=int, default=0,
                    help="retake a sample when other processes used > 10%% of the CPU")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    share = CpuShare()
    info = machine_info(args.threads)
    for dist in ("adversarial-robustness-toolbox", "scikit-learn", "numpy"):
        info[dist] = version(dist)
    train, test = load_digits(split="train"), load_digits(split="test")
    cfg = {"repeats": args.repeats, "epochs": args.epochs, "rate": args.rate,
           "minority_rate": args.minority_rate, "n_train": len(train), "threads": args.threads,
           "svm_iter": args.svm_iter, "fc_poisons": args.fc_poisons, "fc_iter": args.fc_iter}
    extra: dict[str, Any] = {}
    if args.only is not None:  # a quick look at one workload
        cases = (svm_cases(train, args.svm_iter) if args.only == "svm" else
                 collision_cases(train, test, args.fc_poisons, args.fc_iter))[0]
        time_cases(cases, args.repeats, nn.Identity(), Gate(retries=args.retries))
        for c in cases:
            print(c.key, fmt_s(c.median), c.result)
        return 0
    state: dict[str, Any] = {}
    cases = badnets_cases(train, args.rate, state)
    extra["n_poisoned"] = state["n_poisoned"]
    # the ART set is built by its metrics: run it once now for the victims' training
    for c in cases:
        if c.impl == "ART":
            c.metrics(c.run())
    log("training the victims ...")
    victims = train_badnets_victims(train, test, state, args.epochs, args.minority_rate)
    extra["victims"] = victims
    idx, midx = state["poison_idx"], victims["minority_idx"]
    main_set = state["scrutiny_set"]
    minority_set = BadNets(target=TARGET, rate=args.minority_rate).poison(train, seed=0)[0]
    extra["share_main"] = len(idx) / int((main_set.y == TARGET).sum())
    extra["share_minority"] = len(midx) / int((minority_set.y == TARGET).sum())
    cases += scan_cases(victims["scrutiny"], main_set, idx, "main", eps=0.1)
    cases += scan_cases(victims["minority"], minority_set, midx, "minority", eps=0.1)
    cases += cleanse_cases(victims, test)
    extra["art_cleanse"] = art_cleanse_error(victims["scrutiny"], test)
    svm, extra["svm"] = svm_cases(train, args.svm_iter)
    cases += svm
    fc, extra["fc"] = collision_cases(train, test, args.fc_poisons, args.fc_iter)
    cases += fc
    gate = Gate(retries=args.retries)
    time_cases(cases, args.repeats, victims["scrutiny"], gate)
    log("adversarial embedding ...")
    extra["embedding"] = embedding_run(train, test, args.epochs)
    info["cpu_share_others_whole_run"] = share.others()
    extra["victims"] = {"rows": victims["rows"]}
    table = report(cases, info, cfg, extra)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "poisoning.md").write_text(table)
    raw = {"machine": info, "config": cfg, "samples_retaken": gate.rejected, "extra": extra,
           "cases": [{"key": c.key, "label": c.label, "times": c.times, "busy": c.busy,
                      "median": c.median, "result": c.result} for c in cases]}
    (RESULTS / "poisoning.json").write_text(json.dumps(raw, indent=1, default=str))
    log(f"wrote {RESULTS / 'poisoning.md'} and poisoning.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
