"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum, CE and DLR losses;
l1-APGD (Croce & Hein 2021): sparse steps and the exact projection onto the l1-ball and box."""

from __future__ import annotations

import math

import torch

from scrutiny.attacks.base import Attack, margin_loss_terms, warn_if_masked
from scrutiny.attacks.lp import random_start, steepest_direction
from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

LOSSES = ("ce", "dlr")
PAPER = ("Croce, Hein. Reliable evaluation of adversarial robustness with an ensemble of "
         "diverse parameter-free attacks. ICML 2020; Croce, Hein. Mind the box: l1-APGD for "
         "sparse adversarial attacks on image classifiers. ICML 2021 (norm l1)")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Difference of Logits Ratio loss per sample (to be maximised).

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted:
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...``
    the sorted logits (``1e-12`` is added to each denominator). Both are
    invariant to shifting and to positive rescaling of the logits. The
    untargeted form needs 3 classes; with exactly 3 classes the targeted form
    uses ``z_pi4 := z_pi3`` (the paper assumes at least 4).

    Examples
    --------
    >>> z = torch.tensor([[3.0, 1.0, 0.5, -2.0]])
    >>> y = torch.tensor([0])
    >>> bool(torch.allclose(dlr_loss(z, y), dlr_loss(7 * z + 1, y)))
    True
    """
    k = logits.shape[1]
    if k < 3:
        raise InputError(f"the DLR loss needs at least 3 classes, the model has {k}; use loss='ce'")
    zs = logits.sort(dim=1, descending=True).values
    zy = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return -(zy - other) / (zs[:, 0] - zs[:, 2] + 1e-12)
    zt = logits.gather(1, target[:, None])[:, 0]
    z4 = zs[:, 3] if k >= 4 else zs[:, 2]
    return -(zy - zt) / (zs[:, 0] - (zs[:, 2] + z4) / 2 + 1e-12)


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` at which APGD may halve its step size.

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
    (Croce & Hein 2020, Sec. 3.2); ``w_0 = 0`` is included.

    Examples
    --------
    >>> apgd_checkpoints(100)
    [0, 22, 41, 57, 70, 80, 87, 93, 99]
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # round before ceil so that float noise (0.41000000000000003) does not add an iteration
    w = sorted({math.ceil(round(q * steps, 9)) for q in p if q <= 1})
    return [v for v in w if v <= steps]


def l1_sparse_direction(grad: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """l1-APGD's sparse step direction (Croce & Hein 2021, Sec. 4).

    Per sample, the ``k = ceil(fraction * d)`` coordinates of largest ``|grad|``
    (``d`` the input dimension; ties included, ``k >= 1``) get ``sign(grad)``,
    the others 0, and the result is divided by the number of non-zero entries,
    so a step ``eta * direction`` has l1 norm ``eta``.

    Examples
    --------
    >>> g = torch.tensor([[0.1, -3.0, 2.0, 0.5]])
    >>> l1_sparse_direction(g, torch.tensor([0.5]))
    tensor([[ 0.0000, -0.5000,  0.5000,  0.0000]])
    """
    flat = grad.reshape(len(grad), -1)
    d = flat.shape[1]
    k = (fraction.to(flat.dtype) * d).ceil().clamp(1, d).long()
    top = flat.abs().sort(dim=1, descending=True).values
    thresh = top.gather(1, (k - 1)[:, None])
    step = flat.sign() * (flat.abs() >= thresh)
    step = step / (step != 0).sum(dim=1, keepdim=True).clamp_min(1)
    return step.view_as(grad)


def _objective(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
               loss: str) -> torch.Tensor:
    if loss == "dlr":
        return dlr_loss(logits, y, target)
    return margin_loss_terms(logits, y, target, "ce")


def _retire(state: dict[str, torch.Tensor], idx: torch.Tensor, succ: torch.Tensor,
            out: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Early stop: write the broken samples' points to ``out``, mark them ``done``, drop
    their rows from every per-sample tensor of ``state``; return the remaining indices."""
    if succ.any():
        out[idx[succ]] = state["x"][succ]
        done[idx[succ]] = True
        keep = ~succ
        idx = idx[keep]
        for k in state:
            state[k] = state[k][keep]
    return idx


@register("attack", "apgd", paper=PAPER, test_params={"steps": 5})
class APGD(Attack):
    """Auto-PGD: PGD with momentum and a step size adapted from the loss's progress.

    Starting from a random point of the ball with step size ``eta = 2 * eps``,
    each iteration takes a steepest-ascent step ``z = P(x_k + eta * d(grad))``
    and moves with momentum ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k -
    x_{k-1}))`` (no momentum on the first step). At the checkpoints
    :func:`apgd_checkpoints` the step size is halved and the iterate restarted
    from the best point found, when (1) fewer than a fraction ``rho`` of the
    steps since the last checkpoint increased the loss, or (2) the step size was
    not halved at the last checkpoint and the best loss has not changed since.
    Per sample it keeps the best point (highest loss) and stops optimising a
    sample as soon as it is misclassified (or reaches the target); each restart
    attacks only the samples not yet broken.

    With ``targets=k > 0`` and no explicit ``target``, the attack is the
    targeted ensemble of AutoAttack's APGD-T: for each of the ``k`` classes
    with the highest clean logits other than ``y`` (in order), targeted APGD is
    run on the samples still correctly classified, and any misclassification
    counts as success. With an explicit ``target`` one targeted run is made
    and success means reaching it.

    Parameters
    ----------
    steps : int
        Iterations per run (the paper's ``N_iter``, 100).
    restarts : int
        Runs from new random starts; each attacks only the still-robust samples.
    loss : {"ce", "dlr"}
        Cross-entropy or the Difference of Logits Ratio (:func:`dlr_loss`).
        Targeted CE is the project's loss-difference form ``CE(y) - CE(t)``;
        targeted DLR is the paper's.
    targets : int
        Number of top classes attacked in turn by the targeted ensemble;
        0 runs the untargeted attack.
    rho : float
        Condition 1's fraction of loss-increasing steps (0.75).
    momentum : float
        Weight ``a`` of the new step against the previous one (0.75).
    random_start : bool
        Start from a uniformly random point of the ball (the paper's setting);
        False starts at the clean input, which makes the attack deterministic.

    Notes
    -----
    With ``norm="l1"`` the run is l1-APGD (Croce & Hein 2021), which replaces
    the dense step, the momentum and the halving schedule by the paper's
    sparse scheme for the effective threat set, the l1-ball intersected with
    the input box:

    - step ``z = P(x_k + eta * s_k)`` with ``s_k`` the sign of the gradient on
      its ``ceil(f * d)`` largest-magnitude coordinates, divided by their
      number (:func:`l1_sparse_direction`, so ``||eta * s_k||_1 = eta``), and
      ``P`` the exact projection onto the l1-ball and box
      (:func:`scrutiny.types.project_l1_box`); no momentum;
    - ``eta`` starts at ``eps`` and the fraction ``f`` at 0.2;
    - every ``max(1, int(0.04 * steps))`` iterations (the checkpoints),
      ``f`` becomes ``||x_best - x||_0 / (1.5 d)`` (the sparsity of the best
      point so far); if that sparsity fell below 0.95 times its value at the
      previous checkpoint, ``eta`` is reset to ``eps`` and the iterate restarts
      from the best point, otherwise ``eta`` is divided by 1.5; ``eta`` stays
      in ``[eps / 10, eps]``.

    ``rho`` and ``momentum`` apply to linf and l2 only.

    The random start is uniform in the ball (linf) or a random point of the
    ball (l2, l1) rather than the reference code's sampling. The paper's
    l1-AutoAttack variant that runs l1-APGD at ``3 eps``, ``2 eps`` then
    ``eps`` is not included.

    References
    ----------
    .. [1] Croce, Hein. "Reliable evaluation of adversarial robustness with an
       ensemble of diverse parameter-free attacks". ICML 2020.
    .. [2] Croce, Hein. "Mind the box: l1-APGD for sparse adversarial attacks
       on image classifiers". ICML 2021.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = APGD(steps=20)(model, data.x[:64], data.y[:64], threat=ThreatModel("linf", 0.1))
    >>> bool(res.robust_accuracy() < 0.5)
    True
    >>> l1 = APGD(steps=20)(model, data.x[:64], data.y[:64], threat=ThreatModel("l1", 2.0))
    >>> bool(l1.robust_accuracy() < l1.clean_accuracy())
    True
    """

    tags = Tags(norms=("linf", "l2", "l1"), targeted=True, stochastic=True)

    steps: int = param(100, integer=True, positive=True)
    restarts: int = param(1, integer=True, positive=True)
    loss: str = param("ce", choices=LOSSES)
    targets: int = param(0, integer=True, nonneg=True)
    rho: float = param(0.75, between=(0, 1), interval="(]")
    momentum: float = param(0.75, between=(0, 1), interval="(]")
    random_start: bool = param(True, kind=bool)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        if not math.isfinite(threat.eps):
            raise InputError("APGD needs a finite eps (its step size starts at 2 * eps); "
                             "use a minimum-norm attack such as attack:fmn for eps=inf")
        best = x.clone()
        broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if target is not None or self.targets == 0:
            runs = [target]
        else:
            with torch.no_grad():
                z = model(x).scatter(1, y[:, None], float("-inf"))
            order = z.argsort(dim=1, descending=True)
            runs = [order[:, j] for j in range(min(self.targets, z.shape[1] - 1))]
        for t in runs:
            for _ in range(self.restarts):
                idx = (~broken).nonzero()[:, 0]
                if not len(idx):
                    return best
                xa, ok = self._single_run(model, x[idx], y[idx], None if t is None else t[idx],
                                          threat, explicit=target is not None)
                best[idx] = xa
                broken[idx] = ok
        return best

    def _single_run(self, model: TorchModel, x0: torch.Tensor, y: torch.Tensor,
                    t: torch.Tensor | None, threat: ThreatModel, explicit: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run; returns (best point per sample, success per sample)."""
        if threat.norm == "l1":
            return self._single_run_l1(model, x0, y, t, threat, explicit)
        n, dev = len(x0), x0.device
        norm, a = threat.norm, self.momentum
        checkpoints = apgd_checkpoints(self.steps)
        out = x0.clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)

        def evaluate(xs: torch.Tensor, idx: torch.Tensor):
            xs = xs.detach().requires_grad_(True)
            logits = model(xs)
            tt = None if t is None else t[idx]
            obj = _objective(logits, y[idx], tt, self.loss)
            g = grad_wrt(obj, xs)
            warn_if_masked(g)
            pred = logits.detach().argmax(1)
            succ = pred == tt if explicit else pred != y[idx]
            return obj.detach(), g, succ

        idx = torch.arange(n, device=dev)
        x = random_start(x0, threat) if self.random_start else x0.clone()
        f, g, succ = evaluate(x, idx)
        # per-sample state, filtered together when samples are broken (early stop)
        s = {"x0": x0, "x": x, "x_prev": x, "f": f, "g": g, "best_f": f.clone(), "x_best": x,
             "g_best": g, "eta": torch.full((n,), 2 * threat.eps, device=dev, dtype=x0.dtype),
             "count": torch.zeros(n, device=dev), "up": torch.zeros(n, device=dev), "best_f_ckpt": f.clone(),
             "halved_ckpt": torch.zeros(n, dtype=torch.bool, device=dev)}

        idx = _retire(s, idx, succ, out, done)
        last_ckpt = 0
        for i in range(self.steps):
            if not len(idx):
                break
            x, x_prev, eta = s["x"], s["x_prev"], s["eta"].view(-1, *([1] * (x0.dim() - 1)))
            z = threat.project(s["x0"], x + eta * steepest_direction(s["g"], norm))
            if i > 0:
                z = threat.project(s["x0"], x + a * (z - x) + (1 - a) * (x - x_prev))
            f_new, g_new, succ = evaluate(z, idx)
            up = (f_new > s["f"]).float()
            s["x_prev"], s["x"], s["f"], s["g"] = x, z, f_new, g_new
            better = f_new > s["best_f"]
            s["best_f"] = torch.where(better, f_new, s["best_f"])
            bv = better.view(-1, *([1] * (x0.dim() - 1)))
            s["x_best"] = torch.where(bv, z, s["x_best"])
            s["g_best"] = torch.where(bv, g_new, s["g_best"])
            s["up"] = up
            idx = _retire(s, idx, succ, out, done)
            if i in checkpoints[1:] and len(idx):
                # condition 1 counts the steps w_{j-1} <= k < w_j, i.e. those before this one
                cond1 = s["count"] < self.rho * (i - last_ckpt)
                cond2 = ~s["halved_ckpt"] & (s["best_f"] <= s["best_f_ckpt"])
                halve = cond1 | cond2
                hv = halve.view(-1, *([1] * (x0.dim() - 1)))
                s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
                s["x"] = torch.where(hv, s["x_best"], s["x"])
                s["g"] = torch.where(hv, s["g_best"], s["g"])
                s["f"] = torch.where(halve, s["best_f"], s["f"])
                s["halved_ckpt"], s["best_f_ckpt"] = halve, s["best_f"].clone()
                s["count"] = torch.zeros_like(s["count"])
                last_ckpt = i
            s["count"] = s["count"] + s["up"]
        out[idx] = s["x_best"]
        return out, done

    def _single_run_l1(self, model: TorchModel, x0: torch.Tensor, y: torch.Tensor,
                       t: torch.Tensor | None, threat: ThreatModel, explicit: bool
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One l1-APGD run (Croce & Hein 2021); returns (best point, success) per sample."""
        n, dev, eps = len(x0), x0.device, threat.eps
        nd = x0[0].numel()
        every = max(1, int(0.04 * self.steps))
        out = x0.clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        view = (-1, *([1] * (x0.dim() - 1)))

        def evaluate(xs: torch.Tensor, idx: torch.Tensor):
            xs = xs.detach().requires_grad_(True)
            logits = model(xs)
            tt = None if t is None else t[idx]
            obj = _objective(logits, y[idx], tt, self.loss)
            g = grad_wrt(obj, xs)
            warn_if_masked(g)
            pred = logits.detach().argmax(1)
            succ = pred == tt if explicit else pred != y[idx]
            return obj.detach(), g, succ

        def l0(d: torch.Tensor) -> torch.Tensor:
            return (d.reshape(len(d), -1) != 0).sum(dim=1).to(x0.dtype)

        idx = torch.arange(n, device=dev)
        x = random_start(x0, threat) if self.random_start else x0.clone()
        f, g, succ = evaluate(x, idx)
        s = {"x0": x0, "x": x, "g": g, "best_f": f.clone(), "x_best": x, "g_best": g,
             "eta": torch.full((n,), eps, device=dev, dtype=x0.dtype),
             "frac": torch.full((n,), 0.2, device=dev, dtype=x0.dtype),
             "sp_old": torch.full((n,), float(nd), device=dev, dtype=x0.dtype)}

        idx = _retire(s, idx, succ, out, done)
        for i in range(self.steps):
            if not len(idx):
                break
            step = l1_sparse_direction(s["g"], s["frac"])
            z = threat.project(s["x0"], s["x"] + s["eta"].view(view) * step)
            f_new, g_new, succ = evaluate(z, idx)
            s["x"], s["g"] = z, g_new
            better = f_new > s["best_f"]
            bv = better.view(view)
            s["best_f"] = torch.where(better, f_new, s["best_f"])
            s["x_best"] = torch.where(bv, z, s["x_best"])
            s["g_best"] = torch.where(bv, g_new, s["g_best"])
            idx = _retire(s, idx, succ, out, done)
            if (i + 1) % every == 0 and len(idx):
                sp = l0(s["x_best"] - s["x0"])
                sparser = sp / s["sp_old"] < 0.95
                s["frac"] = sp / nd / 1.5
                s["eta"] = torch.where(sparser, torch.full_like(s["eta"], eps), s["eta"] / 1.5)
                s["eta"] = s["eta"].clamp(eps / 10, eps)
                s["sp_old"] = sp
                rv = sparser.view(view)
                s["x"] = torch.where(rv, s["x_best"], s["x"])
                s["g"] = torch.where(rv, s["g_best"], s["g"])
        out[idx] = s["x_best"]
        return out, done


@register("attack", "apgd_t", paper=PAPER, test_params={"steps": 5, "targets": 2})
class APGDT(APGD):
    """APGD-T: :class:`APGD` with AutoAttack's targeted-DLR defaults.

    The same class with ``loss="dlr"`` and ``targets=9``: targeted APGD-DLR
    towards each of the 9 classes with the highest clean logits (other than
    the true one) in turn, on the samples still correctly classified (fewer
    targets when the model has fewer classes). The untargeted goal is kept:
    a sample is broken by any misclassification.

    Parameters
    ----------
    steps : int
        Iterations per run (the paper's ``N_iter``, 100).
    restarts : int
        Runs from new random starts; each attacks only the still-robust samples.
    loss : {"ce", "dlr"}
        Cross-entropy or the Difference of Logits Ratio (:func:`dlr_loss`, the default).
    targets : int
        Number of top classes attacked in turn (9); 0 runs the untargeted attack.
    rho : float
        Condition 1's fraction of loss-increasing steps (0.75).
    momentum : float
        Weight ``a`` of the new step against the previous one (0.75).
    random_start : bool
        Start from a uniformly random point of the ball (the paper's setting).

    References
    ----------
    .. [1] Croce, Hein. "Reliable evaluation of adversarial robustness with an
       ensemble of diverse parameter-free attacks". ICML 2020.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = APGDT(steps=20, targets=3)(model, data.x[:64], data.y[:64],
    ...                                  threat=ThreatModel("linf", 0.1))
    >>> bool(res.robust_accuracy() < 0.5)
    True
    """

    loss: str = param("dlr", choices=LOSSES)
    targets: int = param(9, integer=True, nonneg=True)
