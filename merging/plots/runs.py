"""Figures of the Runs page: several stored runs' merged accuracies side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    title: str | None = None,
    presentation: bool = False,
    metric: str = "accuracy",
) -> go.Figure:
    """Per-task merged accuracy (or `metric`: "exact match"), one bar series per run, plus an 'average' group.

    `metric="loss"` compares causal tasks' merged completion loss instead (nats per token, lower is
    better; no average group: the results hold no average loss).

    ``runs``: ``[{"label": "run 12 · ties", "results": EvaluationResult.to_dict()}, ...]``; a missing
    label becomes ``run 1``, ``run 2``, ... Tasks are the union over the runs in order of first
    appearance; a run without a task simply has no bar there. Each run has a colour and a hatch pattern.
    """
    is_loss = metric == "loss"
    title = title or f"Merged {metric} of the selected runs"
    fig = go.Figure()
    if not runs:
        return _style(_no_data(fig, "no runs selected"), title, presentation)
    tasks: list[str] = []
    for run in runs:
        for task in _results_tasks(run["results"]):
            if task not in tasks:
                tasks.append(task)
    groups = tasks if is_loss else tasks + ["average"]
    for i, run in enumerate(runs):
        label = str(run.get("label") or f"run {i + 1}")
        results = run["results"]
        scores = _results_tasks(results)
        if is_loss:
            values = [_finite((scores.get(t, {}).get("loss") or {}).get("merged")) for t in tasks]
        else:
            values = [_finite(scores.get(t, {}).get("merged")) for t in tasks]
            values.append(_finite((results.get("average") or {}).get("merged")))
        fig.add_trace(
            go.Bar(
                name=label, x=groups, y=values,
                marker={"color": PALETTE[i % len(PALETTE)], "pattern": {"shape": _PATTERNS[i % len(_PATTERNS)]}},
                text=[("" if v is None else f"{v:.3f}") if is_loss else _percent_text(v) for v in values],
                textposition="outside",
                hovertemplate=f"{label}<br>%{{x}}<br>merged {metric}: "
                + ("%{y:.4f} nats per token" if is_loss else "%{y:.2%}") + "<extra></extra>",
            )
        )
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.18})
    if is_loss:
        fig.update_yaxes(rangemode="tozero")
        return _style(fig, title, presentation, x_title="Task", y_title="Merged loss (nats per token, lower is better)")
    _accuracy_axis(fig)
    return _style(fig, title, presentation, x_title="Task", y_title=f"Merged {metric} (%)")
