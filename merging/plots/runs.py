"""Figures of the Runs page: several stored runs' merged accuracies side by side."""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from merging.plots.style import (
    _PATTERNS,
    PALETTE,
    _accuracy_axis,
    _no_data,
    _style,
    explained,
)
from merging.plots.values import (
    _finite,
    _percent_text,
    _results_tasks,
)


@explained(
    "Merged accuracy per task for each selected run side by side (one colour and hatch per run); "
    "the 'average' group compares runs overall."
)
def runs_comparison(
    runs: Sequence[Mapping],
    title: str = "Merged accuracy of the selected runs",
    presentation: bool = False,
) -> go.Figure:
    """Per-task merged accuracy, one bar series per run, plus an 'average' group.

    ``runs``: ``[{"label": "run 12 · ties", "results": EvaluationResult.to_dict()}, ...]``; a missing
    label becomes ``run 1``, ``run 2``, ... Tasks are the union over the runs in order of first
    appearance; a run without a task simply has no bar there. Each run has a colour and a hatch pattern.
    """
    fig = go.Figure()
    if not runs:
        return _style(_no_data(fig, "no runs selected"), title, presentation)
    tasks: list[str] = []
    for run in runs:
        for task in _results_tasks(run["results"]):
            if task not in tasks:
                tasks.append(task)
    groups = tasks + ["average"]
    for i, run in enumerate(runs):
        label = str(run.get("label") or f"run {i + 1}")
        results = run["results"]
        scores = _results_tasks(results)
        values = [_finite(scores.get(t, {}).get("merged")) for t in tasks]
        values.append(_finite((results.get("average") or {}).get("merged")))
        fig.add_trace(
            go.Bar(
                name=label, x=groups, y=values,
                marker={"color": PALETTE[i % len(PALETTE)], "pattern": {"shape": _PATTERNS[i % len(_PATTERNS)]}},
                text=[_percent_text(v) for v in values], textposition="outside",
                hovertemplate=f"{label}<br>%{{x}}<br>merged accuracy: %{{y:.2%}}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.18})
    _accuracy_axis(fig)
    return _style(fig, title, presentation, x_title="Task", y_title="Merged accuracy (%)")
