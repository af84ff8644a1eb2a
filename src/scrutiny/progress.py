"""One progress bar for all long work (rich), silent when disabled or not a terminal.

Whether bars are shown is a context, not a method's parameter: :func:`enabled`
is True unless the work runs inside :func:`quiet` (the command line's
``--quiet``). Only one bar shows at a time: work started under a bar (an
attack inside the audit) runs quietly, and what its own bars and
:func:`detail` say shows after the open bar's running step.

A bar names the step that runs, not the one that finished:
``bar.step("pgd eps=0.1")`` before the work, ``bar.advance()`` after it.
Its columns: description, bar, done/total, elapsed, remaining (estimated from
the finished steps), the running step and its detail.

Examples
--------
>>> from scrutiny import progress
>>> progress.enabled()
True
>>> with progress.quiet():
...     progress.enabled()
False
>>> with progress.progress_bar(2, "demo", enabled=False) as bar:
...     bar.step("first")
...     progress.detail("stage 1/3")  # shown by an open bar; a no-op here
...     bar.advance()
...     bar.status
'first'
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("scrutiny_progress", default=True)
#: The innermost open bar (drawn, or one that reports through the drawn bar); None when none is.
_ACTIVE: contextvars.ContextVar[_Bar | None] = contextvars.ContextVar("scrutiny_progress_bar",
                                                                      default=None)


def _console() -> Console:
    """Where bars are drawn (tests draw on a terminal of their own)."""
    return Console(stderr=True)


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
    """What :func:`progress_bar` yields: ``step(text)`` names the work that starts now,
    ``advance(n=1)`` counts finished units, :attr:`status` is the text shown after the bar.

    The bar opened while bars are on (drawn when ``_p`` is set, on a terminal) shows its
    levels' text: its own step and detail, then, for each bar opened under it (``_root``
    is the outer one, ``_depth`` their nesting), ``"<description> <k>/<total> <step>"``
    (``k``: the running step's number) and its detail.
    """

    def __init__(self, progress: Progress | None, task: TaskID | None, description: str = "",
                 total: int = 0, root: _Bar | None = None, hand_over: bool = False) -> None:
        self._p, self._t, self._hand_over = progress, task, hand_over
        self.description, self.total, self.completed = description, total, 0
        self._root = root
        self._depth = 0 if root is None else len(root._levels)
        self._step = self._detail = ""
        self._running = False  # the step named last has not been advanced past
        if root is None:
            self._levels: list[str] = [""]
        else:
            root._levels.append("")

    @property
    def status(self) -> str:
        """The text shown after the bar: the running step, its detail, those of bars under it."""
        if self._root is not None:
            return self._root.status
        return " \u203a ".join(t for t in self._levels if t)

    def _own(self) -> str:
        text = self._step
        if self._root is not None:  # "worst case 2/4 apgd-t": the running step's number
            k = min(self.completed + 1, self.total) if self._running else self.completed
            text = " ".join(t for t in (self.description, f"{k}/{self.total}", self._step) if t)
        return " \u00b7 ".join(t for t in (text, self._detail) if t)

    def _show(self) -> None:
        root = self._root or self
        if self._depth >= len(root._levels):  # this bar closed: a late call changes nothing
            return
        del root._levels[self._depth + 1:]
        root._levels[self._depth] = self._own()
        if root._p is not None:
            root._p.update(root._t, completed=root.completed, status=root.status)

    def step(self, text: str) -> None:
        """Name the work that starts now (shown until the next step or a status)."""
        self._step, self._detail, self._running = text, "", True
        self._show()

    def detail(self, text: str) -> None:
        """Say where the running step is (shown after its name until the next step)."""
        self._detail = text
        self._show()

    def advance(self, status: str | None = None, n: int = 1) -> None:
        """Count ``n`` finished units; a ``status`` replaces the shown step (a loop's live
        figure, e.g. ``"loss 0.31"``)."""
        self.completed += n
        self._running = False
        if status is not None:
            self._step, self._detail = status, ""
        self._show()

    def _close(self) -> None:
        if self._root is not None:
            del self._root._levels[self._depth:]
            self._root._show_levels()

    def _show_levels(self) -> None:
        if self._p is not None:
            self._p.update(self._t, status=self.status)


def detail(text: str) -> None:
    """Show ``text`` after the running step of the open bar (e.g. ``"apgd-ce 2/4"`` inside an
    audit step); a no-op when no bar is open or bars are off.

    Examples
    --------
    >>> from scrutiny import progress
    >>> progress.detail("nothing shows this")
    >>> with progress.progress_bar(1, "demo") as bar:
    ...     bar.step("work")
    ...     progress.detail("part 1/2")
    ...     bar.status
    'work \u00b7 part 1/2'
    """
    bar = _ACTIVE.get()
    if bar is not None:
        bar.detail(text)


def current() -> _Bar | None:
    """The innermost open bar that reports somewhere (None when none is open or bars are off)."""
    return _ACTIVE.get()


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, enabled: bool | None = None,
                 hand_over: bool = False) -> Iterator[_Bar]:
    """A rich progress bar on stderr; yields a bar with ``step(text)`` and ``advance(n=1)``.

    ``enabled=None`` (the default) follows :func:`enabled`; the block runs
    quietly, so a bar started inside it is not drawn: its description, count
    and step show after the open bar's step instead. ``enabled=False`` shows
    nothing anywhere. ``hand_over=True`` (a bar over one call of a method that
    may count its own work): a bar opened directly inside is drawn in this
    one's place while it runs.
    """
    parent = _ACTIVE.get()
    on = _ENABLED.get() if enabled is None else enabled
    if enabled is None and parent is not None and parent._hand_over and parent._p is not None:
        p, hidden = parent._p, parent._t  # draw this bar instead of the parent while it runs
        p.update(hidden, visible=False)
        bar = _Bar(p, p.add_task(description, total=total, status=""), description, total)
        token = _ACTIVE.set(bar)
        try:
            yield bar
        finally:
            _ACTIVE.reset(token)
            p.remove_task(bar._t)
            p.update(hidden, visible=True)
        return
    if not on:
        if enabled is None and parent is not None:  # report through the drawn bar
            bar = _Bar(None, None, description, total, root=parent._root or parent)
            token = _ACTIVE.set(bar)
            try:
                bar._show()
                yield bar
            finally:
                _ACTIVE.reset(token)
                bar._close()
        else:
            yield _Bar(None, None, description, total)
        return
    console = _console()
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}", markup=False))
    with quiet(), contextlib.ExitStack() as stack:
        # a log or a pipe: nothing is drawn (rich would leave a blank line), the status is kept
        p = stack.enter_context(Progress(*cols, transient=True, console=console)) \
            if console.is_terminal else None
        task = p.add_task(description, total=total, status="") if p is not None else None
        bar = _Bar(p, task, description, total, hand_over=hand_over)
        token = _ACTIVE.set(bar)
        try:
            yield bar
        finally:
            _ACTIVE.reset(token)
