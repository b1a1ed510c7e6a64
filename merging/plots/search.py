"""Figures of a λ search: plain trial records in (the `trials` of the search's JSON), a Plotly figure out.

Two views Optuna users know: the optimisation history (each trial's dev objective, and the best so
far as a step line) and a parallel-coordinates plot (one axis per searched parameter plus the
objective, one line per trial, coloured by the objective) that shows which λ ranges score well.
Pure functions, styled like the other pages' figures (same palette helper and presentation sizes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from merging.plots.style import OKABE_ITO, _no_data, _style, explained
from merging.search.study import direction


def _finite_trials(trials: Sequence[Mapping]) -> list[Mapping]:
    return [
        t for t in trials
        if t.get("dev_objective") is not None and math.isfinite(float(t["dev_objective"]))
    ]


def _axis_label(name: str) -> str:
    """`weights.sms_spam-standard` → `λ sms_spam-standard`."""
    return f"λ {name[len('weights.'):]}" if name.startswith("weights.") else name


@explained(
    "One dot per trial: its objective on the dev split (never the evaluation split). "
    "The line is the best found so far; a flat line late in the search means more trials bring little."
)
def optimization_history(
    trials: Sequence[Mapping], objective: str = "average", presentation: bool = False
) -> go.Figure:
    """Dev objective per trial number, with the running best as a step line."""
    fig = go.Figure()
    scored = sorted(_finite_trials(trials), key=lambda t: t["number"])
    title = f"Search history — {objective} on the dev split"
    if not scored:
        return _style(_no_data(fig, "No finished trial yet"), title, presentation)
    numbers = [t["number"] for t in scored]
    values = [float(t["dev_objective"]) for t in scored]

    lower = direction(objective) == "minimize"  # the completion loss: the best so far is the lowest
    best, running = (math.inf if lower else -math.inf), []
    for value in values:
        best = min(best, value) if lower else max(best, value)
        running.append(best)
    fig.add_trace(
        go.Scatter(
            x=numbers, y=values, mode="markers", name="trial",
            marker={"color": OKABE_ITO["blue"], "size": 8},
            customdata=[t.get("worker", "") for t in scored],
            hovertemplate="trial %{x}<br>dev objective %{y:.4f}<br>worker %{customdata}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=numbers, y=running, mode="lines", name="best so far", line={"color": OKABE_ITO["orange"], "shape": "hv"},
            hovertemplate="best after trial %{x}: %{y:.4f}<extra></extra>",
        )
    )
    return _style(fig, title, presentation, x_title="trial", y_title=f"{objective} (dev)")


@explained(
    "One line per trial across the searched parameters; colour is the dev objective. "
    "Where the bright lines bunch on an axis, that range of the parameter scores well."
)
def parallel_coordinates(
    trials: Sequence[Mapping], objective: str = "average", presentation: bool = False
) -> go.Figure:
    """One axis per searched parameter and one for the objective; a line per trial."""
    fig = go.Figure()
    scored = _finite_trials(trials)
    title = f"Parameters vs {objective} (dev)"
    if not scored:
        return _style(_no_data(fig, "No finished trial yet"), title, presentation)
    names = list(dict.fromkeys(name for t in scored for name in t["params"]))
    values = [float(t["dev_objective"]) for t in scored]
    dimensions = [
        {"label": _axis_label(name), "values": [float(t["params"].get(name, math.nan)) for t in scored]}
        for name in names
    ]
    dimensions.append({"label": f"{objective} (dev)", "values": values})
    fig.add_trace(
        go.Parcoords(
            dimensions=dimensions,
            line={"color": values, "colorscale": "Viridis", "showscale": True,
                  "colorbar": {"title": {"text": objective}}},
        )
    )
    return _style(fig, title, presentation)
