"""Predictive uncertainty: Monte Carlo dropout."""

from scrutiny.explain.uncertainty.mc_dropout import (
    MCDropout,
    dropout_enabled,
    dropout_modules,
    mc_dropout,
)

__all__ = ["MCDropout", "dropout_enabled", "dropout_modules", "mc_dropout"]
