"""The audit's sections.

A new section is one file here (a :class:`Section` subclass decorated with
:func:`register`, imported below), its template piece
``templates/sections/<name>.html`` and its test; ``scrutiny audit --sections``
and ``--skip`` take its name. Sections run after those they need or use
(:func:`run_order`).
"""

from scrutiny.audit.sections import (  # noqa: F401  (each module registers its section)
    backdoor,
    certification,
    checks,
    comparison,
    defenses,
    examples,
    explanations,
    explorer,
    headline,
    learned,
    privacy,
    queries,
    robustness,
    trust,
    verdict,
)
from scrutiny.audit.sections.base import GROUPS, SECTIONS, Section, register, resolve, run_order

__all__ = ["GROUPS", "SECTIONS", "Section", "register", "resolve", "run_order"]
