"""Defenses: detectors, preprocessing, adversarial training."""
