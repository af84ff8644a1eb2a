"""The base of the privacy attacks (registry kind ``"privacy"``).

A privacy attack learns about the training data from what a model owner exposes: the
trained model's outputs (membership inference) or the gradient a federated-learning
client shares (gradient leakage). It is called as ``attack(model, data, *, seed, ...)``:
``model`` the target (never changed), ``data`` the private points the attack is judged
on (the batch whose gradient is shared; the training members), other call-time data per
method. The result is a dataclass with the attack's figure of merit.
"""

from __future__ import annotations

from scrutiny.models.data_method import DataMethod

__all__ = ["PrivacyAttack"]


class PrivacyAttack(DataMethod):
    """Base of the methods of kind ``"privacy"``: a subclass declares its hyperparameters,
    implements ``_run`` and :meth:`~scrutiny.models.data_method.DataMethod.common_call`,
    and returns a :class:`~scrutiny.models.data_method.DataResult`."""

    kind = "privacy"
