"""Poisoning support vector machines by gradient ascent (Biggio, Nelson, Laskov 2012)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from scrutiny.attacks.poisoning.base import Poisoning, PoisonResult
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.data_method import DataMethod, DataResult, check_dataset
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["SVMPoisoning", "SVMPoisonResult", "svm_poisoning"]

_PAPER = ("Biggio, Nelson, Laskov. Poisoning Attacks against Support Vector Machines. "
          "ICML 2012")

#: Tolerance of the SVC's solver: the gradient comes from the KKT conditions of the
#: solution, which a loose solver only meets approximately.
_SVC_TOL = 1e-7
#: ``alpha`` within this fraction of ``C`` of 0 or ``C`` is not a margin support vector.
_MARGIN_TOL = 1e-6


def _check_pair(name: str, value: Any) -> tuple[int, int]:
    if len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int | np.integer)
                              for v in value) or value[0] == value[1]:
        raise InputError(f"{name} must be two different labels (a, b), got {value!r}")
    return int(value[0]), int(value[1])


def _check_bounds(name: str, value: Any) -> tuple[float, float]:
    if len(value) != 2 or not all(isinstance(v, int | float) and np.isfinite(v) for v in value) \
            or not value[0] < value[1]:
        raise InputError(f"{name} must be (low, high) with low < high, got {value!r}")
    return float(value[0]), float(value[1])


@dataclass(repr=False)
class SVMPoisonResult(PoisonResult):
    """The outcome of the SVM poisoning attack.

    ``data`` is the two-class training set with the poison point appended (original labels;
    ``poisoned`` its index), ``model`` is None (the victim is ``poisoned_svc``),
    ``attack_success`` the poisoned SVM's test error and ``clean_accuracy`` its test accuracy
    (both None without ``test``).

    Attributes
    ----------
    poison : torch.Tensor
        The final attack point ``x_c``, shaped like one input of the data.
    poison_label : int
        Its label ``y_c`` (a label of the original data).
    path : torch.Tensor
        The attack point at each iteration, ``(iterations + 1, D)`` flattened, starting
        with the flipped training point the attack was initialised at.
    validation_error : list of float
        The validation error of the SVM trained with the attack point, at each point of
        ``path``.
    hinge_loss : list of float
        The mean validation hinge loss ``mean_k max(0, 1 - y_k f(x_k))`` the attack ascends,
        at each point of ``path``.
    clean_validation_error : float
        The validation error of the SVM trained on the clean data.
    clean_svc, poisoned_svc : sklearn.svm.SVC
        The SVMs fitted on the clean data and on the data with the final attack point
        (labels -1 for the first of ``classes``, +1 for the second).
    test_error_before, test_error_after : float or None
        Their error on the test data (None without ``test``).
    gamma : float
        The RBF kernel's ``gamma`` used (None for the linear kernel).
    """

    poison: torch.Tensor | None = None
    poison_label: int | None = None
    path: torch.Tensor | None = None
    validation_error: list[float] = field(default_factory=list)
    hinge_loss: list[float] = field(default_factory=list)
    clean_validation_error: float | None = None
    clean_svc: Any = None
    poisoned_svc: Any = None
    test_error_before: float | None = None
    test_error_after: float | None = None
    gamma: float | None = None

    @property
    def iterations(self) -> int:
        """How many gradient steps were taken."""
        return len(self.validation_error) - 1

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no arrays, no estimators)."""
        return {"method": self.meta.get("method"), "poison_label": self.poison_label,
                "iterations": self.iterations, "clean_validation_error": self.clean_validation_error,
                "validation_error": list(self.validation_error), "hinge_loss": list(self.hinge_loss),
                "test_error_before": self.test_error_before,
                "test_error_after": self.test_error_after, "attack_success": self.attack_success,
                "clean_accuracy": self.clean_accuracy, "poison_rate": self.poison_rate,
                "gamma": self.gamma}


