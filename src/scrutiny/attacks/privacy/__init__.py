"""Privacy attacks: what a model or its shared gradients give away about its training data
(registry kind ``"privacy"``). Base: :mod:`scrutiny.attacks.privacy.base`."""

from scrutiny.attacks.privacy.base import PrivacyAttack
from scrutiny.attacks.privacy.leakage import DLG, IDLG, LeakageResult, dlg, idlg
from scrutiny.attacks.privacy.membership import (
    MembershipInference,
    MembershipResult,
    membership_inference,
)

__all__ = ["DLG", "IDLG", "LeakageResult", "MembershipInference", "MembershipResult",
           "PrivacyAttack", "dlg", "idlg", "membership_inference"]
