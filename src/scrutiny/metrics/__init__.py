"""Measures of whether an explanation can be trusted (sanity checks, faithfulness, localisation)."""
