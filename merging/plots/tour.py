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


# Where the two marks of a row stand, in rows from its centre (down is +: the rows are listed top
# down): the merged interval's whisker over the bar's upper half, the adapters-alone diamond in its
# lower half. On one line, a diamond whose value fell inside the merge's interval hid the whisker
# (the finale's post-hoc row on stage). At the smallest stage row (~27 px: nine merges in a 720-px
# window) the half-row gap holds a 3-px whisker cap and the diamond (~14 px tall) ~3 px apart.
SUMMARY_WHISKER_SHIFT = -0.25
SUMMARY_DIAMOND_SHIFT = 0.25
SUMMARY_BAR_WIDTH = 0.8
SUMMARY_CAP_PX = 3  # the whisker's cross-bar, each side of its line
# the diamond's size comes from the row's room, not from presentation mode's usual marker scale
SUMMARY_DIAMOND_SIZE = {False: 8, True: 11}


@explained(
    "Average merged accuracy of each merge of the tour (orange bar, whisker above its middle = 95 % bootstrap "
    "interval) and its adapters alone (blue diamond below it): merges whose whiskers overlap are within noise "
    "of each other."
)
def merge_summary(
    rows: Sequence[Mapping[str, Any]],
    title: str = "Every merge of the tour",
    presentation: bool = False,
) -> go.Figure:
    """Horizontal bars: ``rows`` of label, merged, merged_interval, single, single_interval; row i
    at y = i (labelled by the y axis's ticks), its whisker and diamond on either side of it."""
    rows = [r for r in rows if _finite(r.get("merged")) is not None]
    fig = go.Figure()
    if not rows:
        return _style(_no_data(fig, "no merge measured"), title, presentation)
    labels = [str(r["label"]) for r in rows]
    places = list(range(len(rows)))
    merged = [r["merged"] for r in rows]
    low = [r["merged"] - r["merged_interval"][0] for r in rows]
    high = [r["merged_interval"][1] - r["merged"] for r in rows]
    fig.add_trace(go.Bar(
        name="merged (95 % interval)", y=places, x=merged, orientation="h", width=SUMMARY_BAR_WIDTH,
        marker={"color": ROLE_COLOURS["merged"]}, customdata=labels,
        text=[f"{100 * v:.1f}%" for v in merged], textposition="inside", insidetextanchor="start",
        hovertemplate="%{customdata}<br>merged: %{x:.2%}<extra></extra>",
    ))
    fig.add_trace(go.Scatter(  # the whisker alone: its centre is the bar's end, which marks the value
        name="95 % interval", y=[p + SUMMARY_WHISKER_SHIFT for p in places], x=merged, mode="markers",
        marker={"size": 6, "opacity": 0}, showlegend=False, customdata=labels,  # unseen: a place to hover
        error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low, "color": OKABE_ITO["black"],
                 "thickness": 2, "width": SUMMARY_CAP_PX},
        hovertemplate="%{customdata}<br>merged: %{x:.2%} (95 % interval)<extra></extra>",
    ))
    singles = [_finite(r.get("single")) for r in rows]
    fig.add_trace(go.Scatter(
        name="adapters alone", y=[p + SUMMARY_DIAMOND_SHIFT for p in places], x=singles, mode="markers",
        marker={"symbol": "diamond", "color": ROLE_COLOURS["single"],
                "line": {"width": 1, "color": OKABE_ITO["black"]}}, customdata=labels,
        hovertemplate="%{customdata}<br>alone: %{x:.2%}<extra></extra>",
    ))
    fig.update_layout(legend={"orientation": "h", "y": -0.18})
    fig.update_xaxes(tickformat=".0%", range=[0, 1])
    _style(fig, title, presentation, x_title="Average accuracy over the tasks", y_title="")
    fig.data[-1].marker.size = SUMMARY_DIAMOND_SIZE[bool(presentation)]
    # the merge names stay on one line each (stacked at "-" and " (" they overprinted their neighbours);
    # the first row on top, and room under the last row's diamond before the axis line
    fig.update_yaxes(tickmode="array", tickvals=places, ticktext=labels, automargin=True,
                     range=[len(rows) - 1 + SUMMARY_DIAMOND_SHIFT + 0.4, -0.5], showgrid=False, zeroline=False)
    fig.update_layout(height=summary_height(len(rows), presentation))
    return fig


def summary_height(rows: int, presentation: bool = False) -> int:
    """Tall enough for one line of text per merge at the chart's font size (+ title, axis, legend)."""
    return (230 + 44 * rows) if presentation else (180 + 30 * rows)
