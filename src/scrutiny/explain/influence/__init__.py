"""Influence functions (Koh & Liang, 2017): the training points behind a prediction, and
the training-set poisoning they suggest. Registered as ``learned:influence`` and
``learned:influence_poisoning``."""

from scrutiny.explain.influence.influence import (
    Influence,
    InfluenceResult,
    influence,
    last_linear,
)
from scrutiny.explain.influence.poisoning import (
    InfluencePoisoning,
    PoisoningResult,
    influence_poisoning,
)

__all__ = ["Influence", "InfluencePoisoning", "InfluenceResult", "PoisoningResult", "influence",
           "influence_poisoning", "last_linear"]
