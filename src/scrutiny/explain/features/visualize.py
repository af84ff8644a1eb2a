"""Feature visualisation by optimisation: activation maximisation, class prototypes, facets.

All three optimise a batch of inputs with Adam for an :class:`~.objectives.Objective`
(one value per input, maximised), inside the model's bounds (the images are made from free
variables by :class:`~.param.ImageParam`), with the regularisers of
:mod:`~.regularizers` chosen by argument: at each step

``loss_i = -objective(T(x_i)) + l2 * mean((x_i - c)^2) + tv * TV(x_i)``

where ``T`` is a random draw of the selected transforms (jitter, scale, rotate) and ``c``
the middle of the bounds. The images of a batch never interact (each has its own loss).

- :class:`ActivationMaximization` (Erhan et al. 2009; Olah et al. 2017): images for any
  objective (a neuron, a channel, a layer, a class's logit or probability, or a weighted
  sum of them), and the same objective on dataset examples for comparison.
- :class:`ClassPrototype` (Simonyan et al. 2014): one image per class, maximising the
  class's logit (or probability) with L2 regularisation.
- :class:`Multifaceted` (Nguyen, Yosinski, Clune 2016): the dataset's top inputs of a unit,
  clustered by k-means on their activations; one optimisation per cluster, started from
  its mean image, shows the unit's different facets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.cam.gradcam import last_conv
from scrutiny.explain.features.objectives import (
    Objective,
    channel,
    class_logit,
    class_probability,
)
from scrutiny.explain.features.param import PARAMETRIZATIONS, ImageParam
from scrutiny.explain.features.regularizers import (
    Jitter,
    Rotate,
    Scale,
    apply_transforms,
    l2_penalty,
    total_variation,
)
from scrutiny.explain.gradient.layer import layer_activations
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["ActivationMaximization", "ClassPrototype", "Facets", "Multifaceted", "Prototypes",
           "Visualization", "activation_maximization", "class_prototype", "multifaceted",
           "objective_on", "optimize"]

_CHUNK = 256


def objective_on(model: TorchModel, objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """The objective at inputs ``x`` (N,), without a graph, in chunks (on the CPU)."""
    if not len(x):
        return torch.zeros(0)
    with torch.no_grad():
        return torch.cat([objective.values(model, x[i:i + _CHUNK].to(model.device)).float().cpu()
                          for i in range(0, len(x), _CHUNK)])


def optimize(model: TorchModel, objective: Objective, image: ImageParam, *, steps: int,
             lr: float, l2: float = 0.0, tv: float = 0.0,
             transforms: Sequence[Jitter | Scale | Rotate] = ()
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximise ``objective`` over the free variables of ``image`` with Adam.

    Returns the images (detached, on the CPU) and the objective's trace (steps, N): its
    value at each step's (transformed) inputs, before the step. Input gradients only
    (:func:`torch.autograd.grad`): no weight gradient is made.
    """
    opt = torch.optim.Adam([image.z], lr=lr)
    center = (image.lo + image.hi) / 2
    trace = []
    for _ in range(steps):
        x = image()
        v = objective.values(model, apply_transforms(x, transforms))
        loss = -v.sum()
        if l2:
            loss = loss + l2 * l2_penalty(x, center).sum()
        if tv:
            loss = loss + tv * total_variation(x).sum()
        (g,) = torch.autograd.grad(loss, [image.z])
        image.z.grad = g
        opt.step()
        trace.append(v.detach().float().cpu())
    image.z.grad = None
    with torch.no_grad():
        out = image().detach().cpu()
    trace_t = torch.stack(trace) if trace else torch.zeros(0, image.shape[0])
    return out, trace_t


def _check_objective(objective: Any) -> Objective:
    if not isinstance(objective, Objective):
        raise InputError("objective must be an Objective (scrutiny.explain.features.channel(...), "
                         f"neuron, deepdream, class_logit, ...), got {type(objective).__name__}")
    return objective


def _input_shape(data: ArrayDataset | None, shape: Sequence[int] | None) -> tuple[int, ...]:
    if shape is not None:
        if not isinstance(shape, Sequence) or not shape or \
                not all(isinstance(s, int) and s > 0 for s in shape):
            raise InputError(f"shape must be a tuple of positive ints (C, H, W), got {shape!r}")
        return tuple(shape)
    if data is None:
        raise InputError("give the input shape (shape=(C, H, W)) or data to read it from")
    return tuple(data.x.shape[1:])


