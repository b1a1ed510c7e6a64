"""Figures of the Interference page: how the chosen adapters' updates ΔW = B·A collide (magnitude
variance, subspace overlap, task-vector cosine, TIES sign conflicts), how loudly each adapter answers
another task's inputs, and each adapter's body scored on every task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from merging.plots.style import (
    _SYMBOLS,
    DIVERGING,
    LEGEND_AT_FOOT,
    OKABE_ITO,
    PALETTE,
    SEQUENTIAL,
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
    _values,
)


@explained(
    "Left: how unevenly each adapter's update spreads over input features (CV, "
    "0 = even); right: how unequal the adapters' update sizes are per layer (0 = equal, high = one dominates)."
)
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
    # On stage the two panels share the width at 20 px: no subplot titles (long, they ran into each other
    # and the title), the y titles (two short lines) say which panel is which.
    fig = make_subplots(
        rows=1, cols=2, horizontal_spacing=0.16 if presentation else 0.12,
        subplot_titles=None if presentation else ("Within each adapter: spread over input features",
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
            marker={"color": OKABE_ITO["grey"]}, showlegend=False,  # its y title says what it is
            hovertemplate="layer %{x}<br>variance across adapters: %{y:.6g}<extra></extra>",
        ),
        row=1, col=2,
    )
    if presentation:
        cv_title, variance_title = "CV of column norms<br>within each adapter", "Variance of ‖ΔW‖_F<br>across adapters"
    else:
        cv_title, variance_title = "CV of column norms (std ÷ mean, unitless)", "Variance of ‖ΔW‖_F (squared weight units)"
    fig.update_xaxes(type="category", title_text="Transformer block (layer index)")
    fig.update_yaxes(title_text=cv_title, rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text=variance_title, rangemode="tozero", row=1, col=2)
    fig.update_layout(legend={"orientation": "h", "y": -0.25})  # on stage: at the foot (_style)
    return _style(fig, title, presentation)


@explained(
    "Cell (i, j) is how much adapters i and j share a subspace: 0 (dark) = orthogonal, "
    "no interference through it; 1 (yellow) = the same directions."
)
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
            colorbar={"title": {"text": "overlap φ", "side": "right" if presentation else "top"},
                      "tickvals": [0, 0.5, 1] if presentation else [0, 0.25, 0.5, 0.75, 1]},
            hovertemplate="%{y} vs %{x}<br>overlap φ: %{z:.4f}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    # on stage the names say it (rows and columns are the same adapters): "Adapter" twice would cost
    # the cells the width that keeps their 20-px numbers and upright column names apart
    adapter = None if presentation else "Adapter"
    return _style(fig, title, presentation, x_title=adapter, y_title=adapter)


@explained(
    "Cell (i, j) is the cosine between two adapters' updates: blue = aligned (they reinforce), "
    "white = orthogonal, red = opposed (they cancel in a sum)."
)
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
            colorbar={"title": {"text": "cosine", "side": "right" if presentation else "top"},
                      **({"tickvals": [-1, 0, 1], "ticktext": ["−1", "0", "1"]} if presentation else
                         {"tickvals": [-1, -0.5, 0, 0.5, 1],
                          "ticktext": ["−1 opposed", "−0.5", "0 orthogonal", "0.5", "1 aligned"]})},
            hovertemplate="%{y} vs %{x}<br>cosine: %{z:.4f}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    # on stage the names say it (rows and columns are the same adapters): "Adapter" twice would cost
    # the cells the width that keeps their 20-px numbers and upright column names apart
    adapter = None if presentation else "Adapter"
    return _style(fig, title, presentation, x_title=adapter, y_title=adapter)


@explained(
    "Share of weight entries per layer where the adapters push in opposite directions; "
    "the dashed line is what as many independent random updates would give (derived for the adapters chosen)."
)
def sign_conflicts_by_layer(
    per_layer: Mapping[Any, float | None],
    chance: float | None = None,
    adapters: int | None = None,
    title: str = "Sign conflicts per layer",
    presentation: bool = False,
) -> go.Figure:
    """Share of disputed weight entries per block: ``{layer: rate}`` (keys int, "0", None or "other").

    For ``adapter_metrics`` output pass ``{k: v["sign_conflict_rate"] for k, v in metrics["layers"].items()}``.
    ``chance`` is the rate for ``adapters`` independent random updates at the same density
    (``metrics.chance_sign_conflict_rate``): 50% for two adapters but ≈ 94% for five, so the line is
    drawn for the adapters chosen, never a fixed 50%. Without it no reference line is drawn.
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
    chance = _finite(chance)
    if chance is not None:
        who = f"{adapters} random updates" if adapters else "random updates"
        line = {"dash": "dash", "color": OKABE_ITO["black"], "width": 1.5}
        fig.add_hline(y=chance, line={**line, "width": 2.7 if presentation else 1.5})  # as wide as the legend's
        # Named in the legend, not written on the line: bars reach the line, a label there covers them.
        fig.add_trace(go.Scatter(name=f"{who} ≈ {chance:.0%}", x=[None], y=[None], mode="lines", line=line,
                                 hovertemplate="chance level %{y:.1%}<extra></extra>"))
        fig.update_layout(legend=LEGEND_AT_FOOT)
    fig.update_xaxes(type="category")
    fig.update_yaxes(tickformat=".0%", range=[0, 1.0])
    return _style(fig, title, presentation, x_title="Transformer block (layer index)",
                  y_title="Opposite signs (% of touched entries)")


