"""Gradient-masking checks: signs that a robustness number cannot be trusted.

Carlini et al. ("On evaluating adversarial robustness", 2019) and Athalye,
Carlini, Wagner (ICML 2018) list the symptoms of an evaluation fooled by
obfuscated gradients. Each function here tests one symptom and returns a
:class:`Flag`; :func:`gradient_masking_checks` runs them all, and every audit
shows the result. A raised flag does not prove masking; it says which number to
distrust and what to run instead (an adaptive attack: BPDA for
non-differentiable preprocessing, EOT for randomness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from scrutiny import registry
from scrutiny.base import grad_wrt, seeded
from scrutiny.models.adaptive import StraightThroughOps
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import ThreatModel
from scrutiny.validation import check_outputs


@dataclass
class Flag:
    """The outcome of one check.

    Attributes
    ----------
    check : str
        Short name of the symptom.
    flagged : bool
        True when the symptom is present.
    message : str
        What was measured and, when flagged, what it means and what to do.
    details : dict
        The numbers behind the message.
    """

    check: str
    flagged: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def check_gradients(model: TorchModel, x: torch.Tensor, y: torch.Tensor, *,
                    zero_tol: float = 1e-12, max_zero_share: float = 0.1) -> Flag:
    """Zero, NaN or vanishing input gradients of the loss (shattered or masked gradients)."""
    finite, norms = _gradient_shares(model, x, y)
    zero = finite & (norms <= zero_tol)
    share_zero, share_bad = float(zero.float().mean()), float((~finite).float().mean())
    flagged = share_bad > 0 or share_zero > max_zero_share
    msg = (f"input gradients: {share_zero:.0%} zero, {share_bad:.0%} NaN/inf, median norm "
           f"{float(norms.median()):.2e}")
    if flagged:
        msg += (". Gradient attacks get no signal, so their robust accuracy is an upper bound "
                "at best; evaluate with BPDA (scrutiny.defenses.adaptive, with "
                "scrutiny.models.adaptive.declare for a front end that is no scrutiny defense; "
                "the audit does both by itself) and a black-box attack.")
    return Flag("zero or non-finite gradients", flagged, msg,
                {"share_zero": share_zero, "share_non_finite": share_bad,
                 "median_norm": float(norms.median())})


def _gradient_shares(model: TorchModel, x: torch.Tensor, y: torch.Tensor, mode: Any = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the input gradient of the loss is finite; its norm (0 where not finite)."""
    with model.evaluating():
        xg = x.detach().clone().requires_grad_(True)
        if mode is not None:
            with mode:
                loss = F.cross_entropy(model(xg), y.to(x.device), reduction="sum")
        else:
            loss = F.cross_entropy(model(xg), y.to(x.device), reduction="sum")
        g = grad_wrt(loss, xg).flatten(1)
    finite = torch.isfinite(g).all(1)
    return finite, torch.where(finite, g.norm(dim=1), torch.zeros_like(g[:, 0]))


#: Target standard error of the true class's probability averaged over EOT draws: the
#: number of draws is the smallest with ``std / sqrt(draws) <= EOT_TOLERANCE`` for 90% of
#: the samples, within ``EOT_DRAWS``.
EOT_TOLERANCE = 0.025
EOT_DRAWS = (8, 32)


