"""Sanity checks for saliency maps: model-parameter and data randomization (Adebayo et al.)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from scrutiny.base import seeded
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.metrics.base import (
    DEGENERATE,
    Metric,
    MetricResult,
    check_choice,
    degenerate,
    metric_twin,
    nanmean,
    parametrized_layers,
    reinitialize,
    unit_map,
)
from scrutiny.models.training import train
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import enabled as show_progress
from scrutiny.progress import progress_bar
from scrutiny.registry import register

MEASURES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")
MODES: tuple[str, ...] = ("cascading", "independent")


# ---------------------------------------------------------------- similarity measures
def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Spearman rank correlation of two batches of maps ``(N, ...)``.

    Ranks with ties averaged (as :func:`scipy.stats.spearmanr`); NaN for a
    sample where either map is constant (no ranking to compare).
    """
    fa = a.detach().flatten(1).double().cpu().numpy()
    fb = b.detach().flatten(1).double().cpu().numpy()
    if not len(fa):
        return torch.empty(0, dtype=torch.float64)
    r = _pearson_rows(rankdata(fa, axis=1), rankdata(fb, axis=1))
    return torch.from_numpy(r)


def _unit_range(m: np.ndarray) -> np.ndarray:
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def _window(shape: tuple[int, ...]) -> int:
    w = min(7, *shape)
    return w if w % 2 else w - 1


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample SSIM (:func:`skimage.metrics.structural_similarity`) of ``|a|`` and
    ``|b|``, each scaled to [0, 1] (``data_range=1``; 7x7 window or the largest odd
    window that fits). Needs 2-D maps ``(N, H, W)``; NaN for other shapes."""
    from skimage.metrics import structural_similarity

    if a.dim() != 3 or min(a.shape[1:]) < 3:
        return torch.full((len(a),), float("nan"), dtype=torch.float64)
    fa, fb = a.detach().abs().double().cpu().numpy(), b.detach().abs().double().cpu().numpy()
    w = _window(tuple(a.shape[1:]))
    out = [structural_similarity(_unit_range(p), _unit_range(q), data_range=1.0, win_size=w)
           for p, q in zip(fa, fb, strict=True)]
    return torch.tensor(out, dtype=torch.float64)


def hog_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation of the HOG features (:func:`skimage.feature.hog`,
    9 orientations, cells of ``max(2, min(H, W) // 8)`` pixels, 2x2 blocks) of ``|a|``
    and ``|b|`` scaled to [0, 1]. Needs 2-D maps of at least 4x4; NaN otherwise."""
    from skimage.feature import hog

    if a.dim() != 3 or min(a.shape[1:]) < 4:
        return torch.full((len(a),), float("nan"), dtype=torch.float64)
    cell = max(2, min(a.shape[1:]) // 8)
    kw = {"orientations": 9, "pixels_per_cell": (cell, cell), "cells_per_block": (2, 2)}
    fa, fb = a.detach().abs().double().cpu().numpy(), b.detach().abs().double().cpu().numpy()
    ha = np.stack([hog(_unit_range(m), **kw) for m in fa])
    hb = np.stack([hog(_unit_range(m), **kw) for m in fb])
    return torch.from_numpy(_pearson_rows(ha, hb))


def similarity(measure: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One of :data:`MEASURES` between two batches of maps, per sample (float64)."""
    if measure == "spearman_abs":
        return spearman(a.abs(), b.abs())
    if measure == "spearman":
        return spearman(a, b)
    if measure == "ssim":
        return ssim(a, b)
    if measure == "hog":
        return hog_similarity(a, b)
    raise InputError(f"unknown measure {measure!r}; accepted: {', '.join(MEASURES)}")


def _check_measures(name: str, measures: tuple[str, ...]) -> None:
    if not len(measures):
        raise InputError(f"{name} must be a non-empty tuple of names, e.g. ('spearman_abs',)")
    for m in measures:
        check_choice("measure", m, MEASURES)
    if "spearman_abs" not in measures:
        raise InputError("measures must include 'spearman_abs' (the flagged measure)")


def _check_layers(name: str, layers: tuple[str, ...]) -> None:
    if not len(layers):
        raise InputError(f"{name} must be a non-empty sequence of layer names or None")


@dataclass(kw_only=True)
class RandomizationResult(MetricResult):
    """What the randomization sanity checks return.

    ``scores`` holds, per sample, the rank correlation of absolute maps
    (``"spearman_abs"``) between the original explanation and the one after
    randomization (cascading: the fully randomized network; independent: the
    mean over the layers; data: the permuted-label model); ``aggregate`` is
    its mean and ``flag`` says whether it stays above ``threshold``, i.e.
    the explanation does not depend on what the model learned.

    A rank correlation is undefined for a constant map (all zero, e.g. the
    gradient map of a model whose input gradient vanishes behind a
    non-differentiable front end): that sample's score is NaN and
    ``undefined`` says which maps were constant (the trained model's or the
    randomized one's). When every score is undefined, ``aggregate`` is NaN
    and ``flag`` is None: the check could not be made, which is not a pass.

    Attributes
    ----------
    flag : bool or None
        The mean correlation stays above ``threshold``; None when undefined.
    steps : list of str
        What was randomized at each step (layer names; ``"labels"`` for data).
    per_step : dict of str to Tensor
        Each measure's similarity, shape ``(S, N)``.
    original_maps, maps : Tensor
        The original maps ``(N, ...)`` and the maps after each step ``(S, N, ...)``.
    """

    steps: list[str]
    per_step: dict[str, torch.Tensor]
    flag: bool | None
    threshold: float
    original_maps: torch.Tensor
    maps: torch.Tensor
    extra: dict[str, float] = field(default_factory=dict)

    def curve(self, measure: str = "spearman_abs") -> torch.Tensor:
        """(S,) the measure's mean over samples after each step."""
        if measure not in self.per_step:
            raise InputError(f"measure {measure!r} was not computed; computed: "
                             + ", ".join(self.per_step))
        v = self.per_step[measure]
        return torch.tensor([nanmean(row) for row in v], dtype=torch.float64)


def _explain_chunks(exp, model: TorchModel, x: torch.Tensor, target: torch.Tensor,
                    seed: int | None, batch_size: int) -> torch.Tensor:
    maps = [unit_map(exp.explain(model, x[i:i + batch_size], target[i:i + batch_size],
                                 seed=seed).attributions.to(x.device), x[i:i + batch_size])
            for i in range(0, max(len(x), 1), batch_size)]  # an empty batch: one empty chunk
    return torch.cat(maps).detach()


def _sub_seed(seed: int | None, k: int) -> int | None:
    return None if seed is None else int(seed) * 1009 + k + 1


def _compare(measures, original, maps) -> dict[str, torch.Tensor]:
    return {m: torch.stack([similarity(m, original, mk) for mk in maps]) for m in measures}


def _undefined(scores: torch.Tensor, original: torch.Tensor, after: list[torch.Tensor],
               what: str) -> str | None:
    """Why ``scores`` (rank correlations of absolute maps) are NaN: which maps are constant.

    ``after`` holds the maps the scores compare with (all of them constant is what makes
    a sample's score undefined when the original map is not)."""
    nan = torch.isnan(scores)
    if not bool(nan.any()):
        return None
    n = len(scores)
    nan = nan.cpu()
    orig = degenerate(original.abs().cpu())
    parts = [f"the trained model's map is {DEGENERATE[k]} for {int((m & nan).sum())} of {n} "
             "samples" for k, m in orig.items() if bool((m & nan).any())]
    rest = nan.clone()
    for m in orig.values():
        rest &= ~m
    if after and bool(rest.any()):
        flat = torch.stack([torch.stack(list(degenerate(a.abs().cpu()).values())).any(0)
                            for a in after])
        k = int((rest & flat.all(0)).sum())
        if k:
            parts.append(f"the map of the {what} is constant for {k} of {n} samples")
    if not parts:
        return f"{int(nan.sum())} of {n} samples have no defined rank correlation"
    hint = ("; all-zero gradient maps come from an input gradient masked to zero"
            if bool((orig["zero"] & nan).any()) else "")
    return "; ".join(parts) + f": a constant map has no ranking to correlate{hint}"


@register("metric", "model_randomization", paper="Adebayo, Gilmer, Muelly, Goodfellow, Hardt, "
          "Kim. Sanity checks for saliency maps. NeurIPS 2018",
          test_params={"measures": ("spearman_abs",)})
class ModelRandomization(Metric):
    """Model-parameter randomization test: does the explanation depend on the weights?

    The explanation of each input is computed for the trained model and for
    copies whose layers are re-initialised, and the maps are compared
    (Adebayo et al., Section 3.1):

    * ``mode="cascading"``: layers are randomized cumulatively from the top
      (the logits layer) down; step ``k`` has the top ``k + 1`` layers random;
    * ``mode="independent"``: one layer at a time, the others as trained.

    Re-initialisation uses each layer's ``reset_parameters`` (PyTorch's
    default initialisation of the layer type, i.e. the state before
    training), seeded from ``seed``; it runs on deep copies, so the user's
    model is never modified. Maps are compared per sample by Spearman rank
    correlation of absolute maps and of signed maps, SSIM and HOG similarity
    (see :func:`similarity`); image maps are the channel sum of the
    attributions (:meth:`Explanation.pixel_map`).

    ``flag`` is raised when the mean rank correlation of absolute maps after
    randomization (cascading: the fully randomized network; independent: the
    mean over layers) stays above ``threshold``: the map then does not depend
    on what the model learned, like an edge detector. The paper reports
    gradient and Grad-CAM maps decorrelating, Guided Backprop staying
    correlated; on the digits CNN the gradient ends near 0.1 and a Sobel
    edge map of the input at 1.0 (see ``tests/metrics/test_randomization.py``).

    Parameters
    ----------
    mode : {"cascading", "independent"}
        Randomize the layers cumulatively from the top, or one at a time.
    layers : sequence of str, optional
        Layers to randomize, bottom to top (default: every layer of the
        wrapped module that owns parameters, in registration order, which is
        the forward order for sequential models).
    measures : tuple of str
        Similarities to compute: any of ``"spearman_abs"`` (required),
        ``"spearman"``, ``"ssim"``, ``"hog"``.
    threshold : float
        Flag when the final rank correlation of absolute maps is above it.
    batch_size : int
        Inputs per explainer call.

    References
    ----------
    .. [1] Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity checks for
       saliency maps". NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:8]
    >>> res = ModelRandomization()(pretrained("digits-cnn", progress=False), x,
    ...                            explainer="gradient")
    >>> res.steps
    ['classifier', 'features.5', 'features.2', 'features.0']
    >>> res.flag
    False
    """

    needs_explainer = True

    mode: str = param("cascading", choices=MODES)
    layers: tuple[str, ...] | None = param(None, kind=tuple, check=_check_layers)
    measures: tuple[str, ...] = param(("spearman_abs", "spearman", "ssim"), kind=tuple,
                                      check=_check_measures)
    threshold: float = param(0.5, between=(-1, 1))
    batch_size: int = param(256, integer=True, positive=True)

    def _layers(self, model: TorchModel) -> list[str]:
        if self.layers is None:
            names = parametrized_layers(model)
            if not names:
                raise InputError(f"{model.name} has no layer with parameters to randomize")
            return names
        own = set(parametrized_layers(model))
        for n in self.layers:
            model.layer(n)  # clear error listing the layers
            if n not in own:
                raise InputError(f"layer {n!r} owns no parameters; layers with parameters: "
                                 + ", ".join(sorted(own)))
        return list(self.layers)

    def _evaluate(self, model, x, target, explainer, attributions, seed):
        order = list(reversed(self._layers(model)))  # top (logits) first
        original = _explain_chunks(explainer, model, x, target, seed, self.batch_size)
        maps = []
        running = copy.deepcopy(model) if self.mode == "cascading" else None
        with progress_bar(len(order), f"{self.mode} randomization") as bar:
            for k, name in enumerate(order):
                bar.step(name)
                rand = running if running is not None else copy.deepcopy(model)
                with seeded(_sub_seed(seed, k), x.device):
                    reinitialize(rand.layer(name))
                maps.append(_explain_chunks(explainer, rand, x, target, seed, self.batch_size))
                bar.advance()
        per_step = _compare(self.measures, original, maps)
        key = per_step["spearman_abs"]
        scores = key[-1] if self.mode == "cascading" else torch.nanmean(key, dim=0)
        agg = nanmean(scores)
        return RandomizationResult(
            scores=scores, aggregate=agg, target=target.cpu(), steps=order, per_step=per_step,
            flag=None if math.isnan(agg) else bool(agg > self.threshold),
            threshold=self.threshold, original_maps=original.cpu(), maps=torch.stack(maps).cpu(),
            meta={"mode": self.mode},
            undefined=_undefined(scores, original, maps[-1:] if self.mode == "cascading" else maps,
                                 "randomized model"))


@register("metric", "data_randomization", paper="Adebayo, Gilmer, Muelly, Goodfellow, Hardt, "
          "Kim. Sanity checks for saliency maps. NeurIPS 2018",
          test_params={"epochs": 1, "measures": ("spearman_abs",)})
class DataRandomization(Metric):
    """Data randomization test: does the explanation depend on the labels learned?

    The training labels are permuted at random (seeded), a model of the same
    architecture (a deep copy of the user's network with every layer
    re-initialised by its ``reset_parameters``) is trained on them with
    :func:`scrutiny.models.training.train` (Adam, one thread), and its
    explanations of ``x`` for the same targets are compared with the trained
    model's (Adebayo et al., Section 3.2) with the measures of
    :class:`ModelRandomization`. The permuted-label model can only memorise:
    its accuracy on the permuted training labels is reported in
    ``extra["train_accuracy"]`` beside the chance level
    ``extra["chance_accuracy"]`` (the largest class frequency) and its
    accuracy on ``x`` w.r.t. ``target`` in ``extra["accuracy_on_x"]``.

    The paper trains until the model fits the random labels (high training
    accuracy); with the default few epochs a small network fits only part of
    a large training set, so pass a subset (a few hundred samples) or raise
    ``epochs`` when a full fit matters.

    Parameters
    ----------
    epochs : int
        Training epochs of the permuted-label model.
    lr : float
        Its learning rate (Adam).
    weight_decay : float
        Its weight decay.
    measures : tuple of str
        As in :class:`ModelRandomization`.
    threshold : float
        Flag when the mean rank correlation of absolute maps is above it.
    batch_size : int
        Training mini-batch size and inputs per explainer call.

    References
    ----------
    .. [1] Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim. "Sanity checks for
       saliency maps". NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> train_data, x = load_digits(), load_digits(split="test").x[:8]
    >>> res = DataRandomization(epochs=2)(pretrained("digits-cnn", progress=False), x,
    ...                                   explainer="gradient", train_data=train_data)
    >>> sorted(res.extra)
    ['accuracy_on_x', 'chance_accuracy', 'train_accuracy']
    """

    needs_explainer = True
    call_data = ("train_data",)

    epochs: int = param(50, integer=True, positive=True)
    lr: float = param(1e-2, positive=True)
    weight_decay: float = param(0.0, nonneg=True)
    measures: tuple[str, ...] = param(("spearman_abs", "spearman", "ssim"), kind=tuple,
                                      check=_check_measures)
    threshold: float = param(0.5, between=(-1, 1))
    batch_size: int = param(64, integer=True, positive=True)

    def _evaluate(self, model, x, target, explainer, attributions, seed, train_data=None):
        if not isinstance(train_data, ArrayDataset):
            raise InputError("DataRandomization needs train_data= (an ArrayDataset, e.g. "
                             f"scrutiny.data.load_digits()), got {type(train_data).__name__}")
        if tuple(train_data.input_shape) != tuple(x.shape[1:]):
            raise InputError(f"train_data inputs have shape {tuple(train_data.input_shape)}, "
                             f"x has {tuple(x.shape[1:])}")
        if train_data.num_classes > (model.num_classes or 0):
            raise InputError(f"train_data has {train_data.num_classes} classes, the model "
                             f"{model.num_classes}")
        original = _explain_chunks(explainer, model, x, target, seed, self.batch_size)
        s = 0 if seed is None else int(seed)
        gen = torch.Generator().manual_seed(s)
        y_perm = train_data.y[torch.randperm(len(train_data), generator=gen)]
        permuted = ArrayDataset(x=train_data.x, y=y_perm, classes=train_data.classes,
                                name=f"{train_data.name}-permuted-labels")
        rand = copy.deepcopy(model)
        net = rand.module
        with seeded(_sub_seed(seed, 0), x.device):
            for m in net.modules():
                if any(True for _ in m.parameters(recurse=False)):
                    reinitialize(m)
        for p in net.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            train(net, permuted, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                  weight_decay=self.weight_decay, seed=s, threads=1, progress=show_progress())
        for p in net.parameters():
            p.requires_grad_(False)
        pred = rand.predict(train_data.x, batch_size=1024).cpu()
        extra = {"train_accuracy": float((pred == y_perm).float().mean()),
                 "chance_accuracy": float(torch.bincount(y_perm).max()) / len(y_perm),
                 "accuracy_on_x": float((rand.predict(x).to(target.device) == target)
                                        .float().mean())}
        maps = [_explain_chunks(explainer, rand, x, target, seed, self.batch_size)]
        per_step = _compare(self.measures, original, maps)
        scores = per_step["spearman_abs"][0]
        agg = nanmean(scores)
        return RandomizationResult(
            scores=scores, aggregate=agg, target=target.cpu(), steps=["labels"],
            per_step=per_step, flag=None if math.isnan(agg) else bool(agg > self.threshold),
            threshold=self.threshold, original_maps=original.cpu(), maps=torch.stack(maps).cpu(),
            extra=extra, meta=dict(extra),
            undefined=_undefined(scores, original, maps, "permuted-label model"))


model_randomization = metric_twin(ModelRandomization, "model_randomization")
data_randomization = metric_twin(DataRandomization, "data_randomization")
