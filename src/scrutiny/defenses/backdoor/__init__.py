"""Backdoor scans of a model or its training set (registry kind ``"backdoor_scan"``).
Base: :mod:`scrutiny.defenses.backdoor.base`."""

from scrutiny.defenses.backdoor.base import (
    BackdoorScan,
    ScanResult,
    anomaly_threshold,
    mad_anomaly_index,
    precision_recall,
)
from scrutiny.defenses.backdoor.cleanse import CleanseResult, NeuralCleanse, neural_cleanse
from scrutiny.defenses.backdoor.clustering import (
    ActivationClustering,
    ClusteringResult,
    activation_clustering,
    representations,
)
from scrutiny.defenses.backdoor.k_arm import KArm, KArmResult, k_arm
from scrutiny.defenses.backdoor.spectral import SpectralResult, SpectralSignatures, spectral_signatures

__all__ = ["ActivationClustering", "BackdoorScan", "CleanseResult", "ClusteringResult",
           "KArm", "KArmResult", "NeuralCleanse", "ScanResult", "SpectralResult", "SpectralSignatures",
           "activation_clustering", "anomaly_threshold", "k_arm", "mad_anomaly_index", "neural_cleanse",
           "precision_recall", "representations", "spectral_signatures"]
