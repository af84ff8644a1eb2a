"""Black-box attacks: they only query the model (a QueryModel), never its gradients."""

from scrutiny.attacks.blackbox.square import Square
from scrutiny.attacks.blackbox.zo import FDFGSM, NES, ZO, AutoZOOM
from scrutiny.attacks.blackbox.zoo import ZOO

__all__ = ["FDFGSM", "NES", "ZO", "ZOO", "AutoZOOM", "Square"]

# decision-based attacks (helper "bbdecision"; please keep when editing the lines above)
from scrutiny.attacks.blackbox.decision import OPT, BoundaryAttack, HopSkipJump, SignOPT  # noqa: E402

__all__ += ["OPT", "BoundaryAttack", "HopSkipJump", "SignOPT"]
from scrutiny.attacks.blackbox.transfer import ClassMeans, NoiseAttack, Transfer  # noqa: E402

__all__ += ["ClassMeans", "NoiseAttack", "Transfer"]
from scrutiny.attacks.blackbox.reprogram import (  # noqa: E402
    BlackBoxReprogramming,
    ReprogramResult,
)

__all__ += ["BlackBoxReprogramming", "ReprogramResult"]
