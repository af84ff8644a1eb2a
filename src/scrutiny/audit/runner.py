"""The main job: attack and explain one model on one dataset, collect figures."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.checks import (
    Flag,
    black_box_from_stages,
    check_certified,
    gradient_masking_checks,
)
from scrutiny.audit.matrix import game_matrix
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.progress import progress_bar
from scrutiny.types import NORMS, ThreatModel

DEFAULT_EPS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
    "l2": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
    "l1": (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0),
}


@dataclass
class AuditConfig:
    """What the audit runs.

    Parameters
    ----------
    attacks, explainers : tuple of str
        Registered names (``"pgd"`` or ``"attack:pgd"``); the attacks draw the
        robustness curve.
    headline_attack : str, optional
        A (strong, slower) attack run once at ``reference_eps`` on the samples
        the curve's attacks left robust; default the AutoAttack-style
        ``worst_case`` ensemble. Its result enters the headline number.
    norm : {"linf", "l2", "l1"}
    eps : tuple of float, optional
        Radii of the robustness curve; default :data:`DEFAULT_EPS` of the norm.
    reference_eps : float, optional
        The eps of the headline number and the example figures; default the
        middle of ``eps``.
    n_samples : int
        Test samples attacked.
    n_examples : int
        Samples shown in the example and explanation figures.
    params : dict
        Per-method hyperparameters, ``{"pgd": {"steps": 100}}``.
    seed : int
        Seeds every stochastic step.
    metrics : tuple of str
        Trust measures (``metric:<name>``) computed for every explainer on the
        first ``trust_samples`` samples; shown in the gallery and its table.
        ``pointing_game`` needs data with ground-truth masks (``synthetic``).
    trust_samples : int
        Samples the trust measures use.
    defenses : tuple of str
        Defenses of the game matrix: each attack of ``attacks`` against each
        defense at ``reference_eps`` (adaptive attacks where a defense declares
        non-differentiable or randomized preprocessing; detectors as detection
        rates), fitted on test rows that are not attacked.
    query_attacks : tuple of str
        Black-box attacks run on every sample at ``reference_eps`` through a
        query-only view of the model; the report plots their success rate
        against the number of queries (default budget 1000 per sample unless
        ``params`` say otherwise).
    certifier : str, optional
        Certifier (``ibp``, ``crown``; ``smoothing`` for l2) run on the first
        ``cert_samples`` samples at the smallest nonzero eps and at
        ``reference_eps``; its certified accuracy is compared with the attacks'
        robust accuracy on the same samples (a certificate above it is a bug).
    cert_samples : int
        Samples certified.
    checks : bool
        Run the gradient-masking checks (:mod:`scrutiny.audit.checks`) at
        ``reference_eps``.
    black_box : str, optional
        Black-box attack of the "black-box beats white-box" check, run on the
        samples every white-box attack left robust (skipped when not registered).
    """

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    headline_attack: str | None = "worst_case"
    explainers: tuple[str, ...] = ("saliency", "integrated_gradients", "grad_cam")
    norm: str = "linf"
    eps: tuple[float, ...] | None = None
    reference_eps: float | None = None
    n_samples: int = 500
    n_examples: int = 6
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    metrics: tuple[str, ...] = ("deletion", "insertion", "model_randomization")
    trust_samples: int = 32
    defenses: tuple[str, ...] = ("bit_depth", "median_filter", "feature_squeezing")
    query_attacks: tuple[str, ...] = ("square",)
    certifier: str | None = "crown"
    cert_samples: int = 32
    checks: bool = True
    black_box: str | None = "square"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)}")
        self.eps = tuple(sorted(float(e) for e in (self.eps or DEFAULT_EPS[self.norm])))
        if any(e < 0 for e in self.eps):
            raise InputError(f"eps must be >= 0, got {self.eps}")
        if self.reference_eps is None:
            nz = [e for e in self.eps if e > 0] or list(self.eps)
            self.reference_eps = nz[(len(nz) - 1) // 2]
        self.reference_eps = float(self.reference_eps)
        if self.reference_eps not in self.eps:
            self.eps = tuple(sorted((*self.eps, self.reference_eps)))
        if self.n_samples < 1 or self.n_examples < 1:
            raise InputError("n_samples and n_examples must be >= 1")
        self.attacks = tuple(registry.get(a, "attack").name for a in self.attacks)
        if self.headline_attack:
            self.headline_attack = registry.get(self.headline_attack, "attack").name
        self.explainers = tuple(registry.get(e, "explainer").name for e in self.explainers)
        self.metrics = tuple(registry.get(m, "metric").name for m in self.metrics)
        self.defenses = tuple(registry.get(d, "defense").name for d in self.defenses)
        self.query_attacks = tuple(registry.get(a, "attack").name for a in self.query_attacks)
        if self.certifier:
            self.certifier = registry.get(self.certifier, "certifier").name
        if self.cert_samples < 1:
            raise InputError("cert_samples must be >= 1")
        if self.trust_samples < 1:
            raise InputError("trust_samples must be >= 1")
        known = (set(self.attacks) | set(self.explainers) | set(self.metrics) | set(self.defenses)
                 | set(self.query_attacks)
                 | {self.headline_attack, self.black_box, self.certifier})
        for k in self.params:
            if k not in known:
                raise InputError(f"params for {k!r}, which the audit does not run; it runs: "
                                 + ", ".join(sorted(known)))


@dataclass
class Figure:
    """A report figure: PNG bytes and the numbers it shows."""

    name: str
    title: str
    caption: str
    png: bytes
    data: dict[str, Any]


@dataclass
class AuditResult:
    """Everything the report shows."""

    model: str
    dataset: str
    n_samples: int
    clean_accuracy: float
    robustness: dict[str, list[dict[str, Any]]]
    headline: dict[str, Any]
    explanations: dict[str, dict[str, Any]]
    methods: list[dict[str, str]]
    trust: dict[str, dict[str, Any]]
    matrix: dict[str, Any] | None
    comparison: dict[str, Any] | None
    certification: dict[str, Any] | None
    queries: dict[str, dict[str, Any]]
    config: AuditConfig
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (figures as their data, not pixels)."""
        d = {k: v for k, v in asdict(self).items() if k != "figures"}
        d["figures"] = [f.name for f in self.figures]
        return d


