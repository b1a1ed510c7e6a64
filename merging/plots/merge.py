"""Figures of the Merge page: accuracy per task (and its change since the last run), the energy
rank truncation kept, and DO-Merging's optimisation (loss curve, direction cosines before/after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from merging.adapters.lora import layer_of
from merging.plots.style import (
    DIVERGING,
    OKABE_ITO,
    ROLE_COLOURS,
    _accuracy_axis,
    _heatmap_axes,
    _no_data,
    _style,
    explained,
)
from merging.plots.values import (
    _finite,
    _layer_label,
    _layer_order,
    _matrix,
    _results_tasks,
    _short_names,
    _values,
    has_loss,
    metric_name,
)

BAR_GAP = 0.25  # share of each task's slot left empty between groups of bars
# The merged ÷ single labels sit this many pixels above what they must clear (a whisker cap, a dash's
# stroke), and the axis runs this far past 100% (a fifth of the plot) to hold a label over a full bar.
LABEL_LIFT_PX = 4
LABEL_HEADROOM = 0.22


def _whiskers(values: Sequence[float | None], intervals: Sequence[Any]) -> dict | None:
    """Plotly asymmetric error bars from [low, high] per bar; None when no bar has an interval."""
    plus, minus, any_interval = [], [], False
    for value, interval in zip(values, intervals):
        bounds = [_finite(v) for v in interval] if isinstance(interval, (list, tuple)) and len(interval) == 2 else None
        if value is None or bounds is None or None in bounds:
            plus.append(None), minus.append(None)
            continue
        any_interval = True
        plus.append(max(bounds[1] - value, 0.0))
        minus.append(max(value - bounds[0], 0.0))
    if not any_interval:
        return None
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
            "color": OKABE_ITO["black"], "thickness": 1.5, "width": 4}


def _interval_bounds(values: Sequence[float | None], whiskers: Mapping) -> list[tuple[float | None, float | None]]:
    return [
        (None, None) if v is None or up is None else (v - down, v + up)
        for v, up, down in zip(values, whiskers["array"], whiskers["arrayminus"])
    ]


@explained(
    "Per task, grey = base model (the base body with that task's own trained head, so it moves when the "
    "adapters or OSRM change), blue = each task's own adapter, orange = the merged model (label: merged ÷ single); "
    "whiskers are 95% bootstrap intervals over the evaluation set; the black dash is the majority-class baseline."
)
def accuracy_bars(
    results: Mapping, title: str | None = None, presentation: bool = False, score: str = "metric",
    flagged: Mapping[str, str] | None = None,
) -> go.Figure:
    """Grouped bars base / single / merged per task plus an 'average' group, from ``EvaluationResult.to_dict()``.

    `score="metric"` draws each task's primary metric (accuracy, or exact match for causal-LM
    tasks; the title and axis say which). A black dash per group marks the majority-class baseline
    (classification only): an accuracy near it means the model learned nothing. `score="loss"`
    draws causal tasks' completion loss (nats per token, lower is better) per task, without
    intervals or an average. The merged series is left out when no task has a merged score (an
    evaluation of singles only).

    Each group is labelled with the normalised score (merged ÷ single), over the merged bar and above
    every whisker, bar and dash of its group, where nothing can cover it: Plotly's own bar text sits
    on the bar's end, under the whisker, or (inside) on a short bar's whisker and the dash.

    `flagged` maps a task to why the adapter scored on it did not learn (merging.lab.chance_badges):
    its group's tick reads "task ⚠" (the traces keep the task's name).
    """
    if score not in ("metric", "loss"):
        raise ValueError(f"score must be 'metric' or 'loss', got {score!r}")
    tasks = _results_tasks(results)
    if score == "loss":
        return _loss_bars(tasks, title or "Completion loss per task", presentation)
    name = metric_name(results)
    title = title or f"{name.capitalize()} per task"
    average = dict(results.get("average") or {})
    groups = list(tasks) + ["average"]
    rows = [tasks[t] for t in tasks] + [average]
    intervals = [tasks[t].get("interval") for t in tasks] + [results.get("average_interval")]

    def column(key: str) -> list[float | None]:
        return [_finite(row.get(key)) for row in rows]

    fig = go.Figure()
    causal = has_loss(results)  # causal tasks: no heads, no majority class
    labels = {"base": "base model" if causal else "base body + task head", "single": "single adapter", "merged": "merged"}
    roles = [r for r in ("base", "single", "merged") if r != "merged" or any(v is not None for v in column(r)[:-1])]
    # what each group's label must clear: every bar's top or whisker top, and the majority dash
    tops: list[list[float | None]] = [[None] * len(groups) if causal else column("majority")]
    width = (1.0 - BAR_GAP) / len(roles)
    offsets = {}
    for index, role in enumerate(roles):
        values = column(role)
        whiskers = _whiskers(values, [(i or {}).get(role) if isinstance(i, Mapping) else None for i in intervals])
        # Each bar's place in its group is stated, not left to Plotly, so the labels can be put above it.
        offsets[role] = -(1.0 - BAR_GAP) / 2 + index * width
        bar = go.Bar(
            name=labels[role],
            x=groups,
            y=values,
            offset=offsets[role],
            width=width,
            marker={"color": ROLE_COLOURS[role]},
            hovertemplate=f"%{{x}}<br>{labels[role]}: %{{y:.2%}}<extra></extra>",
        )
        bounds = _interval_bounds(values, whiskers) if whiskers else [(None, None)] * len(values)
        tops.append([high if high is not None else value for value, (_, high) in zip(values, bounds)])
        if whiskers:
            bar.error_y = whiskers
            bar.customdata = [[lo, hi] for lo, hi in bounds]
            bar.hovertemplate = (
                f"%{{x}}<br>{labels[role]}: %{{y:.2%}}<br>95% interval: %{{customdata[0]:.1%}}–%{{customdata[1]:.1%}}"
                "<extra></extra>"
            )
        if role == "merged":
            normalized = column("normalized")
            bar.customdata = [[n, lo, hi] for n, (lo, hi) in zip(normalized, bounds)]
            bar.hovertemplate = (
                "%{x}<br>merged: %{y:.2%}<br>normalised (merged ÷ single): %{customdata[0]:.2%}"
                + ("<br>95% interval: %{customdata[1]:.1%}–%{customdata[2]:.1%}" if whiskers else "")
                + "<extra></extra>"
            )
        fig.add_trace(bar)
    if not causal:
        fig.add_trace(_majority_dashes(groups, column("majority")))
    if "merged" in roles:
        # on stage the label is the number alone, so it fits over one bar at ≥ 18 px
        label = "{:.0%}" if presentation else "{:.0%} of single"
        centre = offsets["merged"] + width / 2
        for position, (normalized, group_top) in enumerate(zip(column("normalized"), zip(*tops))):
            clear = max((t for t in group_top if t is not None), default=None)
            if normalized is None or clear is None:
                continue
            # Above every whisker, bar and dash of its group, over the merged bar: nothing can cover it.
            fig.add_annotation(x=position + centre, y=clear, yanchor="bottom", yshift=LABEL_LIFT_PX,
                               text=label.format(normalized), showarrow=False, name="merged ÷ single")
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": -0.18})  # on stage: at the foot (_style)
    if any(group in (flagged or {}) for group in groups):
        fig.update_xaxes(tickvals=groups, ticktext=[f"{g} ⚠" if g in (flagged or {}) else g for g in groups])
    _accuracy_axis(fig)
    if fig.layout.annotations:
        # room above 100% for a label over a full bar; ticks stop at 100%, no accuracy lies above it
        fig.update_yaxes(range=[0, 1.0 + LABEL_HEADROOM], tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    return _style(fig, title, presentation, x_title="Task", y_title=f"{name.capitalize()} (%)")


def _majority_dashes(groups: list[str], majority: list[float | None]) -> go.Scatter:
    return go.Scatter(
        name="majority-class baseline",
        x=groups,
        y=majority,
        mode="markers",
        # A wide horizontal dash spans the bar group, reading as a threshold line per task.
        marker={"symbol": "line-ew", "size": 44, "color": ROLE_COLOURS["majority"],
                "line": {"width": 3, "color": ROLE_COLOURS["majority"]}},
        hovertemplate="%{x}<br>majority class: %{y:.2%}<extra></extra>",
    )


def _loss_bars(tasks: Mapping[str, Mapping], title: str, presentation: bool) -> go.Figure:
    """Base / single / merged completion loss of each causal task (tasks without a loss are left out)."""
    losses = {t: s["loss"] for t, s in tasks.items() if isinstance(s, Mapping) and isinstance(s.get("loss"), Mapping)}
    if not losses:
        return _no_data(go.Figure(), "No task has a completion loss (classification tasks have none).")
    fig = go.Figure()
    labels = {"base": "base model", "single": "single adapter", "merged": "merged"}
    for role in ("base", "single", "merged"):
        values = [_finite(loss.get(role)) for loss in losses.values()]
        if role == "merged" and all(v is None for v in values):
            continue
        fig.add_trace(go.Bar(
            name=labels[role], x=list(losses), y=values, marker={"color": ROLE_COLOURS[role]},
            # on stage the numbers stay in the hover and the table: three to a group at 20 px they run together
            text=None if presentation else [f"{v:.3f}" if v is not None else "" for v in values], textposition="outside",
            hovertemplate=f"%{{x}}<br>{labels[role]}: %{{y:.4f}} nats per token<extra></extra>",
        ))
    fig.update_layout(barmode="group", bargap=0.25, legend={"orientation": "h", "y": -0.18})
    fig.update_yaxes(rangemode="tozero")
    return _style(fig, title, presentation, x_title="Task", y_title="Loss (nats per token, lower is better)")


def signed_points(value: float) -> str:
    """A change in percentage points with one decimal and its sign ("+3.1", "−2.0"); one that
    rounds to zero is "0.0" — never "+0.0", which reads as a gain."""
    if round(value, 1) == 0:
        return "0.0"
    return f"{value:+.1f}".replace("-", "\u2212")


@explained(
    "Each bar is the merged accuracy of this merge minus that of the one it is compared with (named in the "
    "title), in percentage points: green above zero is better, red below zero worse, grey unchanged."
)
def accuracy_delta(
    current: Mapping,
    previous: Mapping,
    title: str = "Change in merged accuracy vs the previous run",
    presentation: bool = False,
) -> go.Figure:
    """Per task (and average) merged accuracy now minus in ``previous``, in percentage points.

    Both arguments are ``EvaluationResult.to_dict()``. Only tasks with a merged score in both runs are
    compared; the others are named in a note under the chart rather than silently dropped.
    """
    now, before = _results_tasks(current), _results_tasks(previous)
    groups, deltas, pairs, skipped = [], [], [], []
    for task in now:
        a = _finite(now[task].get("merged"))
        b = _finite(before.get(task, {}).get("merged")) if task in before else None
        if a is None or b is None:
            skipped.append(task)
            continue
        groups.append(task)
        deltas.append((a - b) * 100.0)
        pairs.append([b, a])
    skipped += [t for t in before if t not in now]
    a = _finite((current.get("average") or {}).get("merged"))
    b = _finite((previous.get("average") or {}).get("merged"))
    if groups and a is not None and b is not None:
        groups.append("average")
        deltas.append((a - b) * 100.0)
        pairs.append([b, a])

    fig = go.Figure()
    if not groups:
        return _style(_no_data(fig, "no task has a merged accuracy in both runs"), title, presentation)
    fig.add_trace(
        go.Bar(
            name="Δ merged accuracy",
            x=groups,
            y=deltas,
            # Sign is also spelled out in the text, so the chart reads without colour.
            # a change that rounds to 0.0 is no gain: grey, and said without a sign
            marker={"color": [OKABE_ITO["grey"] if round(d, 1) == 0 else ROLE_COLOURS["gain"] if d > 0
                              else ROLE_COLOURS["loss"] for d in deltas]},
            text=[f"{signed_points(d)} pp" for d in deltas],
            textposition="outside",
            customdata=pairs,
            hovertemplate="%{x}<br>previous: %{customdata[0]:.2%}<br>now: %{customdata[1]:.2%}"
            "<br>change: %{y:+.1f} pp<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_hline(y=0, line={"color": OKABE_ITO["black"], "width": 1})
    # room beyond the longest bar for its label: on stage a label below a negative bar must stay
    # inside the plot, clear of the task names under it
    span = max(1.0, max(abs(d) for d in deltas)) * (1.5 if presentation else 1.25)
    fig.update_yaxes(range=[-span, span], ticksuffix=" pp", zeroline=False)
    _style(fig, title, presentation, x_title="Task", y_title="Change in accuracy (percentage points)")
    if skipped:
        # A subtitle, not a floating annotation: it cannot collide with the axis title.
        fig.update_layout(title_subtitle_text="not compared (no merged score in both runs): " + ", ".join(skipped))
    return fig


ENERGY_TOLERANCE = 1e-6  # exact-rank merges report energy_kept of 1 ± float32 rounding (1.0000000787, 0.99999989)


def rank_truncated(summary: Mapping, tolerance: float = ENERGY_TOLERANCE) -> bool:
    """Whether any module lost energy to the rank cut (so the energy-kept chart has something to say)."""
    modules = summary.get("modules", summary) if isinstance(summary, Mapping) else {}
    kept = [_energy(info.get("energy_kept")) for info in modules.values() if isinstance(info, Mapping)]
    return any(value is not None and value < 1.0 - tolerance for value in kept)


def _energy(value: Any) -> float | None:
    """A kept-energy fraction, clamped to ≤ 1: exact merges report 1.0000000787 (float rounding)."""
    number = _finite(value)
    return None if number is None else min(number, 1.0)


@explained(
    "Share of each module's merged update ‖ΔW‖²_F kept after rank truncation: "
    "100% means the rank cut lost nothing, low bars mark modules where the chosen rank is too small."
)
def energy_kept(
    summary: Mapping,
    by: str = "module",
    title: str = "Energy kept by the rank truncation",
    presentation: bool = False,
) -> go.Figure:
    """Fraction of each merged update's ‖ΔW‖²_F kept by the SVD truncation, from ``MergedAdapter.summary()``.

    ``summary`` is the whole summary or its ``"modules"`` entry ({module: {rank, energy_kept, path}}).
    ``by="module"``: one bar per module (hover: full name, rank, factored/dense path).
    ``by="layer"``: the mean per transformer block, with error bars down to the block's minimum and
    up to its maximum, since one badly truncated module is what matters.
    """
    if by not in ("module", "layer"):
        raise ValueError(f"by must be 'module' or 'layer', got {by!r}")
    modules = dict(summary.get("modules", summary) if isinstance(summary, Mapping) else {})
    modules = {name: info for name, info in modules.items() if isinstance(info, Mapping)}
    fig = go.Figure()
    if not modules:
        return _style(_no_data(fig, "no merged modules"), title, presentation)
    y_title = "Energy kept (% of ‖ΔW‖²_F)"
    if by == "module":
        names = list(modules)
        values = [_energy(modules[n].get("energy_kept")) for n in names]
        fig.add_trace(
            go.Bar(
                name="energy kept",
                x=_short_names(names),
                y=values,
                marker={"color": ROLE_COLOURS["merged"]},
                customdata=[[n, modules[n].get("rank"), modules[n].get("path", "")] for n in names],
                hovertemplate="%{customdata[0]}<br>energy kept: %{y:.4%}<br>rank: %{customdata[1]}"
                "<br>path: %{customdata[2]}<extra></extra>",
                showlegend=False,
            )
        )
        x_title = "Module"
    else:
        groups: dict[str, list[tuple[float, Any]]] = {}
        for name, info in modules.items():
            value = _energy(info.get("energy_kept"))
            if value is not None:
                groups.setdefault(_layer_label(layer_of(name)), []).append((value, info.get("rank")))
        layers = sorted(groups, key=_layer_order)
        means = [sum(v for v, _ in groups[k]) / len(groups[k]) for k in layers]
        lows = [min(v for v, _ in groups[k]) for k in layers]
        highs = [max(v for v, _ in groups[k]) for k in layers]
        fig.add_trace(
            go.Bar(
                name="mean energy kept",
                x=layers,
                y=means,
                marker={"color": ROLE_COLOURS["merged"]},
                error_y={"type": "data", "symmetric": False,
                         "array": [h - m for h, m in zip(highs, means)],
                         "arrayminus": [m - low for m, low in zip(means, lows)],
                         "color": OKABE_ITO["black"]},
                customdata=[[low, high, len(groups[k])] for k, low, high in zip(layers, lows, highs)],
                hovertemplate="layer %{x}<br>mean energy kept: %{y:.4%}<br>min: %{customdata[0]:.4%}"
                "<br>max: %{customdata[1]:.4%}<br>modules: %{customdata[2]}<extra></extra>",
                showlegend=False,
            )
        )
        fig.update_xaxes(type="category")
        x_title = "Transformer block (layer index)"
    _accuracy_axis(fig)  # same 0–100% axis: energy kept is a fraction too
    return _style(fig, title, presentation, x_title=x_title, y_title=y_title)


@explained(
    "DO-Merging's loss (Σ cos² between directions + μ‖δ‖²) per Adam step: "
    "the line is the mean over modules, the band spans min to max; a flat tail means the optimisation has converged."
)
def orthogonalize_loss(
    curves: Mapping[str, Sequence[float]],
    show_modules: bool = False,
    log_y: bool = False,
    title: str = "DO-Merging orthogonalisation loss",
    presentation: bool = False,
) -> go.Figure:
    """Loss per Adam step of DO-Merging's orthogonalisation, ``{module: OrthogonalizeReport.loss}``.

    With many modules one line each is unreadable, so the default shows the mean over modules and a
    min–max band; ``show_modules`` adds a thin grey line per module underneath. Curves of different
    lengths are summarised per step over the modules that reached it.
    """
    curves = {name: [_finite(v) for v in _values(loss)] for name, loss in curves.items()}
    curves = {name: loss for name, loss in curves.items() if loss}
    fig = go.Figure()
    if not curves:
        return _style(_no_data(fig, "no orthogonalisation ran (DO-Merging's orthogonalise is off)"),
                      title, presentation)
    length = max(len(c) for c in curves.values())
    steps = list(range(length))
    per_step = [[c[s] for c in curves.values() if s < len(c) and c[s] is not None] for s in steps]
    mean = [sum(v) / len(v) if v else None for v in per_step]
    low = [min(v) if v else None for v in per_step]
    high = [max(v) if v else None for v in per_step]

    if show_modules:
        for i, (name, loss) in enumerate(curves.items()):
            fig.add_trace(
                go.Scatter(
                    name="single module", legendgroup="modules", showlegend=i == 0,
                    x=list(range(len(loss))), y=loss, mode="lines",
                    line={"color": OKABE_ITO["grey"], "width": 1}, opacity=0.5,
                    hovertemplate=f"{name}<br>step %{{x}}<br>loss: %{{y:.6g}}<extra></extra>",
                )
            )
    band = {"color": "rgba(0, 114, 178, 0)", "width": 0}
    fig.add_trace(go.Scatter(name="min over modules", x=steps, y=low, mode="lines", line=band,
                             showlegend=False, hovertemplate="step %{x}<br>min: %{y:.6g}<extra></extra>"))
    fig.add_trace(
        go.Scatter(name=f"min–max over {len(curves)} modules", x=steps, y=high, mode="lines", line=band,
                   fill="tonexty", fillcolor="rgba(0, 114, 178, 0.2)",
                   hovertemplate="step %{x}<br>max: %{y:.6g}<extra></extra>")
    )
    fig.add_trace(
        go.Scatter(name="mean over modules", x=steps, y=mean, mode="lines",
                   line={"color": OKABE_ITO["blue"], "width": 2.5},
                   hovertemplate="step %{x}<br>mean: %{y:.6g}<extra></extra>")
    )
    if log_y:
        fig.update_yaxes(type="log")
    return _style(fig, title, presentation, x_title="Adam step",
                  y_title="Loss Σ cos² + μ‖δ‖² (unitless)")


def _mean_abs_off_diagonal(matrix: list[list[float | None]]) -> float | None:
    values = [abs(v) for i, row in enumerate(matrix) for j, v in enumerate(row) if i != j and v is not None]
    return sum(values) / len(values) if values else None


@explained(
    "Pairwise cosine of the adapters' direction matrices before (left) and after (right) "
    "orthogonalisation: off-diagonal cells should move towards white (0)."
)
def cosine_before_after(
    before: Any,
    after: Any,
    names: Sequence[str],
    title: str = "Direction cosines before and after orthogonalisation",
    presentation: bool = False,
) -> go.Figure:
    """Two adapter × adapter cosine heatmaps side by side, sharing one diverging colour axis (−1..1).

    ``before``/``after`` are ``OrthogonalizeReport.cosine_before`` / ``cosine_after`` (n × n lists or
    tensors) for one module, or their mean over modules. Subplot titles give the mean |cosine| off the
    diagonal so the improvement reads as one number too.
    """
    left, right = _matrix(before), _matrix(after)
    names = [str(n) for n in names]

    def subtitle(label: str, m: list[list[float | None]]) -> str:
        value = _mean_abs_off_diagonal(m)
        return label if value is None else f"{label} (mean |cos| off-diagonal {value:.3f})"

    fig = make_subplots(rows=1, cols=2, subplot_titles=(subtitle("Before", left), subtitle("After", right)),
                        horizontal_spacing=0.12)
    for col, matrix, label in ((1, left, "before"), (2, right, "after")):
        fig.add_trace(
            go.Heatmap(
                name=label, z=matrix, x=names, y=names, coloraxis="coloraxis",
                texttemplate="%{z:.2f}",
                hovertemplate=f"{label}<br>%{{y}} vs %{{x}}<br>cosine: %{{z:.4f}}<extra></extra>",
            ),
            row=1, col=col,
        )
        _heatmap_axes(fig, row=1, col=col)
    fig.update_layout(coloraxis={"colorscale": DIVERGING, "cmin": -1, "cmax": 1, "cmid": 0,
                                 "colorbar": {"title": {"text": "cosine"}, "tickvals": [-1, 0, 1]}})
    fig.update_xaxes(title_text="Adapter")
    fig.update_yaxes(title_text="Adapter")
    return _style(fig, title, presentation)
