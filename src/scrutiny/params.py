"""Declared hyperparameters: one statement gives a method's constructor, checks, repr and help.

A method states each hyperparameter once, as a class attribute::

    class PGD(Attack):
        steps: int = param(40, integer=True, positive=True)
        rel_step_size: float | None = param(None, positive=True)
        loss: str = param("ce", choices=("ce", "margin"))

:class:`scrutiny.base.Method` collects the declarations (a subclass inherits
its parents' and may redeclare one to change its default: that is how a preset
such as BIM over PGD is written) and builds from them a keyword-only
``__init__`` that checks every value, stores it under its name and then calls
the method's ``_post_init()`` (for checks between parameters or derived
state). The same declarations give ``repr``, ``get_params``, the command line's
``scrutiny list <method>`` and the docs' parameter tables; the text of each
parameter is read from the class docstring's numpydoc ``Parameters`` section,
so it is written once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from scrutiny.errors import InputError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: Default of a parameter the caller must give.
REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Param:
    """One declared hyperparameter: its default and its constraint.

    Build it with :func:`param`. ``name`` is filled in when the class is
    created. ``validate(value)`` returns the value to store (a list given for
    a tuple parameter becomes a tuple) or raises :class:`InputError` naming
    the parameter.
    """

    default: Any = REQUIRED
    integer: bool = False
    positive: bool = False
    nonneg: bool = False
    between: tuple[float, float] | None = None
    interval: str = "[]"
    choices: tuple[Any, ...] | None = None
    kind: type | None = None
    optional: bool = False
    check: Callable[[str, Any], Any] | None = None
    name: str = ""

    def __set_name__(self, owner: type, name: str) -> None:
        object.__setattr__(self, "name", name)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any) -> Any:
        """The value to store, or an :class:`InputError` naming the parameter."""
        name = self.name
        if value is None and (self.optional or self.default is None):
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise InputError(f"{name} must be one of {', '.join(map(repr, self.choices))}, "
                                 f"got {value!r}")
            return value
        kind = self.kind or (int if self.integer else None)
        if kind is bool and not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, got {value!r}")
        if kind is tuple:
            if not isinstance(value, (tuple, list)):
                raise InputError(f"{name} must be a tuple, got {value!r}")
            value = tuple(value)
        elif kind is str and not isinstance(value, str):
            raise InputError(f"{name} must be a string, got {value!r}")
        numeric = self.integer or self.positive or self.nonneg or self.between is not None \
            or kind in (int, float)
        if numeric:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"{name} must be {'an integer' if self.integer else 'a number'}, "
                                 f"got {value!r}")
            if self.integer and not isinstance(value, int):
                if not float(value).is_integer():
                    raise InputError(f"{name} must be an integer, got {value!r}")
                value = int(value)
            if isinstance(value, float) and math.isnan(value):
                raise InputError(f"{name} must be a number, got nan")
            if self.positive and not value > 0:
                raise InputError(f"{name} must be > 0, got {value!r}")
            if self.nonneg and not value >= 0:
                raise InputError(f"{name} must be >= 0, got {value!r}")
            if self.between is not None and not _inside(value, self.between, self.interval):
                lo, hi = self.between
                raise InputError(f"{name} must be in {self.interval[0]}{lo:g}, {hi:g}"
                                 f"{self.interval[1]}, got {value!r}")
        if self.check is not None:
            out = self.check(name, value)
            value = value if out is None else out
        return value

    def constraint(self) -> str:
        """The constraint in words (``"int > 0"``, ``"one of 'ce', 'margin'"``)."""
        if self.choices is not None:
            text = "one of " + ", ".join(map(repr, self.choices))
        else:
            kind = self.kind or (int if self.integer else None)
            if kind is None and (self.positive or self.nonneg or self.between is not None):
                kind = float
            text = kind.__name__ if kind is not None else "any"
            if self.positive:
                text += " > 0"
            elif self.nonneg:
                text += " >= 0"
            if self.between is not None:
                lo, hi = self.between
                text += f" in {self.interval[0]}{lo:g}, {hi:g}{self.interval[1]}"
        if self.optional or self.default is None:
            text = "None or " + text
        return text


def _inside(v: float, between: tuple[float, float], interval: str) -> bool:
    lo, hi = between
    ok_lo = v >= lo if interval[0] == "[" else v > lo
    ok_hi = v <= hi if interval[1] == "]" else v < hi
    return ok_lo and ok_hi


def param(default: Any = REQUIRED, *, integer: bool = False, positive: bool = False,
          nonneg: bool = False, between: tuple[float, float] | None = None, interval: str = "[]",
          choices: tuple[Any, ...] | list[Any] | None = None, kind: type | None = None,
          optional: bool = False, check: Callable[[str, Any], Any] | None = None) -> Any:
    """Declare a hyperparameter (a class attribute of a :class:`~scrutiny.base.Method`).

    Parameters
    ----------
    default : object, optional
        The default; omit it for a parameter the caller must give. A default
        of None means None is accepted.
    integer, positive, nonneg : bool
        The value is an int; > 0; >= 0.
    between : (float, float), optional
        The value lies in this interval, closed or open as ``interval`` says
        (``"[]"``, ``"[)"``, ``"(]"``, ``"()"``).
    choices : tuple, optional
        The accepted values.
    kind : type, optional
        ``bool``, ``str``, ``tuple`` (a list is stored as a tuple), ``int`` or
        ``float``: checked, and shown by the help.
    optional : bool
        None is accepted besides the constraint.
    check : callable, optional
        ``check(name, value)`` raises :class:`InputError` or returns the value
        to store (None: store ``value``); for constraints the others cannot say.

    Examples
    --------
    >>> from scrutiny.base import Method
    >>> class Walk(Method):
    ...     '''A toy method.
    ...
    ...     Parameters
    ...     ----------
    ...     steps : int
    ...         How many steps.
    ...     '''
    ...     steps: int = param(10, integer=True, positive=True)
    >>> Walk(steps=3)
    Walk(steps=3)
    >>> Walk(steps=0)
    Traceback (most recent call last):
    ...
    scrutiny.errors.InputError: steps must be > 0, got 0
    """
    if interval not in ("[]", "[)", "(]", "()"):
        raise ValueError(f"interval must be one of [], [), (], (); got {interval!r}")
    return Param(default, integer, positive, nonneg, between, interval,
                 None if choices is None else tuple(choices), kind, optional, check)


def declared(cls: type) -> dict[str, Param]:
    """The declared hyperparameters of ``cls`` (its own and inherited), in declaration order."""
    out: dict[str, Param] = {}
    for klass in reversed(cls.__mro__):
        for k, v in vars(klass).items():
            if isinstance(v, Param):
                out[k] = v
    return out


_HEADER = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*)\s*(?::.*)?$")


def docstring_params(doc: str | None) -> dict[str, str]:
    """``{name: first sentence of its description}`` from a numpydoc ``Parameters`` section."""
    if not doc:
        return {}
    lines = doc.expandtabs().splitlines()
    out: dict[str, str] = {}
    inside, name, indent, text = False, None, None, []
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() == "Parameters" and set(nxt.strip()) == {"-"}:
            inside = True
            continue
        if not inside or set(line.strip()) == {"-"}:
            continue
        if line.strip() and nxt.strip() and set(nxt.strip()) == {"-"}:  # next section
            break
        m = _HEADER.match(line)
        if m and (indent is None or len(m.group(1)) <= indent) and line.strip():
            if name:
                out[name] = " ".join(text)
            name, indent, text = m.group(2), len(m.group(1)), []
        elif name and line.strip():
            text.append(line.strip())
    if name:
        out[name] = " ".join(text)
    for k, v in out.items():  # first sentence
        out[k] = re.split(r"(?<=\.)\s", v, maxsplit=1)[0]
    return out
