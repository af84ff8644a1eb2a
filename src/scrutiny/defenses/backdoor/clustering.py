"""Activation clustering: a poisoned class's activations split in two (Chen et al. 2019)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from scrutiny.data import ArrayDataset
from scrutiny.defenses.backdoor.base import BackdoorScan, ScanResult
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["ActivationClustering", "ClusteringResult", "activation_clustering", "representations"]

_PAPER = ("Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava. Detecting "
          "Backdoor Attacks on Deep Neural Networks by Activation Clustering. SafeAI@AAAI 2019")


@torch.no_grad()
def representations(model: TorchModel | nn.Module, x: torch.Tensor, *, layer: str | None = None,
                    batch_size: int = 512) -> torch.Tensor:
    """The model's representation of each input, ``(N, D)`` float64 on the CPU.

    ``layer=None`` reads the input of the model's last ``nn.Linear`` (the last hidden
    layer: what the classifier's final layer sees); a layer name reads that layer's
    output, flattened. The model runs as it is (a plain module is wrapped with
    :func:`~scrutiny.models.wrapper.as_model`; put it in eval mode); the hook is removed on
    exit.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> m = pretrained("digits-cnn", progress=False)
    >>> representations(m, torch.zeros(3, 1, 8, 8)).shape
    torch.Size([3, 64])
    """
    model = as_model(model)
    if layer is None:
        linears = [n for n, m in model.module.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError(f"{model.name} has no nn.Linear whose input is the last hidden "
                             f"layer; pass layer= (layers: {', '.join(model.layer_names())})")
        target, before = model.layer(linears[-1]), True
    else:
        target, before = model.layer(layer), False
    store: list[torch.Tensor] = []
    if before:
        handle = target.register_forward_pre_hook(lambda _m, inp: store.append(inp[0]))
    else:
        handle = target.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(model.device))
    finally:
        handle.remove()
    if not store:
        return torch.zeros(0, 0, dtype=torch.float64)
    return torch.cat([s.flatten(1) for s in store]).double().cpu()


def _reduce(a: np.ndarray, method: str, dims: int, seed: int) -> np.ndarray:
    """``a`` reduced to ``dims`` dimensions (fewer when the data spans fewer: dead units
    and rank-deficient activations would make ICA's whitening divide by zero)."""
    from sklearn.decomposition import PCA, FastICA

    k = min(dims, int(np.linalg.matrix_rank(a - a.mean(0))))
    if k == 0:
        return np.zeros((len(a), 1))
    projected = PCA(n_components=k, random_state=seed).fit_transform(a)
    if method == "pca":
        return projected
    # FastICA whitens on the top k principal components; projecting first is the same in
    # exact arithmetic and keeps its whitening finite when the activations are degenerate
    with warnings.catch_warnings():  # FastICA warns when it stops at max_iter
        warnings.simplefilter("ignore")
        return FastICA(n_components=k, random_state=seed, max_iter=200,
                       whiten="unit-variance").fit_transform(projected)


@dataclass(repr=False)
class ClusteringResult(ScanResult):
    """Activation clustering's verdict.

    Attributes
    ----------
    classes : list of int
        The classes analysed (those with at least 4 training points), in the order of the
        arrays below.
    relative_size : numpy.ndarray
        ``(K,)`` the smaller cluster's share of its class.
    silhouette : numpy.ndarray
        ``(K,)`` silhouette score of the class's 2-means clustering (in the reduced space).
    clusters : torch.Tensor
        ``(N,)`` cluster (0 or 1; 0 the smaller) of each training point; -1 for the points
        of the classes not analysed.
    """

    classes: list[int] = field(default_factory=list)
    relative_size: np.ndarray = field(default_factory=lambda: np.zeros(0))
    silhouette: np.ndarray = field(default_factory=lambda: np.zeros(0))
    clusters: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to_dict(self) -> dict[str, Any]:
        """The numbers, flagged classes and suspicious indices, JSON-ready (no tensors)."""
        return {"method": self.meta.get("method"), "flagged": [int(k) for k in self.flagged],
                "classes": [int(k) for k in self.classes],
                "relative_size": [float(v) for v in self.relative_size],
                "silhouette": [float(v) for v in self.silhouette],
                "n_suspicious": len(self.suspicious),
                "suspicious": [int(i) for i in self.suspicious]}


@register("backdoor_scan", "activation_clustering", paper=_PAPER, test_params={"dims": 2})
class ActivationClustering(BackdoorScan):
    """Activation clustering: split each class's activations in two and judge the split.

    A model trained on poisoned data classifies the poison points as their new label for
    another reason than the clean points of that label (the trigger, not the class's
    features), and its last hidden layer shows it: the activations of a poisoned class
    fall in two groups. For each class (by the training label), Chen et al. take the
    activations of its training points at the last hidden layer
    (:func:`representations`), reduce them to ``dims`` dimensions by ICA (``reduce="ica"``,
    the paper; or PCA), and split them by 2-means. Then the paper's analysis decides
    whether the class is poisoned:

    - ``analysis="relative_size"`` (default): the smaller cluster holds less than
      ``size_threshold`` of the class (poison is expected to be a minority of its class);
    - ``analysis="silhouette"``: the clustering fits the data well, i.e. its silhouette
      score exceeds ``silhouette_threshold`` (a clean class has no natural 2-split).

    The smaller cluster's points of each flagged class are ``suspicious``. Both analyses
    assume that the poison is a minority of its class (the paper's experiments poison
    10% to 33% of it): when poison makes up about half of the target class, the smaller
    cluster can be the clean one.

    Call ``scan(model, data, *, seed)`` with ``data`` the training set the model was
    trained on.

    Parameters
    ----------
    layer : str, optional
        The layer whose output is clustered (flattened); None reads the input of the last
        ``nn.Linear``, the last hidden layer (as in the paper).
    reduce : {"ica", "pca"}
        Dimension reduction before clustering: FastICA (the paper) or PCA.
    dims : int
        Dimensions kept (the paper's 10).
    analysis : {"relative_size", "silhouette"}
        How a class is judged poisoned (see above).
    size_threshold : float
        Largest share of its class the smaller cluster may hold for the class to be
        flagged by ``relative_size`` (0.35, as in the IBM toolbox of the paper's authors).
    silhouette_threshold : float
        Silhouette score above which ``silhouette`` flags a class.
    n_init : int
        Restarts of 2-means (the best of them is kept).

    References
    ----------
    .. [1] Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava. Detecting
       Backdoor Attacks on Deep Neural Networks by Activation Clustering. SafeAI@AAAI 2019.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import pretrained
    >>> r = ActivationClustering()(pretrained("digits-cnn", progress=False),
    ...                            load_digits(split="train"), seed=0)
    >>> len(r.relative_size), bool((r.relative_size <= 0.5).all())
    (10, True)
    """

    layer: str | None = param(None, kind=str)
    reduce: str = param("ica", choices=("ica", "pca"))
    dims: int = param(10, integer=True, positive=True)
    analysis: str = param("relative_size", choices=("relative_size", "silhouette"))
    size_threshold: float = param(0.35, between=(0.0, 0.5), interval="(]")
    silhouette_threshold: float = param(0.15, between=(-1.0, 1.0))
    n_init: int = param(10, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None
             ) -> ClusteringResult:
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        if data is None:
            raise InputError("ActivationClustering needs the training set: scan(model, data)")
        rs = 0 if seed is None else int(seed)
        feats = representations(model, data.x, layer=self.layer).numpy()
        clusters = torch.full((len(data),), -1, dtype=torch.long)
        classes, rel, sil, flagged, suspicious = [], [], [], [], []
        for k in sorted(set(data.y.tolist())):
            idx = torch.nonzero(data.y == k).flatten()
            if len(idx) < 4:
                continue
            reduced = _reduce(feats[idx.numpy()], self.reduce, self.dims, rs)
            lab = KMeans(n_clusters=2, n_init=self.n_init, random_state=rs).fit_predict(reduced)
            sizes = np.bincount(lab, minlength=2)
            small = int(np.argmin(sizes))
            lab = np.where(lab == small, 0, 1)  # 0: the smaller cluster
            clusters[idx] = torch.from_numpy(lab)
            share = float(sizes.min() / sizes.sum())
            score = float(silhouette_score(reduced, lab)) if sizes.min() > 0 else 0.0
            classes.append(int(k))
            rel.append(share)
            sil.append(score)
            poisoned = (share < self.size_threshold if self.analysis == "relative_size"
                        else score > self.silhouette_threshold)
            if poisoned:
                flagged.append(int(k))
                suspicious.append(idx[torch.from_numpy(lab == 0)])
        sus = torch.cat(suspicious).sort().values if suspicious else torch.zeros(0, dtype=torch.long)
        return ClusteringResult(flagged=flagged, suspicious=sus, classes=classes,
                                relative_size=np.array(rel), silhouette=np.array(sil),
                                clusters=clusters, meta={"method": self.name, **self.get_params()})


def activation_clustering(model: Any, data: ArrayDataset, *, seed: int | None = 0,
                          **params: Any) -> ClusteringResult:
    """Function form of :class:`ActivationClustering`: ``activation_clustering(model, train)``."""
    return ActivationClustering(**params)(model, data, seed=seed)
