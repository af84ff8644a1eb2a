"""Certification: interval bounds, linear relaxations (CROWN, alpha-CROWN), beta-CROWN branch
and bound, randomized smoothing."""

from scrutiny.certify.alpha import AlphaCROWN
from scrutiny.certify.bab import BaBResult, BetaCROWN
from scrutiny.certify.base import Bounds, Certifier, CertResult
from scrutiny.certify.crown import CROWN
from scrutiny.certify.ibp import IBP
from scrutiny.certify.smoothing import RandomizedSmoothing

__all__ = ["CROWN", "AlphaCROWN", "BetaCROWN", "BaBResult", "IBP", "Bounds", "CertResult",
           "Certifier", "RandomizedSmoothing"]
