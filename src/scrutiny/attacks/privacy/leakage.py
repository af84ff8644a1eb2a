"""Gradient leakage: rebuild a client's private batch from the gradient it shares (DLG, iDLG)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch.func import functional_call

from scrutiny.attacks.privacy.base import PrivacyAttack
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.data_method import DataMethod, DataResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["DLG", "IDLG", "LeakageResult", "dlg", "idlg", "idlg_labels", "shared_gradient"]

_DLG = "Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019"
_IDLG = "Zhao, Mopuri, Bilen. iDLG: Improved Deep Leakage from Gradients. arXiv:2001.02610, 2020"


@dataclass(repr=False)
class LeakageResult(DataResult):
    """What a gradient-leakage attack rebuilt from one shared gradient.

    Attributes
    ----------
    x : torch.Tensor
        ``(B, *input_shape)`` the reconstructed inputs, clamped to the model's bounds; when
        the private batch is known, ``x[i]`` is the reconstruction matched to its sample
        ``i`` (the assignment of least total MSE), else in the attack's order.
    labels : torch.Tensor
        ``(B,)`` the recovered labels (``labels[i]`` belongs to ``x[i]``).
    mse : torch.Tensor or None
        ``(B,)`` the mean squared error of ``x[i]`` to the private input ``i`` (None when
        the batch was not given).
    label_accuracy : float or None
        The fraction of the private labels recovered, counted as multisets (order-free).
    gradient_loss : float
        The final gradient-matching loss: ``||g' - g||^2 / ||g||^2`` of the kept
        reconstruction (0: its gradient equals the shared one).
    history : list of float
        The lowest gradient-matching loss reached by each L-BFGS iteration of the kept
        restart (the run stops early below ``tol`` or when L-BFGS diverges).
    init_mse : torch.Tensor or None
        ``(B,)`` the MSE of the (clamped) dummy initialisation to the matched private input:
        the level the attack starts from.
    """

    x: torch.Tensor
    labels: torch.Tensor
    mse: torch.Tensor | None
    label_accuracy: float | None
    gradient_loss: float
    history: list[float] = field(default_factory=list)
    init_mse: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        return {"method": self.meta.get("method"), "batch_size": int(self.x.shape[0]),
                "labels": [int(v) for v in self.labels],
                "mse": None if self.mse is None else [float(v) for v in self.mse],
                "mean_mse": None if self.mse is None else float(self.mse.mean()),
                "init_mse": None if self.init_mse is None else float(self.init_mse.mean()),
                "label_accuracy": self.label_accuracy, "gradient_loss": self.gradient_loss,
                "iterations": len(self.history)}


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` to soft labels, averaged over the batch (equal to
    ``F.cross_entropy`` for one-hot labels)."""
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


def _gradient(model: TorchModel, params: dict[str, torch.Tensor], x: torch.Tensor,
              soft: torch.Tensor, *, create_graph: bool) -> tuple[torch.Tensor, ...]:
    """d(mean cross-entropy)/d(parameters) at ``params`` (detached copies of the model's
    parameters: the model's own stay frozen and get no ``.grad``)."""
    loss = _soft_ce(functional_call(model, params, (x,)), soft)
    return torch.autograd.grad(loss, tuple(params.values()), create_graph=create_graph)


def _param_copies(model: TorchModel) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}


def shared_gradient(model: Any, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """The gradient a federated-learning client shares for its batch ``(x, y)``: the mean
    cross-entropy's gradient with respect to every parameter of ``model`` (in the order of
    ``model.parameters()``), computed in eval mode without touching the model's
    parameters or their ``.grad``.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, d = pretrained("digits-mlp", progress=False), load_digits(split="test")
    >>> g = shared_gradient(model, d.x[:4], d.y[:4])
    >>> [tuple(t.shape) for t in g][-2:]
    [(10, 64), (10,)]
    """
    from scrutiny.models.wrapper import as_model

    tm = as_model(model)
    with tm.evaluating():
        k = _num_classes(tm, tuple(x.shape[1:]))
        soft = F.one_hot(y.long().to(tm.device), k).float()
        with torch.enable_grad():
            g = _gradient(tm, _param_copies(tm), x.to(tm.device), soft, create_graph=False)
    return [t.detach() for t in g]


def _num_classes(model: TorchModel, shape: tuple[int, ...]) -> int:
    if model.num_classes is None:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=model.device))
    return int(model.num_classes)