def _check_scale(name: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if len(value) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                  for v in value):
        raise InputError(f"{name} must be (low, high), got {value!r}")
    Scale(float(value[0]), float(value[1]))
    return (float(value[0]), float(value[1]))


class _Optimizing(Learned):
    """The optimisation and regularisation settings shared by the methods of this module."""

    steps: int = param(256, integer=True, positive=True)
    lr: float = param(0.05, positive=True)
    parametrization: str = param("pixel", choices=PARAMETRIZATIONS)
    decorrelate: bool = param(True, kind=bool)
    l2: float = param(0.0, nonneg=True)
    tv: float = param(0.0, nonneg=True)
    jitter: int = param(0, integer=True, nonneg=True)
    scale: tuple[float, float] | None = param(None, kind=tuple, check=_check_scale)
    rotate: float = param(0.0, nonneg=True)
    init_std: float = param(0.01, nonneg=True)

    def transforms(self) -> tuple[Jitter | Scale | Rotate, ...]:
        """The selected random transforms, in the order they are applied."""
        out: list[Jitter | Scale | Rotate] = []
        if self.jitter:
            out.append(Jitter(self.jitter))
        if self.scale is not None:
            out.append(Scale(*self.scale))
        if self.rotate:
            out.append(Rotate(self.rotate))
        return tuple(out)

    def _random(self, model: TorchModel, shape: tuple[int, ...]) -> ImageParam:
        return ImageParam.random(shape, model.bounds, kind=self.parametrization,
                                 decorrelate=self.decorrelate, std=self.init_std,
                                 device=model.device)

    def _optimize(self, model: TorchModel, objective: Objective, image: ImageParam
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        return optimize(model, objective, image, steps=self.steps, lr=self.lr, l2=self.l2,
                        tv=self.tv, transforms=self.transforms())

    def _meta(self, **extra: Any) -> dict[str, Any]:
        return {"method": self.name, **self.get_params(), **extra}


_SHARED = """
    steps : int
        Adam steps.
    lr : float
        Adam's learning rate (on the free variables of the parametrisation).
    parametrization : {"pixel", "fourier"}
        The free variables: pixels, or the 1/f-scaled Fourier spectrum (preconditioned
        towards low frequencies); the image is ``lo + (hi - lo) * sigmoid(.)``.
    decorrelate : bool
        With 3 channels, optimise decorrelated colour components (ImageNet's colour
        correlation); ignored for other channel counts.
    l2 : float
        Weight of the L2 penalty ``mean((x - c)^2)``, ``c`` the middle of the bounds.
    tv : float
        Weight of the total variation penalty.
    jitter : int
        Random shift of up to this many pixels per step (0: none).
    scale : (float, float), optional
        Random zoom by a factor in ``[low, high]`` per step (None: none).
    rotate : float
        Random rotation of up to this many degrees per step (0: none).
    init_std : float
        Standard deviation of the seeded random start of the free variables."""


@dataclass
class Visualization(LearnedResult):
    """Optimised inputs for an objective.

    Attributes
    ----------
    images : Tensor
        The optimised inputs ``(n, *input_shape)``, inside the model's bounds.
    trace : Tensor
        The objective at each step ``(steps, n)`` (at the transformed inputs, before the step).
    values : Tensor
        The objective at the final images ``(n,)`` (untransformed).
    data_values : Tensor or None
        The objective at each dataset example ``(N,)`` when data was given.
    """

    images: torch.Tensor
    trace: torch.Tensor
    values: torch.Tensor
    data_values: torch.Tensor | None = None


@register("learned", "activation_maximization",
          paper="Erhan, Bengio, Courville, Vincent. Visualizing higher-layer features of a deep "
                "network. University of Montreal TR 1341, 2009; Olah, Mordvintsev, Schubert. "
                "Feature visualization. Distill 2017",
          test_params={"steps": 3})
class ActivationMaximization(_Optimizing):
    __doc__ = """Activation maximisation: inputs optimised to maximise an objective.

    ``x* = argmax_x objective(x) - penalties``, by Adam from a seeded random start, within
    the model's bounds. The objective is any :class:`~.objectives.Objective`: a
    :func:`~.objectives.neuron`, :func:`~.objectives.channel`, layer
    (:func:`~.objectives.deepdream`), :func:`~.objectives.class_logit`,
    :func:`~.objectives.class_probability`, or a weighted sum of them. With ``data`` the
    result also holds the objective at every dataset example: how far the optimised input
    goes beyond the inputs the model was trained on.

    Call: ``ActivationMaximization(...)(model, data=None, *, objective, shape=None,
    seed=0)``; ``shape`` (the input shape, ``(C, H, W)``) is needed only without data.

    Parameters
    ----------
    n_images : int
        Images optimised at once, from different random starts.""" + _SHARED + """

    References
    ----------
    .. [1] Erhan, Bengio, Courville, Vincent. "Visualizing higher-layer features of a deep
       network". University of Montreal technical report 1341, 2009.
    .. [2] Olah, Mordvintsev, Schubert. "Feature Visualization". Distill 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.explain.features import channel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> am = ActivationMaximization(steps=100, lr=0.1, tv=0.5)
    >>> r = am(model, load_digits(split="test"), objective=channel("features.5", 0))
    >>> tuple(r.images.shape), bool(r.values[0] > r.data_values.max())
    ((1, 1, 8, 8), True)
    """

    n_images: int = param(1, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             objective: Objective, shape: Sequence[int] | None = None) -> Visualization:
        objective = _check_objective(objective)
        in_shape = _input_shape(data, shape)
        image = self._random(model, (self.n_images, *in_shape))
        images, trace = self._optimize(model, objective, image)
        values = objective_on(model, objective, images)
        data_values = objective_on(model, objective, data.x) if data is not None else None
        return Visualization(images=images, trace=trace, values=values, data_values=data_values,
                             meta=self._meta(objective=repr(objective), seed=seed))

    @classmethod
    def common_call(cls, method, model, data, *, seed=0):
        # tiny_cnn's layer "2" (its last conv; the same layer under another wrapper's name)
        return method(model, data, objective=channel(last_conv(model), 0), seed=seed)


def activation_maximization(model: Any, objective: Objective, data: ArrayDataset | None = None,
                            *, shape: Sequence[int] | None = None, seed: int | None = 0,
                            **hyperparameters: Any) -> Visualization:
    """Function twin of :class:`ActivationMaximization`:
    ``activation_maximization(model, objective, data=None, shape=None, seed=0, **hyperparameters)``."""
    return ActivationMaximization(**hyperparameters)(model, data, objective=objective,
                                                     shape=shape, seed=seed)


@dataclass
class Prototypes(LearnedResult):
    """One optimised input per class.

    Attributes
    ----------
    images : Tensor
        ``(K, *input_shape)``: ``images[i]`` maximises the score of class ``classes[i]``.
    classes : Tensor
        The classes ``(K,)``.
    values : Tensor
        The score (logit or probability) of its class at each final image ``(K,)``.
    predicted : Tensor
        The model's prediction for each image ``(K,)``.
    probabilities : Tensor
        The softmax probability of its class at each image ``(K,)``.
    trace : Tensor
        The score at each step ``(steps, K)``.
    """

    images: torch.Tensor
    classes: torch.Tensor
    values: torch.Tensor
    predicted: torch.Tensor
    probabilities: torch.Tensor
    trace: torch.Tensor


@register("learned", "class_prototype",
          paper="Simonyan, Vedaldi, Zisserman. Deep inside convolutional networks: visualising "
                "image classification models and saliency maps. ICLR workshop 2014",
          test_params={"steps": 3})
class ClassPrototype(_Optimizing):
    __doc__ = """Class prototypes ("class model visualisation"): one optimised image per class.

    Simonyan et al. 2014: ``I_c = argmax_I S_c(I) - lambda ||I||^2``, with ``S_c`` the
    class's score before the softmax, optimised from a (seeded) near-constant start;
    ``l2`` is ``lambda`` (on the deviation from the middle of the bounds). ``score =
    "probability"`` maximises the softmax probability instead, which can also be raised
    by lowering the other classes' scores (the paper uses the score for that reason); it
    is optimised as the log-probability (same maximiser; the probability's own gradient
    vanishes where the class starts improbable, and the L2 penalty then holds the image
    at its start). All classes are optimised in one batch; the result says how the model
    classifies each prototype.

    Call: ``ClassPrototype(...)(model, data=None, *, classes=None, shape=None, seed=0)``;
    ``classes`` defaults to all of the model's classes; ``shape`` (the input shape) is
    needed only without data.

    Parameters
    ----------
    score : {"logit", "probability"}
        Maximise the class's logit (the paper) or its softmax probability (as its log).""" + _SHARED + """

    References
    ----------
    .. [1] Simonyan, Vedaldi, Zisserman. "Deep inside convolutional networks: visualising
       image classification models and saliency maps". ICLR workshop 2014.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> model = pretrained("digits-cnn", progress=False)
    >>> r = ClassPrototype()(model, shape=(1, 8, 8))
    >>> tuple(r.images.shape), r.predicted.tolist() == r.classes.tolist()
    ((10, 1, 8, 8), True)
    """

    score: str = param("logit", choices=("logit", "probability"))
    steps: int = param(200, integer=True, positive=True)
    l2: float = param(0.3, nonneg=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             classes: Sequence[int] | None = None, shape: Sequence[int] | None = None
             ) -> Prototypes:
        in_shape = _input_shape(data, shape)
        if classes is None:
            k = model.num_classes
            if k is None:
                with torch.no_grad():
                    k = model(torch.full((1, *in_shape), sum(model.bounds) / 2,
                                         device=model.device)).shape[1]
            classes = list(range(k))
        wanted = classes.tolist() if isinstance(classes, torch.Tensor) else list(classes)
        objective = (class_logit(wanted) if self.score == "logit"
                     else class_probability(wanted, log=True))
        cls_t = torch.tensor(objective.terms[0][1].cls, dtype=torch.long)
        image = self._random(model, (len(cls_t), *in_shape))
        images, trace = self._optimize(model, objective, image)
        with torch.no_grad():
            logits = model(images.to(model.device)).float().cpu()
        values = (logits if self.score == "logit" else logits.softmax(1)).gather(
            1, cls_t[:, None])[:, 0]
        return Prototypes(images=images, classes=cls_t, values=values,
                          predicted=logits.argmax(1),
                          probabilities=logits.softmax(1).gather(1, cls_t[:, None])[:, 0],
                          trace=trace, meta=self._meta(seed=seed))


def class_prototype(model: Any, data: ArrayDataset | None = None, *,
                    classes: Sequence[int] | None = None, shape: Sequence[int] | None = None,
                    seed: int | None = 0, **hyperparameters: Any) -> Prototypes:
    """Function twin of :class:`ClassPrototype`:
    ``class_prototype(model, data=None, classes=None, shape=None, seed=0, **hyperparameters)``."""
    return ClassPrototype(**hyperparameters)(model, data, classes=classes, shape=shape, seed=seed)


@dataclass
class Facets(LearnedResult):
    """The facets of a unit: one optimised input per cluster of its top dataset examples.

    Attributes
    ----------
    images : Tensor
        The facets ``(k, *input_shape)``, largest cluster first.
    starts : Tensor
        Each facet's start: the mean image of its cluster ``(k, *input_shape)``.
    values : Tensor
        The objective at each facet ``(k,)``.
    start_values : Tensor
        The objective at each start ``(k,)``.
    top_indices : Tensor
        The dataset indices of the unit's top examples, best first ``(top,)``.
    labels : Tensor
        The cluster (facet index) of each top example ``(top,)``.
    trace : Tensor
        The objective at each step ``(steps, k)``.
    """

    images: torch.Tensor
    starts: torch.Tensor
    values: torch.Tensor
    start_values: torch.Tensor
    top_indices: torch.Tensor
    labels: torch.Tensor
    trace: torch.Tensor


@register("learned", "multifaceted",
          paper="Nguyen, Yosinski, Clune. Multifaceted feature visualization: uncovering the "
                "different types of features learned by each neuron in deep neural networks. "
                "ICML workshop on visualization for deep learning 2016",
          test_params={"steps": 3, "facets": 2, "top": 10})
class Multifaceted(_Optimizing):
    __doc__ = """Multifaceted feature visualisation: one optimised input per facet of a unit.

    Nguyen et al. 2016: a unit responds to several kinds of input (its facets). Take the
    ``top`` dataset examples with the highest objective, cluster their activations at
    ``cluster_layer`` with k-means (scikit-learn, ``k = facets``, seeded), and run one
    activation maximisation per cluster, started from the cluster's mean image (not from
    noise), so each optimisation stays near its facet. The paper embeds the activations
    with t-SNE before k-means and adds a centre-bias regulariser; here k-means runs on
    the activations themselves and the regularisers are those of this module.

    Call: ``Multifaceted(...)(model, data, *, objective, seed=0)``.

    Parameters
    ----------
    facets : int
        Clusters (facets) ``k``.
    top : int
        Top dataset examples clustered (all of them if the data has fewer).
    cluster_layer : str, optional
        The layer whose activations are clustered (default: the first layer the objective
        reads).""" + _SHARED + """

    References
    ----------
    .. [1] Nguyen, Yosinski, Clune. "Multifaceted feature visualization: uncovering the
       different types of features learned by each neuron in deep neural networks".
       ICML workshop on visualization for deep learning 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.explain.features import channel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> r = Multifaceted(facets=3, steps=50, lr=0.05)(model, load_digits(split="test"),
    ...                                              objective=channel("features.5", 0))
    >>> tuple(r.images.shape), len(set(r.labels.tolist()))
    ((3, 1, 8, 8), 3)
    """

    facets: int = param(4, integer=True, positive=True)
    top: int = param(100, integer=True, positive=True)
    cluster_layer: str | None = param(None, kind=str)
    steps: int = param(64, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             objective: Objective) -> Facets:
        from sklearn.cluster import KMeans

        objective = _check_objective(objective)
        if data is None:
            raise InputError("multifaceted needs data (the unit's top examples are clustered)")
        layer = self.cluster_layer or (objective.layers[0] if objective.layers else None)
        if layer is None:
            raise InputError("the objective reads no layer: give cluster_layer")
        top = min(self.top, len(data))
        if self.facets > top:
            raise InputError(f"facets={self.facets} is more than the {top} top examples")
        scores = objective_on(model, objective, data.x)
        order = torch.sort(scores, descending=True, stable=True).indices[:top]
        x = data.x[order]
        acts = torch.cat([layer_activations(model, layer, x[i:i + _CHUNK].to(model.device))
                          .flatten(1).double().cpu() for i in range(0, top, _CHUNK)])
        km = KMeans(n_clusters=self.facets, n_init=10,
                    random_state=0 if seed is None else int(seed) % 2**32)
        raw = km.fit_predict(acts.numpy())
        sizes = np.bincount(raw, minlength=self.facets)
        rank = np.argsort(-sizes, kind="stable")  # largest cluster first
        labels = torch.as_tensor(np.argsort(rank)[raw], dtype=torch.long)
        starts = torch.stack([x[labels == j].mean(0) for j in range(self.facets)])
        image = ImageParam.from_images(starts.to(model.device), model.bounds,
                                       kind=self.parametrization, decorrelate=self.decorrelate)
        images, trace = self._optimize(model, objective, image)
        return Facets(images=images, starts=starts, values=objective_on(model, objective, images),
                      start_values=objective_on(model, objective, starts),
                      top_indices=order, labels=labels, trace=trace,
                      meta=self._meta(objective=repr(objective), layer=layer, seed=seed))

    @classmethod
    def common_call(cls, method, model, data, *, seed=0):
        # tiny_cnn's layer "2" (its last conv; the same layer under another wrapper's name)
        return method(model, data, objective=channel(last_conv(model), 0), seed=seed)


def multifaceted(model: Any, objective: Objective, data: ArrayDataset, *, seed: int | None = 0,
                 **hyperparameters: Any) -> Facets:
    """Function twin of :class:`Multifaceted`:
    ``multifaceted(model, objective, data, seed=0, **hyperparameters)``."""
    return Multifaceted(**hyperparameters)(model, data, objective=objective, seed=seed)