@dataclass
class ModelProbe:
    """What the audit measures of the model before any attack: randomness and masked gradients.

    Attributes
    ----------
    randomized : bool
        Two forward passes of the same batch differ: the model draws randomness.
    eot_samples : int
        Draws the attacks average over (EOT); 1 for a deterministic model.
    draw_accuracy : list of float
        Clean accuracy of each probe draw of a randomized model (empty otherwise).
    prob_std : float
        90th percentile over samples of the std over draws of the true class's probability.
    zero_gradient_share : float
        Share of samples whose input gradient of the loss is zero or not finite.
    masked : bool
        ``zero_gradient_share`` above 10%: gradient attacks get no signal.
    bpda_ops : dict of str to int
        The rounding ops BPDA made straight-through (:class:`StraightThroughOps`).
    bpda_zero_gradient_share : float or None
        The zero-gradient share through BPDA (None when not masked).
    """

    randomized: bool = False
    eot_samples: int = 1
    draw_accuracy: list[float] = field(default_factory=list)
    prob_std: float = 0.0
    zero_gradient_share: float = 0.0
    masked: bool = False
    bpda_ops: dict[str, int] = field(default_factory=dict)
    bpda_zero_gradient_share: float | None = None

    def flags(self) -> list[Flag]:
        """The probe's findings as checks for the report."""
        out = []
        if self.randomized:
            accs = torch.tensor(self.draw_accuracy)
            out.append(Flag(
                "randomized model", True,
                f"two forward passes of the same inputs differ: the model draws randomness. "
                f"Clean accuracy over {len(accs)} draws: mean {float(accs.mean()):.1%}, spread "
                f"(std) {float(accs.std()):.1%}, range {float(accs.min()):.1%}-"
                f"{float(accs.max()):.1%}. Every white-box attack averaged its gradients over "
                f"{self.eot_samples} draws (EOT, chosen so the true class's probability has a "
                f"standard error <= {EOT_TOLERANCE:g}); each prediction is one draw, seeded by "
                "the audit's seed.",
                {"draw_accuracy": self.draw_accuracy, "eot_samples": self.eot_samples,
                 "prob_std": self.prob_std}))
        if self.masked:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.bpda_ops.items())) or "none"
            helped = self.bpda_zero_gradient_share is not None and \
                self.bpda_zero_gradient_share <= 0.1
            out.append(Flag(
                "masked gradients (probe)", True,
                f"the input gradient is zero or not finite for {self.zero_gradient_share:.0%} of "
                f"the clean samples. Every white-box attack ran with BPDA on the rounding ops "
                f"the model calls ({ops}); "
                + (f"through them {self.bpda_zero_gradient_share:.0%} of the gradients are zero"
                   if helped else "BPDA did not restore the gradients, so only the black-box "
                   "attack's numbers bound the robust accuracy")
                + "; the black-box attack ran at every eps.",
                {"zero_gradient_share": self.zero_gradient_share, "bpda_ops": self.bpda_ops,
                 "bpda_zero_gradient_share": self.bpda_zero_gradient_share}))
        return out


def probe_model(model: TorchModel, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0,
                draws: int = 16, zero_tol: float = 1e-12, max_zero_share: float = 0.1
                ) -> ModelProbe:
    """Is ``model`` randomized, and are its input gradients masked? (before any attack).

    Randomness: two forward passes of ``x`` in eval mode (seeded, so the probe
    is reproducible) that differ beyond float noise. A randomized model gets
    ``draws`` more passes: per-draw clean accuracy and the spread of the true
    class's probability, from which the EOT draws are chosen. Masking: the share
    of samples whose loss gradient is zero or not finite, and the same through
    :class:`StraightThroughOps` (BPDA on the rounding ops the forward calls).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> d = load_digits(split="test")
    >>> p = probe_model(pretrained("digits-cnn", progress=False), d.x[:32], d.y[:32])
    >>> p.randomized, p.masked, p.flags()
    (False, False, [])
    """
    out = ModelProbe()
    if not len(x):
        return out
    dev = model.device
    xd, yd = x.to(dev), y.to(dev)
    with model.evaluating(), seeded(seed, dev), torch.no_grad():
        a = check_outputs(model(xd), len(xd))
        b = model(xd)
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            logits = torch.stack([a, b] + [model(xd) for _ in range(draws - 2)])
            p = logits.softmax(-1).gather(2, yd.view(1, -1, 1).expand(len(logits), -1, 1))[..., 0]
            std = float(p.std(0).quantile(0.9))
            need = int(torch.ceil(torch.tensor((std / EOT_TOLERANCE) ** 2)))
            out.randomized = True
            out.prob_std = std
            out.eot_samples = min(max(need, EOT_DRAWS[0]), EOT_DRAWS[1])
            out.draw_accuracy = [float(v) for v in (logits.argmax(-1) == yd).float().mean(1)]
    with seeded(seed, dev):
        finite, norms = _gradient_shares(model, x, y)
    zero = ~finite | (norms <= zero_tol)
    out.zero_gradient_share = float(zero.float().mean())
    out.masked = out.zero_gradient_share > max_zero_share
    if out.masked:
        mode = StraightThroughOps()
        with seeded(seed, dev):
            finite, norms = _gradient_shares(model, x, y, mode)
        out.bpda_ops = dict(mode.calls)
        out.bpda_zero_gradient_share = float((~finite | (norms <= zero_tol)).float().mean())
    return out