def _interference_cell(value: Any, digits: int = 3) -> tuple[float | None, str]:
    """(plotted value, label): inf and NaN have no colour but keep their meaning in the cell text."""
    if value is None:
        return None, "n/a"
    number = float(value)
    if math.isnan(number):
        return None, "n/a"
    if math.isinf(number):
        return None, "∞"
    return number, f"{number:.{digits}g}"


def interference_decades(*matrices: Any) -> int:
    """The symmetric log range (decades around 1, at least one) that holds every finite ratio of the
    matrices: one colour scale for heatmaps shown side by side (standard LoRA vs OSRM)."""
    positives = [
        value for matrix in matrices for row in _values(matrix) for value in
        (_interference_cell(v)[0] for v in _values(row)) if value is not None and value > 0
    ]
    # (the small tolerance keeps a float32 0.01, i.e. 10^-2.0000001, inside two decades)
    return max([1] + [math.ceil(abs(math.log10(v)) - 1e-6) for v in positives])


@explained(
    "Row = task's inputs, column = adapter: how loudly the adapter answers that task "
    "relative to the task's own adapter (diagonal = 1); blue ≪ 1 is harmless, red ≥ 1 disturbs the task."
)
def interference_heatmap(
    matrix: Any,
    tasks: Sequence[str],
    adapters: Sequence[str],
    log: bool = True,
    title: str = "Data-parameter interference ‖ΔWⱼXᵢᵀ‖ ÷ ‖ΔWᵢXᵢᵀ‖",
    presentation: bool = False,
    decades: float | None = None,
) -> go.Figure:
    """Task × adapter interference ratio (``metrics.interference_matrix``): row i = task i's inputs.

    The ratio spans orders of magnitude (0.01 is harmless, 1 is as loud as the task's own adapter), so
    by default the colour is log₁₀ of it on a diverging scale centred at 1 (= log 0), with the colour
    bar labelled in the ratio itself. Cells keep the exact ratio as text and in the hover. A 0 ratio is
    coloured at the bottom of the range; inf and NaN (task's own response 0) are left uncoloured and
    written as ∞ / n/a. ``decades`` fixes the colour range (log: ±decades around 1; linear: 0..decades)
    so two heatmaps side by side share one scale: pass ``interference_decades(m1, m2)``.
    """
    rows = [[_interference_cell(v) for v in _values(row)] for row in _values(matrix)]
    raw = [[v for v, _ in row] for row in rows]
    text = [[t for _, t in row] for row in rows]  # the hover's exact ratio
    # in the cells on stage two digits: "0.988" beside "0.928" at 20 px left no gap in a half-width chart
    cells = [[_interference_cell(v, 2 if presentation else 3)[1] for v in _values(row)] for row in _values(matrix)]
    positives = [v for row in raw for v in row if v is not None and v > 0]
    fig = go.Figure()
    if log:
        top = decades if decades is not None else interference_decades(matrix)
        z = [[(max(math.log10(v), -top) if v > 0 else -top) if v is not None else None for v in row] for row in raw]
        ticks = list(range(-top, top + 1))
        colorbar = {"title": {"text": "ratio (log scale)"}, "tickvals": ticks,
                    "ticktext": [f"{10.0 ** t:g}" for t in ticks]}
        zmin, zmax, zmid = -top, top, 0.0
    else:
        z = raw
        top = float(decades) if decades is not None else max([2.0] + positives)
        colorbar = {"title": {"text": "ratio"}}
        zmin, zmax, zmid = 0.0, top, 1.0
    if presentation:  # along the bar, not over it: a 20 px title there is wider than the bar
        colorbar["title"]["side"] = "right"
    fig.add_trace(
        go.Heatmap(
            z=z, x=[str(a) for a in adapters], y=[str(t) for t in tasks],
            zmin=zmin, zmax=zmax, zmid=zmid, colorscale=DIVERGING, reversescale=True,
            text=cells, texttemplate="%{text}", customdata=text, colorbar=colorbar,
            hovertemplate="inputs of task %{y}<br>adapter %{x}<br>ratio: %{customdata}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Adapter (ΔWⱼ)", y_title="Task inputs (Xᵢ)")


@explained(
    "Row = adapter body, column = task it is scored on (with that task's head): "
    "bright diagonal and dark off-diagonal means each adapter only helps its own task."
)
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
            # on stage whole percents: "90.0%" at 20 px is wider than a cell of two heatmaps side by side
            zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL, texttemplate="%{z:.0%}" if presentation else "%{z:.1%}",
            colorbar={"title": {"text": "accuracy", "side": "right" if presentation else "top"}, "tickformat": ".0%"},
            hovertemplate="adapter %{y} on task %{x}<br>accuracy: %{z:.2%}<extra></extra>",
        )
    )
    _heatmap_axes(fig)
    return _style(fig, title, presentation, x_title="Task scored (with that task's head)",
                  y_title="Adapter body")
