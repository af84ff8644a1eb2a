"""The base of the methods that say what a model has learned (registry kind ``"learned"``).

Local explainers (:class:`~scrutiny.explain.base.Explainer`) answer "why this prediction?"
with one map per input. The methods here answer "what has the model learned?": inputs
optimised to excite a unit or a class (activation maximisation, class prototypes,
multifaceted visualisation), the training points behind a prediction (influence
functions), the dataset examples of a direction, interpretable surrogates of the whole
classifier, disentangled generative factors, and counterfactuals (the smallest change
that moves a prediction). Their inputs and outputs differ; what they share (the call, the
checks of the data, the restored model, the seed, the common checks) is
:class:`~scrutiny.models.data_method.DataMethod`'s, which this base specialises to the kind
``"learned"``.

A method that needs no classifier (a beta-VAE trained on data) declares
``needs_model = False`` and is called with ``model=None``.

Examples
--------
>>> import torch
>>> from scrutiny.explain.learned import Learned, LearnedResult, same_result
>>> from dataclasses import dataclass
>>> @dataclass
... class Mean(LearnedResult):
...     mean: torch.Tensor
>>> class MeanLogit(Learned):            # a toy "what has it learned": the mean logit
...     def _run(self, model, data, **call):
...         return Mean(mean=model(data.x).mean(0), meta={})
>>> from scrutiny.models import pretrained
>>> from scrutiny.data import load_digits
>>> data = load_digits(split="test")
>>> r = MeanLogit()(pretrained("digits-cnn", progress=False), data, seed=0)
>>> tuple(r.mean.shape), same_result(r, r)
((10,), True)
"""

from __future__ import annotations

from dataclasses import dataclass

from scrutiny.models.data_method import DataMethod, DataResult, same_result

__all__ = ["Learned", "LearnedResult", "same_result"]


@dataclass(repr=False)
class LearnedResult(DataResult):
    """Base of the results of the ``"learned"`` methods: a subclass adds its fields
    (tensors, indices, fitted estimators, scores); ``meta`` holds the method's name and
    the settings the result depends on."""


class Learned(DataMethod):
    """Base of the methods of kind ``"learned"`` (what has the model learned?).

    A subclass declares its hyperparameters, implements :meth:`_run` (the call's work, on a
    :class:`~scrutiny.models.wrapper.TorchModel` in eval mode with frozen parameters, under
    the seed) and :meth:`common_call` (how the common test suite calls it on a tiny
    problem), and returns a :class:`LearnedResult`. The call, the checks of the data and
    the common checks are :class:`~scrutiny.models.data_method.DataMethod`'s.
    """

    kind = "learned"
