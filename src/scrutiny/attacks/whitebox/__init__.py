"""White-box (gradient) attacks."""

from scrutiny.attacks.whitebox.pgd import FGSM, PGD

__all__ = ["FGSM", "PGD"]