def _create(kind: str, name: str, cfg: AuditConfig):
    return registry.create(f"{kind}:{name}", **cfg.params.get(name, {}))


_SHORT = {"model_randomization": "rand. corr", "data_randomization": "data-rand. corr",
          "pointing_game": "pointing", "max_sensitivity": "max-sens."}
_METRIC_NOTES = {
    "deletion": "deletion AUC (lower is better)",
    "insertion": "insertion AUC (higher is better)",
    "model_randomization": "rand. corr: rank correlation with the map of the randomized model "
                           "(low is good; FLAG: the map does not depend on the weights)",
    "data_randomization": "rank correlation with the map of a model trained on permuted labels",
    "pointing_game": "pointing-game hit rate",
    "infidelity": "infidelity (lower is better)",
    "max_sensitivity": "max-sensitivity (lower is better)",
}


def _trust(model, data, idx, x, y, explainers, explanations, metrics, background, cfg, notes,
           bar) -> dict[str, dict[str, Any]]:
    """Each metric's aggregate for each explainer that ran, on the first samples."""
    trust: dict[str, dict[str, Any]] = {}
    if not metrics:
        return trust
    n = min(cfg.trust_samples, len(x))
    xt, yt = x[:n], y[:n]
    for name, explainer in explainers.items():
        if name not in explanations:
            continue
        ts = time.perf_counter()
        data_kw = {"background": background} if "background" in explainer.call_data else {}
        attr = explainer(model, xt, yt, seed=cfg.seed, **data_kw).attributions
        scores: dict[str, Any] = {}
        for mname, metric in metrics.items():
            kw: dict[str, Any] = {}
            if "masks" in metric.call_data:
                if data.masks is None:
                    continue
                kw["masks"] = data.masks[idx[:n]]
            judged = ({"explainer": explainer} if metric.needs_explainer
                      else {"attributions": attr})
            try:
                res = metric(model, xt, yt, seed=cfg.seed, **judged, **kw)
            except InputError as e:  # e.g. tabular LIME needs background rows to re-explain
                notes.append(f"{mname} of {name} was skipped: {e}")
                continue
            scores[mname] = {"value": res.aggregate}
            if hasattr(res, "flag"):
                scores[mname]["flag"] = bool(res.flag)
        explanations[name]["trust_seconds"] = time.perf_counter() - ts
        trust[name] = scores
        bar.advance(f"trust {name}")
    return trust


