"""Score-based attacks on zeroth-order gradient estimates: FD-FGSM, ZO-signSGD / ZO-AdaMM /
ZO-SVRG (``attack:zo``), NES and AutoZOOM."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from scrutiny.attacks.base import Attack, BlackBox, margin_loss_terms
from scrutiny.attacks.blackbox.estimators import (
    DISTRIBUTIONS,
    OPTIMIZERS,
    fd_gradient,
    make_optimizer,
    random_gradient,
    sample_directions,
)
from scrutiny.attacks.lp import steepest_direction
from scrutiny.errors import InputError
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel
from scrutiny.validation import check_positive

LOSSES = ("cw", "ce")


def score_loss(logp: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
               loss: str = "cw", kappa: float = 0.0) -> torch.Tensor:
    """Per-sample loss on log-probabilities that a score-based attack minimises.

    ``"cw"``: Chen et al.'s (ZOO) hinge on log-probabilities, untargeted
    ``max(log p_y - max_{j != y} log p_j, -kappa)``, targeted
    ``max(max_{j != t} log p_j - log p_t, -kappa)``; ``<= 0`` once the sample
    is fooled. ``"ce"``: ``log p_y`` (untargeted) or ``-log p_t`` (targeted).
    """
    if loss == "cw":
        return (-margin_loss_terms(logp, y, target, "margin")).clamp_min(-kappa)
    if loss == "ce":
        if target is None:
            return logp.gather(1, y[:, None])[:, 0]
        return -logp.gather(1, target[:, None])[:, 0]
    raise InputError(f"unknown loss {loss!r}; accepted: {', '.join(LOSSES)}")


def _fooled(logp: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    pred = logp.argmax(dim=1)
    return pred == target if target is not None else pred != y


def _even(name: str, value: int) -> None:
    if value % 2:
        raise InputError(f"{name} must be even (antithetic pairs), got {value!r}")


# ---------------------------------------------------------------- FD-FGSM
@register("attack", "fd_fgsm", paper="Chen, Zhang, Sharma, Yi, Hsieh. ZOO: zeroth order "
          "optimization based black-box attacks to deep neural networks without training "
          "substitute models. AISec 2017", test_params={})
class FDFGSM(Attack):
    """FGSM with the gradient estimated by coordinate-wise symmetric finite differences.

    ``g_i = (L(x + h e_i) - L(x - h e_i)) / 2h`` for every coordinate ``i``
    (Chen et al. 2017; ``2 d`` queries per sample, stacked into large
    forward passes), then one step ``x - eps * sign(g)`` (linf) or
    ``x - eps * g / ||g||_2`` (l2) that lowers the loss ``L`` (``log p_y``,
    i.e. raises the cross-entropy; targeted ``-log p_t``). Uses only scores.

    Parameters
    ----------
    h : float
        Finite-difference step (ZOO uses 1e-4).
    loss : {"ce", "cw"}
        The loss differentiated (see :func:`score_loss`).
    batch_size : int, optional
        Largest number of inputs per query call.

    Notes
    -----
    Samples the global budget cannot pay for (``2 d`` queries each) are left
    unchanged, with no query spent on them, and reported as cut short
    (``AttackResult.budget_exhausted``).

    References
    ----------
    .. [1] Chen, Zhang, Sharma, Yi, Hsieh. "ZOO: zeroth order optimization
       based black-box attacks to deep neural networks without training
       substitute models". AISec 2017.
    .. [2] Goodfellow, Shlens, Szegedy. "Explaining and harnessing
       adversarial examples". ICLR 2015.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = FDFGSM()(QueryModel(model, output="probs"), data.x[:32], data.y[:32],
    ...                threat=ThreatModel("linf", 0.2))
    >>> res.robust_accuracy() < res.clean_accuracy(), int(res.queries[0])
    (True, 128)
    """

    tags = Tags(white_box=False, output="probs", norms=("linf", "l2"), targeted=True)

    h: float = param(1e-4, positive=True)
    loss: str = param("ce", choices=LOSSES)
    batch_size: int | None = param(None, integer=True, positive=True)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        idx = box.fit(torch.arange(len(x), device=x.device), 2 * x[0].numel())
        out = x.clone()
        if not len(idx):
            return out

        def f(pts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            t = None if target is None else target[rows]
            return score_loss(box.log_probs(pts, rows), y[rows], t, self.loss)

        g = fd_gradient(f, x[idx], h=self.h, rows=idx, batch_size=self.batch_size)
        out[idx] = x[idx] - threat.eps * steepest_direction(g, threat.norm)
        return out


# ---------------------------------------------------------------- shared loop
class _ZOAttack(Attack):
    """Projected zeroth-order descent of a score loss, batched over samples and directions.

    Subclasses set the estimator and the update; every iteration costs each
    live sample the estimator's queries plus one query at the new point
    (success check, and ``f(x)`` of the next forward-difference estimate).
    A sample stops at its first success or when its next iteration would go
    past ``max_queries``.
    """

    tags = Tags(white_box=False, output="probs", norms=("linf", "l2"), targeted=True,
                stochastic=True)

    # set by subclasses
    dist: str = "sphere"
    antithetic: bool = False

    def _settings(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decoder(self, x: torch.Tensor, decoder: nn.Module | None = None):
        """(shape of the variable per sample, decoder variable -> perturbation)."""
        return tuple(x.shape[1:]), (lambda v: v)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, decoder: nn.Module | None = None
             ) -> tuple[torch.Tensor, dict]:
        s = self._settings()
        n = len(x)
        vshape, decode = self._decoder(x, decoder)
        if tuple(vshape) != tuple(x.shape[1:]):  # a reduced space: project the decoded point
            s["project_variable"] = False
        v = torch.zeros(n, *vshape, device=x.device, dtype=x.dtype)
        opt = make_optimizer(s["optimizer"], s["lr"])
        q, mu = s["q"], s["mu"]
        penalty = s.get("penalty", 0.0)
        svrg = s["optimizer"] == "svrg"
        q_snap = s.get("q_snapshot") or 10 * q
        per_est = 2 * q if self.antithetic else q
        idx_all = torch.arange(n, device=x.device)

        def point(vv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return threat.project(x[rows], x[rows] + decode(vv))

        def values(vv: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p = point(vv, rows)
            logp = box.log_probs(p, rows)
            t = None if target is None else target[rows]
            val = score_loss(logp, y[rows], t, self.loss, s.get("kappa", 0.0))
            if penalty:
                val = penalty * val + (p - x[rows]).flatten(1).pow(2).sum(1)
            return val, logp

        def f(vv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return values(vv, rows)[0]

        fx = torch.full((n,), float("inf"), device=x.device)
        best_val = torch.full((n,), float("inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        snap = torch.zeros_like(v)
        g_snap = torch.zeros_like(v)
        f_snap = torch.zeros(n, device=x.device)
        start = box.fit(idx_all)
        if len(start):
            val, logp = values(v[start], start)
            fx[start] = val
            best_val[start] = val
            done[start] = _fooled(logp, y[start], None if target is None else target[start])
        started = torch.zeros(n, dtype=torch.bool, device=x.device)
        started[start] = True
        it = 0
        with progress_bar(self.steps, self.name or "zo") as bar:
            for it in range(self.steps):
                snap_now = svrg and it % s.get("epoch_length", 10) == 0
                cost = (2 * q + 1 + (q_snap if snap_now else 0)) if svrg else per_est + 1
                live = box.fit(idx_all[started & ~done & (box.counts + cost <= self.max_queries)],
                               cost)
                if not len(live):
                    break
                if svrg:
                    if snap_now:
                        snap[live] = v[live]
                        f_snap[live] = fx[live]
                        g_snap[live], _ = random_gradient(
                            f, v[live], q=q_snap, mu=mu, dist=self.dist, fx=fx[live], rows=live,
                            batch_size=self.batch_size)
                    u = sample_directions(v[live], q, self.dist)
                    g_x, _ = random_gradient(f, v[live], mu=mu, dist=self.dist, fx=fx[live],
                                             directions=u, rows=live, batch_size=self.batch_size)
                    g_s, _ = random_gradient(f, snap[live], mu=mu, dist=self.dist,
                                             fx=f_snap[live], directions=u, rows=live,
                                             batch_size=self.batch_size)
                    g = g_x - g_s + g_snap[live]
                else:
                    g, _ = random_gradient(f, v[live], q=q, mu=mu, dist=self.dist,
                                           antithetic=self.antithetic, fx=fx[live], rows=live,
                                           batch_size=self.batch_size)
                v_new = self._update(opt, v[live], g, live, v, threat)
                if not math.isinf(threat.eps) and s.get("project_variable", True):
                    v_new = point(v_new, live) - x[live]
                v[live] = v_new
                val, logp = values(v_new, live)
                fx[live] = val
                t = None if target is None else target[live]
                hit = _fooled(logp, y[live], t)
                better = hit | (val < best_val[live])
                j = live[better]
                if len(j):
                    box.best[j] = point(v_new[better], j)
                    best_val[j] = val[better]
                done[live] = hit
                bar.advance(f"{int((~done).sum())} left")
        return box.best.clone(), {"iterations": it + 1}

    def _update(self, opt, v, g, live, v_full, threat):
        return opt.step(v, g, live, v_full)


@register("attack", "zo", paper="Liu, Chen, Chen, Hong. signSGD via zeroth-order oracle. ICLR "
          "2019; Chen et al. ZO-AdaMM: zeroth-order adaptive momentum method for black-box "
          "optimization. NeurIPS 2019; Liu, Kailkhura, Chen, Ting, Chang, Amini. Zeroth-order "
          "stochastic variance reduction for nonconvex optimization. NeurIPS 2018",
          test_params={"steps": 3, "n_samples": 2})
class ZO(_ZOAttack):
    """Projected zeroth-order optimisation of a score loss: ZO-signSGD, ZO-AdaMM or ZO-SVRG.

    Each step estimates the gradient of the loss (:func:`score_loss`, the
    C&W hinge on log-probabilities by default) from ``n_samples`` random
    directions (the papers' ``q``) on the unit sphere (forward differences,
    ``scale = d``), updates the perturbation with the chosen optimiser and
    projects it into the threat set:

    * ``"signsgd"``: ``x - lr * sign(g)`` (Liu et al. ICLR 2019);
    * ``"adam"``: ZO-AdaMM, AMSGrad moments (Chen et al. NeurIPS 2019);
    * ``"svrg"``: ZO-SVRG (Liu et al. NeurIPS 2018), a fine estimate with
      ``snapshot_samples`` directions every ``epoch_length`` steps and the
      control variate ``g(x; u) - g(x~; u) + g~`` in between;
    * ``"sgd"``: plain ZO-SGD.

    Parameters
    ----------
    optimizer : {"signsgd", "adam", "svrg", "sgd"}
        The zeroth-order optimiser: ZO-signSGD, ZO-AdaMM, ZO-SVRG or plain ZO-SGD.
    steps : int
        Iterations.
    lr : float
        Learning rate of the optimiser (input units; for signSGD the
        per-coordinate move).
    n_samples : int
        Random directions per estimate (the papers' ``q``).
    mu : float
        Smoothing radius of the estimate.
    epoch_length : int
        ZO-SVRG's epoch: steps between two snapshot estimates.
    snapshot_samples : int, optional
        Random directions of ZO-SVRG's snapshot estimate (default ``10 n_samples``).
    max_queries : int
        Per-sample query limit.
    loss : {"cw", "ce"}
        The loss minimised (see :func:`score_loss`).
    batch_size : int, optional
        Largest number of inputs per query call.

    Notes
    -----
    The papers' attack experiments minimise the penalised C&W objective
    ``c * loss + ||delta||_2^2`` (and ZO-SVRG a universal perturbation over
    several images); here the perturbation stays in the threat set by
    projection and each sample stops at its first success. For ZO-SVRG the
    finite sum whose variance is reduced is the average over random
    directions. ZO-AdaMM's projection is Euclidean (exact for linf).

    References
    ----------
    .. [1] Liu, Chen, Chen, Hong. "signSGD via zeroth-order oracle". ICLR 2019.
    .. [2] Chen, Liu, Xu, Li, Lin, Hong, Cox. "ZO-AdaMM: zeroth-order adaptive
       momentum method for black-box optimization". NeurIPS 2019.
    .. [3] Liu, Kailkhura, Chen, Ting, Chang, Amini. "Zeroth-order stochastic
       variance reduction for nonconvex optimization". NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> attack = ZO(optimizer="signsgd", steps=30, n_samples=10, lr=0.02)
    >>> res = attack(QueryModel(model, output="probs"), data.x[:32], data.y[:32],
    ...              threat=ThreatModel("linf", 0.2))
    >>> res.robust_accuracy() < res.clean_accuracy()
    True
    """

    optimizer: str = param("adam", choices=OPTIMIZERS)
    steps: int = param(100, integer=True, positive=True)
    lr: float = param(0.01, positive=True)
    n_samples: int = param(10, integer=True, positive=True)
    mu: float = param(0.005, positive=True)
    epoch_length: int = param(10, integer=True, positive=True)
    snapshot_samples: int | None = param(None, integer=True, positive=True)
    max_queries: int = param(10000, integer=True, positive=True)
    loss: str = param("cw", choices=LOSSES)
    batch_size: int | None = param(None, integer=True, positive=True)

    def _settings(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "lr": self.lr, "q": self.n_samples, "mu": self.mu,
                "epoch_length": self.epoch_length, "q_snapshot": self.snapshot_samples}


@register("attack", "nes", paper="Ilyas, Engstrom, Athalye, Lin. Black-box adversarial attacks "
          "with limited queries and information. ICML 2018",
          test_params={"steps": 3, "n_samples": 4})
class NES(_ZOAttack):
    """NES gradient estimation with antithetic Gaussian sampling and PGD steps (query-limited).

    ``g = 1 / (n sigma) * sum_j (L(x + sigma u_j) - L(x - sigma u_j)) / 2 * u_j``
    with ``n / 2`` antithetic pairs of Gaussian directions ``u_j`` (``n``
    queries), then a projected step against the loss: ``x - step_size * sign(g)``
    (linf) or ``x - step_size * g / ||g||_2`` (l2), with optional momentum on ``g``
    as in the paper's query-limited attack. The loss is the cross-entropy
    (``log p_y`` lowered; targeted, ``-log p_t``). Each iteration costs
    ``n_samples + 1`` queries per sample; a sample stops at its first success
    or at ``max_queries``.

    Parameters
    ----------
    steps : int
        Iterations.
    n_samples : int
        Queries per gradient estimate ``n`` (even: ``n / 2`` antithetic pairs);
        the paper uses 50.
    sigma : float
        Search variance (paper: 0.001 on images in [0, 1]).
    step_size : float
        Absolute step in input units (the paper's learning rate, 0.01).
    momentum : float
        Momentum on the estimate, in [0, 1); 0 disables it.
    max_queries : int
        Per-sample query limit (the paper's budget is 100000).
    loss : {"ce", "cw"}
        The loss minimised (see :func:`score_loss`).
    batch_size : int, optional
        Largest number of inputs per query call.

    References
    ----------
    .. [1] Ilyas, Engstrom, Athalye, Lin. "Black-box adversarial attacks with
       limited queries and information". ICML 2018.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> qm = QueryModel(model, output="probs", budget=32 * 500)
    >>> res = NES(steps=40, n_samples=10, step_size=0.02)(qm, data.x[:32], data.y[:32],
    ...                                                   threat=ThreatModel("linf", 0.2))
    >>> res.robust_accuracy() < res.clean_accuracy(), qm.queries <= 32 * 500
    (True, True)
    """

    dist = "gaussian"
    antithetic = True

    steps: int = param(1000, integer=True, positive=True)
    n_samples: int = param(50, integer=True, positive=True, check=_even)
    sigma: float = param(0.001, positive=True)
    step_size: float = param(0.01, positive=True)
    momentum: float = param(0.0, between=(0, 1), interval="[)")
    max_queries: int = param(100000, integer=True, positive=True)
    loss: str = param("ce", choices=LOSSES)
    batch_size: int | None = param(None, integer=True, positive=True)

    def _settings(self) -> dict[str, Any]:
        return {"optimizer": "sgd", "lr": self.step_size, "q": self.n_samples // 2,
                "mu": self.sigma}

    def _update(self, opt, v, g, live, v_full, threat):
        if self.momentum:
            m = opt._buf("momentum", v_full)
            m[live] = self.momentum * m[live] + (1 - self.momentum) * g
            g = m[live]
        return v - self.step_size * steepest_direction(g, threat.norm)


@register("attack", "autozoom", paper="Tu, Ting, Chen, Liu, Zhang, Yi, Hsieh, Cheng. AutoZOOM: "
          "autoencoder-based zeroth order optimization method for attacking black-box neural "
          "networks. AAAI 2019", test_params={"steps": 3})
class AutoZOOM(_ZOAttack):
    """AutoZOOM: random-direction estimates averaged over q, in a reduced attack space.

    The perturbation is ``delta = D(z)`` with ``z`` of side ``reduced`` and
    ``D`` bilinear upsampling to the image size (AutoZOOM-BiLIN; ``reduced=None``
    attacks the full space), or ``D`` the decoder of an autoencoder trained on
    unlabelled images of the task (AutoZOOM-AE): pass it at call time,
    ``attack(qm, x, y, threat=..., decoder=ae.decoder)``, e.g. from
    :func:`train_autoencoder`; ``z`` then has the shape of its latent code.
    Each step estimates the gradient of the penalised objective
    ``||delta||_2^2 + c * loss`` (the C&W hinge on log-probabilities) with
    respect to ``z`` by the random-direction estimator
    ``g = b / q * sum_j (f(z + beta u_j) - f(z)) / beta * u_j`` (``q =
    n_samples``, ``u_j``
    uniform on the unit sphere, ``b`` = dimension of ``z``, unbiased up to
    ``O(beta)``), then takes an Adam step and projects the point into the
    threat set. Each sample stops at its first success (AutoZOOM's first
    stage, whose query count the paper reports); each iteration costs
    ``n_samples + 1`` queries per sample.

    Parameters
    ----------
    steps : int
        Iterations.
    n_samples : int
        Random directions per estimate (the paper's ``q``: 1 until the first success).
    beta : float
        Smoothing radius of the estimate.
    lr : float
        Adam step size.
    c : float
        Weight of the attack loss against the distortion.
    reduced : int, optional
        Side of the reduced attack space (images only); None: no reduction.
    max_queries : int
        Per-sample query limit.
    batch_size : int, optional
        Largest number of inputs per query call.

    Notes
    -----
    Shortfalls: the second stage (raising q to reduce the distortion
    after the first success) is not run because the threat model fixes eps;
    ``c`` is fixed (no search).

    References
    ----------
    .. [1] Tu et al. "AutoZOOM: autoencoder-based zeroth order optimization
       method for attacking black-box neural networks". AAAI 2019.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = AutoZOOM(steps=100, reduced=4)(QueryModel(model, output="probs"), data.x[:32],
    ...                                       data.y[:32], threat=ThreatModel("l2", 2.0))
    >>> res.robust_accuracy() < res.clean_accuracy()
    True
    """

    tags = Tags(white_box=False, output="probs", norms=("l2", "linf"), targeted=True,
                stochastic=True)
    call_data = ("decoder",)

    steps: int = param(1000, integer=True, positive=True)
    n_samples: int = param(1, integer=True, positive=True)
    beta: float = param(0.005, positive=True)
    lr: float = param(0.05, positive=True)
    c: float = param(10.0, positive=True)
    reduced: int | None = param(None, integer=True, positive=True)
    max_queries: int = param(10000, integer=True, positive=True)
    batch_size: int | None = param(None, integer=True, positive=True)

    loss = "cw"

    def _settings(self) -> dict[str, Any]:
        return {"optimizer": "adam", "lr": self.lr, "q": self.n_samples, "mu": self.beta,
                "penalty": self.c, "project_variable": self.reduced is None}

    def _decoder(self, x: torch.Tensor, decoder: nn.Module | None = None):
        if decoder is not None:
            if self.reduced is not None:
                raise InputError("give either reduced= (bilinear) or decoder= (autoencoder), "
                                 "not both")
            latent = getattr(decoder, "latent_shape", None)
            if not isinstance(decoder, nn.Module) or latent is None:
                raise InputError("decoder must be an nn.Module with a latent_shape attribute, "
                                 "e.g. train_autoencoder(...).decoder")
            decoder = decoder.to(x.device).eval()
            with torch.no_grad():
                out = decoder(torch.zeros(1, *latent, device=x.device, dtype=x.dtype))
            if tuple(out.shape[1:]) != tuple(x.shape[1:]):
                raise InputError(f"the decoder maps to {tuple(out.shape[1:])}, the inputs are "
                                 f"{tuple(x.shape[1:])}")

            def decode(v: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return decoder(v)

            return tuple(latent), decode
        if self.reduced is None:
            return tuple(x.shape[1:]), (lambda v: v)
        if x.dim() != 4:
            raise InputError(f"reduced= needs images (N, C, H, W), got shape {tuple(x.shape)}")
        c, h, w = x.shape[1:]
        r = self.reduced
        if r > min(h, w):
            raise InputError(f"reduced={r} is larger than the image ({h}x{w})")
        return (c, r, r), (lambda v: F.interpolate(v, size=(h, w), mode="bilinear",
                                                   align_corners=False))


class _Decoder(nn.Sequential):
    latent_shape: tuple[int, ...]


@torch.no_grad()
def _fit(ae: nn.Module, x: torch.Tensor, epochs: int, lr: float, batch_size: int) -> float:
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch_size):
            with torch.enable_grad():
                loss = F.mse_loss(ae(x[idx]), x[idx])
                opt.zero_grad()
                loss.backward()
            opt.step()
    return float(loss)


def train_autoencoder(x: torch.Tensor, *, latent_channels: int = 4, epochs: int = 30,
                      lr: float = 3e-3, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A small convolutional autoencoder for AutoZOOM-AE, trained on unlabelled images.

    Encoder: two stride-2 convolutions (each halves height and width); decoder:
    two transposed convolutions back to the image size, so the attack space
    has ``latent_channels * H/4 * W/4`` dimensions (H, W divisible by 4).
    Trained by mean squared reconstruction error with Adam, seeded (torch's
    RNG forked, the caller's untouched). Returns an ``nn.Sequential(encoder,
    decoder)`` in eval mode whose ``decoder`` carries ``latent_shape``.

    References
    ----------
    .. [1] Tu et al. "AutoZOOM: autoencoder-based zeroth order optimization
       method for attacking black-box neural networks". AAAI 2019.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> ae = train_autoencoder(load_digits().x[:256], epochs=2)
    >>> ae.decoder.latent_shape
    (4, 2, 2)
    """
    from scrutiny.base import seeded

    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[2] % 4 or x.shape[3] % 4:
        raise InputError("train_autoencoder needs images (N, C, H, W) with H and W divisible by 4")
    check_positive("latent_channels", latent_channels, integer=True)
    check_positive("epochs", epochs, integer=True)
    c, h, w = x.shape[1:]
    with seeded(seed, x.device):
        encoder = nn.Sequential(nn.Conv2d(c, 16, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(16, latent_channels, 3, stride=2, padding=1))
        decoder = _Decoder(nn.ConvTranspose2d(latent_channels, 16, 4, stride=2, padding=1),
                           nn.ReLU(), nn.ConvTranspose2d(16, c, 4, stride=2, padding=1))
        decoder.latent_shape = (latent_channels, h // 4, w // 4)
        ae = nn.Sequential()
        ae.add_module("encoder", encoder)
        ae.add_module("decoder", decoder)
        ae.to(x.device)
        ae.reconstruction_error = _fit(ae, x.detach(), epochs, lr, batch_size)
    return ae.eval()


__all__ = ["DISTRIBUTIONS", "FDFGSM", "NES", "ZO", "AutoZOOM", "score_loss", "train_autoencoder"]
