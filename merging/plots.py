"""Plotly figures for mergescope: plain data in, a ``plotly.graph_objects.Figure`` out.

Pure functions: no file I/O, no Streamlit, no torch maths. Each takes the JSON-ready structures the
library already produces (``EvaluationResult.to_dict()``, ``MergedAdapter.summary()``,
``Adapter.summary()``, ``metrics.adapter_metrics(...)``, ``OrthogonalizeReport`` fields, ...) so the
UI, the CLI and a stored run can all draw the same chart from the same numbers.

Conventions shared by every figure, so a viewer learns them once:

- Colours come from the Okabe–Ito palette, which stays distinguishable under the common colour-vision
  deficiencies: base = grey, single adapter = blue, merged = orange, majority-class baseline = black.
- Standard LoRA vs OSRM initialisation: solid vs dashed lines (and circle vs square markers), so the
  two can be told apart without colour; where init is the only thing plotted it also gets its own
  colour (standard = blue, OSRM = vermillion).
- Accuracies stay fractions in the data and are shown as percentages (axis tick format), so hover
  values are the stored numbers, not rounded copies.
- Heatmaps of bounded quantities have fixed colour ranges (overlap and accuracy 0..1, cosine −1..1) so
  two heatmaps side by side, or one layer after another on a slider, are comparable.
- ``presentation=True`` enlarges fonts, markers and lines for a talk (one helper, ``_style``).

``HOW_TO_READ`` maps each figure function's name to one line the UI shows under the chart.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from merging.lora import layer_of

__all__ = [
    "ROLE_COLOURS",
    "INIT_STYLES",
    "PALETTE",
    "HOW_TO_READ",
    "accuracy_bars",
    "accuracy_delta",
    "energy_kept",
    "orthogonalize_loss",
    "cosine_before_after",
    "magnitude_variance_by_layer",
    "overlap_heatmap",
    "cosine_heatmap",
    "sign_conflicts_by_layer",
    "interference_heatmap",
    "sweep_points",
    "sweep_curves",
    "lambda_heatmap",
    "layer_norms",
    "cross_task_heatmap",
    "runs_comparison",
    "figure_to_html",
]

# ----------------------------------------------------------------------------------------------
# Colours and styles

# Okabe & Ito (2008), "Color Universal Design": safe for protan/deutan/tritan viewers.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

ROLE_COLOURS: dict[str, str] = {
    "base": OKABE_ITO["grey"],
    "single": OKABE_ITO["blue"],
    "merged": OKABE_ITO["orange"],
    "majority": OKABE_ITO["black"],
    "average": OKABE_ITO["black"],
    "gain": OKABE_ITO["bluish_green"],
    "loss": OKABE_ITO["vermillion"],
}

# Dash + marker symbol carry the init on their own; the colour is used where init is the only series.
INIT_STYLES: dict[str, dict[str, str]] = {
    "standard": {"color": OKABE_ITO["blue"], "dash": "solid", "symbol": "circle"},
    "osrm": {"color": OKABE_ITO["vermillion"], "dash": "dash", "symbol": "square"},
    "osrm-cov": {"color": OKABE_ITO["reddish_purple"], "dash": "dot", "symbol": "diamond"},
}
_OTHER_INIT_DASHES = ["dashdot", "longdash", "longdashdot"]

# Series colours (adapters, tasks, runs) in a fixed order; grey and black are kept for roles.
PALETTE: list[str] = [
    OKABE_ITO["blue"],
    OKABE_ITO["orange"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["yellow"],
]
# A second cue besides colour for series that are told apart only by colour (bars, markers).
_PATTERNS = ["", "/", ".", "x", "\\", "+", "-", "|"]
_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down"]

# Sequential scale for [0, 1] quantities: perceptually uniform and colour-blind safe.
SEQUENTIAL = "Viridis"
# Diverging scale (ColorBrewer RdBu, colour-blind safe) for signed quantities.
DIVERGING = "RdBu"

FONT_SIZE = {False: 13, True: 20}
_TITLE_EXTRA = 5
_MARKER_SCALE = 1.7
_LINE_SCALE = 1.8

HOW_TO_READ: dict[str, str] = {
    "accuracy_bars": "Per task, grey = base model, blue = each task's own adapter, orange = the merged model "
    "(label: merged ÷ single); the black dash is the majority-class baseline, so bars near it learned nothing.",
    "accuracy_delta": "Each bar is the merged accuracy now minus in the previous run, in percentage points: "
    "green above zero improved, red below zero got worse.",
    "energy_kept": "Share of each module's merged update ‖ΔW‖²_F kept after rank truncation: "
    "100% means the rank cut lost nothing, low bars mark modules where the chosen rank is too small.",
    "orthogonalize_loss": "DO-Merging's loss (Σ cos² between directions + μ‖δ‖²) per Adam step: "
    "the line is the mean over modules, the band spans min to max; a flat tail means the optimisation has converged.",
    "cosine_before_after": "Pairwise cosine of the adapters' direction matrices before (left) and after (right) "
    "orthogonalisation: off-diagonal cells should move towards white (0).",
    "magnitude_variance_by_layer": "Left: how unevenly each adapter's update spreads over input features (CV, "
    "0 = even); right: how unequal the adapters' update sizes are per layer (0 = equal, high = one dominates).",
    "overlap_heatmap": "Cell (i, j) is how much adapters i and j share a subspace: 0 (dark) = orthogonal, "
    "no interference through it; 1 (yellow) = the same directions.",
    "cosine_heatmap": "Cell (i, j) is the cosine between two adapters' updates: blue = aligned (they reinforce), "
    "white = orthogonal, red = opposed (they cancel in a sum).",
    "sign_conflicts_by_layer": "Share of weight entries per layer where the adapters push in opposite directions; "
    "the dashed line is what two unrelated random updates give (50%).",
    "interference_heatmap": "Row = task's inputs, column = adapter: how loudly the adapter answers that task "
    "relative to the task's own adapter (diagonal = 1); blue ≪ 1 is harmless, red ≥ 1 disturbs the task.",
    "sweep_curves": "Merged accuracy per task (colour) as the merge coefficient λ grows; solid = standard LoRA, "
    "dashed = OSRM initialisation; the thick black line is the average over tasks.",
    "lambda_heatmap": "Average merged accuracy for each pair of coefficients (λ₁ rows, λ₂ columns); "
    "brighter is better and the star marks the best pair.",
    "layer_norms": "Size ‖ΔW‖_F of one adapter's update per layer, one bar per module type: "
    "tall bars show where fine-tuning changed the model most.",
    "cross_task_heatmap": "Row = adapter body, column = task it is scored on (with that task's head): "
    "bright diagonal and dark off-diagonal means each adapter only helps its own task.",
    "runs_comparison": "Merged accuracy per task for each selected run side by side (one colour and hatch per run); "
    "the 'average' group compares runs overall.",
}


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _style(
    fig: go.Figure,
    title: str,
    presentation: bool,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Title, axis titles, template and font sizes in one place, so every chart looks alike.

    ``presentation`` scales fonts, markers and lines up (a projector at the back of a room); it is
    applied last, after the traces exist, so each chart only states its normal sizes.
    """
    size = FONT_SIZE[bool(presentation)]
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "font": {"size": size + _TITLE_EXTRA}, "x": 0.0, "xanchor": "left"},
        font={"size": size},
        hoverlabel={"font": {"size": size}},
        legend={"font": {"size": size}},
        margin={"t": 60 + 3 * size},
    )
    if height is not None:
        fig.update_layout(height=int(height * (1.3 if presentation else 1.0)))
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    # Subplot titles are annotations with their own font.
    for annotation in fig.layout.annotations or ():
        annotation.font = {"size": size}
    if presentation:
        for trace in fig.data:
            _enlarge(trace)
    return fig


