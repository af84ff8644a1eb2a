"""DeepFool (Moosavi-Dezfooli et al.): iterative linearisation of the decision boundary."""

from __future__ import annotations

import math

import torch

from scrutiny.attacks.base import Attack
from scrutiny.base import grad_wrt
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def candidate_gradients(model: TorchModel, x: torch.Tensor, classes: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` of ``x`` and gradients ``(N, k, *x.shape[1:])`` of the logits ``classes``.

    One forward pass and one backward pass per candidate class (retaining the
    graph), chosen by timing: on the digits CNN (450 samples, 10 candidates,
    one CPU thread) it took 0.36 s per call, against 0.93 s for one backward
    of the batch replicated ``k`` times and 0.70 s for
    ``torch.func.vmap(jacrev(...))`` (which computes all ``K`` rows).
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    k = classes.shape[1]
    grads = []
    for j in range(k):
        z = logits.gather(1, classes[:, j:j + 1])[:, 0]
        if j < k - 1:
            if not z.requires_grad:
                grad_wrt(z, x)  # raises the clear NotDifferentiableError
            (g,) = torch.autograd.grad(z.sum(), x, retain_graph=True)
        else:
            g = grad_wrt(z, x)
        grads.append(g)
    return logits.detach(), torch.stack(grads, dim=1)


@register("attack", "deepfool", paper="Moosavi-Dezfooli, Fawzi, Frossard. DeepFool: a simple and "
          "accurate method to fool deep neural networks. CVPR 2016",
          test_params={"steps": 5, "candidates": 3})
class DeepFool(Attack):
    """DeepFool: the minimal perturbation to the linearised nearest decision boundary.

    At each step the classifier is linearised around the current point ``x_i``:
    with ``w_k = grad f_k(x_i) - grad f_y(x_i)`` and ``f'_k = f_k(x_i) - f_y(x_i)``
    for the candidate classes ``k != y``, the closest linearised boundary is
    ``l = argmin_k |f'_k| / ||w_k||_q`` and the step is the minimal one onto it,

    ``r_i = |f'_l| / ||w_l||_q^q * |w_l|^(q-1) * sign(w_l)``,

    ``q = p / (p - 1)`` the dual exponent: for l2 (``q = 2``)
    ``r_i = |f'_l| w_l / ||w_l||_2^2``; for linf (``q = 1``)
    ``r_i = |f'_l| sign(w_l) / ||w_l||_1``. The steps add up to ``r``, and the
    iterate is ``x_{i+1} = clip(x + (1 + overshoot) r)`` until the label changes
    or ``steps`` steps are done; the output is ``x + (1 + overshoot) r``,
    as in the paper. With two classes this is the paper's binary algorithm
    (``r = -f(x) w / ||w||_2^2`` for ``f = f_1 - f_0``). For an affine
    classifier the first step is already the exact minimal perturbation.

    Inputs have bounds, which the paper does not consider: the iterate is
    clipped to ``[lo, hi]`` and, in the linearisation, a coordinate already on
    a bound is frozen where the step would push it out (its component of
    ``w_k`` set to 0), so the step is the minimal one over the coordinates
    that can still move. Without this, clipping undoes the steps and only
    86% of the digits test set is fooled (100% with it). In the interior of
    the box this is exactly the paper's algorithm.

    The norm is the threat model's (``"l2"`` or ``"linf"``). Candidates are
    the true class and the ``candidates - 1`` other classes with the highest
    clean logits (the paper's reference uses the top 10). Samples are batched,
    each stops when its label changes; already misclassified inputs are
    returned unchanged. A minimum-norm attack: use ``ThreatModel(norm,
    float("inf"))``; with a finite eps the result is projected onto the eps-ball,
    so success means success within eps. Pixels outside a threat mask are kept
    fixed (gradients are masked, so the linearisation stays exact).

    Parameters
    ----------
    candidates : int
        Number of classes considered (the true class included, so at least 2).
    overshoot : float
        The total perturbation is multiplied by ``1 + overshoot`` to cross the boundary.
    steps : int
        Maximum number of linearisation steps.

    References
    ----------
    .. [1] Moosavi-Dezfooli, Fawzi, Frossard. "DeepFool: a simple and accurate
       method to fool deep neural networks". CVPR 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = DeepFool()(model, data.x[:64], data.y[:64], threat=ThreatModel("l2", float("inf")))
    >>> res.success_rate() > 0.95
    True
    """

    tags = Tags(norms=("l2", "linf"), minimum_norm=True)

    candidates: int = param(10, integer=True, between=(2, math.inf), interval="[)")
    overshoot: float = param(0.02, nonneg=True)
    steps: int = param(50, integer=True, positive=True)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        lo, hi = threat.bounds
        mask = threat.mask_for(x)
        with torch.no_grad():
            clean = model(x)
        k = min(self.candidates, clean.shape[1])
        others = clean.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        classes = torch.cat([y[:, None], others], dim=1)
        r_tot = torch.zeros_like(x)
        active = clean.argmax(dim=1) == y
        scale = 1 + self.overshoot
        for it in range(self.steps + 1):
            idx = active.nonzero()[:, 0]
            if not len(idx):
                break
            xi = (x[idx] + scale * r_tot[idx]).clamp(lo, hi)
            logits, grads = candidate_gradients(model, xi, classes[idx])
            still = logits.argmax(dim=1) == y[idx]
            active[idx] = still
            if not still.any() or it == self.steps:
                break
            idx, logits, grads = idx[still], logits[still], grads[still]
            cls = classes[idx]
            z = logits.gather(1, cls)
            f = z[:, 1:] - z[:, :1]                        # (n, k-1), < 0 while label is y
            w = grads[:, 1:] - grads[:, :1]                # (n, k-1, ...)
            if mask is not None:
                w = w * mask
            # box: a coordinate sitting on a bound cannot move further out of it
            xs = xi[still][:, None]
            w = w.masked_fill(((xs <= lo) & (w < 0)) | ((xs >= hi) & (w > 0)), 0.0)
            wf = w.flatten(2)
            q_norm = wf.norm(p=2, dim=2) if threat.norm == "l2" else wf.abs().sum(dim=2)
            dist = f.abs() / q_norm.clamp_min(1e-12)
            best = dist.argmin(dim=1)
            rows = torch.arange(len(idx), device=x.device)
            wl = w[rows, best]
            fl = f[rows, best].abs()
            if threat.norm == "l2":
                step = _view(fl / q_norm[rows, best].pow(2).clamp_min(1e-24), wl) * wl
            else:
                step = _view(fl / q_norm[rows, best].clamp_min(1e-12), wl) * wl.sign()
            r_tot[idx] += step
        return x + scale * r_tot
