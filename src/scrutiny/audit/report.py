"""The audit report: one self-contained HTML file and a JSON of every figure's data."""

from __future__ import annotations

import base64
import json
import math
import platform
import shlex
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import torch
from markupsafe import Markup

from scrutiny.audit.interactive import plotly_js, script_json
from scrutiny.audit.runner import AuditResult

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("scrutiny.audit", "templates"),
                          autoescape=jinja2.select_autoescape(["html"]))


def _undefined(value: Any) -> str | None:
    """How an undefined or infinite number prints ("n/a", "inf"); None for a finite one."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "n/a"
    if isinstance(value, float) and not math.isfinite(value):
        return "n/a" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return None


def _pct(value: Any) -> str:
    """A share as a percentage with one decimal; undefined (None, NaN) as "n/a"."""
    return _undefined(value) or f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; undefined (None, NaN) as "n/a"."""
    return _undefined(value) or f"{value:.{digits}f}"


def _sci(value: Any, digits: int = 2) -> str:
    """A number in scientific notation (``1.23e-04``); undefined (None, NaN) as "n/a"."""
    return _undefined(value) or f"{value:.{digits}e}"


_ENV.filters["pct"] = _pct
_ENV.filters["num"] = _num
_ENV.filters["sci"] = _sci


def environment() -> dict[str, str]:
    """Versions of what ran: scrutiny, torch, numpy, Python, and the platform."""
    from scrutiny import __version__

    return {"scrutiny": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def record(result: AuditResult, out_dir: str | Path | None = None,
           run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's record (``result.json``'s ``provenance``, the report's Configuration).

    ``result.provenance`` (hashes of the weights and the samples, samples used against
    those requested, every method's parameters as constructed), the versions
    (:func:`environment`), the resolved configuration file ``config.toml`` in ``out_dir``
    and, when ``run`` gives the command line's other settings (model, data, ...), the
    command that reproduces the run: ``scrutiny audit --config OUT/config.toml --out OUT``
    (plus ``-p`` for a parameter whose value is None, which TOML cannot hold).
    """
    from scrutiny.audit.config import toml_unwritable

    rec = {**result.provenance, "versions": environment(), "config_file": None, "command": None}
    if out_dir is not None:
        out = Path(out_dir).resolve()
        rec["config_file"] = str(out / "config.toml")
        if run is not None:
            argv = ["scrutiny", "audit", "--config", rec["config_file"], "--out", str(out)]
            for p in toml_unwritable(result.config.params):
                argv += ["-p", f"{p}=None"]
            rec["command"] = shlex.join(argv)
    return rec


def render_html(result: AuditResult, provenance: dict[str, Any] | None = None) -> str:
    """The report as one self-contained HTML string that works offline.

    Figures are inlined: as base64 PNG, and drawn interactively by Plotly when they
    carry a ``plotly`` spec (the Plotly bundle is inlined once, only when a figure or a
    section needs it). A navigation bar links every section; every table of numbers
    sorts by a click on a column's heading. Each section that ran renders its piece
    ``templates/sections/<name>.html`` (with ``s``, its
    :class:`~scrutiny.audit.context.SectionResult`, ``r``, the whole result,
    ``figure(name)`` and ``figure_data(name)``, a figure's data as a JSON script element
    for the page's scripts) under its group's heading, in report order.
    ``provenance`` is the run's :func:`record` (default: without a command line).
    """
    from scrutiny import __version__
    from scrutiny.audit.sections import GROUPS, SECTIONS

    by_name = {f.name: f for f in result.figures}

    def figure(name: str) -> Markup:
        """A figure: interactive (Plotly) when it has a ``plotly`` spec, with its PNG for
        readers without JavaScript; else the PNG."""
        f = by_name.get(name)
        if f is None:
            return Markup("")
        img = Markup('<img src="{}" alt="{}">').format(
            "data:image/png;base64," + base64.b64encode(f.png).decode(), f.title) if f.png else ""
        if f.plotly is not None:
            img = Markup('<div class="plot" id="plot-{}"></div><script type="application/json" '
                         'class="plot-spec" data-target="plot-{}">{}</script><noscript>{}'
                         "</noscript>").format(f.name, f.name, Markup(script_json(f.plotly)), img)
        return Markup('<figure id="figure-{}">{}<figcaption><b>{}.</b> {}</figcaption>'
                      "</figure>").format(f.name, img, f.title, f.caption)

    def figure_data(name: str) -> Markup:
        """A figure's data for the page's scripts: ``<script type="application/json"
        id="data-NAME">`` (empty when there is no such figure)."""
        f = by_name.get(name)
        if f is None:
            return Markup("")
        return Markup('<script type="application/json" id="data-{}">{}</script>').format(
            name, Markup(script_json(strict_json(f.data))))

    groups: dict[str, list] = {g: [] for g in GROUPS}
    for name in sorted(result.sections, key=lambda n: SECTIONS[n].display):
        groups[SECTIONS[name].group].append(result.sections[name])
    titles = {name: SECTIONS[name].nav or SECTIONS[name].title or name for name in result.sections}
    eps = list(result.config.eps)
    interactive = any(f.plotly is not None for f in result.figures) \
        or any(SECTIONS[n].interactive for n in result.sections)
    return _ENV.get_template("report.html").render(
        r=result, groups=groups, figure=figure, figure_data=figure_data, eps=eps,
        titles=titles, headings={g: h for g, h in GROUPS.items() if g != "top"},
        plotly_js=Markup(plotly_js()) if interactive else "", version=__version__,
        p=provenance or record(result), config=asdict(result.config),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}")


def write_report(result: AuditResult, out_dir: str | Path,
                 run: dict[str, Any] | None = None) -> Path:
    """Write ``report.html``, ``figures.json``, ``result.json`` and ``config.toml`` into
    ``out_dir``.

    ``config.toml`` is the resolved configuration (:meth:`AuditConfig.to_toml
    <scrutiny.audit.config.AuditConfig.to_toml>`) with ``run``'s keys, the command
    line's settings outside it (model, weights, data, ...); with ``run`` the report
    and ``result.json`` (``provenance``, :func:`record`) hold the command that
    reproduces the run from that file. Each file is written to a temporary name and
    renamed into place, so a reader never sees a half-written file. Returns the path
    of the HTML file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> Path:
        path = out / name
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path

    write("config.toml", result.config.to_toml(run))
    rec = record(result, out, run)
    html = write("report.html", render_html(result, rec))
    write("figures.json", json.dumps(strict_json(
        {f.name: {"title": f.title, "caption": f.caption, "data": f.data} for f in result.figures}),
        indent=1, allow_nan=False))
    write("result.json", json.dumps(strict_json({**result.to_dict(), "provenance": rec}),
                                    indent=1, allow_nan=False))
    return html


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float as None (null), tuples as lists and other
    objects as strings, so strict JSON parsers read the file (a NaN is an undefined
    value: a metric on constant maps, an accuracy over no samples)."""
    if isinstance(obj, dict):
        return {str(k): strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return strict_json(obj.item())
    return str(obj)
