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

from merging.plots.style import FONT_SIZE, OKABE_ITO, _no_data, _style, explained
from merging.search.study import better, direction


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
    # trials are whole numbers: no tick at 0.5
    fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(len(numbers) / 8)))
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
        {"label": _axis_label(name), "values": [float(t["params"].get(name, math.nan)) for t in scored],
         "tickformat": ".2f"}
        for name in names
    ]
    dimensions.append({"label": f"{objective} (dev)", "values": values, "tickformat": ".3f"})
    # Parcoords draws its axis names, ticks and range ends with fonts of its own, not the layout's.
    # At 18 px and more its fixed offsets run an axis's name into its range end: the stage draws
    # best_parameters instead (pages/search.py).
    size = FONT_SIZE[bool(presentation)]
    fig.add_trace(
        go.Parcoords(
            dimensions=dimensions,
            labelfont={"size": size}, tickfont={"size": size}, rangefont={"size": size},
            line={"color": values, "colorscale": "Viridis", "showscale": True,
                  "colorbar": {"title": {"text": objective}, "tickformat": ".3f"}},
        )
    )
    fig = _style(fig, title, presentation)
    # the axis names and range ends stand above the plot, under the title; the first name is
    # centred on the left edge's axis
    fig.update_layout(margin={"t": fig.layout.margin.t + 2 * size, "l": 5 * size, "r": 4 * size})
    return fig


@explained(
    "One bar per searched parameter: the value of the trial that scored best on the dev split. "
    "The search history beside it shows how that trial was reached."
)
def best_parameters(
    trials: Sequence[Mapping], objective: str = "average", presentation: bool = False
) -> go.Figure:
    """The best trial's parameters as labelled bars: what a room reads of a search (the parallel
    coordinates' axis names overprint their range ends at a stage's font sizes)."""
    fig = go.Figure()
    scored = _finite_trials(trials)
    title = f"Best trial's parameters ({objective} on the dev split)"
    if not scored:
        return _style(_no_data(fig, "No finished trial yet"), title, presentation)
    best = better(objective)(scored, key=lambda t: float(t["dev_objective"]))
    names = [name for name in best["params"] if math.isfinite(float(best["params"][name]))]
    values = [float(best["params"][name]) for name in names]
    fig.add_trace(
        go.Bar(
            x=values, y=[_axis_label(name) for name in names], orientation="h",
            marker={"color": OKABE_ITO["blue"]}, text=[f"{v:.2f}" for v in values], textposition="outside",
            cliponaxis=False, name="best trial",
            hovertemplate="%{y}: %{x:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(rangemode="tozero", range=[0, max(values + [0.0]) * 1.2 or 1.0])
    return _style(fig, title, presentation,
                  x_title=f"value (trial {best['number']}, dev {objective} {float(best['dev_objective']):.3f})")