def idlg_labels(gradient: Sequence[torch.Tensor], num_classes: int, batch_size: int = 1
                ) -> torch.Tensor:
    """The labels iDLG reads off a shared gradient (Zhao et al. 2020).

    With cross-entropy and non-negative inputs to the last linear layer (after a ReLU or a
    sigmoid), row ``j`` of that layer's weight gradient is ``(p_j - y_j) * h``: negative
    for the true label only. The last parameter with ``num_classes`` rows and at least two
    dimensions is taken as that weight. For a batch (an extension; the paper treats one
    sample) the labels are those of the ``batch_size`` most negative rows, which is exact
    when the batch's labels are distinct (Yin et al. 2021); when fewer rows are negative,
    the negative rows' labels are repeated, most negative first.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, d = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> g = shared_gradient(model, d.x[:1], d.y[:1])
    >>> int(idlg_labels(g, 10)[0]) == int(d.y[0])
    True
    """
    weight = next((g for g in reversed(gradient) if g.dim() >= 2 and g.shape[0] == num_classes),
                  None)
    if weight is None:
        raise InputError(f"no parameter of the shared gradient has {num_classes} rows (the "
                         "last layer's weight); iDLG needs a linear last layer")
    rows = weight.detach().flatten(1).sum(1).cpu()
    order = rows.argsort()
    neg = order[rows[order] < 0]
    if len(neg) == 0:
        neg = order[:1]
    if len(neg) >= batch_size:
        return neg[:batch_size].clone()
    return neg[torch.arange(batch_size) % len(neg)].clone()


