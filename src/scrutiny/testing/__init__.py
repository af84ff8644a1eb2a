"""The public common test suite and tiny models (needs pytest and hypothesis)."""

from scrutiny.testing.checks import ATTACK, COMMON, EXPLAINER, checks_for, parametrize_with_checks
from scrutiny.testing.models import Failing, NonFinite, tiny_cnn, tiny_images, tiny_linear

__all__ = ["ATTACK", "COMMON", "EXPLAINER", "Failing", "NonFinite", "checks_for",
           "parametrize_with_checks", "tiny_cnn", "tiny_images", "tiny_linear"]
