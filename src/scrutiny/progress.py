"""One progress bar for all long work (rich), silent when disabled or not a terminal.

Whether bars are shown is a context, not a method's parameter: :func:`enabled`
is True unless the work runs inside :func:`quiet` (the command line's
``--quiet``). Only one bar shows at a time: work started under a bar (an
attack inside the audit) runs quietly.

Examples
--------
>>> from scrutiny import progress
>>> progress.enabled()
True
>>> with progress.quiet():
...     progress.enabled()
False
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("scrutiny_progress", default=True)


def enabled() -> bool:
    """Whether long work shows a progress bar here (False inside :func:`quiet` or under a bar)."""
    return _ENABLED.get()


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Run the block without progress bars (``quiet(False)`` changes nothing)."""
    if not on:
        yield
        return
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._p, self._t = progress, task

    def advance(self, status: str = "", n: int = 1) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, status=status)


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool | None = None) -> Iterator[_Bar]:
    """A rich progress bar on stderr; yields an object with ``advance(status)``.

    ``enabled=None`` (the default) follows :func:`enabled`; the block runs
    quietly, so a bar started inside it shows nothing.
    """
    on = _ENABLED.get() if enabled is None else enabled
    if not on:
        yield _Bar(None, None)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with quiet(), Progress(*cols, transient=True, console=Console(stderr=True)) as p:
        yield _Bar(p, p.add_task(description, total=total, status=""))
