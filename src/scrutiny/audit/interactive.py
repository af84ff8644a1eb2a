"""Interactive figures of the audit report (Plotly, its JavaScript inlined in the page).

A figure here is a Plotly figure as JSON-ready dicts (``{"data": [...], "layout": {...}}``),
built and validated with :mod:`plotly.graph_objects`; the report draws it with
``Plotly.newPlot`` (hover values, series toggled by a click on the legend, zoom) from
the Plotly bundle that ships with the ``plotly`` package, inlined once in the page, so
the report stays one file that works offline (:func:`plotly_js`).

Examples
--------
>>> spec = line_chart({"pgd": [(0.0, 0.97), (0.1, 0.21)]}, xlabel="eps (linf)",
...                   ylabel="robust accuracy", title="Robust accuracy")
>>> spec["data"][0]["name"], spec["data"][0]["y"]
('pgd', [0.97, 0.21])
>>> "Plotly" in plotly_js()[:4000]
True
"""

from __future__ import annotations

import functools
import json
from typing import Any

__all__ = ["line_chart", "plotly_js", "script_json"]


@functools.cache
def plotly_js() -> str:
    """The Plotly JavaScript bundle of the installed ``plotly`` package (minified, ~4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside an HTML ``<script>`` element (no ``</``, no
    ``<!--``: the characters are written as JSON escapes)."""
    return (json.dumps(obj, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def line_chart(curves: dict[str, list[tuple[float, float]]], *, xlabel: str, ylabel: str,
               title: str, logx: bool = False, percent: bool = True) -> dict[str, Any]:
    """One line per series with markers and hover values (a robustness curve: robust
    accuracy against eps; success rate against queries with ``logx=True``).

    A click on a legend entry hides or shows its series; a double click shows it alone.
    ``percent`` formats y as a percentage in the hover text and on the axis.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    yfmt = ".1%" if percent else ".3f"
    for name, pts in curves.items():
        x, y = zip(*pts, strict=True) if pts else ((), ())
        fig.add_trace(go.Scatter(
            x=list(map(float, x)), y=list(map(float, y)), name=name, mode="lines+markers",
            hovertemplate=f"{name}<br>{xlabel} = %{{x:g}}<br>{ylabel} = %{{y:{yfmt}}}<extra></extra>"))
    fig.update_layout(
        title={"text": title, "x": 0.5}, template="plotly_white", height=380,
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, hovermode="closest",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0.5, "xanchor": "center"},
        xaxis={"title": {"text": xlabel}, "type": "log" if logx else "linear"},
        yaxis={"title": {"text": ylabel}, "range": [-0.02, 1.02],
               "tickformat": ".0%" if percent else None})
    return json.loads(fig.to_json())
