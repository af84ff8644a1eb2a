"""Membership inference by loss threshold (Yeom et al. 2018): was this point in the training set?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from scrutiny.attacks.privacy.base import PrivacyAttack
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.data_method import DataMethod, DataResult, check_dataset
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["MembershipInference", "MembershipResult", "membership_inference", "per_example_loss"]

_PAPER = ("Yeom, Giacomelli, Fredrikson, Jha. Privacy Risk in Machine Learning: Analyzing the "
          "Connection to Overfitting. IEEE CSF 2018")


@dataclass(repr=False)
class MembershipResult(DataResult):
    """How well a loss threshold tells the training members from other points.

    Attributes
    ----------
    advantage : float
        The membership advantage ``TPR - FPR`` (Yeom et al.'s ``Adv``): 0 for guessing, 1
        for a perfect attack.
    tpr : float
        The fraction of members predicted "member".
    fpr : float
        The fraction of nonmembers predicted "member".
    auc : float
        The ROC-AUC of the scores (members positive): 0.5 for no signal, 1 when every
        member scores above every nonmember.
    threshold : float
        The loss at or below which a point is predicted "member".
    member_scores, nonmember_scores : torch.Tensor
        The per-example scores, the negative loss (higher: more member-like).
    balanced_accuracy : float
        ``(TPR + 1 - FPR) / 2``, the accuracy on a balanced members/nonmembers set.
    member_accuracy, nonmember_accuracy : float
        The model's accuracy on the members and on the nonmembers: their difference is
        the generalisation gap of the 0-1 loss, which bounds the advantage of the
        bounded-loss adversary (Yeom et al., Theorem 2).
    """

    advantage: float
    tpr: float
    fpr: float
    auc: float
    threshold: float
    member_scores: torch.Tensor
    nonmember_scores: torch.Tensor
    balanced_accuracy: float
    member_accuracy: float
    nonmember_accuracy: float

    @property
    def generalization_gap(self) -> float:
        """``member_accuracy - nonmember_accuracy`` (the test error minus the train error)."""
        return self.member_accuracy - self.nonmember_accuracy

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        return {"method": self.meta.get("method"), "loss": self.meta.get("loss"),
                "advantage": self.advantage, "tpr": self.tpr, "fpr": self.fpr, "auc": self.auc,
                "threshold": self.threshold, "balanced_accuracy": self.balanced_accuracy,
                "member_accuracy": self.member_accuracy,
                "nonmember_accuracy": self.nonmember_accuracy,
                "generalization_gap": self.generalization_gap,
                "n_members": len(self.member_scores), "n_nonmembers": len(self.nonmember_scores)}


@torch.no_grad()
def per_example_loss(model: TorchModel, data: ArrayDataset, loss: str = "cross_entropy"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's loss on each example of ``data`` (``"cross_entropy"`` or ``"zero_one"``)
    and whether it classifies the example correctly."""
    logits = model.logits(data.x).cpu().double()
    y = data.y.long()
    correct = logits.argmax(1) == y
    if loss == "zero_one":
        return (~correct).double(), correct
    return F.cross_entropy(logits, y, reduction="none"), correct


def _best_threshold(member_loss: torch.Tensor, nonmember_loss: torch.Tensor) -> float:
    """The loss threshold of the largest ``TPR - FPR`` on a reference split."""
    cand = torch.cat([member_loss, nonmember_loss]).unique()
    tpr = torch.searchsorted(member_loss.sort().values, cand, right=True) / len(member_loss)
    fpr = torch.searchsorted(nonmember_loss.sort().values, cand, right=True) / len(nonmember_loss)
    return float(cand[int((tpr - fpr).argmax())])


@register("privacy", "membership_inference", paper=_PAPER, test_params={})
class MembershipInference(PrivacyAttack):
    """Membership inference by loss threshold (Yeom et al. 2018).

    A model fits its training points better than others: the adversary predicts "member"
    when the model's loss on a point is at most a threshold ``tau``. Yeom et al. take
    ``tau`` = the expected training loss, which the adversary is assumed to know
    (``threshold="train_loss"``: the mean loss over the members given, or over the
    reference members when a ``reference`` split is given); ``threshold="reference"``
    picks the ``tau`` of the largest advantage on a reference split of known members and
    nonmembers (a shadow model's data, or a slice of the training data and of fresh data).

    The figure of merit is the membership advantage ``TPR - FPR`` on the members
    (``data``) and nonmembers given. With the 0-1 loss (``loss="zero_one"``) the threshold
    adversary predicts "member" exactly when the model is right: that is the paper's
    bounded-loss adversary, whose advantage equals the generalisation gap (train accuracy
    minus test accuracy; Theorem 2). With the cross-entropy (the default) it is the
    paper's threshold adversary, which reads more than the 0-1 loss does.

    Call: ``attack(model, members, *, nonmembers, reference=None, seed=0)``: ``members``
    points of the model's training set, ``nonmembers`` points from the same distribution it
    was not trained on, ``reference`` an optional ``(members, nonmembers)`` pair to set
    the threshold on.

    Parameters
    ----------
    threshold : {"train_loss", "reference"}
        How ``tau`` is set: the mean training loss (the paper), or the best threshold on
        the ``reference`` split.
    loss : {"cross_entropy", "zero_one"}
        The per-example loss thresholded.

    References
    ----------
    .. [1] Yeom, Giacomelli, Fredrikson, Jha. Privacy Risk in Machine Learning: Analyzing
       the Connection to Overfitting. IEEE CSF 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> r = MembershipInference()(pretrained("digits-cnn", progress=False),
    ...                           load_digits(split="train"),
    ...                           nonmembers=load_digits(split="test"))
    >>> abs(r.advantage) < 0.1, r.member_accuracy >= r.nonmember_accuracy
    (True, True)
    """

    threshold: str = param("train_loss", choices=("train_loss", "reference"))
    loss: str = param("cross_entropy", choices=("cross_entropy", "zero_one"))

    def __call__(self, model: Any, data: ArrayDataset | None = None, *, seed: int | None = 0,
                 nonmembers: ArrayDataset | None = None,
                 reference: tuple[ArrayDataset, ArrayDataset] | None = None,
                 **call: Any) -> MembershipResult:
        """Score the members ``data`` and the ``nonmembers`` and measure the advantage."""
        who = type(self).__name__
        if data is None or nonmembers is None:
            raise InputError(f"{who} needs the members and the nonmembers: "
                             "attack(model, members, nonmembers=...)")
        check_dataset(who, nonmembers, "nonmembers")
        if len(data) == 0 or len(nonmembers) == 0:
            raise InputError(f"{who}: {len(data)} members and {len(nonmembers)} nonmembers; "
                             "both must hold points")
        if reference is not None:
            if not isinstance(reference, tuple | list) or len(reference) != 2:
                raise InputError(f"{who}: reference must be a (members, nonmembers) pair, got "
                                 f"{type(reference).__name__}")
            for part, what in zip(reference, ("reference members", "reference nonmembers"),
                                  strict=True):
                check_dataset(who, part, what)
                if len(part) == 0:
                    raise InputError(f"{who}: the {what} are empty")
        elif self.threshold == "reference":
            raise InputError(f"{who}: threshold='reference' needs reference=(members, "
                             "nonmembers)")
        return super().__call__(model, data, seed=seed, nonmembers=nonmembers,
                                reference=reference, **call)

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None,
             nonmembers: ArrayDataset,
             reference: tuple[ArrayDataset, ArrayDataset] | None = None) -> MembershipResult:
        lm, cm = per_example_loss(model, data, self.loss)
        ln, cn = per_example_loss(model, nonmembers, self.loss)
        if reference is not None:
            rm = per_example_loss(model, reference[0], self.loss)[0]
            if self.threshold == "reference":
                tau = _best_threshold(rm, per_example_loss(model, reference[1], self.loss)[0])
            else:
                tau = float(rm.mean())
        else:
            tau = float(lm.mean())
        tpr = float((lm <= tau).double().mean())
        fpr = float((ln <= tau).double().mean())
        truth = torch.cat([torch.ones(len(lm)), torch.zeros(len(ln))]).numpy()
        auc = float(roc_auc_score(truth, torch.cat([-lm, -ln]).numpy()))
        return MembershipResult(
            advantage=tpr - fpr, tpr=tpr, fpr=fpr, auc=auc, threshold=tau,
            member_scores=(-lm).float(), nonmember_scores=(-ln).float(),
            balanced_accuracy=(tpr + 1.0 - fpr) / 2, member_accuracy=float(cm.double().mean()),
            nonmember_accuracy=float(cn.double().mean()),
            meta={"method": self.name, **self.get_params()})

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        half = len(data) // 2
        return method(model, data.subset(slice(0, half)), seed=seed,
                      nonmembers=data.subset(slice(half, None)))


def membership_inference(model: Any, members: ArrayDataset, *, nonmembers: ArrayDataset,
                         reference: tuple[ArrayDataset, ArrayDataset] | None = None,
                         seed: int | None = 0, **params: Any) -> MembershipResult:
    """Function form of :class:`MembershipInference`:
    ``membership_inference(model, train, nonmembers=test)``."""
    return MembershipInference(**params)(model, members, seed=seed, nonmembers=nonmembers,
                                         reference=reference)