def check_monotone(curves: dict[str, list[tuple[float, float]]], n: int) -> Flag:
    """Robust accuracy must not rise with eps (a larger ball contains the smaller one)."""
    tol = 1.0 / max(n, 1) + 1e-9
    bad = []
    for name, pts in curves.items():
        pts = sorted(pts)
        for (e0, a0), (e1, a1) in zip(pts, pts[1:], strict=False):
            if a1 > a0 + tol:
                bad.append({"attack": name, "eps": (e0, e1), "robust_accuracy": (a0, a1)})
    msg = "robust accuracy is non-increasing in eps for every attack"
    if bad:
        msg = ("robust accuracy RISES with eps for " + ", ".join(sorted({b["attack"] for b in bad}))
               + ": the attack fails to find points it found in a smaller ball, a sign of a "
               "weak or masked attack (more steps, restarts, or an adaptive attack).")
    return Flag("success not monotone in eps", bool(bad), msg, {"violations": bad})


def unbounded_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    """A radius whose ball holds the whole input box, so any input is reachable."""
    span = threat.bounds[1] - threat.bounds[0]
    d = x[0].numel()
    return {"linf": span, "l2": span * d ** 0.5, "l1": span * d}[threat.norm]


def check_unbounded(model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                    steps: int = 50, min_success: float = 0.95, seed: int = 0) -> Flag:
    """An attack with an unbounded budget must succeed on (almost) every sample."""
    from scrutiny.attacks import PGD

    threat = threat.resolve(model.bounds)  # the model's bounds (it owns them)
    big = ThreatModel(threat.norm, unbounded_eps(threat, x), threat.bounds)
    res = PGD(steps=steps)(model, x, y, threat=big, seed=seed)
    rate = float(res.success[res.clean_correct].float().mean()) if res.clean_correct.any() else 1.0
    flagged = rate < min_success
    msg = f"PGD with an unbounded budget ({threat.norm} eps={big.eps:g}) succeeds on {rate:.0%}"
    if flagged:
        msg += (" of the correctly classified samples, not ~100%: gradients do not lead the "
                "attack anywhere, so bounded robust accuracies are not trustworthy.")
    return Flag("unbounded attack below 100%", flagged, msg, {"success_rate": rate, "eps": big.eps})


def check_seed_variance(model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                        seeds: tuple[int, ...] = (0, 1, 2), steps: int = 20,
                        max_spread: float = 0.1) -> Flag:
    """Robust accuracy of PGD over random starts with different seeds should agree."""
    from scrutiny.attacks import PGD

    accs = [PGD(steps=steps)(model, x, y, threat=threat, seed=s).robust_accuracy() for s in seeds]
    spread = max(accs) - min(accs)
    flagged = spread > max(max_spread, 3.0 / len(x))
    msg = (f"PGD robust accuracy over seeds {list(seeds)}: "
           + ", ".join(f"{a:.1%}" for a in accs))
    if flagged:
        msg += (f"; a spread of {spread:.1%} means the loss surface is noisy or randomized: "
                "use EOT and several restarts, report the worst case.")
    return Flag("large variance across seeds", flagged, msg, {"robust_accuracy": accs})


def check_black_box(model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                    white_box_robust: torch.Tensor, *, attack: str = "square",
                    params: dict[str, Any] | None = None, seed: int = 0) -> Flag | None:
    """A black-box attack must not beat the white-box ones (it sees strictly less).

    ``white_box_robust`` is the per-sample worst case of the white-box attacks
    (:attr:`~scrutiny.types.AttackResult.robust` of each, so clean errors are
    False). Returns None when the black-box attack is not registered.
    """
    spec = f"attack:{attack}"
    if spec not in registry.list_methods("attack") or (
            registry.get(spec).cls.tags.image_only and x.dim() != 4):
        return None
    todo = white_box_robust.nonzero()[:, 0]
    extra = 0
    if len(todo):  # only the samples every white-box attack left robust
        res = registry.create(spec, **(params or {}))(model, x[todo], y[todo], threat=threat,
                                                      seed=seed)
        extra = int((~res.robust).sum())
    wb = float(white_box_robust.float().mean())
    bb = wb - extra / len(x)
    flagged = extra / len(x) > max(0.02, 1.0 / len(x))
    msg = (f"{attack} (black-box) broke {extra} of the {len(todo)} samples the white-box attacks "
           f"left robust (robust accuracy {wb:.1%} -> {bb:.1%})")
    if flagged:
        msg += (": gradients mislead the white-box attacks (gradient masking); trust the lower "
                "number and run an adaptive attack.")
    return Flag("black-box beats white-box", flagged, msg,
                {"black_box_extra_broken": extra, "white_box": wb, "combined": bb})


