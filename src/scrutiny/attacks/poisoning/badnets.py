"""BadNets: a backdoor planted by poisoning a fraction of the training set (Gu et al. 2017)."""

from __future__ import annotations

from typing import Any

import torch

from scrutiny.attacks.poisoning.base import (
    BackdoorResult,
    TrainingPoisoning,
    accuracy,
    attack_success_rate,
    backdoor_targets,
)
from scrutiny.attacks.poisoning.trigger import PATTERNS, POSITIONS, Trigger
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["BadNets", "badnets"]

_PAPER = ("Gu, Dolan-Gavitt, Garg. BadNets: Identifying Vulnerabilities in the Machine "
          "Learning Model Supply Chain. arXiv:1708.06733, 2017")


@register("poisoning", "badnets", paper=_PAPER, test_params={"epochs": 1, "size": 2, "rate": 0.2})
class BadNets(TrainingPoisoning):
    """BadNets: stamp a trigger on a fraction of the training inputs, relabel them, train.

    The attacker who trains the model (or supplies part of its data) picks a trigger, a
    small patch at a fixed position, and a target. A fraction ``rate`` of the training
    inputs (drawn among those whose label is not already the target) get the trigger and
    the target label (all-to-one), or label ``(k + 1) mod K`` for true label ``k``
    (all-to-all, ``all_to_all=True``); the rest stay clean. A network trained on that set
    learns the task and the backdoor: clean inputs are classified as before, any input
    carrying the trigger goes to the target. The result holds the poisoned set, the
    indices of its poison points, the trained victim, its clean accuracy and its attack
    success rate (the fraction of triggered test inputs of another class classified as
    the target) on ``test``.

    Parameters
    ----------
    target : int
        The target label of all-to-one; ignored when ``all_to_all``.
    all_to_all : bool
        Map each label ``k`` to ``(k + 1) mod K`` instead of one target.
    rate : float
        Fraction of the training set that is poisoned (points added as copies when
        ``mode="add"``, replaced when ``mode="replace"``).
    mode : {"replace", "add"}
        ``"replace"``: the poison points replace their clean originals (the set keeps its
        size); ``"add"``: triggered copies are appended to the clean set (as in the paper's
        traffic-sign experiments).
    size : int
        Side of the trigger patch in pixels.
    position : str
        Where the patch sits: ``"bottom_right"``, ``"bottom_left"``, ``"top_right"``,
        ``"top_left"`` (one pixel from the corner) or ``"center"``.
    pattern : {"checkerboard", "square"}
        What the patch shows (see :meth:`Trigger.patch`).
    value : float
        The patch's bright value (its dark pixels are 0).
    epochs : int
        Epochs of the victim's training (Adam, cosine schedule;
        :func:`scrutiny.models.training.train`; 30 as the zoo's digits CNN).
    lr : float
        The victim's learning rate.
    batch_size : int
        The victim's batch size.

    References
    ----------
    .. [1] Gu, Dolan-Gavitt, Garg. BadNets: Identifying Vulnerabilities in the Machine
       Learning Model Supply Chain. arXiv:1708.06733, 2017.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import build
    >>> attack = BadNets(target=0, rate=0.1, epochs=20)
    >>> r = attack(build("cnn", (1, 8, 8), 10), load_digits(split="train"),
    ...            test=load_digits(split="test"))
    >>> r.attack_success > 0.9, r.clean_accuracy > 0.9
    (True, True)
    """

    target: int = param(0, integer=True, nonneg=True)
    all_to_all: bool = param(False, kind=bool)
    rate: float = param(0.1, between=(0.0, 1.0), interval="(]")
    mode: str = param("replace", choices=("replace", "add"))
    size: int = param(3, integer=True, positive=True)
    position: str = param("bottom_right", choices=POSITIONS)
    pattern: str = param("checkerboard", choices=PATTERNS)
    value: float = param(1.0)

    def trigger(self, shape: tuple[int, ...]) -> Trigger:
        """The trigger for inputs of ``shape`` ``(C, H, W)``."""
        return Trigger.patch(shape, size=self.size, position=self.position,
                             pattern=self.pattern, value=self.value)

    def poison(self, data: ArrayDataset, *, seed: int | None = 0
               ) -> tuple[ArrayDataset, torch.Tensor]:
        """The poisoned training set and the indices of its poison points (seeded draw)."""
        k = len(data.classes)
        target = None if self.all_to_all else self.target
        if target is not None and target >= k:
            raise InputError(f"target {target} is not a label of {data.name} ({k} classes)")
        eligible = torch.arange(len(data)) if target is None else \
            torch.nonzero(data.y != target).flatten()
        n = int(round(self.rate * len(data)))
        if n < 1 or len(eligible) == 0:
            raise InputError(f"rate={self.rate} of {len(data)} training points poisons none")
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        if n > len(eligible) and self.mode == "replace":
            raise InputError(f"rate={self.rate} asks for {n} poison points, but only "
                             f"{len(eligible)} points are not of the target label")
        pick = eligible[torch.randperm(len(eligible), generator=gen)[:n]] if n <= len(eligible) \
            else eligible[torch.randint(len(eligible), (n,), generator=gen)]
        pick = pick.sort().values
        trig = self.trigger(tuple(data.x.shape[1:]))
        xp = trig.apply(data.x[pick])
        yp = backdoor_targets(data.y[pick], target, k)
        if self.mode == "replace":
            x, y = data.x.clone(), data.y.clone()
            x[pick], y[pick] = xp, yp
            idx = pick
        else:
            x, y = torch.cat([data.x, xp]), torch.cat([data.y, yp])
            idx = torch.arange(len(data), len(data) + n)
        out = ArrayDataset(x=x, y=y, classes=data.classes, name=f"{data.name}+badnets",
                           feature_names=data.feature_names)
        return out, idx

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None,
             test: ArrayDataset | None = None) -> BackdoorResult:
        poisoned, idx = self.poison(data, seed=seed)
        victim, hist = self.train_copy(model, poisoned, seed=seed)
        trig = self.trigger(tuple(data.x.shape[1:]))
        target = None if self.all_to_all else self.target
        return BackdoorResult(
            data=poisoned, poisoned=idx, model=victim, history=hist,
            clean_accuracy=accuracy(victim, test) if test is not None else None,
            attack_success=attack_success_rate(victim, test, trig, target) if test is not None else None,
            trigger=trig, target=target, meta={"method": self.name, **self.get_params()})


def badnets(model: Any, data: ArrayDataset, *, test: ArrayDataset | None = None,
            seed: int | None = 0, **params: Any) -> BackdoorResult:
    """Function form of :class:`BadNets`: ``badnets(model, data, test=test, target=0)``."""
    return BadNets(**params)(model, data, test=test, seed=seed)