def _match(xr: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """``perm`` with ``xr[perm[i]]`` the reconstruction matched to ``x[i]`` (least total MSE)."""
    cost = ((x.flatten(1)[:, None] - xr.flatten(1)[None]) ** 2).mean(-1)
    rows, cols = linear_sum_assignment(cost.cpu().double().numpy())
    return cols[np.argsort(rows)]


def _multiset_accuracy(found: torch.Tensor, true: torch.Tensor) -> float:
    a, b = found.tolist(), true.tolist()
    hit = 0
    for v in a:
        if v in b:
            b.remove(v)
            hit += 1
    return hit / max(len(a), 1)


@register("privacy", "dlg", paper=_DLG, test_params={"iterations": 2, "max_iter": 4})
class DLG(PrivacyAttack):
    """Deep Leakage from Gradients: rebuild a training batch from its shared gradient.

    A federated-learning client sends the gradient ``g`` of its loss on a private batch
    ``(x, y)`` with respect to the model's parameters. DLG draws a dummy input ``x'``
    (Gaussian, from the seed) and a dummy label ``y'`` (a softmax over Gaussian logits),
    and moves both with L-BFGS to minimise the squared distance between their gradient and
    the shared one, ``||dL(x', y')/dW - g||^2``; at the minimum ``x'`` is the private input.
    Here the distance is divided by the constant ``||g||^2`` (the same minimiser; a trained
    model's gradients are tiny and L-BFGS's tolerances are absolute), the iterate of lowest
    loss is kept (L-BFGS without line search can diverge), and the best of ``restarts``
    random initialisations (by gradient loss, not by the unknown truth) is returned.

    The result holds the reconstruction (clamped to the model's bounds), the recovered
    labels (the dummy label's argmax), and, when the private batch is known, each sample's
    MSE to its matched reconstruction (the assignment of least total MSE for a batch).

    The paper attacks randomly initialised sigmoid networks (a model early in training),
    where one sample is rebuilt pixel-exact. So it is here on untrained digits networks
    (one test digit, 30 iterations: MSE < 1e-3 for the MLP and the CNN; a batch of 8:
    0.003 for the MLP after 100 iterations, 0.08 for the CNN after 30). On the zoo's
    trained ReLU networks it mostly fails (MSE 0.1 to 0.5, where a random other digit is
    at 0.15): the gradient of a sample the model fits nearly vanishes and the dummy is
    drawn to any input the model is sure of; DLG's label is then wrong too, while iDLG's
    stays exact.

    Call: ``attack(model, data, *, seed=0, gradient=None, batch_size=None,
    input_shape=None)``; ``data`` the private batch (its gradient is computed as a client
    would, the mean cross-entropy over the batch) or, with ``gradient`` (one tensor per
    ``model.parameters()``), the batch to score against (None: give ``batch_size`` and
    ``input_shape``).

    Parameters
    ----------
    iterations : int
        L-BFGS iterations (the paper's code runs 300).
    max_iter : int
        Function evaluations per L-BFGS iteration (torch's ``max_iter``; 20 as the paper's
        code).
    lr : float
        The L-BFGS step size (1 as the paper's code).
    line_search : bool
        Use a strong-Wolfe line search (off in the paper's code).
    init : {"gaussian", "uniform"}
        The dummy input's initialisation: standard normal (the paper) or uniform in the
        model's bounds.
    restarts : int
        Random initialisations; the one whose gradient matches best is kept.
    tol : float
        Stop a restart once the gradient-matching loss falls below this.

    References
    ----------
    .. [1] Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019.

    Examples
    --------
    >>> from scrutiny.base import seeded
    >>> from scrutiny.models import build
    >>> from scrutiny.data import load_digits
    >>> d = load_digits(split="test").subset(slice(0, 1))
    >>> with seeded(0):
    ...     net = build("mlp", (1, 8, 8), 10)          # an untrained client model
    >>> r = DLG(iterations=30)(net, d, seed=0)
    >>> bool(r.mse[0] < 0.01), r.label_accuracy
    (True, 1.0)
    """

    iterations: int = param(300, integer=True, positive=True)
    max_iter: int = param(20, integer=True, positive=True)
    lr: float = param(1.0, positive=True)
    line_search: bool = param(False, kind=bool)
    init: str = param("gaussian", choices=("gaussian", "uniform"))
    restarts: int = param(1, integer=True, positive=True)
    tol: float = param(1e-8, nonneg=True)

    #: Whether the labels are read off the gradient (iDLG) instead of optimised.
    analytic_labels: bool = False

    def __call__(self, model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
                 gradient: Sequence[torch.Tensor] | None = None, batch_size: int | None = None,
                 input_shape: Sequence[int] | None = None, **call: Any) -> LeakageResult:
        """Rebuild the private batch ``data`` (or the one behind ``gradient``) from its
        shared gradient."""
        if model is None:
            raise InputError(f"{type(self).__name__} needs the model the gradient belongs to")
        if data is None and gradient is None:
            raise InputError(f"{type(self).__name__} needs the private batch (data) or its "
                             "shared gradient (gradient=)")
        if data is not None and len(data) == 0:
            raise InputError(f"{type(self).__name__}: the private batch is empty")
        if data is None and (batch_size is None or input_shape is None):
            raise InputError(f"{type(self).__name__}: with gradient= and no data, give "
                             "batch_size= and input_shape=")
        return super().__call__(model, data, seed=seed, gradient=gradient,
                                batch_size=batch_size, input_shape=input_shape, **call)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             gradient: Sequence[torch.Tensor] | None = None, batch_size: int | None = None,
             input_shape: Sequence[int] | None = None) -> LeakageResult:
        dev = model.device
        if data is not None:
            if batch_size is not None and int(batch_size) != len(data):
                raise InputError(f"batch_size={batch_size} but the private batch holds "
                                 f"{len(data)} samples")
            batch_size, shape = len(data), tuple(data.x.shape[1:])
        else:
            if int(batch_size) < 1:
                raise InputError(f"batch_size must be >= 1, got {batch_size}")
            batch_size, shape = int(batch_size), tuple(int(s) for s in input_shape)
        k = _num_classes(model, shape)
        params = _param_copies(model)
        with torch.enable_grad():
            if gradient is None:
                soft = F.one_hot(data.y.long().to(dev), k).float()
                target = [g.detach() for g in _gradient(model, params, data.x.to(dev), soft,
                                                        create_graph=False)]
            else:
                target = self._check_gradient(params, gradient, dev)
        scale = float(sum((g.double() ** 2).sum() for g in target))
        if not scale > 0 or not np.isfinite(scale):
            raise InputError(f"the shared gradient has squared norm {scale}: nothing to match")
        labels = idlg_labels(target, k, batch_size).to(dev) if self.analytic_labels else None
        lo, hi = model.bounds
        best: tuple[float, torch.Tensor, torch.Tensor, list[float], torch.Tensor] | None = None
        with progress_bar(self.restarts * self.iterations, self.name) as bar, torch.enable_grad():
            for r in range(self.restarts):
                x0 = torch.randn((batch_size, *shape), device=dev) if self.init == "gaussian" \
                    else lo + (hi - lo) * torch.rand((batch_size, *shape), device=dev)
                logit0 = torch.randn((batch_size, k), device=dev)
                run = self._restart(model, params, target, scale, x0, logit0, labels, bar, r)
                if best is None or run[0] < best[0]:
                    best = (*run, x0)
        loss, xr, found, hist, x0 = best
        xr = xr.clamp(lo, hi).cpu()
        found = found.cpu()
        x0 = x0.clamp(lo, hi).cpu()
        mse = init_mse = acc = None
        if data is not None:
            perm = torch.as_tensor(_match(xr, data.x), dtype=torch.long)
            xr, found = xr[perm], found[perm]
            mse = ((xr - data.x) ** 2).flatten(1).mean(1)
            init_mse = ((x0[perm] - data.x) ** 2).flatten(1).mean(1)
            acc = _multiset_accuracy(found, data.y)
        return LeakageResult(x=xr, labels=found, mse=mse, label_accuracy=acc,
                             gradient_loss=loss, history=hist, init_mse=init_mse,
                             meta={"method": self.name, **self.get_params()})

    def _check_gradient(self, params: dict[str, torch.Tensor],
                        gradient: Sequence[torch.Tensor], dev: torch.device) -> list[torch.Tensor]:
        gradient = list(gradient)
        if len(gradient) != len(params):
            raise InputError(f"gradient holds {len(gradient)} tensors, the model has "
                             f"{len(params)} parameters")
        out = []
        for (name, p), g in zip(params.items(), gradient, strict=True):
            g = torch.as_tensor(g)
            if tuple(g.shape) != tuple(p.shape):
                raise InputError(f"gradient of {name} has shape {tuple(g.shape)}, the "
                                 f"parameter {tuple(p.shape)}")
            if not bool(torch.isfinite(g).all()):
                raise InputError(f"the gradient of {name} holds NaN or infinite values")
            out.append(g.detach().to(dev, p.dtype))
        return out

    def _restart(self, model: TorchModel, params: dict[str, torch.Tensor],
                 target: list[torch.Tensor], scale: float, x0: torch.Tensor,
                 logit0: torch.Tensor, labels: torch.Tensor | None, bar: Any, r: int
                 ) -> tuple[float, torch.Tensor, torch.Tensor, list[float]]:
        """One L-BFGS run from ``x0`` (and dummy label logits ``logit0`` unless ``labels``):
        the lowest gradient loss seen, its input and labels, the loss history."""
        k = logit0.shape[1]
        dx = x0.clone().requires_grad_(True)
        dl = logit0.clone().requires_grad_(labels is None)
        variables = [dx] if labels is not None else [dx, dl]
        fixed = None if labels is None else F.one_hot(labels, k).float()
        opt = torch.optim.LBFGS(variables, lr=self.lr, max_iter=self.max_iter,
                                line_search_fn="strong_wolfe" if self.line_search else None)
        best: list[Any] = [float("inf"), dx.detach().clone(), dl.detach().clone()]

        def closure() -> torch.Tensor:
            soft = fixed if fixed is not None else F.softmax(dl, dim=1)
            g = _gradient(model, params, dx, soft, create_graph=True)
            loss = sum(((a - b) ** 2).sum() for a, b in zip(g, target, strict=True)) / scale
            grads = torch.autograd.grad(loss, variables)
            for v, gv in zip(variables, grads, strict=True):
                v.grad = gv.contiguous()  # LBFGS views it flat (attention's may be strided)
            value = float(loss.detach())
            if value < best[0]:  # the iterate this loss belongs to (before the step)
                best[:] = [value, dx.detach().clone(), dl.detach().clone()]
            return loss.detach()

        hist: list[float] = []
        for i in range(self.iterations):
            bar.step(f"restart {r + 1} iteration {i + 1}" if self.restarts > 1
                     else f"iteration {i + 1}")
            value = float(opt.step(closure))
            bar.advance()
            hist.append(best[0])
            if not np.isfinite(value) or best[0] <= self.tol:
                break
        bar.advance(n=self.iterations - 1 - i)
        found = labels.clone() if labels is not None else best[2].argmax(1)
        return best[0], best[1], found, hist

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        return method(model, data.subset(slice(0, 2)), seed=seed)


