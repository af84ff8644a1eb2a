"""The audit report: one self-contained HTML file and a JSON of every figure's data."""

from __future__ import annotations

import base64
import json
import platform
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import torch

from scrutiny.audit.runner import AuditResult

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("scrutiny.audit", "templates"),
                          autoescape=jinja2.select_autoescape(["html"]))


def render_html(result: AuditResult) -> str:
    """The report as one HTML string (figures inlined as base64 PNG)."""
    from scrutiny import __version__

    figs = [{"name": f.name, "title": f.title, "caption": f.caption,
             "src": "data:image/png;base64," + base64.b64encode(f.png).decode()}
            for f in result.figures]
    eps = list(result.config.eps)
    return _ENV.get_template("report.html").render(
        r=result, figures=figs, eps=eps, version=__version__,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}")


def write_report(result: AuditResult, out_dir: str | Path) -> Path:
    """Write ``report.html``, ``figures.json`` and ``result.json`` into ``out_dir``.

    Returns the path of the HTML file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "report.html"
    html.write_text(render_html(result), encoding="utf-8")
    (out / "figures.json").write_text(json.dumps(
        {f.name: {"title": f.title, "caption": f.caption, "data": f.data} for f in result.figures},
        indent=1))
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return html
