"""What the attacks on training share: the base of kind ``"poisoning"``, its result, the
victim's training and the backdoor's figures of merit.

A poisoning attack changes what a model is trained on (a few points, a few labels, a
trigger) so that the trained model does what the attacker wants: misclassify a target,
or obey a trigger while keeping its clean accuracy. It is called as
``attack(model, data, *, test=None, seed=0)``: ``model`` is the victim's network, copied
and trained on the poisoned ``data`` (the caller's model is never changed; pass an
untrained network for the outsourced-training scenario of BadNets, a trained one to
fine-tune), ``test`` the clean data to measure the result on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scrutiny.attacks.poisoning.trigger import Trigger
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.data_method import DataMethod, DataResult, check_dataset
from scrutiny.models.training import Objective, TrainHistory, train
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param

__all__ = ["BackdoorResult", "PoisonResult", "Poisoning", "TrainingPoisoning", "accuracy",
           "attack_success_rate", "backdoor_targets", "train_victim"]


@dataclass(repr=False)
class PoisonResult(DataResult):
    """The outcome of a poisoning attack.

    Attributes
    ----------
    data : ArrayDataset
        The training set the victim was trained on (clean points and poison points).
    poisoned : torch.Tensor
        ``int64`` indices of the poison points in ``data``.
    model : nn.Module or None
        The victim trained on ``data`` (eval mode); None when the attack trains nothing.
    clean_accuracy : float or None
        The victim's accuracy on the clean test inputs (None without ``test``).
    attack_success : float or None
        The fraction of the attack's test cases where the victim does what the attacker
        wants (each attack says which cases; None without ``test``).
    history : TrainHistory or None
        The victim's training loss and accuracy per epoch.
    """

    data: ArrayDataset
    poisoned: torch.Tensor
    model: nn.Module | None = None
    clean_accuracy: float | None = None
    attack_success: float | None = None
    history: TrainHistory | None = None

    @property
    def poison_rate(self) -> float:
        """Fraction of the training set that is poison."""
        return len(self.poisoned) / max(len(self.data), 1)


@dataclass(repr=False)
class BackdoorResult(PoisonResult):
    """A backdoor attack's outcome: adds the ``trigger`` and the ``target`` label (None for
    all-to-all, where label ``k`` goes to ``(k + 1) mod K``)."""

    trigger: Trigger | None = None
    target: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        return {"method": self.meta.get("method"), "target": self.target,
                "poison_rate": self.poison_rate, "n_poisoned": len(self.poisoned),
                "clean_accuracy": self.clean_accuracy, "attack_success": self.attack_success,
                "trigger_area": self.trigger.area if self.trigger is not None else None}


class Poisoning(DataMethod):
    """Base of the attacks on training (registry kind ``"poisoning"``).

    A subclass declares its hyperparameters, implements ``_run(model, data, *, seed, test)``
    and returns a :class:`PoisonResult`; one that trains its victim derives from
    :class:`TrainingPoisoning` (the victim's training settings and :meth:`~TrainingPoisoning.train_copy`).
    """

    kind = "poisoning"

    def __call__(self, model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
                 test: ArrayDataset | None = None, **call: Any) -> PoisonResult:
        """Poison ``data``, train a copy of ``model`` on it and measure the victim on
        ``test`` (clean data; optional)."""
        if data is None:
            raise InputError(f"{type(self).__name__} needs the training data: attack(model, data)")
        if test is not None:
            check_dataset(type(self).__name__, test, "test data")
        return super().__call__(model, data, seed=seed, test=test, **call)

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        return method(model, data, seed=seed, test=data)


class TrainingPoisoning(Poisoning):
    """A poisoning attack that trains its victim: declares the victim's training settings
    (``epochs``, ``lr``, ``batch_size``); :meth:`train_copy` trains a copy of the victim."""

    epochs: int = param(30, integer=True, positive=True)
    lr: float = param(3e-3, positive=True)
    batch_size: int = param(64, integer=True, positive=True)

    def train_copy(self, model: TorchModel | nn.Module, data: ArrayDataset, *, seed: int | None,
                   objective: Objective | None = None, epochs: int | None = None
                   ) -> tuple[nn.Module, TrainHistory]:
        """A copy of ``model`` trained on ``data`` with this attack's training settings."""
        return train_victim(model, data, epochs=epochs or self.epochs, lr=self.lr,
                            batch_size=self.batch_size, seed=0 if seed is None else seed,
                            objective=objective)


def train_victim(model: TorchModel | nn.Module, data: ArrayDataset, *, epochs: int = 10,
                 lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                 objective: Objective | None = None) -> tuple[nn.Module, TrainHistory]:
    """A deep copy of ``model`` (its module when wrapped) trained on ``data`` with
    :func:`scrutiny.models.training.train` (one thread, seeded, no progress bar), returned
    in eval mode with its history. The caller's model is not changed."""
    module = model.module if isinstance(model, TorchModel) else model
    victim = copy.deepcopy(module)
    for p in victim.parameters():
        p.requires_grad_(True)
        p.grad = None
    hist = train(victim, data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 progress=False, objective=objective)
    for p in victim.parameters():
        p.grad = None
    return victim.eval(), hist


def backdoor_targets(y: torch.Tensor, target: int | None, num_classes: int) -> torch.Tensor:
    """The label a backdoor maps each true label ``y`` to: ``target`` (all-to-one), or
    ``(y + 1) mod num_classes`` when ``target`` is None (all-to-all)."""
    if target is None:
        return (y + 1) % num_classes
    return torch.full_like(y, int(target))


@torch.no_grad()
def accuracy(model: Any, data: ArrayDataset) -> float:
    """The model's accuracy on ``data`` (eval mode; the model is restored)."""
    if len(data) == 0:
        return float("nan")
    tm = as_model(model)
    return float((tm.predict(data.x.to(tm.device)).cpu() == data.y).float().mean())


@torch.no_grad()
def attack_success_rate(model: Any, data: ArrayDataset, trigger: Trigger, target: int | None
                        ) -> float:
    """The backdoor's attack success rate (Gu et al. 2017): among the test inputs whose
    true label is not already the target, the fraction the model classifies as the
    target once the trigger is stamped (all-to-all, ``target=None``: as ``(y + 1) mod K``
    over every input). NaN when no input qualifies."""
    tm = as_model(model)
    k = len(data.classes)
    keep = torch.ones(len(data), dtype=torch.bool) if target is None else data.y != int(target)
    if not bool(keep.any()):
        return float("nan")
    x, y = data.x[keep], data.y[keep]
    pred = tm.predict(trigger.apply(x).to(tm.device)).cpu()
    return float((pred == backdoor_targets(y, target, k)).float().mean())
