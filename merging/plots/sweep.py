"""Figures of the Sweep page (and of a stored sweep on the Runs page): merged accuracy as the merge
coefficients λ grow, per task and on average, and the average over a grid of (λ₁, λ₂).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

import plotly.graph_objects as go

from merging.lab.learned import BADGE
from merging.plots.style import (
    OKABE_ITO,
    PALETTE,
    ROLE_COLOURS,
    SEQUENTIAL,
    _accuracy_axis,
    _init_style,
    _no_data,
    _style,
    explained,
)
from merging.plots.values import (
    _finite,
    _matrix,
    _results_tasks,
    _values,
)
from merging.store.run_labels import lambda_text


def sweep_points(
    sweep: Iterable[tuple[Sequence[float], Any]], init: str = "standard", score: str = "metric"
) -> list[dict]:
    """Long-format rows for ``sweep_curves`` from ``Lab.sweep`` output ``[(weights, EvaluationResult), ...]``.

    λ is the first weight (a uniform sweep uses λ·[1, …, 1]). Results may be EvaluationResult objects
    or their ``to_dict()``. Tasks without a merged score are left out. Where the results carry 95%
    intervals (``interval`` per task, ``average_interval``), a point gets ``low``/``high`` and the
    average over tasks comes as its own rows, with its interval (the mean of the tasks' bounds is not one).
    `score="loss"` takes causal tasks' merged completion loss instead of the primary metric (no
    intervals; sweep_curves averages it over tasks). A classification task's rows carry its
    majority-class score (`majority`), which sweep_curves draws as the chance line.
    """
    if score == "loss":
        return [
            {"lambda": float(list(weights)[0]), "init": init, "task": task, "merged": loss}
            for weights, result in sweep
            for task, scores in _results_tasks(result.to_dict() if hasattr(result, "to_dict") else result).items()
            if (loss := _finite((scores.get("loss") or {}).get("merged"))) is not None
        ]
    points = []
    for weights, result in sweep:
        data = result.to_dict() if hasattr(result, "to_dict") else result
        lam = float(list(weights)[0])
        for task, scores in _results_tasks(data).items():
            merged = _finite(scores.get("merged"))
            if merged is not None:
                majority = _finite(scores.get("majority"))  # a classification task's chance level
                points.append({"lambda": lam, "init": init, "task": task, "merged": merged,
                               **_bounds((scores.get("interval") or {}).get("merged")),
                               **({"majority": majority} if majority is not None else {})})
        average = _finite((data.get("average") or {}).get("merged"))
        average_bounds = _bounds((data.get("average_interval") or {}).get("merged"))
        if average is not None and average_bounds:
            points.append({"lambda": lam, "init": init, "task": "average", "merged": average, **average_bounds})
    return points


def _bounds(interval: Any) -> dict[str, float]:
    """{"low", "high"} from a [low, high] interval, or {} when there is none."""
    if not isinstance(interval, (list, tuple)) or len(interval) != 2:
        return {}
    low, high = _finite(interval[0]), _finite(interval[1])
    return {} if low is None or high is None else {"low": low, "high": high}


def _records(points: Any) -> list[dict]:
    """A pandas DataFrame (duck-typed) or an iterable of mappings, as a list of dicts."""
    if hasattr(points, "to_dict") and hasattr(points, "columns"):
        return points.to_dict("records")
    return [dict(p) for p in points]


@explained(
    "Merged accuracy per task (colour) as the merge coefficient λ grows; solid = standard LoRA, "
    "dashed = OSRM initialisation; the thick black line is the average over tasks; "
    "whiskers are 95% bootstrap intervals over the evaluation set; thin black dotted lines are chance "
    "(each task's majority class); ⚠ marks a line whose adapter did not learn its task."
)
def sweep_curves(
    points: Any,
    title: str | None = None,
    x_title: str = "λ (merge coefficient, same for every adapter; unitless)",
    presentation: bool = False,
    metric: str = "accuracy",
    flagged: Mapping[tuple[str, str], str] | None = None,
) -> go.Figure:
    """Merged accuracy per task over λ, standard vs OSRM overlaid.

    ``metric`` names what ``merged`` holds: a fraction ("accuracy", "exact match": percent axis) or
    "loss" (a causal task's completion loss in nats: a plain axis, lower is better).

    ``points``: a list of dicts or a DataFrame in long format, one row per (λ, init, task), columns
    ``lambda`` (float), ``init`` (``"standard"``, ``"osrm"``, ``"osrm-cov"``, or any label), ``task``
    (str) and ``merged`` (accuracy fraction). ``sweep_points`` builds it from ``Lab.sweep``. Rows with
    task ``"average"`` are used as given; otherwise the average over tasks is computed per (init, λ).

    Colour = task (the average is thick black), dash and marker = init (solid circle = standard,
    dashed square = OSRM), so both are readable without colour.

    Rows with a ``majority`` (a classification task's majority-class score) give the chance line:
    one thin black dotted line per distinct level, named after the tasks at that level, so a task
    at chance is seen as one. ``flagged`` maps (task, init) to why that line's adapter did not
    learn (merging.lab.learned); its legend entry and hover carry the badge and the reason.
    """
    is_loss = metric == "loss"
    title = title or f"Merged {metric} over the merge coefficient λ"
    value_format = "%{y:.4f}" if is_loss else "%{y:.2%}"
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
    bounds: dict[tuple[str, str], dict[float, tuple[float, float]]] = {}  # 95% intervals where given
    for r in rows:
        line = (str(r["task"]), str(r.get("init", "standard")))
        series.setdefault(line, {})[float(r["lambda"])] = float(r["merged"])
        low, high = _finite(r.get("low")), _finite(r.get("high"))
        if low is not None and high is not None:
            bounds.setdefault(line, {})[float(r["lambda"])] = (low, high)
    for init in inits:
        if ("average", init) in series:
            continue
        sums: dict[float, list[float]] = {}
        for task in tasks:
            for lam, value in series.get((task, init), {}).items():
                sums.setdefault(lam, []).append(value)
        if sums:
            series[("average", init)] = {lam: sum(v) / len(v) for lam, v in sums.items()}

    # On stage the room reads the average: only its lines carry markers and 95 % whiskers, and the
    # inits' averages stand 2 % of the λ span apart at each λ, so no marker sits on another line's whisker; the
    # tasks' lines stay as context (their intervals are in the Numbers table and off stage).
    all_lambdas = sorted({float(r["lambda"]) for r in rows})
    dodge = 0.02 * (all_lambdas[-1] - all_lambdas[0]) if presentation and len(all_lambdas) > 1 else 0.0
    for t_index, task in enumerate(tasks + ["average"]):
        colour = ROLE_COLOURS["average"] if task == "average" else PALETTE[t_index % len(PALETTE)]
        for i_index, init in enumerate(inits):
            values = series.get((task, init))
            if not values:
                continue
            style = _init_style(init, i_index)
            lambdas = sorted(values)
            shift = dodge * (i_index - (len(inits) - 1) / 2) if task == "average" else 0.0
            context_only = presentation and task != "average"
            why = (flagged or {}).get((task, init))
            badge = f" {BADGE}" if why else ""
            said = f"<br>{BADGE}: {escape(why)}" if why else ""
            # on stage one legend entry per task (the caption says solid = standard, dashed = OSRM),
            # so the legend fits the chart's height instead of scrolling
            trace = go.Scatter(
                name=f"{task}{badge}" if presentation and task != "average" else f"{task} · {init}{badge}",
                legendgroup=task, showlegend=not presentation or task == "average" or i_index == 0,
                x=[lam + shift for lam in lambdas], y=[values[lam] for lam in lambdas],
                mode="lines" if context_only else "lines+markers",
                line={"color": colour, "dash": style["dash"], "width": 4 if task == "average" else 2},
                marker={"color": colour, "symbol": style["symbol"], "size": 7},
                hovertemplate=f"{task} ({init}){said}<br>λ = %{{x:.2f}}<br>merged {metric}: {value_format}<extra></extra>",
            )
            known = {} if context_only else bounds.get((task, init), {})
            if known:
                spans = [known.get(lam) for lam in lambdas]
                trace.error_y = {
                    "type": "data", "symmetric": False, "color": colour, "thickness": 1.5, "width": 3,
                    "array": [None if b is None else max(b[1] - values[lam], 0.0) for b, lam in zip(spans, lambdas)],
                    "arrayminus": [None if b is None else max(values[lam] - b[0], 0.0) for b, lam in zip(spans, lambdas)],
                }
                trace.customdata = [[None, None] if b is None else list(b) for b in spans]
                trace.hovertemplate = (
                    f"{task} ({init})<br>λ = %{{x:.2f}}<br>merged {metric}: {value_format}"
                    "<br>95% interval: %{customdata[0]:.1%}–%{customdata[1]:.1%}<extra></extra>"
                )
            if shift:  # the hover says the λ that was merged, not where the point is drawn
                trace.hovertemplate = trace.hovertemplate.replace("%{x:.2f}", "%{text}")
                trace.text = [f"{lam:.2f}" for lam in lambdas]
            fig.add_trace(trace)
    if not is_loss:
        for trace in _chance_lines(rows, tasks, short=presentation):
            fig.add_trace(trace)
    if is_loss:
        fig.update_yaxes(rangemode="tozero")
        return _style(fig, title, presentation, x_title=x_title, y_title="Merged loss (nats per token, lower is better)")
    _accuracy_axis(fig)
    if presentation:  # "0 %" clear of the λ axis's "0" at the corner
        fig.update_yaxes(ticklabelstandoff=10)
    return _style(fig, title, presentation, x_title=x_title, y_title=f"Merged {metric} (%)")


def _chance_lines(rows: list[dict], tasks: list[str], short: bool = False) -> list[go.Scatter]:
    """One dotted black line across the λ range per distinct majority-class level (tasks at one
    level share it), named after its tasks (`short`: one legend entry for them all, for a legend on
    stage; each line's hover still names its level and tasks); none when no row carries a majority."""
    levels: dict[float, list[str]] = {}
    for task in tasks:
        majority = next((_finite(r.get("majority")) for r in rows if str(r["task"]) == task
                         and _finite(r.get("majority")) is not None), None)
        if majority is not None:
            levels.setdefault(round(majority, 9), []).append(task)
    if not levels:
        return []
    lams = [float(r["lambda"]) for r in rows]
    span = [min(lams), max(lams)]
    colour = ROLE_COLOURS["majority"]
    return [
        go.Scatter(
            name="chance (majority class)" if short else f"chance {level:.0%} (majority class: {', '.join(names)})",
            legendgroup="chance", showlegend=not short or index == 0,
            x=span, y=[level, level], mode="lines", line={"color": colour, "dash": "dot", "width": 1.5},
            hovertemplate=f"chance: the majority class of {escape(', '.join(names))}, %{{y:.1%}}<extra></extra>",
        )
        for index, (level, names) in enumerate(sorted(levels.items()))
    ]


@explained(
    "Average merged accuracy for each pair of coefficients (λ₁ rows, λ₂ columns); "
    "brighter is better; the best pair is outlined and starred, its value still written in the cell."
)
def lambda_heatmap(
    lambdas1: Sequence[float],
    lambdas2: Sequence[float],
    grid: Any,
    names: Sequence[str] = ("adapter 1", "adapter 2"),
    title: str = "Average merged accuracy over (λ₁, λ₂)",
    presentation: bool = False,
    metric: str = "accuracy",
) -> go.Figure:
    """λ₁ × λ₂ heatmap of average merged accuracy (or `metric`, e.g. "exact match"): ``grid[i][j]`` is the value at λ₁ = lambdas1[i] (rows)
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
    best, bi, bj = max(finite)
    # The best cell keeps its value: it is outlined and its text starts with a star, nothing covers it.
    text = [["" if v is None else ("★ " if (i, j) == (bi, bj) else "") + f"{v:.1%}" for j, v in enumerate(row)]
            for i, row in enumerate(z)]
    fig.add_trace(
        go.Heatmap(
            z=z, x=x, y=y, zmin=low, zmax=high, colorscale=SEQUENTIAL,
            text=text, texttemplate="%{text}",
            colorbar={"title": {"text": f"avg {metric}"}, "tickformat": ".0%"},
            hovertemplate=f"λ₁ ({names[0]}) = %{{y:.2f}}<br>λ₂ ({names[1]}) = %{{x:.2f}}"
            f"<br>average {metric}: %{{z:.2%}}<extra></extra>",
        )
    )
    # On category axes a cell spans index ± 0.5.
    fig.add_shape(type="rect", x0=bj - 0.5, x1=bj + 0.5, y0=bi - 0.5, y1=bi + 0.5, xref="x", yref="y",
                  line={"color": OKABE_ITO["vermillion"], "width": 4}, fillcolor="rgba(0,0,0,0)", name="best")
    fig.update_layout(title_subtitle_text=f"best (outlined, ★): λ₁ = {lambda_text(y[bi])}, λ₂ = {lambda_text(x[bj])} → {best:.1%}")
    # Categorical axes: every tested λ gets its own equal-width cell even when the grid is uneven.
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return _style(fig, title, presentation, x_title=f"λ₂ — coefficient of {names[1]} (unitless)",
                  y_title=f"λ₁ — coefficient of {names[0]} (unitless)")
