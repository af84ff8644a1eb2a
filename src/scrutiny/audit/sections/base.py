"""The audit section protocol and its registry."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from scrutiny.audit.context import AuditContext, SectionResult
from scrutiny.audit.store import PartialStore
from scrutiny.errors import InputError

#: The report's groups of sections, in order: the name a section's :attr:`Section.group`
#: takes, its heading in the report and its short name in the navigation bar ("top" is
#: shown first, without a heading).
GROUPS: dict[str, tuple[str, str]] = {
    "top": ("", ""),
    "fooled": ("How easily is it fooled?", "Fooled?"),
    "trusted": ("Can the robustness number be trusted?", "Trusted?"),
    "why": ("Why this prediction?", "Why?"),
    "learned": ("What has the model learned?", "Learned?"),
    "tampered": ("Was it tampered with, and what does it give away?", "Tampered?"),
}

#: Registered sections by name (:func:`run_order` gives the order they run in).
SECTIONS: dict[str, type[Section]] = {}


class Section:
    """One part of the audit: computes its numbers, figures, notes and flags.

    A subclass sets :attr:`name` (also its template ``templates/sections/<name>.html``),
    :attr:`needs` (sections whose results it reads; they run first and must not be
    skipped), :attr:`uses` (sections it reads when they ran), :attr:`group` (the report
    heading it appears under), :attr:`always` (it runs whenever a section it reads runs,
    even when not chosen, unless skipped: the verdict) and implements :meth:`run`;
    :meth:`steps` is its share of the progress bar and :meth:`skip_reason` says why it does not run for this
    context (None: it runs). On a model that is only queried (an endpoint,
    :attr:`AuditContext.endpoint`) only the sections with :attr:`black_box` run; the
    others are skipped with a note (:func:`endpoint_skip`). Register it with
    :func:`register`. A long section saves its finished units of work (chunks of
    samples) in :attr:`partial` and skips the units it finds there, so a killed audit
    resumes inside it.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    group: ClassVar[str] = "fooled"
    needs: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    #: position in the report (lower first); independent of the run order
    display: ClassVar[int] = 50
    #: run whenever a section it needs or uses runs, chosen or not (unless skipped)
    always: ClassVar[bool] = False
    #: its name in the report's navigation bar (default: :attr:`title`)
    nav: ClassVar[str] = ""
    #: its template draws with Plotly (the report then inlines the Plotly bundle)
    interactive: ClassVar[bool] = False
    #: it needs only queries of the model, so it also runs on an endpoint (a QueryModel)
    black_box: ClassVar[bool] = False
    #: what it needs that an endpoint does not give (the note when one skips it)
    endpoint_needs: ClassVar[str] = "gradients"
    #: Finished units of work of this run (see :class:`PartialStore`); the runner gives
    #: each section its own, keyed like its result; this default keeps nothing.
    partial: PartialStore = PartialStore()

    def steps(self, ctx: AuditContext) -> int:
        """Units of the progress bar this section advances."""
        return 1

    def skip_reason(self, ctx: AuditContext) -> str | None:
        """Why the section does not run here (silently when ''), or None when it runs."""
        return None

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        """Compute the section from the context and the results of earlier sections."""
        raise NotImplementedError


def endpoint_skip(section: Section, ctx: AuditContext) -> str | None:
    """Why ``section`` does not run on ``ctx``: its own :meth:`~Section.skip_reason`, else,
    on an endpoint, what it needs (``"needs gradients: the model is an endpoint"``) unless it
    is :attr:`~Section.black_box`; None when it runs."""
    why = section.skip_reason(ctx)
    if why is None and ctx.endpoint and not section.black_box:
        why = f"needs {section.endpoint_needs}: the model is an endpoint"
    return why


def run_parts(section: Section, parts: tuple[str, ...], ctx: AuditContext, out: SectionResult,
              bar: Any, *args: Any) -> dict[str, Any]:
    """Run a section's parts in order, each one step of the bar: ``section._<part>(ctx, *args,
    out)`` returns its numbers (None: the part does not apply here) and gets its ``seconds``;
    a part that raises :class:`InputError` is left out with a note. The numbers by part."""
    data: dict[str, Any] = {}
    for part in parts:
        bar.step(part)
        ts = time.perf_counter()
        try:
            got = getattr(section, f"_{part}")(ctx, *args, out)
        except InputError as e:
            out.notes.append(f"{part} was left out: {e}")
            got = None
        if got is not None:
            data[part] = {**got, "seconds": time.perf_counter() - ts}
        bar.advance()
    return data


def register(cls: type[Section]) -> type[Section]:
    """Add a section to :data:`SECTIONS`."""
    if not cls.name or cls.name in SECTIONS:
        raise InputError(f"a section needs a new name; got {cls.name!r}")
    if cls.group not in GROUPS:
        raise InputError(f"section {cls.name!r}: group {cls.group!r} is not one of {list(GROUPS)}")
    SECTIONS[cls.name] = cls
    return cls


def run_order() -> list[str]:
    """Every registered section, each after those it needs or uses (ties: report order)."""
    deps = {n: set(c.needs) | set(c.uses) for n, c in SECTIONS.items()}
    unknown = {d for ds in deps.values() for d in ds} - set(SECTIONS)
    if unknown:
        raise InputError(f"sections depend on unregistered sections {sorted(unknown)}")
    order: list[str] = []
    while len(order) < len(deps):
        ready = sorted((n for n, ds in deps.items() if n not in order and ds <= set(order)),
                       key=lambda n: (SECTIONS[n].display, n))
        if not ready:
            raise InputError(f"the sections' dependencies form a cycle: {sorted(set(deps) - set(order))}")
        order.append(ready[0])
    return order


def resolve(chosen: tuple[str, ...] | None, skip: tuple[str, ...]) -> list[str]:
    """The sections to run, in order: ``chosen`` (default all), what they need and the
    :attr:`~Section.always` sections that read one of them, less ``skip``.

    Examples
    --------
    >>> resolve(("robustness",), ())
    ['robustness', 'verdict']
    >>> resolve(("robustness",), ("verdict",))
    ['robustness']
    """
    order = run_order()
    for name in (*(chosen or ()), *skip):
        if name not in SECTIONS:
            raise InputError(f"unknown audit section {name!r}; sections: {', '.join(order)}")
    want = set(SECTIONS if chosen is None else chosen)
    for name in reversed(order):  # later sections add their needs
        if name in want:
            want |= set(SECTIONS[name].needs)
    extra = {n for n, c in SECTIONS.items() if c.always and n not in skip and n not in want
             and want & {*c.needs, *c.uses} and not set(c.needs) & set(skip)}
    for name in reversed(order):  # and so do the sections that always run
        if name in extra:
            extra |= set(SECTIONS[name].needs)
    want |= extra
    for name in want & set(skip):
        users = [n for n in want - set(skip) if name in SECTIONS[n].needs]
        if users:
            raise InputError(f"cannot skip the audit section {name!r}: {', '.join(sorted(users))} "
                             "needs it")
    return [n for n in order if n in want and n not in skip]
