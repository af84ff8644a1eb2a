"""Certification: interval bounds, linear relaxations (CROWN), randomized smoothing."""
