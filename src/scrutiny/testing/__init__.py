"""The public common test suite and tiny models (needs pytest and hypothesis)."""

from scrutiny.testing.checks import (
    ARCHITECTURES,
    ATTACK,
    COMMON,
    EXPLAINER,
    check_architectures,
    checks_for,
    parametrize_with_checks,
)
from scrutiny.testing.models import (
    Failing,
    NonFinite,
    tiny_cnn,
    tiny_images,
    tiny_linear,
    tiny_resnet,
    tiny_vit,
)

__all__ = ["ARCHITECTURES", "ATTACK", "COMMON", "EXPLAINER", "Failing", "NonFinite",
           "check_architectures", "checks_for", "parametrize_with_checks", "tiny_cnn",
           "tiny_images", "tiny_linear", "tiny_resnet", "tiny_vit"]