def black_box_from_stages(stages: list[dict[str, Any]], attacked: int, n: int,
                          final_robust: float, attack: str = "square") -> Flag | None:
    """The "black-box beats white-box" check read off a worst-case ensemble's stages.

    When the ensemble's last stages include the black-box ``attack`` after its
    white-box stages, the samples it broke are exactly those the white-box
    stages left robust; no second run is needed. ``stages`` hold each stage's
    robust accuracy over the ``attacked`` samples; ``final_robust`` is the
    robust accuracy over all ``n`` samples after every stage.
    """
    # a stage's name is the registered name, with its non-default parameters in parentheses
    names = [st["name"].split("(")[0].strip() for st in stages]
    if attack not in names or names.index(attack) == 0:
        return None
    i = names.index(attack)
    before, after = stages[i - 1]["robust_accuracy"], stages[i]["robust_accuracy"]
    extra = round((before - after) * attacked)
    flagged = extra / n > max(0.02, 1.0 / n)
    msg = (f"{attack} (black-box, last stage of the worst-case ensemble) broke {extra} of the "
           f"{round(before * attacked)} samples the white-box stages left robust")
    if flagged:
        msg += (": gradients mislead the white-box attacks (gradient masking); trust the lower "
                "number and run an adaptive attack.")
    return Flag("black-box beats white-box", flagged, msg,
                {"black_box_extra_broken": extra, "white_box": final_robust + extra / n,
                 "combined": final_robust})


def check_certified(certified_accuracy: float, robust_accuracy: float, eps: float,
                    broken: list[int] | None = None) -> Flag:
    """A certificate on a sample an attack broke is impossible: a bug somewhere.

    ``broken``: the samples (indices) certified that an attack broke, when the
    per-sample results are known (the audit's certification section); a single
    one is flagged, even where the certified accuracy stays below the robust
    accuracy. Without it, a certified accuracy above the robust accuracy on the
    same samples is flagged (it implies such a sample).

    Examples
    --------
    >>> check_certified(0.5, 0.75, 0.1).flagged, check_certified(0.5, 0.75, 0.1, [3]).flagged
    (False, True)
    """
    bad = list(broken or [])
    flagged = bool(bad) or certified_accuracy > robust_accuracy + 1e-9
    msg = (f"certified accuracy {certified_accuracy:.1%} vs empirical robust accuracy "
           f"{robust_accuracy:.1%} at eps={eps:g}")
    if broken is not None:
        msg += f"; {len(bad)} sample(s) certified that an attack broke"
    if flagged:
        msg += (": a certificate on a sample an attack broke is a contradiction — the bound or "
                "the attack evaluation is wrong"
                + (f" (samples {bad[:10]}{', ...' if len(bad) > 10 else ''})" if bad else "")
                + ".")
    return Flag("certified above empirical", flagged, msg,
                {"certified": certified_accuracy, "robust": robust_accuracy, "eps": eps,
                 "certified_broken": bad})


def gradient_masking_checks(model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                            threat: ThreatModel, *,
                            curves: dict[str, list[tuple[float, float]]] | None = None,
                            white_box_robust: torch.Tensor | None = None,
                            black_box: str | None = "square",
                            black_box_params: dict[str, Any] | None = None,
                            certified: float | None = None, seed: int = 0) -> list[Flag]:
    """Run every check; ``threat`` is the reference threat model of the evaluation.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> d = load_digits(split="test")
    >>> flags = gradient_masking_checks(pretrained("digits-cnn", progress=False), d.x[:32],
    ...                                 d.y[:32], ThreatModel("linf", 0.1), black_box=None)
    >>> [f.check for f in flags if f.flagged]
    []
    """
    from scrutiny.models.wrapper import as_model

    model = as_model(model, threat.bounds)
    flags = [check_gradients(model, x, y), check_unbounded(model, x, y, threat, seed=seed),
             check_seed_variance(model, x, y, threat)]
    if curves:
        flags.append(check_monotone(curves, len(x)))
    if black_box and white_box_robust is not None:
        f = check_black_box(model, x, y, threat, white_box_robust, attack=black_box,
                            params=black_box_params, seed=seed)
        if f is not None:
            flags.append(f)
    if certified is not None and white_box_robust is not None:
        flags.append(check_certified(certified, float(white_box_robust.float().mean()),
                                     threat.eps))
    return flags
