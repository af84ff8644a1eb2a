"""Global interpretable surrogates of a classifier: a shallow tree and a sparse linear model.

LIME and KernelSHAP (same package) fit a surrogate around one input; the methods here fit
one interpretable model to the classifier's predictions over a whole dataset (Murdoch et
al. 2019, "model-based interpretability") and report how faithful it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.explain.surrogate._features import rng_from_torch
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["LinearSurrogate", "LinearSurrogateResult", "SurrogateResult", "SurrogateTree",
           "TreeSurrogateResult", "surrogate_linear", "surrogate_tree"]

_PAPER = ("Murdoch, Singh, Kumbier, Abbasi-Asl, Yu. Definitions, methods, and applications "
          "in interpretable machine learning. PNAS 2019")


@dataclass(repr=False)
class SurrogateResult(LearnedResult):
    """A surrogate fitted to a classifier's predictions.

    Attributes
    ----------
    estimator : Any
        The fitted scikit-learn estimator (inputs: flattened features).
    fidelity : float
        Agreement of the surrogate with the classifier on the held-out part of the data.
    train_fidelity : float
        The same agreement on the part it was fitted on.
    accuracy : float
        The surrogate's accuracy against the true labels on the held-out part.
    model_accuracy : float
        The classifier's accuracy against the true labels on the held-out part.
    train_index, test_index : np.ndarray
        Rows of the data in the fitting and held-out parts.
    predictions : np.ndarray
        The classifier's predicted class of every row of the data (the surrogate's targets).
    feature_names : tuple of str
        The names of the flattened features.
    """

    estimator: Any
    fidelity: float
    train_fidelity: float
    accuracy: float
    model_accuracy: float
    train_index: np.ndarray
    test_index: np.ndarray
    predictions: np.ndarray
    feature_names: tuple[str, ...]


@dataclass(repr=False)
class TreeSurrogateResult(SurrogateResult):
    """A decision-tree surrogate: adds ``text`` (scikit-learn's ``export_text`` with the
    feature names and the class names) and ``importances`` (the tree's impurity-based
    feature importances, ``(d,)``)."""

    text: str
    importances: np.ndarray


@dataclass(repr=False)
class LinearSurrogateResult(SurrogateResult):
    """A sparse linear surrogate: adds ``coef`` (``(K, d)``; one row for two classes, as
    scikit-learn), ``intercept`` and ``nonzero``, the non-zero coefficients as
    ``(class, feature name, weight)`` sorted by decreasing ``|weight|``."""

    coef: np.ndarray
    intercept: np.ndarray
    nonzero: list[tuple[str, str, float]]


def feature_names(data: ArrayDataset) -> tuple[str, ...]:
    """The data's feature names, or ``x[c,h,w]`` for the flattened pixels of images."""
    if data.feature_names is not None and len(data.feature_names) == data.x[0].numel():
        return tuple(data.feature_names)
    shape = tuple(data.x.shape[1:])
    return tuple("x[" + ",".join(map(str, i)) + "]" for i in np.ndindex(*shape))


class _GlobalSurrogate(Learned):
    """Fits ``_estimator()`` to the classifier's predictions on a seeded split of ``data``
    and measures its fidelity; a subclass builds the estimator and its result."""

    holdout: float = param(0.3, between=(0.0, 1.0), interval="()")

    def _estimator(self, random_state: int, n_classes: int) -> Any:
        raise NotImplementedError

    def _result(self, est: Any, names: tuple[str, ...], classes: tuple[str, ...],
                **common: Any) -> SurrogateResult:
        raise NotImplementedError

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None
             ) -> SurrogateResult:
        if data is None:
            raise InputError(f"{self.name} needs data: call method(model, data)")
        n = len(data)
        n_test = int(round(self.holdout * n))
        if n_test < 1 or n - n_test < 2:
            raise InputError(f"{self.name}: {n} rows with holdout={self.holdout} leave "
                             f"{n - n_test} to fit and {n_test} to test; give more data")
        with torch.no_grad():
            pred = model.predict(data.x.to(model.device)).cpu().numpy()
        X = data.x.reshape(n, -1).double().numpy()
        y = data.y.cpu().numpy()
        perm = torch.randperm(n).numpy()
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        random_state = int(rng_from_torch().integers(2**31 - 1))
        est = self._estimator(random_state, len(np.unique(pred[train])))
        if len(np.unique(pred[train])) < 2:  # a constant classifier: a constant surrogate
            from sklearn.dummy import DummyClassifier
            est = DummyClassifier(strategy="constant", constant=pred[train][0])
        est.fit(X[train], pred[train])
        names = feature_names(data)
        k = max(int(pred.max()) + 1, int(y.max()) + 1, len(data.classes))
        classes = tuple(data.classes) if len(data.classes) >= k else tuple(map(str, range(k)))
        common = dict(
            estimator=est,
            fidelity=float((est.predict(X[test]) == pred[test]).mean()),
            train_fidelity=float((est.predict(X[train]) == pred[train]).mean()),
            accuracy=float((est.predict(X[test]) == y[test]).mean()),
            model_accuracy=float((pred[test] == y[test]).mean()),
            train_index=train, test_index=test, predictions=pred, feature_names=names,
            meta={"method": self.name, **self.get_params()})
        return self._result(est, names, classes, **common)