@register("poisoning", "svm_poisoning", paper=_PAPER, test_params={"classes": (0, 1), "max_iter": 3})
class SVMPoisoning(Poisoning):
    """Poisoning an SVM: one training point that maximises the validation hinge loss.

    The attacker adds one point ``(x_c, y_c)`` to the training set of a two-class SVM and
    moves ``x_c`` so as to maximise the hinge loss ``L(x_c) = sum_k max(0, 1 - y_k f(x_k))``
    that the SVM trained on ``D_tr + {(x_c, y_c)}`` incurs on a validation set ``D_val``
    (Algorithm 1 of [1]_; reported, and compared with ``eps``, as its mean over ``D_val``).
    The gradient of ``L`` with respect to ``x_c`` follows from the SVM's optimality (KKT)
    conditions: while ``x_c`` moves, the margin support vectors ``s`` (``0 < alpha < C``)
    stay on the margin, ``sum_j Q_sj alpha_j + y_s b = 1``, and
    ``sum_j y_j alpha_j = 0``, which fixes the change of their ``alpha_s`` and of ``b``
    (the incremental SVM's adiabatic update); for each validation point with
    ``y_k f(x_k) < 1``, with ``Q_ij = y_i y_j K(x_i, x_j)``,

    ``d g_k / d x_c = alpha_c (M_k dQ_sc/dx_c + dQ_kc/dx_c)``,

    ``M_k = -Q_ks (Q_ss^-1 - Q_ss^-1 y_s y_s^T Q_ss^-1 / zeta) - y_k y_s^T Q_ss^-1 / zeta``,
    ``zeta = y_s^T Q_ss^-1 y_s``, and ``dL/dx_c = -sum_k dg_k/dx_c`` (computed here with
    one solve of the bordered system ``[[0, y_s^T], [y_s, Q_ss]]``, least squares when it
    is singular). The kernel's gradient is ``x_k`` (linear) or ``2 gamma (x_k - x_c)
    K(x_k, x_c)`` (RBF). Each iteration refits the SVM on the data with the current point
    (scikit-learn's ``SVC``; the paper's incremental SVM reaches the same solution), takes a
    step of length ``step`` along the unit gradient, ``x_c <- x_c + step * u``, clipped to
    ``bounds``, and stops when the validation hinge loss rises by less than ``eps`` or after
    ``max_iter`` steps. The point starts as a copy of a training point of the other class
    (drawn with ``seed``) with its label flipped to ``y_c``, as in the paper: it is then
    usually a support vector with ``alpha_c = C`` (a point with ``alpha_c = 0`` has no
    gradient, and the attack stops there).

    Call: ``attack(None, data, *, validation, test=None, seed=0)``: ``data`` the training
    set, ``validation`` the attacker's validation set, ``test`` clean data to measure the
    SVMs' error on. All three are reduced to the two labels of ``classes`` (the first gets
    SVM label -1, the second +1); images are flattened. There is no network: the model
    argument must be None.

    Parameters
    ----------
    kernel : {"linear", "rbf"}
        The SVM's kernel.
    C : float
        The SVM's regularisation parameter (the paper's 1).
    gamma : float, optional
        The RBF kernel's ``gamma`` in ``exp(-gamma ||x - x'||^2)``; default scikit-learn's
        ``"scale"``, ``1 / (D * var(X_train))``. Ignored by the linear kernel.
    classes : tuple of int, optional
        The two labels ``(a, b)`` of the two-class task (e.g. ``(7, 1)`` as the paper's
        MNIST 7 vs 1); default the two labels of a two-class dataset.
    poison_label : int, optional
        The label ``y_c`` of the attack point, one of ``classes`` (default the first); the
        point starts at a training point of the other label.
    step : float
        Step length ``t`` of the gradient ascent, in input units (L2).
    eps : float
        Stop when an iteration raises the mean validation hinge loss by less than this.
    max_iter : int
        Maximum number of gradient steps.
    bounds : tuple of float
        ``(low, high)``: the box the attack point is kept in (the data's ``[0, 1]``).

    Notes
    -----
    Kernel values of a linear SVM grow with the input dimension, and scaling the kernel by
    ``s`` and ``C`` by ``1/s`` gives the same classifier: the paper's ``C=1`` on 784-pixel
    MNIST is about ``C=10`` on the 64-pixel 8x8 digits, where ``C=1`` leaves one point
    (``alpha_c <= C``) little weight. On the 8x8 digits, 8 vs 3 (a pair of the paper), 100
    training and 170 validation points, one attack point raises the validation error from
    0.6-2.4% to 8-12% (linear, ``C=10``) or 8-12% (RBF, ``C=100``, ``gamma`` "scale"), the
    hinge loss about threefold, in 5 to 10 steps of 0.1; with ``C=1`` the hinge loss still
    doubles but the error moves by one validation point.

    References
    ----------
    .. [1] Biggio, Nelson, Laskov. Poisoning Attacks against Support Vector Machines.
       ICML 2012.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> digits = load_digits(split="train")
    >>> pair = digits.subset((digits.y == 8) | (digits.y == 3))
    >>> attack = SVMPoisoning(classes=(8, 3), C=10.0)
    >>> r = attack(None, pair.subset(range(100)), validation=pair.subset(range(100, len(pair))))
    >>> r.poison_label, r.hinge_loss[-1] > 1.5 * r.hinge_loss[0]
    (8, True)
    >>> r.validation_error[-1] > r.validation_error[0] + 0.04
    True
    """

    needs_model = False

    kernel: str = param("linear", choices=("linear", "rbf"))
    C: float = param(1.0, positive=True)
    gamma: float | None = param(None, positive=True)
    classes: tuple[int, int] | None = param(None, kind=tuple, check=_check_pair)
    poison_label: int | None = param(None, integer=True)
    step: float = param(0.1, positive=True)
    eps: float = param(0.0, nonneg=True)
    max_iter: int = param(100, integer=True, positive=True)
    bounds: tuple[float, float] = param((0.0, 1.0), kind=tuple, check=_check_bounds)

    def _post_init(self) -> None:
        if self.poison_label is not None and self.classes is not None \
                and self.poison_label not in self.classes:
            raise InputError(f"poison_label={self.poison_label} is not one of classes={self.classes}")

    # ------------------------------------------------------------------ the two-class task
    def pair(self, data: ArrayDataset) -> tuple[int, int]:
        """The two labels ``(a, b)`` of the task on ``data``."""
        if self.classes is not None:
            a, b = self.classes
            k = len(data.classes)
            for v in (a, b):
                if not 0 <= v < k:
                    raise InputError(f"classes={self.classes}: {v} is not a label of {data.name} "
                                     f"({k} classes)")
            return a, b
        if len(data.classes) != 2:
            raise InputError(f"{data.name} has {len(data.classes)} classes: pass classes=(a, b), "
                             "the two labels of the task (e.g. classes=(7, 1))")
        return 0, 1

    def binary(self, data: ArrayDataset, pair: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``data`` reduced to the two labels: flattened float64 inputs and labels in
        {-1, +1} (-1 for the first label of ``pair``)."""
        keep = (data.y == pair[0]) | (data.y == pair[1])
        x = data.x[keep].flatten(1).double().numpy()
        y = np.where(data.y[keep].numpy() == pair[1], 1.0, -1.0)
        return x, y

    # ------------------------------------------------------------------ the SVM
    def gamma_for(self, x_train: np.ndarray) -> float | None:
        """The RBF ``gamma`` used on training inputs ``x_train`` (None for linear)."""
        if self.kernel == "linear":
            return None
        if self.gamma is not None:
            return float(self.gamma)
        var = float(x_train.var())
        return 1.0 / (x_train.shape[1] * var) if var > 0 else 1.0

    def fit(self, x: np.ndarray, y: np.ndarray, gamma: float | None) -> Any:
        """A scikit-learn ``SVC`` with this attack's kernel fitted on ``(x, y)``."""
        from sklearn.svm import SVC

        svc = SVC(kernel=self.kernel, C=self.C, gamma=gamma if gamma is not None else "scale",
                  tol=_SVC_TOL)
        return svc.fit(x, y)

    def kernel_matrix(self, a: np.ndarray, b: np.ndarray, gamma: float | None) -> np.ndarray:
        """``K(a_i, b_j)``."""
        if self.kernel == "linear":
            return a @ b.T
        d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * np.maximum(d, 0.0))

    def kernel_grad(self, a: np.ndarray, xc: np.ndarray, gamma: float | None) -> np.ndarray:
        """``d K(a_i, x_c) / d x_c`` for each row of ``a``: ``(len(a), D)``."""
        if self.kernel == "linear":
            return a.copy()
        k = self.kernel_matrix(a, xc[None], gamma)  # (n, 1)
        return 2 * gamma * (a - xc[None]) * k

    @staticmethod
    def hinge(svc: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """The mean hinge loss and the error of ``svc`` on ``(x, y)``."""
        f = svc.decision_function(x)
        return float(np.maximum(0.0, 1 - y * f).mean()), float((np.where(f > 0, 1.0, -1.0) != y).mean())

    def gradient(self, svc: Any, x: np.ndarray, y: np.ndarray, x_val: np.ndarray,
                 y_val: np.ndarray, gamma: float | None) -> np.ndarray:
        """The gradient of the mean validation hinge loss with respect to the attack point,
        the last row of ``x`` (``svc`` fitted on ``(x, y)``), from the KKT conditions
        (Eq. 10 of the paper)."""
        n, dim = x.shape
        c = n - 1
        xc, yc = x[c], y[c]
        alpha = np.zeros(n)
        alpha[svc.support_] = np.abs(svc.dual_coef_[0])
        if alpha[c] <= 0:
            return np.zeros(dim)  # the point is not a support vector: L does not depend on it
        f = svc.decision_function(x_val)
        viol = y_val * f < 1
        if not viol.any():
            return np.zeros(dim)
        margin = (alpha > _MARGIN_TOL * self.C) & (alpha < (1 - _MARGIN_TOL) * self.C)
        margin[c] = False
        s = np.flatnonzero(margin)
        xk, yk = x_val[viol], y_val[viol]
        # sum_k dQ_kc/dx_c alpha_c: the direct effect of the point on the violators
        total = alpha[c] * ((yk * yc)[:, None] * self.kernel_grad(xk, xc, gamma)).sum(0)
        if len(s):
            # sum_k (Q_ks dalpha_s + y_k db), with [db; dalpha_s] = -A^-1 [0; alpha_c dQ_sc]
            # and A = [[0, y_s^T], [y_s, Q_ss]] symmetric: one solve with the row sum_k [y_k, Q_ks]
            ys = y[s]
            q_ss = np.outer(ys, ys) * self.kernel_matrix(x[s], x[s], gamma)
            border = np.zeros((len(s) + 1, len(s) + 1))
            border[0, 1:], border[1:, 0], border[1:, 1:] = ys, ys, q_ss
            q_ks = np.outer(yk, ys) * self.kernel_matrix(xk, x[s], gamma)
            row = np.concatenate([[yk.sum()], q_ks.sum(0)])
            z = np.linalg.lstsq(border, row, rcond=None)[0]
            dq_sc = (ys * yc)[:, None] * self.kernel_grad(x[s], xc, gamma)
            total = total - alpha[c] * (z[1:] @ dq_sc)
        return -total / len(x_val)

    # ------------------------------------------------------------------ the attack
    def _run(self, model: TorchModel | None, data: ArrayDataset, *, seed: int | None,
             test: ArrayDataset | None = None, validation: ArrayDataset | None = None
             ) -> SVMPoisonResult:
        if model is not None:
            raise InputError("SVMPoisoning fits its own SVM: call it with model=None")
        if validation is None:
            raise InputError("SVMPoisoning needs validation= (an ArrayDataset the attacker "
                             "measures the hinge loss on)")
        check_dataset(type(self).__name__, validation, "validation data")
        pair = self.pair(data)
        y_c_label = pair[0] if self.poison_label is None else int(self.poison_label)
        if y_c_label not in pair:
            raise InputError(f"poison_label={y_c_label} is not one of the task's labels {pair}")
        x_tr, y_tr = self.binary(data, pair)
        x_val, y_val = self.binary(validation, pair)
        for name, yy in (("data", y_tr), ("validation", y_val)):
            if len(np.unique(yy)) < 2:
                raise InputError(f"the {name} has no point of one of the labels {pair}")
        yc = 1.0 if y_c_label == pair[1] else -1.0
        gamma = self.gamma_for(x_tr)
        lo, hi = self.bounds

        clean = self.fit(x_tr, y_tr, gamma)
        _, clean_err = self.hinge(clean, x_val, y_val)
        others = np.flatnonzero(y_tr == -yc)
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        xc = np.clip(x_tr[others[int(torch.randint(len(others), (1,), generator=gen))]], lo, hi)
        x_all, y_all = np.vstack([x_tr, xc[None]]), np.append(y_tr, yc)
        svc = self.fit(x_all, y_all, gamma)
        loss, err = self.hinge(svc, x_val, y_val)
        path, losses, errors = [xc.copy()], [loss], [err]
        with progress_bar(self.max_iter, "svm poisoning", enabled=None) as bar:
            for _ in range(self.max_iter):
                bar.step(f"hinge {losses[-1]:.4f} error {errors[-1]:.3f}")
                g = self.gradient(svc, x_all, y_all, x_val, y_val, gamma)
                norm = float(np.linalg.norm(g))
                if norm == 0.0:
                    break
                xc = np.clip(xc + self.step * g / norm, lo, hi)
                x_all[-1] = xc
                svc = self.fit(x_all, y_all, gamma)
                loss, err = self.hinge(svc, x_val, y_val)
                path.append(xc.copy())
                losses.append(loss)
                errors.append(err)
                bar.advance()
                if losses[-1] - losses[-2] < self.eps:
                    break

        before = after = None
        if test is not None:
            x_te, y_te = self.binary(test, pair)
            if len(y_te):
                before, after = self.hinge(clean, x_te, y_te)[1], self.hinge(svc, x_te, y_te)[1]
        keep = (data.y == pair[0]) | (data.y == pair[1])
        two = data.subset(keep)
        shape = tuple(data.x.shape[1:])
        poison = torch.as_tensor(xc, dtype=torch.float32).reshape(shape)
        poisoned = ArrayDataset(x=torch.cat([two.x, poison[None]]),
                                y=torch.cat([two.y, torch.tensor([y_c_label])]),
                                classes=data.classes, name=f"{data.name}+svm_poisoning",
                                feature_names=data.feature_names)
        return SVMPoisonResult(
            data=poisoned, poisoned=torch.tensor([len(two)]), model=None,
            clean_accuracy=None if after is None else 1 - after, attack_success=after,
            poison=poison, poison_label=y_c_label,
            path=torch.as_tensor(np.stack(path), dtype=torch.float32),
            validation_error=errors, hinge_loss=losses, clean_validation_error=clean_err,
            clean_svc=clean, poisoned_svc=svc, test_error_before=before, test_error_after=after,
            gamma=gamma, meta={"method": self.name, **self.get_params()})

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        return method(None, data, seed=seed, validation=data, test=data)


def svm_poisoning(data: ArrayDataset, *, validation: ArrayDataset,
                  test: ArrayDataset | None = None, seed: int | None = 0,
                  **params: Any) -> SVMPoisonResult:
    """Function form of :class:`SVMPoisoning`:
    ``svm_poisoning(train, validation=val, test=test, classes=(7, 1), kernel="rbf")``."""
    return SVMPoisoning(**params)(None, data, validation=validation, test=test, seed=seed)
