"""Figures of the talk tour that no other page draws: a fix's gain and cost per task, and every
merge of the tour side by side with its 95 % interval.

Data in (``EvaluationResult.to_dict()`` results, rows from ``merging.analysis.tour.summary_rows``), a figure out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

from merging.plots.merge import signed_points
from merging.plots.style import OKABE_ITO, ROLE_COLOURS, _no_data, _style, explained
from merging.plots.values import _finite, _results_tasks


@explained(
    "Per task, the change against the reference in percentage points: blue = the adapter alone "
    "(its cost when below zero), orange = the merged model (its gain when above zero)."
)
def gain_and_cost(
    results: Mapping,
    reference: Mapping,
    title: str = "Change against the standard adapters",
    presentation: bool = False,
) -> go.Figure:
    """Δ single-task and Δ merged accuracy per task (and on average) of `results` minus `reference`."""
    now, before = _results_tasks(results), _results_tasks(reference)
    groups, single, merged = [], [], []
    rows: list[tuple[str, Mapping, Mapping]] = [(t, now[t], before[t]) for t in now if t in before]
    rows.append(("average", results.get("average") or {}, reference.get("average") or {}))
    for group, a, b in rows:
        values = {}
        for key in ("single", "merged"):
            x, y = _finite(a.get(key)), _finite(b.get(key))
            values[key] = None if x is None or y is None else 100.0 * (x - y)
        if values["single"] is None and values["merged"] is None:
            continue
        groups.append(group)
        single.append(values["single"])
        merged.append(values["merged"])
    fig = go.Figure()
    if not groups:
        return _style(_no_data(fig, "nothing measured in both"), title, presentation)
    for name, values, colour in (("alone (single adapter)", single, ROLE_COLOURS["single"]),
                                 ("merged", merged, ROLE_COLOURS["merged"])):
        fig.add_trace(go.Bar(
            name=name, x=groups, y=values, marker={"color": colour},
            text=[signed_points(v) if v is not None else "" for v in values], textposition="outside",
            hovertemplate=f"%{{x}}<br>{name}: %{{y:+.1f}} pp<extra></extra>",
        ))
    fig.add_hline(y=0, line={"color": OKABE_ITO["black"], "width": 1})
    finite = [abs(v) for v in single + merged if v is not None]
    limit = max(1.0, max(finite, default=1.0)) * (1.5 if presentation else 1.3)  # labels stay in the plot
    fig.update_yaxes(range=[-limit, limit], ticksuffix=" pp", zeroline=False)
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.18})
    return _style(fig, title, presentation, x_title="Task", y_title="Change (percentage points)")


@explained(
    "Average merged accuracy of each merge of the tour (orange bar, whisker = 95 % bootstrap interval) "
    "and its adapters alone (blue diamond): merges whose whiskers overlap are within noise of each other."
)
def merge_summary(
    rows: Sequence[Mapping[str, Any]],
    title: str = "Every merge of the tour",
    presentation: bool = False,
) -> go.Figure:
    """Horizontal bars: ``rows`` of label, merged, merged_interval, single, single_interval."""
    rows = [r for r in rows if _finite(r.get("merged")) is not None]
    fig = go.Figure()
    if not rows:
        return _style(_no_data(fig, "no merge measured"), title, presentation)
    labels = [str(r["label"]) for r in rows]
    merged = [r["merged"] for r in rows]
    low = [r["merged"] - r["merged_interval"][0] for r in rows]
    high = [r["merged_interval"][1] - r["merged"] for r in rows]
    fig.add_trace(go.Bar(
        name="merged (95 % interval)", y=labels, x=merged, orientation="h", marker={"color": ROLE_COLOURS["merged"]},
        error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low, "color": OKABE_ITO["black"],
                 "thickness": 2, "width": 6},
        text=[f"{100 * v:.1f}%" for v in merged], textposition="inside", insidetextanchor="start",
        hovertemplate="%{y}<br>merged: %{x:.2%}<extra></extra>",
    ))
    singles = [_finite(r.get("single")) for r in rows]
    fig.add_trace(go.Scatter(
        name="adapters alone", y=labels, x=singles, mode="markers",
        marker={"symbol": "diamond", "size": 12, "color": ROLE_COLOURS["single"],
                "line": {"width": 1, "color": OKABE_ITO["black"]}},
        hovertemplate="%{y}<br>alone: %{x:.2%}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(legend={"orientation": "h", "y": -0.18})
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    _style(fig, title, presentation, x_title="Average accuracy over the tasks", y_title="")
    # the merge names stay on one line each (stacked at "-" and " (" they overprinted their neighbours)
    fig.update_yaxes(tickmode="array", tickvals=labels, ticktext=labels, automargin=True)
    fig.update_layout(height=summary_height(len(rows), presentation))
    return fig


def summary_height(rows: int, presentation: bool = False) -> int:
    """Tall enough for one line of text per merge at the chart's font size (+ title, axis, legend)."""
    return (230 + 44 * rows) if presentation else (180 + 30 * rows)
