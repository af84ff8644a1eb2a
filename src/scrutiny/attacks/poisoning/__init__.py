"""Attacks on training: poisoning and backdoors (registry kind ``"poisoning"``).

Base and shared figures of merit: :mod:`scrutiny.attacks.poisoning.base`; triggers:
:mod:`scrutiny.attacks.poisoning.trigger`.
"""

from scrutiny.attacks.poisoning.badnets import BadNets, badnets
from scrutiny.attacks.poisoning.base import (
    BackdoorResult,
    Poisoning,
    PoisonResult,
    TrainingPoisoning,
    accuracy,
    attack_success_rate,
    train_victim,
)
from scrutiny.attacks.poisoning.collision import (
    FeatureCollision,
    FeatureCollisionResult,
    feature_collision,
)
from scrutiny.attacks.poisoning.embedding import BackdoorEmbedding, EmbeddingResult, backdoor_embedding
from scrutiny.attacks.poisoning.federated import DBA, DBAResult, dba
from scrutiny.attacks.poisoning.svm import SVMPoisoning, SVMPoisonResult, svm_poisoning
from scrutiny.attacks.poisoning.trigger import Trigger

__all__ = ["DBA", "BackdoorEmbedding", "BackdoorResult", "BadNets", "DBAResult", "EmbeddingResult",
           "FeatureCollision", "FeatureCollisionResult", "PoisonResult", "Poisoning",
           "SVMPoisonResult", "SVMPoisoning", "TrainingPoisoning", "Trigger", "accuracy",
           "attack_success_rate", "backdoor_embedding", "badnets", "dba", "feature_collision",
           "svm_poisoning", "train_victim"]
