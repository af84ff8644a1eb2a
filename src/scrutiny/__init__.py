"""scrutiny: explain, attack, defend and certify PyTorch classifiers."""

from scrutiny.errors import InputError, NotDifferentiableError, QueryBudgetExceeded, ScrutinyError
from scrutiny.registry import create, list_methods, register
from scrutiny.types import AttackResult, Explanation, Tags, ThreatModel

__version__ = "0.1.0"

__all__ = ["AttackResult", "Explanation", "InputError", "NotDifferentiableError",
           "QueryBudgetExceeded", "ScrutinyError", "Tags", "ThreatModel", "__version__", "create",
           "list_methods", "register"]