@register("learned", "surrogate_tree", paper=_PAPER, test_params={"max_depth": 2})
class SurrogateTree(_GlobalSurrogate):
    """A shallow decision tree fitted to the classifier's predictions (a global surrogate).

    Model-based interpretability (Murdoch et al. 2019): the classifier labels ``data``
    (its predicted classes, not the true labels), a scikit-learn
    ``DecisionTreeClassifier`` of depth ``max_depth`` is fitted to those predictions on
    a seeded part of the data (images are flattened to pixel features), and its
    *fidelity*, the fraction of the held-out part (``holdout``) where it agrees with the
    classifier, says how far the tree can be trusted as a description of the model. The
    result also holds its accuracy against the true labels, the tree as text and its
    feature importances. Call ``SurrogateTree()(model, data)``.

    Parameters
    ----------
    holdout : float
        Fraction of the rows held out to measure fidelity (a seeded split).
    max_depth : int
        Depth of the tree (small: readable; large: faithful).
    min_samples_leaf : int
        Fewest rows in a leaf.

    References
    ----------
    .. [1] Murdoch, Singh, Kumbier, Abbasi-Asl, Yu. Definitions, methods, and applications
       in interpretable machine learning. PNAS 116(44), 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_breast_cancer
    >>> r = SurrogateTree(max_depth=3)(pretrained("breast-cancer-mlp", progress=False),
    ...                                load_breast_cancer(split="all"))
    >>> r.fidelity > 0.9
    True
    >>> print(r.text.splitlines()[0])  # doctest: +ELLIPSIS
    |--- worst ... <= ...
    """

    max_depth: int = param(3, integer=True, positive=True)
    min_samples_leaf: int = param(1, integer=True, positive=True)

    def _estimator(self, random_state: int, n_classes: int) -> Any:
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_depth=self.max_depth,
                                      min_samples_leaf=self.min_samples_leaf,
                                      random_state=random_state)

    def _result(self, est: Any, names: tuple[str, ...], classes: tuple[str, ...],
                **common: Any) -> TreeSurrogateResult:
        from sklearn.tree import DecisionTreeClassifier, export_text

        if isinstance(est, DecisionTreeClassifier):
            text = export_text(est, feature_names=list(names),
                               class_names=[classes[int(c)] for c in est.classes_])
            importances = est.feature_importances_
        else:
            text = f"class: {classes[int(est.constant)]} (the classifier predicts one class)"
            importances = np.zeros(len(names))
        return TreeSurrogateResult(text=text, importances=importances, **common)


@register("learned", "surrogate_linear", paper=_PAPER, test_params={"max_iter": 50})
class LinearSurrogate(_GlobalSurrogate):
    """A sparse (L1) logistic regression fitted to the classifier's predictions.

    As :class:`SurrogateTree` (same split, same fidelity), with a scikit-learn
    ``LogisticRegression`` with an L1 penalty of inverse strength ``C`` (solver liblinear
    for two classes, saga, multinomial, for more): a small ``C`` keeps few non-zero
    coefficients (readable), a large one more (faithful). Its non-zero coefficients are in
    ``nonzero``. Features are used as given (the embedded tables and images are in [0,
    1]). Call
    ``LinearSurrogate()(model, data)``.

    Parameters
    ----------
    holdout : float
        Fraction of the rows held out to measure fidelity (a seeded split).
    C : float
        Inverse strength of the L1 penalty.
    max_iter : int
        Iterations of the solver.

    References
    ----------
    .. [1] Murdoch, Singh, Kumbier, Abbasi-Asl, Yu. Definitions, methods, and applications
       in interpretable machine learning. PNAS 116(44), 2019.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_breast_cancer
    >>> r = LinearSurrogate(C=1.0)(pretrained("breast-cancer-mlp", progress=False),
    ...                            load_breast_cancer(split="all"))
    >>> r.fidelity > 0.9, len(r.nonzero) < 30
    (True, True)
    """

    C: float = param(1.0, positive=True)
    max_iter: int = param(1000, integer=True, positive=True)

    def _estimator(self, random_state: int, n_classes: int) -> Any:
        import sklearn
        from sklearn.linear_model import LogisticRegression

        major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
        l1 = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
        return LogisticRegression(C=self.C, solver="liblinear" if n_classes <= 2 else "saga",
                                  max_iter=self.max_iter, random_state=random_state, **l1)

    def _result(self, est: Any, names: tuple[str, ...], classes: tuple[str, ...],
                **common: Any) -> LinearSurrogateResult:
        from sklearn.linear_model import LogisticRegression

        if isinstance(est, LogisticRegression):
            coef, intercept = est.coef_, est.intercept_
            rows = [classes[int(est.classes_[-1])]] if len(coef) == 1 else \
                [classes[int(c)] for c in est.classes_]
        else:
            coef, intercept, rows = np.zeros((1, len(names))), np.zeros(1), []
        nonzero = sorted(((rows[i], names[j], float(coef[i, j]))
                          for i, j in zip(*np.nonzero(coef), strict=True)),
                         key=lambda t: -abs(t[2]))
        return LinearSurrogateResult(coef=coef, intercept=intercept, nonzero=nonzero, **common)


def surrogate_tree(model: Any, data: ArrayDataset, *, seed: int | None = 0,
                   **hyperparameters: Any) -> TreeSurrogateResult:
    """Function twin of :class:`SurrogateTree`: ``surrogate_tree(model, data, max_depth=3)``."""
    return SurrogateTree(**hyperparameters)(model, data, seed=seed)


def surrogate_linear(model: Any, data: ArrayDataset, *, seed: int | None = 0,
                     **hyperparameters: Any) -> LinearSurrogateResult:
    """Function twin of :class:`LinearSurrogate`: ``surrogate_linear(model, data, C=1.0)``."""
    return LinearSurrogate(**hyperparameters)(model, data, seed=seed)
