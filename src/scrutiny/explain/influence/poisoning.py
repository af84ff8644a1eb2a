"""Training-set attacks with influence functions (Koh & Liang, 2017, section 5.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.influence.influence import InfluenceSolver, last_linear
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["InfluencePoisoning", "PoisoningResult", "influence_poisoning"]


@dataclass
class PoisoningResult(LearnedResult):
    """What :class:`InfluencePoisoning` returns.

    Attributes
    ----------
    poisoned : ArrayDataset
        The training set with the changed inputs (a new dataset; the caller's is untouched).
    indices : torch.Tensor
        The training indices whose inputs were changed.
    predicted_increase : float
        The influence functions' prediction of the rise of the targets' mean loss after
        retraining on ``poisoned``: ``(1/n) sum_i [I_up,loss(z_i') - I_up,loss(z_i)]``.
    """

    poisoned: ArrayDataset
    indices: torch.Tensor
    predicted_increase: float


@register("learned", "influence_poisoning",
          paper="Koh, P. W. and Liang, P. Understanding Black-box Predictions via Influence "
                "Functions. ICML 2017",
          test_params={"points": 2, "steps": 2, "eps": 0.1})
class InfluencePoisoning(InfluenceSolver):
    """Perturb a few training inputs so that retraining raises target test points' loss.

    Koh & Liang's training-set attack (section 5.2): swapping training point ``z_i`` for
    ``z_i'`` (same label) changes the test loss after retraining by about
    ``(1/n) [I_up,loss(z_i', z_test) - I_up,loss(z_i, z_test)]``, whose input gradient is
    ``I_pert,loss(z_i', z_test) / n``. Each of ``steps`` signed-gradient steps (size
    ``step_size``) moves the chosen inputs up that gradient and projects them back into the
    ``eps`` linf ball around the originals and the model's input bounds. The points are
    the ``points`` most helpful training points for the targets (most negative summed
    ``I_up,loss``), or the caller's ``indices``. Unlike the paper, the model is not
    retrained between steps (scrutiny does not know how it was trained): every step uses
    the influence at the trained weights, so the prediction is a linearisation that a real
    retraining may miss by a factor (see docs/learned.md). Call:
    ``influence_poisoning(model, train, x_test=..., y_test=..., indices=None)``; the
    targets' mean loss is what rises.

    Parameters
    ----------
    eps : float
        Linf budget per changed input, in input units.
    steps : int
        Signed-gradient steps.
    step_size : float, optional
        Size of each step; None takes ``2.5 * eps / steps``.
    points : int
        How many training points to change (ignored when ``indices`` is given).
    solver : {"exact", "cg", "lissa"}
        How ``H^{-1} v`` is computed (see :class:`~scrutiny.explain.influence.Influence`).
    damping : float
        Added to the Hessian's diagonal.
    layers : tuple of str, optional
        Layer (module) or parameter names whose parameters are theta; None takes every
        parameter.
    l2 : float
        L2 strength of the training objective, ``(l2/2) ||theta||^2`` beside the mean loss.
    batch_size : int
        Training points per chunk of gradients and Hessian products.
    max_iter : int
        Conjugate-gradient iterations, or LiSSA recursion depth.
    tol : float
        Relative residual at which conjugate gradients stop.
    lissa_scale : float, optional
        LiSSA's scale; None takes twice the largest eigenvalue found by power iteration.
    lissa_repeats : int
        Independent LiSSA estimates averaged.

    References
    ----------
    .. [1] Koh, P. W. and Liang, P. Understanding Black-box Predictions via Influence
       Functions. ICML 2017, section 5.2.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits().subset(range(300)), load_digits(split="test")
    >>> r = InfluencePoisoning(layers=("classifier",), damping=0.01, eps=0.2, points=3)(
    ...     model, train, x_test=test.x[:1], y_test=test.y[:1])
    >>> len(r.indices), r.predicted_increase > 0
    (3, True)
    >>> changed = (r.poisoned.x - train.x).abs().amax(dim=(1, 2, 3))
    >>> bool(changed.max() <= 0.2 + 1e-6), int((changed > 0).sum()) <= 3
    (True, True)
    """

    eps: float = param(0.1, positive=True)
    steps: int = param(10, integer=True, positive=True)
    step_size: float | None = param(None, positive=True)
    points: int = param(5, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
             indices: Any = None, **call: Any) -> PoisoningResult:
        if call:
            raise InputError(f"unknown call arguments {sorted(call)}; InfluencePoisoning takes "
                             "x_test, y_test, indices")
        prob = self._problem(model, data)
        xt, yt = self._test_data(prob, data, x_test, y_test)
        if len(xt) == 0:
            raise InputError("InfluencePoisoning needs at least one target test point")
        meta: dict[str, Any] = {"method": "influence_poisoning", **self.get_params(),
                                "parameters": prob.size, "n_train": prob.n}
        # s = H^{-1} grad (mean target loss): I_up,loss(z, targets) = -s . grad L(z)
        s = self._inverse(prob, prob.grads(prob.features(xt), yt).mean(0, keepdim=True), meta)
        if indices is None:
            up = torch.cat([-(prob.grads(prob.x[sl], prob.y[sl]) @ s[0]) for sl in prob.chunks()])
            idx = torch.argsort(up, stable=True)[:min(self.points, prob.n)]
        else:
            idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
            if len(idx) == 0 or int(idx.min()) < -prob.n or int(idx.max()) >= prob.n:
                raise InputError(f"indices must be training indices in [0, {prob.n}), got "
                                 f"{idx.tolist()}")
            idx = torch.unique(idx % prob.n)
        idx = idx.to(prob.raw.device)
        x0, y0 = prob.raw[idx], prob.y[idx]
        lo, hi = model.bounds
        low = (x0 - self.eps).clamp(min=lo)
        high = (x0 + self.eps).clamp(max=hi)
        step = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

        def up_of(x: torch.Tensor) -> torch.Tensor:  # I_up,loss of each point at inputs x
            return -(prob.grads(prob.features(x), y0) @ s[0])

        before = up_of(x0)
        x = x0.clone()
        best, best_up = x0.clone(), before.clone()
        with progress_bar(self.steps, "influence poisoning") as bar:
            for k in range(self.steps):
                bar.step(f"step {k + 1}/{self.steps}")
                pert = -prob.input_grads(x, y0, s)[:, 0]  # I_pert,loss at the current inputs
                x = torch.minimum(torch.maximum(x + step * pert.sign(), low), high)
                now = up_of(x)
                better = now > best_up  # keep each point's best iterate
                best[better], best_up[better] = x[better], now[better]
                bar.advance()
        new_x = data.x.clone()
        new_x[idx.cpu()] = best.to(new_x.device, new_x.dtype)
        poisoned = ArrayDataset(x=new_x, y=data.y.clone(), classes=data.classes,
                                name=f"{data.name}+poison", masks=data.masks,
                                feature_names=data.feature_names)
        # the stored inputs are float32: predict from what was stored
        stored = prob.inputs(new_x[idx.cpu()])
        increase = float((up_of(stored) - before).sum()) / prob.n
        return PoisoningResult(poisoned=poisoned, indices=idx.cpu(), predicted_increase=increase,
                               meta=meta)

    @classmethod
    def common_call(cls, method: Learned, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> LearnedResult:
        """Poison 2 of the 20 tiny images against the first, over the last linear layer."""
        if method.layers is None:
            method = type(method)(**{**method.get_params(), "layers": (last_linear(model),)})
        return method(model, data, seed=seed, x_test=data.x[:1], y_test=data.y[:1])


def influence_poisoning(model: nn.Module, train: ArrayDataset, x_test: torch.Tensor,
                        y_test: torch.Tensor, *, indices: Any = None, seed: int | None = 0,
                        **hyperparameters: Any) -> PoisoningResult:
    """Function twin of :class:`InfluencePoisoning`: ``influence_poisoning(model, train,
    x_test, y_test, eps=..., layers=...)``."""
    return InfluencePoisoning(**hyperparameters)(model, train, seed=seed, x_test=x_test,
                                                 y_test=y_test, indices=indices)
