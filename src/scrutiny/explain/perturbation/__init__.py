"""Perturbation-based attributions."""

from scrutiny.explain.perturbation.extremal import ExtremalPerturbation as ExtremalPerturbation
from scrutiny.explain.perturbation.extremal import (
    extremal_perturbation as extremal_perturbation,
)
from scrutiny.explain.perturbation.occlusion import Occlusion as Occlusion
from scrutiny.explain.perturbation.occlusion import occlusion as occlusion