def _query_curve(model: TorchModel, x, y, name: str, cfg: AuditConfig) -> dict[str, Any]:
    """Success rate of a black-box attack within 1, 10, 100, ... queries per sample."""
    params = {"n_queries": 1000, **cfg.params.get(name, {})}
    attack = registry.create(f"attack:{name}", **{k: v for k, v in params.items()
                                                  if k in registry.get(name, "attack").params()})
    ts = time.perf_counter()
    res = attack(model, x, y, threat=ThreatModel(cfg.norm, cfg.reference_eps, model.bounds),
                 seed=cfg.seed)
    q = res.queries.double() if res.queries is not None else torch.zeros(len(x))
    ok = res.clean_correct
    hit = res.success & ok
    top = max(1, int(q.max()))
    budgets = [b for b in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000) if b < top] + [top]
    denom = max(1, int(ok.sum()))
    curve = [(float(b), float((hit & (q <= b)).sum()) / denom) for b in budgets]
    qs = q[hit]
    return {"curve": curve, "success_rate": float(hit.sum()) / denom,
            "mean_queries": float(qs.mean()) if len(qs) else None,
            "median_queries": float(qs.median()) if len(qs) else None,
            "total_queries": int(q.sum()), "seconds": time.perf_counter() - ts}


def _certify(model: TorchModel, x, y, cfg: AuditConfig, robust_by_eps, notes
             ) -> dict[str, Any] | None:
    """Certified accuracy on the first samples next to the attacks' robust accuracy there.

    ``robust_by_eps`` holds the per-sample worst case of the attacks at each eps
    (the tensor at ``reference_eps`` already includes the headline attack).
    """
    cert = _create("certifier", cfg.certifier, cfg)
    n = min(cfg.cert_samples, len(x))
    nz = [e for e in cfg.eps if e > 0]
    radii = sorted({nz[0], cfg.reference_eps}) if nz else []
    if not radii:
        return None
    ts = time.perf_counter()
    try:
        if cfg.certifier == "smoothing":
            if cfg.norm != "l2":
                notes.append("randomized smoothing certifies l2 radii; the audit's norm is "
                             f"{cfg.norm}, so it was skipped")
                return None
            acc = cert.certified_accuracy(model, x[:n], y[:n], radii, seed=cfg.seed)
        else:
            acc = cert.certified_accuracy(model, x[:n], y[:n], radii, norm=cfg.norm)
    except InputError as e:  # unsupported layers, norms
        notes.append(f"{cfg.certifier} certification was skipped: {e}")
        return None
    rows = [{"eps": e, "certified_accuracy": acc[e],
             "robust_accuracy": float(robust_by_eps[e][:n].float().mean())} for e in radii]
    return {"certifier": cfg.certifier, "n": n, "rows": rows,
            "seconds": time.perf_counter() - ts}


def _compare_robust(model: TorchModel, robust, data: ArrayDataset, x, y, ex, attacks, cfg,
                    curves) -> tuple[list[Figure], dict[str, Any]]:
    """Standard vs robust model: the accuracy-robustness trade-off and input gradients."""
    from scrutiny.explain import Gradient

    robust = as_model(robust)
    worst = []
    for eps in cfg.eps:
        threat = ThreatModel(cfg.norm, eps, robust.bounds)
        ok = torch.ones(len(x), dtype=torch.bool)
        for attack in attacks.values():
            ok &= attack(robust, x, y, threat=threat, seed=cfg.seed).adv_correct
        worst.append((eps, float(ok.float().mean())))
    trade = {f"{model.name} (worst case of the curve's attacks)": curves["worst case"],
             f"{robust.name} (worst case of the curve's attacks)": worst}
    grads = {}
    for name, m in ((model.name, model), (robust.name, robust)):
        grads[name] = Gradient()(m, x[ex], y[ex], seed=cfg.seed).pixel_map()
    figs = [Figure("tradeoff", "Accuracy-robustness trade-off",
                   f"Robust accuracy against eps of the audited model and of {robust.name}; the "
                   "value at eps = 0 is the clean accuracy (Tsipras et al. 2019).",
                   *figures.robustness_curve(trade, cfg.norm, "standard vs robust model"))]
    if data.is_image:
        figs.append(Figure(
            "robust_gradients", "Input gradients of the standard and the robust model",
            "The gradient of the true class's logit with respect to the input. A robust model's "
            "gradients look like the object (perceptually aligned gradients, Tsipras et al. "
            "2019); a standard model's look like noise.",
            *figures.explanation_grid(x[ex], grads, "input gradients of the true class")))
    return figs, {"model": robust.name, "curve": worst,
                  "clean_accuracy": worst[0][1] if cfg.eps[0] == 0 else None}