def _enlarge(trace: Any) -> None:
    """Presentation mode for one trace: bigger markers, thicker lines, bigger in-cell text."""
    kind = trace.type
    if kind == "scatter":
        mode = trace.mode or "lines+markers"
        if "markers" in mode:
            # A "line-ew" dash is sized to span a bar group; widen its stroke, not its length.
            if not str(trace.marker.symbol or "").startswith("line"):
                size = trace.marker.size if isinstance(trace.marker.size, (int, float)) else 6
                trace.marker.size = size * _MARKER_SCALE
            if trace.marker.line is not None and trace.marker.line.width:
                trace.marker.line.width = trace.marker.line.width * _LINE_SCALE
        if "lines" in mode and (trace.line.width is None or trace.line.width > 0):
            trace.line.width = (trace.line.width or 2) * _LINE_SCALE
    if kind in ("bar", "heatmap", "scatter"):
        trace.textfont = {"size": FONT_SIZE[True]}


def _values(data: Any) -> Any:
    """Tensors and arrays as nested lists (duck-typed: no torch/numpy import needed here)."""
    if hasattr(data, "tolist"):
        return data.tolist()
    return data


def _finite(value: Any) -> float | None:
    """A float, or None for missing / NaN / ±inf (JSON from the library already writes those as null)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _matrix(data: Any) -> list[list[float | None]]:
    rows = _values(data)
    return [[_finite(v) for v in _values(row)] for row in rows]


def _layer_label(key: Any) -> str:
    """Layer keys arrive as ints (``layer_means``), strings (JSON) or None: one label each."""
    if key is None or key == "other":
        return "other"
    return str(int(key)) if str(key).lstrip("-").isdigit() else str(key)


def _layer_order(label: str) -> tuple[int, float | str]:
    """Blocks in numeric order, then anything else (e.g. 'other')."""
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _short_names(names: Sequence[str]) -> list[str]:
    """Drop the dotted prefix that all names share (``base_model.model.encoder.``), for tick labels."""
    if len(names) < 2:
        return [n.split(".")[-1] if n.count(".") > 3 else n for n in names]
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def _no_data(fig: go.Figure, message: str) -> go.Figure:
    """An empty chart still says why it is empty instead of showing blank axes."""
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _accuracy_axis(fig: go.Figure, **kwargs: Any) -> None:
    """Accuracies are fractions; show percent ticks on a fixed 0–100% range so runs compare."""
    fig.update_yaxes(tickformat=".0%", range=[0, 1.08], **kwargs)


def _heatmap_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> None:
    """Matrix layout: first row at the top, square-ish cells, categorical ticks."""
    fig.update_yaxes(autorange="reversed", type="category", row=row, col=col)
    fig.update_xaxes(type="category", side="bottom", row=row, col=col)


def _results_tasks(results: Mapping) -> dict[str, Mapping]:
    tasks = results.get("tasks") if isinstance(results, Mapping) else None
    if tasks is None:
        raise ValueError("expected EvaluationResult.to_dict(): a mapping with a 'tasks' entry")
    return dict(tasks)


def _init_style(init: str, index: int) -> dict[str, str]:
    if init in INIT_STYLES:
        return INIT_STYLES[init]
    return {
        "color": PALETTE[index % len(PALETTE)],
        "dash": _OTHER_INIT_DASHES[index % len(_OTHER_INIT_DASHES)],
        "symbol": _SYMBOLS[(index + 3) % len(_SYMBOLS)],
    }


def _percent_text(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


# ----------------------------------------------------------------------------------------------
# 1–2. Accuracy


def accuracy_bars(results: Mapping, title: str = "Accuracy per task", presentation: bool = False) -> go.Figure:
    """Grouped bars base / single / merged per task plus an 'average' group, from ``EvaluationResult.to_dict()``.

    The merged bars carry the normalised accuracy (merged ÷ single) as text, and a black dash per
    group marks the majority-class baseline: an accuracy near it means the model learned nothing.
    The merged series is left out when no task has a merged score (an evaluation of singles only).
    """
    tasks = _results_tasks(results)
    average = dict(results.get("average") or {})
    groups = list(tasks) + ["average"]
    rows = [tasks[t] for t in tasks] + [average]

    def column(key: str) -> list[float | None]:
        return [_finite(row.get(key)) for row in rows]

    fig = go.Figure()
    labels = {"base": "base model", "single": "single adapter", "merged": "merged"}
    for role in ("base", "single", "merged"):
        values = column(role)
        if role == "merged" and all(v is None for v in values[:-1]):
            continue
        bar = go.Bar(
            name=labels[role],
            x=groups,
            y=values,
            marker={"color": ROLE_COLOURS[role]},
            hovertemplate=f"%{{x}}<br>{labels[role]}: %{{y:.2%}}<extra></extra>",
        )
        if role == "merged":
            normalized = column("normalized")
            bar.text = [f"{n:.0%} of single" if n is not None else "" for n in normalized]
            bar.textposition = "outside"
            bar.customdata = [[n] for n in normalized]
            bar.hovertemplate = (
                "%{x}<br>merged: %{y:.2%}<br>normalised (merged ÷ single): %{customdata[0]:.2%}<extra></extra>"
            )
        fig.add_trace(bar)
    fig.add_trace(
        go.Scatter(
            name="majority-class baseline",
            x=groups,
            y=column("majority"),
            mode="markers",
            # A wide horizontal dash spans the bar group, reading as a threshold line per task.
            marker={"symbol": "line-ew", "size": 44, "color": ROLE_COLOURS["majority"],
                    "line": {"width": 3, "color": ROLE_COLOURS["majority"]}},
            hovertemplate="%{x}<br>majority class: %{y:.2%}<extra></extra>",
        )
    )
    fig.update_layout(barmode="group", bargap=0.25, legend={"orientation": "h", "y": -0.18})
    _accuracy_axis(fig)
    return _style(fig, title, presentation, x_title="Task", y_title="Accuracy (%)")


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
            marker={"color": [ROLE_COLOURS["gain"] if d >= 0 else ROLE_COLOURS["loss"] for d in deltas]},
            text=[f"{d:+.2f} pp" for d in deltas],
            textposition="outside",
            customdata=pairs,
            hovertemplate="%{x}<br>previous: %{customdata[0]:.2%}<br>now: %{customdata[1]:.2%}"
            "<br>change: %{y:+.2f} pp<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_hline(y=0, line={"color": OKABE_ITO["black"], "width": 1})
    span = max(1.0, max(abs(d) for d in deltas)) * 1.25
    fig.update_yaxes(range=[-span, span], ticksuffix=" pp", zeroline=False)
    _style(fig, title, presentation, x_title="Task", y_title="Change in accuracy (percentage points)")
    if skipped:
        # A subtitle, not a floating annotation: it cannot collide with the axis title.
        fig.update_layout(title_subtitle_text="not compared (no merged score in both runs): " + ", ".join(skipped))
    return fig


# ----------------------------------------------------------------------------------------------
# 3. Energy kept by rank truncation


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
        values = [_finite(modules[n].get("energy_kept")) for n in names]
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
            value = _finite(info.get("energy_kept"))
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


# ----------------------------------------------------------------------------------------------
# 4. DO-Merging


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


# ----------------------------------------------------------------------------------------------
# 5–9. Interference metrics


def magnitude_variance_by_layer(
    per_layer: Mapping,
    adapters: Sequence[str] | None = None,
    title: str = "Magnitude variance per layer",
    presentation: bool = False,
) -> go.Figure:
    """Both magnitude views per transformer block, from ``adapter_metrics(...)``.

    ``per_layer`` is ``adapter_metrics(...)["layers"]`` ({"0": {...}, ..., "other": {...}}), or the whole
    ``adapter_metrics`` dict (then the adapters' names come from it). Per layer it needs
    ``column_norm_cv`` (one value per adapter) and ``norm_variance_across`` (one float).

    Left: within each adapter, the coefficient of variation of its column norms (one line per adapter).
    Right: across adapters, the population variance of ‖ΔWᵢ‖_F (bars).
    """
    if "layers" in per_layer and isinstance(per_layer.get("layers"), Mapping):
        adapters = adapters if adapters is not None else per_layer.get("adapters")
        per_layer = per_layer["layers"]
    layers = sorted(((_layer_label(k), v) for k, v in per_layer.items()), key=lambda kv: _layer_order(kv[0]))
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.12,
        subplot_titles=("Within each adapter: spread over input features",
                        "Across adapters: spread of update sizes"),
    )
    if not layers:
        return _style(_no_data(fig, "no layers"), title, presentation)
    count = max((len(_values(v.get("column_norm_cv") or [])) for _, v in layers), default=0)
    names = [str(a) for a in adapters] if adapters is not None else [f"adapter {i + 1}" for i in range(count)]
    labels = [k for k, _ in layers]
    for i, name in enumerate(names):
        cvs = []
        for _, values in layers:
            row = _values(values.get("column_norm_cv") or [])
            cvs.append(_finite(row[i]) if i < len(row) else None)
        fig.add_trace(
            go.Scatter(
                name=name, x=labels, y=cvs, mode="lines+markers", legendgroup=name,
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
                marker={"symbol": _SYMBOLS[i % len(_SYMBOLS)], "size": 8},
                hovertemplate=f"{name}<br>layer %{{x}}<br>CV of column norms: %{{y:.4f}}<extra></extra>",
            ),
            row=1, col=1,
        )
    fig.add_trace(
        go.Bar(
            name="variance of ‖ΔW‖_F across adapters", x=labels,
            y=[_finite(v.get("norm_variance_across")) for _, v in layers],
            marker={"color": OKABE_ITO["grey"]},
            hovertemplate="layer %{x}<br>variance across adapters: %{y:.6g}<extra></extra>",
        ),
        row=1, col=2,
    )
    fig.update_xaxes(type="category", title_text="Transformer block (layer index)")
    fig.update_yaxes(title_text="CV of column norms (std ÷ mean, unitless)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="Variance of ‖ΔW‖_F (squared weight units)", rangemode="tozero", row=1, col=2)
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return _style(fig, title, presentation)


def overlap_heatmap(
    matrix: Any,
    names: Sequence[str],
    title: str = "Subspace overlap",
    presentation: bool = False,
) -> go.Figure:
    """Adapter × adapter subspace overlap φ ∈ [0, 1] (``subspace_overlap_matrix`` or a layer's mean).

    The colour range is fixed to 0..1, not fitted to the data, so input vs output subspaces, or one
    layer after another on a slider, can be compared by colour alone. Values are written in the cells.
    """
    z = _matrix(matrix)
    names = [str(n) for n in names]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=names, y=names, zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL,
            texttemplate="%{z:.2f}",
            colorbar={"title": {"text": "overlap φ"}, "tickvals": [0, 0.25, 0.5, 0.75, 1]},
            hovertemplate="%{y} vs %{x}<br>overlap φ: %{z:.4f}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Adapter", y_title="Adapter")


def cosine_heatmap(
    matrix: Any,
    names: Sequence[str],
    title: str = "Task-vector cosine",
    presentation: bool = False,
) -> go.Figure:
    """Adapter × adapter cosine in [−1, 1] on a diverging scale centred at 0 (white = orthogonal)."""
    z = _matrix(matrix)
    names = [str(n) for n in names]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=names, y=names, zmin=-1.0, zmax=1.0, zmid=0.0, colorscale=DIVERGING,
            texttemplate="%{z:.2f}",
            colorbar={"title": {"text": "cosine"}, "tickvals": [-1, -0.5, 0, 0.5, 1],
                      "ticktext": ["−1 opposed", "−0.5", "0 orthogonal", "0.5", "1 aligned"]},
            hovertemplate="%{y} vs %{x}<br>cosine: %{z:.4f}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Adapter", y_title="Adapter")


def sign_conflicts_by_layer(
    per_layer: Mapping[Any, float | None],
    title: str = "Sign conflicts per layer",
    presentation: bool = False,
) -> go.Figure:
    """Share of disputed weight entries per block: ``{layer: rate}`` (keys int, "0", None or "other").

    For ``adapter_metrics`` output pass ``{k: v["sign_conflict_rate"] for k, v in metrics["layers"].items()}``.
    A dashed line at 50% marks what two independent random updates give, the natural reference.
    """
    items = sorted(((_layer_label(k), _finite(v)) for k, v in per_layer.items()), key=lambda kv: _layer_order(kv[0]))
    fig = go.Figure()
    if not items:
        return _style(_no_data(fig, "no layers"), title, presentation)
    fig.add_trace(
        go.Bar(
            name="sign conflicts", x=[k for k, _ in items], y=[v for _, v in items],
            marker={"color": OKABE_ITO["vermillion"]}, showlegend=False,
            hovertemplate="layer %{x}<br>conflicting entries: %{y:.4%}<extra></extra>",
        )
    )
    fig.add_hline(y=0.5, line={"dash": "dash", "color": OKABE_ITO["black"], "width": 1.5},
                  annotation_text="two random updates ≈ 50%", annotation_position="top left")
    fig.update_xaxes(type="category")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.0])
    return _style(fig, title, presentation, x_title="Transformer block (layer index)",
                  y_title="Entries with opposite signs (% of touched entries)")


def _interference_cell(value: Any) -> tuple[float | None, str]:
    """(plotted value, label): inf and NaN have no colour but keep their meaning in the cell text."""
    if value is None:
        return None, "n/a"
    number = float(value)
    if math.isnan(number):
        return None, "n/a"
    if math.isinf(number):
        return None, "∞"
    return number, f"{number:.3g}"


def interference_heatmap(
    matrix: Any,
    tasks: Sequence[str],
    adapters: Sequence[str],
    log: bool = True,
    title: str = "Data-parameter interference ‖ΔWⱼXᵢᵀ‖ ÷ ‖ΔWᵢXᵢᵀ‖",
    presentation: bool = False,
) -> go.Figure:
    """Task × adapter interference ratio (``metrics.interference_matrix``): row i = task i's inputs.

    The ratio spans orders of magnitude (0.01 is harmless, 1 is as loud as the task's own adapter), so
    by default the colour is log₁₀ of it on a diverging scale centred at 1 (= log 0), with the colour
    bar labelled in the ratio itself. Cells keep the exact ratio as text and in the hover. A 0 ratio is
    coloured at the bottom of the range; inf and NaN (task's own response 0) are left uncoloured and
    written as ∞ / n/a.
    """
    rows = [[_interference_cell(v) for v in _values(row)] for row in _values(matrix)]
    raw = [[v for v, _ in row] for row in rows]
    text = [[t for _, t in row] for row in rows]
    positives = [v for row in raw for v in row if v is not None and v > 0]
    fig = go.Figure()
    if log:
        # Symmetric decades around 1, at least 0.1..10, so the centre colour always means "as loud as its own".
        # (the small tolerance keeps a float32 0.01, i.e. 10^-2.0000001, inside two decades)
        top = max([1] + [math.ceil(abs(math.log10(v)) - 1e-6) for v in positives])
        z = [[(max(math.log10(v), -top) if v > 0 else -top) if v is not None else None for v in row] for row in raw]
        ticks = list(range(-top, top + 1))
        colorbar = {"title": {"text": "ratio (log scale)"}, "tickvals": ticks,
                    "ticktext": [f"{10.0 ** t:g}" for t in ticks]}
        zmin, zmax, zmid = -top, top, 0.0
    else:
        z = raw
        top = max([2.0] + positives)
        colorbar = {"title": {"text": "ratio"}}
        zmin, zmax, zmid = 0.0, top, 1.0
    fig.add_trace(
        go.Heatmap(
            z=z, x=[str(a) for a in adapters], y=[str(t) for t in tasks],
            zmin=zmin, zmax=zmax, zmid=zmid, colorscale=DIVERGING, reversescale=True,
            text=text, texttemplate="%{text}", customdata=text, colorbar=colorbar,
            hovertemplate="inputs of task %{y}<br>adapter %{x}<br>ratio: %{customdata}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Adapter (ΔWⱼ)", y_title="Task inputs (Xᵢ)")


# ----------------------------------------------------------------------------------------------
# 10–11. Sweeps


def sweep_points(sweep: Iterable[tuple[Sequence[float], Any]], init: str = "standard") -> list[dict]:
    """Long-format rows for ``sweep_curves`` from ``Lab.sweep`` output ``[(weights, EvaluationResult), ...]``.

    λ is the first weight (a uniform sweep uses λ·[1, …, 1]). Results may be EvaluationResult objects
    or their ``to_dict()``. Tasks without a merged score are left out.
    """
    points = []
    for weights, result in sweep:
        data = result.to_dict() if hasattr(result, "to_dict") else result
        lam = float(list(weights)[0])
        for task, scores in _results_tasks(data).items():
            merged = _finite(scores.get("merged"))
            if merged is not None:
                points.append({"lambda": lam, "init": init, "task": task, "merged": merged})
    return points


def _records(points: Any) -> list[dict]:
    """A pandas DataFrame (duck-typed) or an iterable of mappings, as a list of dicts."""
    if hasattr(points, "to_dict") and hasattr(points, "columns"):
        return points.to_dict("records")
    return [dict(p) for p in points]


def sweep_curves(
    points: Any,
    title: str = "Merged accuracy over the merge coefficient λ",
    x_title: str = "λ (merge coefficient, same for every adapter; unitless)",
    presentation: bool = False,
) -> go.Figure:
    """Merged accuracy per task over λ, standard vs OSRM overlaid.

    ``points``: a list of dicts or a DataFrame in long format, one row per (λ, init, task), columns
    ``lambda`` (float), ``init`` (``"standard"``, ``"osrm"``, ``"osrm-cov"``, or any label), ``task``
    (str) and ``merged`` (accuracy fraction). ``sweep_points`` builds it from ``Lab.sweep``. Rows with
    task ``"average"`` are used as given; otherwise the average over tasks is computed per (init, λ).

    Colour = task (the average is thick black), dash and marker = init (solid circle = standard,
    dashed square = OSRM), so both are readable without colour.
    """
    rows = [
        r for r in _records(points)
        if _finite(r.get("merged")) is not None and _finite(r.get("lambda")) is not None
    ]
    fig = go.Figure()
    if not rows:
        return _style(_no_data(fig, "no sweep points"), title, presentation)
    inits = list(dict.fromkeys(str(r.get("init", "standard")) for r in rows))
    tasks = list(dict.fromkeys(str(r["task"]) for r in rows if str(r["task"]) != "average"))
    series: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        series.setdefault((str(r["task"]), str(r.get("init", "standard"))), {})[float(r["lambda"])] = float(r["merged"])
    for init in inits:
        if ("average", init) in series:
            continue
        sums: dict[float, list[float]] = {}
        for task in tasks:
            for lam, value in series.get((task, init), {}).items():
                sums.setdefault(lam, []).append(value)
        if sums:
            series[("average", init)] = {lam: sum(v) / len(v) for lam, v in sums.items()}

    for t_index, task in enumerate(tasks + ["average"]):
        colour = ROLE_COLOURS["average"] if task == "average" else PALETTE[t_index % len(PALETTE)]
        for i_index, init in enumerate(inits):
            values = series.get((task, init))
            if not values:
                continue
            style = _init_style(init, i_index)
            lambdas = sorted(values)
            fig.add_trace(
                go.Scatter(
                    name=f"{task} · {init}", legendgroup=task,
                    x=lambdas, y=[values[lam] for lam in lambdas], mode="lines+markers",
                    line={"color": colour, "dash": style["dash"], "width": 4 if task == "average" else 2},
                    marker={"color": colour, "symbol": style["symbol"], "size": 7},
                    hovertemplate=f"{task} ({init})<br>λ = %{{x:g}}<br>merged accuracy: %{{y:.2%}}<extra></extra>",
                )
            )
    _accuracy_axis(fig)
    return _style(fig, title, presentation, x_title=x_title, y_title="Merged accuracy (%)")


def lambda_heatmap(
    lambdas1: Sequence[float],
    lambdas2: Sequence[float],
    grid: Any,
    names: Sequence[str] = ("adapter 1", "adapter 2"),
    title: str = "Average merged accuracy over (λ₁, λ₂)",
    presentation: bool = False,
) -> go.Figure:
    """λ₁ × λ₂ heatmap of average merged accuracy: ``grid[i][j]`` is the value at λ₁ = lambdas1[i] (rows)
    and λ₂ = lambdas2[j] (columns); ``names`` are the two adapters the coefficients weigh.

    The colour range is fitted to the data (differences between λ pairs are often a few points, which a
    fixed 0–100% range would hide); the values are written in the cells and a star marks the best pair.
    """
    z = _matrix(grid)
    x = [float(v) for v in _values(lambdas2)]
    y = [float(v) for v in _values(lambdas1)]
    finite = [(v, i, j) for i, row in enumerate(z) for j, v in enumerate(row) if v is not None]
    fig = go.Figure()
    if not finite:
        return _style(_no_data(fig, "no sweep results"), title, presentation)
    low, high = min(v for v, _, _ in finite), max(v for v, _, _ in finite)
    if high - low < 1e-9:  # a flat grid still needs a non-empty colour range
        low, high = low - 0.01, high + 0.01
    fig.add_trace(
        go.Heatmap(
            z=z, x=x, y=y, zmin=low, zmax=high, colorscale=SEQUENTIAL,
            texttemplate="%{z:.1%}",
            colorbar={"title": {"text": "avg accuracy"}, "tickformat": ".0%"},
            hovertemplate=f"λ₁ ({names[0]}) = %{{y:g}}<br>λ₂ ({names[1]}) = %{{x:g}}"
            "<br>average accuracy: %{z:.2%}<extra></extra>",
        )
    )
    best, bi, bj = max(finite)
    fig.add_trace(
        go.Scatter(
            name="best", x=[x[bj]], y=[y[bi]], mode="markers",
            marker={"symbol": "star", "size": 18, "color": "white", "line": {"color": "black", "width": 1.5}},
            hovertemplate=f"best: %{{y:g}}, %{{x:g}} → {best:.2%}<extra></extra>",
            showlegend=False,
        )
    )
    # Categorical axes: every tested λ gets its own equal-width cell even when the grid is uneven.
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _style(fig, title, presentation, x_title=f"λ₂ — coefficient of {names[1]} (unitless)",
                  y_title=f"λ₁ — coefficient of {names[0]} (unitless)")


# ----------------------------------------------------------------------------------------------
# 12–14. One adapter, cross-task, runs


def _module_kind(name: str, layer: int | None) -> str:
    """What a module is inside its block (``attention.self.query``), so blocks can be compared."""
    if layer is not None:
        match = re.search(rf"\.(?:layer|layers|h|blocks)\.{layer}\.(.+)$", f".{name}")
        if match:
            return match.group(1)
    return name


def layer_norms(
    adapter_summary: Mapping,
    title: str | None = None,
    presentation: bool = False,
) -> go.Figure:
    """‖ΔW‖_F of one adapter per transformer block, one bar series per module kind (query, value, ...).

    Input: ``Adapter.summary()`` (``modules[name]["delta_fro_norm"]``, plus rank/shape for the hover).
    Modules outside any block (``layer_of`` is None) go to an ``other`` group under their own name.
    Grouped, not stacked: Frobenius norms of different modules do not add up.
    """
    modules = dict(adapter_summary.get("modules") or {})
    name = adapter_summary.get("name") or "adapter"
    title = title or f"Update size per layer — {name}"
    fig = go.Figure()
    if not modules:
        return _style(_no_data(fig, "the adapter has no LoRA modules"), title, presentation)
    by_kind: dict[str, dict[str, tuple[float | None, list]]] = {}
    for module, info in modules.items():
        layer = layer_of(module)
        kind = _module_kind(module, layer)
        shape = "×".join(map(str, info.get("shape") or []))
        by_kind.setdefault(kind, {})[_layer_label(layer)] = (
            _finite(info.get("delta_fro_norm")), [module, info.get("rank"), shape],
        )
    layers = sorted({label for entries in by_kind.values() for label in entries}, key=_layer_order)
    for i, (kind, entries) in enumerate(by_kind.items()):
        present = [label for label in layers if label in entries]
        fig.add_trace(
            go.Bar(
                name=kind, x=present, y=[entries[label][0] for label in present],
                marker={"color": PALETTE[i % len(PALETTE)], "pattern": {"shape": _PATTERNS[i % len(_PATTERNS)]}},
                customdata=[entries[label][1] for label in present],
                hovertemplate="%{customdata[0]}<br>‖ΔW‖_F: %{y:.6g}<br>rank: %{customdata[1]}"
                "<br>shape: %{customdata[2]}<extra></extra>",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=layers)
    return _style(fig, title, presentation, x_title="Transformer block (layer index)",
                  y_title="‖ΔW‖_F (Frobenius norm, weight units)")


def cross_task_heatmap(
    matrix: Mapping,
    title: str = "Each adapter on every task",
    presentation: bool = False,
) -> go.Figure:
    """Adapter × task accuracy from ``evaluation.cross_task_matrix``: {"adapters", "tasks", "accuracy"}.

    Fixed 0..1 colour range, as for every accuracy; the cells hold the percentage.
    """
    z = _matrix(matrix.get("accuracy") or [])
    fig = go.Figure(
        go.Heatmap(
            z=z, x=[str(t) for t in matrix.get("tasks", [])], y=[str(a) for a in matrix.get("adapters", [])],
            zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL, texttemplate="%{z:.1%}",
            colorbar={"title": {"text": "accuracy"}, "tickformat": ".0%"},
            hovertemplate="adapter %{y} on task %{x}<br>accuracy: %{z:.2%}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Task scored (with that task's head)",
                  y_title="Adapter body")


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


# ----------------------------------------------------------------------------------------------
# Download


def figure_to_html(fig: go.Figure) -> str:
    """A standalone HTML page with plotly.js inlined (about 5 MB), so it opens offline.

    ``include_plotlyjs="cdn"`` would fetch the library from the network when the file is opened,
    which fails on an air-gapped laptop in a lecture hall.
    """
    return fig.to_html(include_plotlyjs=True, include_mathjax=False, full_html=True,
                       config={"displaylogo": False})
