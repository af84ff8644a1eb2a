"""Dataset examples of a unit, and of a random direction of the same layer (Szegedy 2014)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.cam.gradcam import last_conv
from scrutiny.explain.features.objectives import direction
from scrutiny.explain.features.visualize import objective_on
from scrutiny.explain.gradient.layer import layer_activations
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["DatasetExamples", "TopExamples", "dataset_examples"]


@dataclass
class TopExamples(LearnedResult):
    """The top-k dataset examples along a unit's direction and along a random direction.

    Attributes
    ----------
    unit_indices, random_indices : Tensor
        Dataset indices of the top ``k`` examples ``(k,)``, best first.
    unit_scores, random_scores : Tensor
        Their scores ``(k,)``: the projection of the layer's spatially averaged activations
        on the unit's basis vector (the channel's mean) and on ``direction``.
    unit_images, random_images : Tensor
        The examples ``(k, *input_shape)``.
    direction : Tensor
        The random unit vector ``(C,)`` (one entry per channel of the layer).
    """

    unit_indices: torch.Tensor
    unit_scores: torch.Tensor
    unit_images: torch.Tensor
    random_indices: torch.Tensor
    random_scores: torch.Tensor
    random_images: torch.Tensor
    direction: torch.Tensor


@register("learned", "dataset_examples",
          paper="Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, Fergus. Intriguing "
                "properties of neural networks. ICLR 2014",
          test_params={"k": 3})
class DatasetExamples(Learned):
    """The dataset examples that most excite a unit, next to those of a random direction.

    Szegedy et al. 2014 (section 3): the inputs ``argmax_x <phi(x), e_i>`` that maximise a
    unit ``i`` of a layer ``phi`` look as semantically coherent as those that maximise
    ``<phi(x), v>`` for a random direction ``v`` of the same layer, so the natural basis
    is no better than a random one for reading a layer. Both lists are made here on the
    same footing: the same ``k``, the same data, the same scoring code (the projection of
    the layer's spatially averaged activations on a direction,
    :func:`~.objectives.direction`), with ``e_i`` the unit's basis vector and ``v`` a
    seeded random unit vector (Gaussian, normalised). Judging which list is more coherent
    is left to the reader (the paper's evidence is visual).

    Call: ``DatasetExamples(...)(model, data, *, layer, unit, seed=0)``.

    Parameters
    ----------
    k : int
        Examples per direction (all of the data if it has fewer).

    References
    ----------
    .. [1] Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, Fergus. "Intriguing
       properties of neural networks". ICLR 2014.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> r = DatasetExamples(k=8)(pretrained("digits-cnn", progress=False),
    ...                          load_digits(split="test"), layer="features.5", unit=3)
    >>> r.unit_images.shape == r.random_images.shape, float(r.direction.norm())
    (True, 1.0)
    """

    k: int = param(9, integer=True, positive=True)

    def _run(self, model: TorchModel, data: ArrayDataset | None, *, seed: int | None,
             layer: str, unit: int) -> TopExamples:
        if data is None or not len(data):
            raise InputError("dataset_examples needs data (a non-empty ArrayDataset)")
        a = layer_activations(model, layer, data.x[:1].to(model.device))
        if a.dim() < 2:
            raise InputError(f"layer {layer!r} outputs shape {tuple(a.shape)}; it has no units")
        c = a.shape[1]
        if isinstance(unit, bool) or not isinstance(unit, int) or not 0 <= unit < c:
            raise InputError(f"unit must be an integer in [0, {c}) for layer {layer!r}, "
                             f"got {unit!r}")
        basis = torch.zeros(c, dtype=torch.float64)
        basis[unit] = 1.0
        v = torch.randn(c, dtype=torch.float64)
        v = v / v.norm()
        k = min(self.k, len(data))
        found = []
        for vec in (basis, v):  # the same code for both directions
            scores = objective_on(model, direction(layer, vec), data.x)
            top = torch.sort(scores, descending=True, stable=True)
            found.append((top.indices[:k], top.values[:k], data.x[top.indices[:k]].clone()))
        (ui, us, ux), (ri, rs, rx) = found
        return TopExamples(unit_indices=ui, unit_scores=us, unit_images=ux, random_indices=ri,
                           random_scores=rs, random_images=rx, direction=v.float(),
                           meta={"method": self.name, "k": self.k, "layer": layer, "unit": unit,
                                 "seed": seed})

    @classmethod
    def common_call(cls, method, model, data, *, seed=0):
        # tiny_cnn's layer "2" (its last conv; the same layer under another wrapper's name)
        return method(model, data, layer=last_conv(model), unit=0, seed=seed)


def dataset_examples(model: Any, data: ArrayDataset, layer: str, unit: int, *,
                     seed: int | None = 0, **hyperparameters: Any) -> TopExamples:
    """Function twin of :class:`DatasetExamples`:
    ``dataset_examples(model, data, layer, unit, seed=0, **hyperparameters)``."""
    return DatasetExamples(**hyperparameters)(model, data, layer=layer, unit=unit, seed=seed)
