"""Evasion attacks. Every class here is registered under ``attack:<name>``."""

from scrutiny.attacks import blackbox, physical, poisoning, privacy  # noqa: F401  (registers them)
from scrutiny.attacks.base import Attack
from scrutiny.attacks.ensemble import WorstCase
from scrutiny.attacks.whitebox import (
    APGD,
    APGDT,
    BIM,
    FGSM,
    FMN,
    LBFGS,
    PGD,
    CarliniWagnerL2,
    DeepFool,
    ElasticNet,
    FeatureAdversary,
    Penalized,
    WassersteinPGD,
)

__all__ = ["APGD", "APGDT", "FMN", "FGSM", "PGD", "WorstCase", "Attack",
           "BIM", "CarliniWagnerL2", "DeepFool", "ElasticNet", "FeatureAdversary", "LBFGS",
           "Penalized", "WassersteinPGD"]
