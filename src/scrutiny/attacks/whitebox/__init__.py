"""White-box (gradient) attacks."""

from scrutiny.attacks.whitebox.apgd import APGD, APGDT
from scrutiny.attacks.whitebox.deepfool import DeepFool
from scrutiny.attacks.whitebox.feature import FeatureAdversary
from scrutiny.attacks.whitebox.fmn import FMN
from scrutiny.attacks.whitebox.lbfgs import LBFGS
from scrutiny.attacks.whitebox.optimization import CarliniWagnerL2, ElasticNet
from scrutiny.attacks.whitebox.penalized import Penalized
from scrutiny.attacks.whitebox.pgd import BIM, FGSM, PGD
from scrutiny.attacks.whitebox.wasserstein import WassersteinPGD

__all__ = ["APGD", "APGDT", "FMN", "FGSM", "PGD",
           "BIM", "CarliniWagnerL2", "DeepFool", "ElasticNet", "FeatureAdversary", "LBFGS",
           "Penalized", "WassersteinPGD"]