def run_audit(model, data: ArrayDataset, config: AuditConfig | None = None, *,
              robust_model=None, progress: bool = True) -> AuditResult:
    """Run the audit of ``model`` on ``data`` (its test split).

    Robust accuracy of every attack at every eps (and the per-sample worst
    case over attacks), example adversarial inputs at the reference eps, and
    explanation maps of clean and adversarial inputs, trust scores of the
    explanations, the game matrix of attacks against defenses and the
    gradient-masking checks. With ``robust_model`` (e.g. the zoo's
    ``digits-cnn-pgd``), the report also compares the two models: the
    accuracy-robustness trade-off and their input gradients side by side.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> cfg = AuditConfig(n_samples=64, eps=(0.0, 0.1), explainers=("saliency",))
    >>> res = run_audit(pretrained("digits-cnn", progress=False), load_digits(split="test"),
    ...                 cfg, progress=False)
    >>> res.robustness["worst case"][-1]["robust_accuracy"] <= res.clean_accuracy
    True
    """
    cfg = config or AuditConfig()
    model: TorchModel = as_model(model)
    if not isinstance(data, ArrayDataset):
        raise InputError(f"data must be an ArrayDataset, got {type(data).__name__}")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(data), generator=g)
    idx = perm[:cfg.n_samples]
    x, y = data.x[idx], data.y[idx]
    # rows not attacked serve as background data for explainers that take it (LIME, SHAP)
    background = data.x[perm[cfg.n_samples:cfg.n_samples + 100]] if len(perm) > cfg.n_samples \
        else data.x[perm[:100]]
    pred = model.predict(x)
    if model.num_classes is not None and model.num_classes != data.num_classes:
        raise InputError(f"the model has {model.num_classes} classes, the data {data.num_classes}")
    clean_acc = float((pred == y).float().mean())
    attacks = {a: _create("attack", a, cfg) for a in cfg.attacks}
    explainers = {e: _create("explainer", e, cfg) for e in cfg.explainers}
    notes: list[str] = []
    if not data.is_image:
        for name in [e for e, m in explainers.items() if m.tags.image_only]:
            notes.append(f"{name} needs images and was skipped on tabular data")
            del explainers[name]

    robustness: dict[str, list[dict[str, Any]]] = {a: [] for a in attacks}
    robustness["worst case"] = []
    ref_adv: dict[str, Any] = {}
    headline_attack = _create("attack", cfg.headline_attack, cfg) if cfg.headline_attack else None
    metrics = {m: _create("metric", m, cfg) for m in cfg.metrics}
    total = (len(attacks) * len(cfg.eps) + len(explainers) * (1 + bool(metrics))
             + (headline_attack is not None) + cfg.checks + bool(cfg.certifier)
             + len(cfg.query_attacks)
             + len(attacks) * (len(cfg.defenses) + 1) * bool(cfg.defenses))
    robust_by_eps: dict[float, torch.Tensor] = {}
    with progress_bar(total, "audit", enabled=progress) as bar:
        for eps in cfg.eps:
            threat = ThreatModel(cfg.norm, eps, model.bounds)
            robust_all = torch.ones(len(x), dtype=torch.bool)
            worst_x = x.clone()
            for name, attack in attacks.items():
                ts = time.perf_counter()
                res = attack(model, x, y, threat=threat, seed=cfg.seed)
                robustness[name].append({
                    "eps": eps, "robust_accuracy": res.robust_accuracy(),
                    "success_rate": res.success_rate(),
                    "median_norm": float(res.norms.median()),
                    "seconds": time.perf_counter() - ts})
                broken = robust_all & ~res.adv_correct
                worst_x[broken] = res.x_adv[broken]
                robust_all &= res.adv_correct
                bar.advance(f"{name} eps={eps:g}")
            robustness["worst case"].append({"eps": eps,
                                             "robust_accuracy": float(robust_all.float().mean())})
            robust_by_eps[eps] = robust_all
            if eps == cfg.reference_eps:
                ref_adv = {"x_adv": worst_x, "robust": robust_all}

        used, strong = list(attacks), None
        if headline_attack is not None:
            # the strong attack only needs to try the samples the curve's attacks left robust
            robust = ref_adv["robust"]
            todo = robust.nonzero()[:, 0]
            ts = time.perf_counter()
            threat = ThreatModel(cfg.norm, cfg.reference_eps, model.bounds)
            res = headline_attack(model, x[todo], y[todo], threat=threat, seed=cfg.seed)
            broken = todo[~res.adv_correct]
            ref_adv["x_adv"][broken] = res.x_adv[~res.adv_correct]
            robust[broken] = False
            for row in robustness["worst case"]:
                if row["eps"] == cfg.reference_eps:
                    row["robust_accuracy"] = float(robust.float().mean())
            strong = {"name": cfg.headline_attack, "seconds": time.perf_counter() - ts,
                      "samples_attacked": len(todo),
                      "stages": res.meta.get("stages", [])}
            used.append(cfg.headline_attack)
            bar.advance(cfg.headline_attack)
        headline = {"attack": "worst case over " + ", ".join(used), "norm": cfg.norm,
                    "eps": cfg.reference_eps,
                    "robust_accuracy": float(ref_adv["robust"].float().mean()),
                    "strong_attack": strong,
                    "clean_accuracy": clean_acc}
        curves = {k: [(r["eps"], r["robust_accuracy"]) for r in v] for k, v in robustness.items()}
        matrix = None
        if cfg.defenses:
            rest = perm[cfg.n_samples:cfg.n_samples + 500]
            fit = (data.x[rest], data.y[rest]) if len(rest) >= 50 else (x, y)
            if len(rest) < 50:
                notes.append("too few rows left to fit the defenses on: they were fitted on the "
                             "attacked samples")
            matrix = game_matrix(model, x, y, attacks=tuple(attacks), defenses=cfg.defenses,
                                 threat=ThreatModel(cfg.norm, cfg.reference_eps, model.bounds),
                                 fit_data=fit, params=cfg.params, seed=cfg.seed,
                                 progress=bar.advance).to_dict()
        if matrix is not None:
            notes += [f"defense {d} was skipped: {why}" for d, why in matrix["skipped"].items()]
        queries: dict[str, dict[str, Any]] = {}
        for name in cfg.query_attacks:
            if registry.get(name, "attack").cls.tags.image_only and not data.is_image:
                notes.append(f"{name} needs images and was skipped on tabular data")
            else:
                queries[name] = _query_curve(model, x, y, name, cfg)
            bar.advance(f"{name} (queries)")
        query_fig = None
        if queries:
            query_fig = (Figure(
                "query_curves", "Black-box success against queries",
                f"Share of the correctly classified samples each black-box attack fooled within "
                f"a given number of queries per sample ({cfg.norm} eps={cfg.reference_eps:g}); "
                "it sees only the model's outputs.",
                *figures.robustness_curve({k: v["curve"] for k, v in queries.items()}, cfg.norm,
                                          "success rate against queries", xlabel="queries per "
                                          "sample", ylabel="success rate", logx=True)))
        certification = None
        if cfg.certifier:
            certification = _certify(model, x, y, cfg, robust_by_eps, notes)
            bar.advance(f"certify ({cfg.certifier})")
        flags: list[Flag] = []
        if cfg.checks:
            stages = strong["stages"] if strong else []
            from_stages = black_box_from_stages(
                stages, strong["samples_attacked"] if strong else 0, len(x),
                float(ref_adv["robust"].float().mean()), cfg.black_box or "") \
                if cfg.black_box else None
            flags = gradient_masking_checks(
                model, x, y, ThreatModel(cfg.norm, cfg.reference_eps, model.bounds),
                curves=curves, white_box_robust=ref_adv["robust"].clone(),
                black_box=None if from_stages else cfg.black_box,
                black_box_params=cfg.params.get(cfg.black_box or "", {}), seed=cfg.seed)
            if from_stages:
                flags.append(from_stages)
            if certification:
                ref = certification["rows"][-1]
                flags.append(check_certified(ref["certified_accuracy"], ref["robust_accuracy"],
                                             ref["eps"]))
            bar.advance("gradient-masking checks")
        figs = [Figure("robustness_curve", "Robust accuracy against eps",
                       f"Robust accuracy of each attack and of the per-sample worst case "
                       f"({cfg.norm}), on {len(x)} test samples.",
                       *figures.robustness_curve(curves, cfg.norm))]
        if query_fig is not None:
            figs.append(query_fig)

        # examples: correctly classified samples the worst case broke, then others
        x_adv = ref_adv["x_adv"]
        pred_adv = model.predict(x_adv)
        order = torch.argsort(((pred == y) & (pred_adv != y)).int(), descending=True, stable=True)
        ex = order[:cfg.n_examples]
        if data.is_image:
            figs.append(Figure(
                "adversarial_examples", f"Adversarial examples at eps={cfg.reference_eps:g}",
                "Top: clean input and prediction; middle: the worst-case adversarial input; "
                "bottom: the perturbation (red: brighter). Red titles are wrong predictions.",
                *figures.adversarial_examples(x[ex], x_adv[ex], y[ex], pred[ex], pred_adv[ex],
                                              data.classes,
                                              f"{cfg.norm} eps={cfg.reference_eps:g}")))
        explanations: dict[str, dict[str, Any]] = {}
        maps_clean, maps_adv = {}, {}
        for name, explainer in explainers.items():
            ts = time.perf_counter()
            data_kw = {"background": background} if "background" in explainer.call_data else {}
            try:
                e_clean = explainer(model, x[ex], y[ex], seed=cfg.seed, **data_kw)
            except InputError as e:  # e.g. Grad-CAM on a model without convolutions
                notes.append(f"{name} was skipped: {e}")
                bar.advance(name)
                continue
            e_adv = explainer(model, x_adv[ex], y[ex], seed=cfg.seed, **data_kw)
            info: dict[str, Any] = {"seconds": time.perf_counter() - ts,
                                    "paper": type(explainer).paper}
            if e_clean.delta is not None:
                base = e_clean.meta.get("baseline_output")
                span = (e_clean.outputs - base).abs() if base is not None else e_clean.outputs.abs()
                info["completeness_error"] = float((e_clean.delta.abs() / span.clamp_min(1e-12))
                                                   .mean())
            explanations[name] = info
            maps_clean[name], maps_adv[name] = e_clean.pixel_map(), e_adv.pixel_map()
            bar.advance(name)

        trust = _trust(model, data, idx, x, y, explainers, explanations, metrics, background,
                       cfg, notes, bar)

    if maps_clean and data.is_image:
        notes_by = {k: "\n".join(f"{_SHORT.get(m, m)} {v['value']:.2f}"
                                 + (" FLAG" if v.get("flag") else "")
                                 for m, v in trust.get(k, {}).items()) for k in maps_clean}
        figs.append(Figure(
            "gallery", "Gallery: explanations and whether to trust them",
            "Each column: one explainer's map of the true class over the input (red: evidence "
            "for, blue: against), titled with its trust scores on "
            f"{min(cfg.trust_samples, len(x))} samples: "
            + "; ".join(_METRIC_NOTES.get(m, m) for m in metrics) + ".",
            *figures.explanation_grid(x[ex], maps_clean, "explanations of the true class",
                                      [f"{data.classes[int(y[i])]}" for i in ex.tolist()],
                                      column_notes=notes_by, overlay=True)))
    if maps_clean and data.is_image:
        both_x = torch.stack([x[ex], x_adv[ex]], 1).flatten(0, 1)
        both = {k: torch.stack([maps_clean[k], maps_adv[k]], 1).flatten(0, 1) for k in maps_clean}
        labels = []
        for i in ex.tolist():
            labels += [f"clean: {data.classes[int(pred[i])]}",
                       f"adv: {data.classes[int(pred_adv[i])]}"]
        figs.append(Figure(
            "explanations", "Explanations of clean and adversarial inputs",
            "Each pair of rows: a clean input and its adversarial version, with the attribution "
            "maps of the true class (red: evidence for, blue: against).",
            *figures.explanation_grid(both_x, both, "attributions for the true class", labels)))
    elif maps_clean:
        figs.append(Figure(
            "feature_attributions", "Feature attributions",
            "Mean absolute attribution per feature on the example samples (clean).",
            *figures.feature_bars(maps_clean, data.feature_names or tuple(
                f"x{i}" for i in range(x.shape[1])), "top features")))

    comparison = None
    if robust_model is not None:
        more, comparison = _compare_robust(model, robust_model, data, x, y, ex, attacks, cfg,
                                           curves)
        figs += more
    methods = [{"name": m, "kind": k, "paper": registry.get(m, k).paper}
               for k, names in (("attack", used), ("explainer", explainers), ("metric", metrics),
                                ("defense", cfg.defenses)) for m in names]
    return AuditResult(model=model.name, dataset=data.name, n_samples=len(x),
                       clean_accuracy=clean_acc, robustness=robustness, headline=headline,
                       explanations=explanations, methods=methods, trust=trust, matrix=matrix,
                       comparison=comparison, certification=certification, queries=queries,
                       config=cfg,
                       figures=figs,
                       notes=notes, flags=flags, seconds=time.perf_counter() - t0)