@register("privacy", "idlg", paper=_IDLG, test_params={"iterations": 2, "max_iter": 4})
class IDLG(DLG):
    """iDLG: DLG with the label read off the shared gradient first.

    With cross-entropy, the gradient of the last linear layer's weight row ``j`` is
    ``(p_j - y_j) h`` for a sample with non-negative features ``h`` (after a ReLU or a
    sigmoid): the true label's row is the only negative one (:func:`idlg_labels`). iDLG
    reads the label off that sign, exactly, and then optimises only the dummy input with
    L-BFGS on the same squared gradient distance as :class:`DLG`, which converges more
    often than the joint search over input and label. The paper treats one sample; for a
    batch, the labels of the most negative rows are used (exact for distinct labels).

    Call: as :class:`DLG`.

    Parameters
    ----------
    iterations : int
        L-BFGS iterations (the paper's code runs 300).
    max_iter : int
        Function evaluations per L-BFGS iteration (torch's ``max_iter``; 20 as the paper's
        code).
    lr : float
        The L-BFGS step size (1 as the paper's code).
    line_search : bool
        Use a strong-Wolfe line search (off in the paper's code).
    init : {"gaussian", "uniform"}
        The dummy input's initialisation: standard normal (the paper) or uniform in the
        model's bounds.
    restarts : int
        Random initialisations; the one whose gradient matches best is kept.
    tol : float
        Stop a restart once the gradient-matching loss falls below this.

    References
    ----------
    .. [1] Zhao, Mopuri, Bilen. iDLG: Improved Deep Leakage from Gradients.
       arXiv:2001.02610, 2020.
    .. [2] Zhu, Liu, Han. Deep Leakage from Gradients. NeurIPS 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> d = load_digits(split="test").subset(slice(0, 1))
    >>> r = IDLG(iterations=1)(pretrained("digits-cnn", progress=False), d, seed=0)
    >>> r.label_accuracy
    1.0
    """

    analytic_labels = True


def dlg(model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
        gradient: Sequence[torch.Tensor] | None = None, **params: Any) -> LeakageResult:
    """Function form of :class:`DLG`: ``dlg(model, batch, iterations=100)``."""
    return DLG(**params)(model, data, seed=seed, gradient=gradient)


def idlg(model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
         gradient: Sequence[torch.Tensor] | None = None, **params: Any) -> LeakageResult:
    """Function form of :class:`IDLG`: ``idlg(model, batch, iterations=100)``."""
    return IDLG(**params)(model, data, seed=seed, gradient=gradient)
