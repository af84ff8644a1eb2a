"""The one registry: feeds the CLI, the audit, the docs, the benchmarks and the tests.

Examples
--------
>>> from scrutiny import registry
>>> "attack:pgd" in registry.list_methods()
True
>>> pgd = registry.create("attack:pgd", steps=10)
>>> pgd.get_params()["steps"]
10
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

from scrutiny.errors import InputError

KINDS: tuple[str, ...] = ("attack", "explainer", "metric", "defense", "certifier", "learned",
                          "poisoning", "privacy", "backdoor_scan")
_BUILTIN_PACKAGES = ("scrutiny.attacks", "scrutiny.explain", "scrutiny.metrics", "scrutiny.defenses",
                     "scrutiny.certify")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its class, paper and the small settings tests use."""

    kind: str
    name: str
    cls: type
    paper: str
    test_params: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.name}"

    def params(self) -> dict[str, inspect.Parameter]:
        """The constructor's keyword parameters."""
        sig = inspect.signature(self.cls.__init__)
        return {k: p for k, p in sig.parameters.items() if k != "self"}


_REGISTRY: dict[str, MethodInfo] = {}
_loaded = False


def register(kind: str, name: str, *, paper: str, test_params: dict[str, Any] | None = None):
    """Class decorator that adds a method to the registry.

    Parameters
    ----------
    kind : {"attack", "explainer", "metric", "defense", "certifier", "learned"}
    name : str
        Short name, unique within the kind (``"pgd"``).
    paper : str
        The reference that defines the method.
    test_params : dict, optional
        Cheap settings the common test suite constructs the method with.
    """
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")

    def deco(cls: type) -> type:
        spec = f"{kind}:{name}"
        if spec in _REGISTRY and _REGISTRY[spec].cls is not cls:
            raise InputError(f"{spec} is already registered by {_REGISTRY[spec].cls.__name__}")
        cls.name = name
        cls.paper = paper
        _REGISTRY[spec] = MethodInfo(kind, name, cls, paper, dict(test_params or {}))
        return cls

    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for pkg in _BUILTIN_PACKAGES:
            importlib.import_module(pkg)


def list_methods(kind: str | None = None) -> list[str]:
    """Registered method specs ``"kind:name"``, sorted; optionally of one kind."""
    _load_builtins()
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    return sorted(s for s, m in _REGISTRY.items() if kind is None or m.kind == kind)


def get(spec: str, kind: str | None = None) -> MethodInfo:
    """Look up ``"kind:name"`` (or a bare ``name`` when ``kind`` is given)."""
    _load_builtins()
    if ":" not in spec and kind is not None:
        spec = f"{kind}:{spec}"
    if spec not in _REGISTRY:
        choices = list_methods(kind)
        raise InputError(f"unknown method {spec!r}; registered: {', '.join(choices)}")
    return _REGISTRY[spec]


def create(spec: str, *, kind: str | None = None, **params: Any):
    """Construct a registered method, rejecting parameters it does not accept.

    Examples
    --------
    >>> create("attack:fgsm", loss="margin")
    FGSM(loss='margin')
    >>> create("attack:fgsm", stepz=3)
    Traceback (most recent call last):
    ...
    scrutiny.errors.InputError: attack:fgsm does not accept 'stepz'; accepted: loss
    """
    info = get(spec, kind)
    accepted = info.params()
    unknown = [k for k in params if k not in accepted]
    if unknown:
        names = ", ".join(accepted) or "none"
        bad = ", ".join(repr(k) for k in unknown)
        raise InputError(f"{info.spec} does not accept {bad}; accepted: {names}")
    return info.cls(**params)
