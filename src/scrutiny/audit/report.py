"""The audit report: one self-contained HTML file and a JSON of every figure's data."""

from __future__ import annotations

import base64
import json
import math
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import torch
from markupsafe import Markup

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


def render_html(result: AuditResult) -> str:
    """The report as one HTML string (figures inlined as base64 PNG).

    Each section that ran renders its piece ``templates/sections/<name>.html``
    (with ``s``, its :class:`~scrutiny.audit.context.SectionResult`, ``r``, the
    whole result, and ``figure(name)``) under its group's heading, in report order.
    """
    from scrutiny import __version__
    from scrutiny.audit.sections import SECTIONS

    by_name = {f.name: f for f in result.figures}

    def figure(name: str) -> Markup:
        f = by_name.get(name)
        if f is None:
            return Markup("")
        src = "data:image/png;base64," + base64.b64encode(f.png).decode()
        return Markup('<figure><img src="{}" alt="{}"><figcaption><b>{}.</b> {}</figcaption>'
                      "</figure>").format(src, f.title, f.title, f.caption)

    groups: dict[str, list] = {"top": [], "fooled": [], "trusted": [], "why": []}
    for name in sorted(result.sections, key=lambda n: SECTIONS[n].display):
        groups[SECTIONS[name].group].append(result.sections[name])
    eps = list(result.config.eps)
    return _ENV.get_template("report.html").render(
        r=result, groups=groups, figure=figure, eps=eps, version=__version__,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=f"{platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}")


def write_report(result: AuditResult, out_dir: str | Path) -> Path:
    """Write ``report.html``, ``figures.json`` and ``result.json`` into ``out_dir``.

    Each file is written to a temporary name and renamed into place, so a reader
    never sees a half-written file. Returns the path of the HTML file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> Path:
        path = out / name
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        return path

    html = write("report.html", render_html(result))
    write("figures.json", json.dumps(strict_json(
        {f.name: {"title": f.title, "caption": f.caption, "data": f.data} for f in result.figures}),
        indent=1, allow_nan=False))
    write("result.json", json.dumps(strict_json(result.to_dict()), indent=1, allow_nan=False))
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
