"""Evasion attacks. Every class here is registered under ``attack:<name>``."""

from scrutiny.attacks.base import Attack
from scrutiny.attacks.whitebox import FGSM, PGD

__all__ = ["FGSM", "PGD", "Attack"]
