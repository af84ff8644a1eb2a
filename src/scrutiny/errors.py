"""Errors raised for bad input; the CLI prints them as one line."""


class ScrutinyError(Exception):
    """Base class of every error scrutiny raises on purpose."""


class InputError(ScrutinyError, ValueError):
    """An argument is wrong: the message says what and what is accepted."""


class ModelOutputError(InputError):
    """The model's output cannot be used: NaN or infinite logits, or not ``(N, K)``."""


class UnsupportedModelError(InputError, TypeError):
    """The model has a layer or an operation the method has no rule for (attention, layer
    norm, a residual connection, ...): the message names its type and its path in the model."""


class NotDifferentiableError(ScrutinyError, TypeError):
    """A white-box method was given a model without gradients."""


class QueryBudgetExceeded(ScrutinyError, RuntimeError):
    """A query model's budget is spent."""


class ModelUnavailableError(ScrutinyError, ConnectionError):
    """A remote model (``HttpModel``) cannot be reached after bounded retries."""
