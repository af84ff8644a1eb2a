"""One progress bar for all long work (rich), silent when disabled or not a terminal."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._p, self._t = progress, task

    def advance(self, status: str = "", n: int = 1) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, status=status)


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[_Bar]:
    """A rich progress bar on stderr; yields an object with ``advance(status)``."""
    if not enabled:
        yield _Bar(None, None)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
    with Progress(*cols, transient=True, console=Console(stderr=True)) as p:
        yield _Bar(p, p.add_task(description, total=total, status=""))
