"""Spatially constrained, universal and physical-world attacks (UAP, stickers, EOT, patches)."""

from scrutiny.attacks.physical.eot import EOT
from scrutiny.attacks.physical.patch import AdversarialPatch
from scrutiny.attacks.physical.sticker import Sticker
from scrutiny.attacks.physical.uap import UAP

__all__ = ["EOT", "UAP", "AdversarialPatch", "Sticker"]
