"""merging.plots: each figure is checked for its content (traces, values, ranges, titles), not just built."""

from __future__ import annotations

import inspect
import math
import re
import typing

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from merging import plots
from merging.plots import (
    HOW_TO_READ,
    INIT_STYLES,
    ROLE_COLOURS,
    accuracy_bars,
    accuracy_delta,
    cosine_before_after,
    cosine_heatmap,
    cross_task_heatmap,
    energy_kept,
    figure_to_html,
    interference_heatmap,
    lambda_heatmap,
    layer_norms,
    magnitude_variance_by_layer,
    orthogonalize_loss,
    overlap_heatmap,
    runs_comparison,
    sign_conflicts_by_layer,
    sweep_curves,
    sweep_points,
)

# ----------------------------------------------------------------------------------------------
# Hand data in the library's own layouts


def result(merged_a: float | None = 0.8, merged_b: float | None = 0.6) -> dict:
    """EvaluationResult.to_dict() for tasks a, b."""
    tasks = {
        "a": {"base": 0.5, "single": 0.9, "merged": merged_a, "majority": 0.55},
        "b": {"base": 0.4, "single": 0.8, "merged": merged_b, "majority": 0.5},
    }
    for scores in tasks.values():
        m = scores["merged"]
        scores["normalized"] = None if m is None else m / scores["single"]
    merged = [s["merged"] for s in tasks.values() if s["merged"] is not None]
    norms = [s["normalized"] for s in tasks.values() if s["normalized"] is not None]
    average = {
        "base": 0.45,
        "single": 0.85,
        "merged": sum(merged) / len(merged) if merged else None,
        "normalized": sum(norms) / len(norms) if norms else None,
        "majority": 0.525,
    }
    return {"tasks": tasks, "average": average, "seconds": 1.0, "notes": []}


MODULES = {
    "base_model.model.encoder.layer.0.attention.self.query": {"rank": 4, "energy_kept": 0.9, "path": "factored"},
    "base_model.model.encoder.layer.0.attention.self.value": {"rank": 4, "energy_kept": 0.7, "path": "factored"},
    "base_model.model.encoder.layer.1.attention.self.query": {"rank": 2, "energy_kept": 1.0, "path": "dense"},
    "base_model.model.pooler.dense": {"rank": 2, "energy_kept": 0.5, "path": "dense"},
}

METRIC_LAYERS = {
    "1": {"column_norm_cv": [0.3, 0.4], "norm_variance_across": 0.02, "sign_conflict_rate": 0.45},
    "0": {"column_norm_cv": [0.1, 0.2], "norm_variance_across": 0.01, "sign_conflict_rate": 0.5},
    "other": {"column_norm_cv": [0.5, None], "norm_variance_across": 0.03, "sign_conflict_rate": 0.3},
}

ADAPTER_SUMMARY = {
    "name": "sst2",
    "modules": {
        "encoder.layer.0.attention.self.query": {"rank": 4, "shape": [8, 8], "scale": 2.0, "delta_fro_norm": 1.0},
        "encoder.layer.0.attention.self.value": {"rank": 4, "shape": [8, 8], "scale": 2.0, "delta_fro_norm": 2.0},
        "encoder.layer.1.attention.self.query": {"rank": 4, "shape": [8, 8], "scale": 2.0, "delta_fro_norm": 3.0},
        "encoder.layer.1.attention.self.value": {"rank": 4, "shape": [8, 8], "scale": 2.0, "delta_fro_norm": 4.0},
    },
}

SWEEP = [
    {"lambda": lam, "init": init, "task": task, "merged": value}
    for init, offset in (("standard", 0.0), ("osrm", 0.1))
    for task, base in (("a", 0.5), ("b", 0.3))
    for lam, value in ((0.5, base + offset), (1.0, base + offset + 0.2))
]


def by_name(fig: go.Figure, name: str):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, f"expected one trace named {name!r}, got {[t.name for t in fig.data]}"
    return matches[0]


# ----------------------------------------------------------------------------------------------
# 1–2. Accuracy


def test_accuracy_bars_groups_values_and_normalised_text():
    fig = accuracy_bars(result())
    assert [t.type for t in fig.data] == ["bar", "bar", "bar", "scatter"]
    assert fig.layout.barmode == "group"
    base, single, merged = (by_name(fig, n) for n in ("base body + task head", "single adapter", "merged"))
    assert list(base.x) == ["a", "b", "average"]
    assert list(base.y) == [0.5, 0.4, 0.45]
    assert list(single.y) == [0.9, 0.8, 0.85]
    assert merged.y[:2] == pytest.approx((0.8, 0.6))
    assert merged.y[2] == pytest.approx(0.7)
    # merged ÷ single written over the merged bars: 0.8/0.9 = 89%, 0.6/0.8 = 75%, (89+75)/2 = 82%
    assert [a.text for a in fig.layout.annotations] == ["89% of single", "75% of single", "82% of single"]
    assert not merged.text  # not Plotly's bar text, which sits on the bar's end under its whisker
    majority = by_name(fig, "majority-class baseline")
    assert list(majority.y) == [0.55, 0.5, 0.525]
    assert majority.mode == "markers"
    # the fixed role colours
    assert base.marker.color == ROLE_COLOURS["base"]
    assert single.marker.color == ROLE_COLOURS["single"]
    assert merged.marker.color == ROLE_COLOURS["merged"]
    assert fig.layout.title.text == "Accuracy per task"
    assert fig.layout.yaxis.title.text == "Accuracy (%)"
    assert fig.layout.yaxis.tickformat == ".0%"
    assert "%{y:.2%}" in merged.hovertemplate


def test_accuracy_bars_without_merge_has_no_merged_series():
    fig = accuracy_bars(result(None, None))
    assert [t.name for t in fig.data] == ["base body + task head", "single adapter", "majority-class baseline"]


def test_accuracy_bars_draw_the_evaluation_intervals_as_whiskers():
    data = result()
    data["tasks"]["a"]["interval"] = {"base": [0.4, 0.6], "single": [0.85, 0.95], "merged": [0.7, 0.85]}
    data["tasks"]["b"]["interval"] = None  # e.g. a stored run from before intervals: no whisker, no error
    data["average_interval"] = {"base": None, "single": [0.8, 0.9], "merged": [0.66, 0.74]}
    fig = accuracy_bars(data)
    merged = by_name(fig, "merged")
    # asymmetric: up to the high bound, down to the low bound, from the bar's own value
    assert merged.error_y.array[0] == pytest.approx(0.05) and merged.error_y.array[1] is None
    assert merged.error_y.array[2] == pytest.approx(0.04)
    assert merged.error_y.arrayminus[0] == pytest.approx(0.1)
    assert merged.error_y.arrayminus[2] == pytest.approx(0.04)
    assert "95% interval" in merged.hovertemplate
    base = by_name(fig, "base body + task head")
    assert base.error_y.array[0] == pytest.approx(0.1) and base.error_y.array[2] is None
    # no intervals at all: no whiskers
    assert by_name(accuracy_bars(result()), "merged").error_y.array is None


def test_evaluation_json_intervals_feed_the_whiskers():
    from merging.evaluation.evaluate import EvaluationResult, TaskScores

    evaluation = EvaluationResult({"a": TaskScores(0.5, 0.9, 0.7, 0.5, examples=200)})
    data = evaluation.to_dict()
    low, high = data["tasks"]["a"]["interval"]["merged"]
    assert low < 0.7 < high and high - low == pytest.approx(2 * 1.96 * (0.21 / 200) ** 0.5, abs=0.02)
    merged = by_name(accuracy_bars(data), "merged")
    assert merged.error_y.array[0] == pytest.approx(high - 0.7)
    # a preview has no interval: its merged accuracy counts a third of the examples
    assert EvaluationResult(evaluation.tasks, preview=True).to_dict()["tasks"]["a"]["interval"] is None


def test_energy_kept_is_clamped_and_exact_merges_count_as_not_truncated():
    from merging.plots import rank_truncated

    exact = {"modules": {"q": {"energy_kept": 1.0000000787}, "v": {"energy_kept": 0.99999989}}}
    assert not rank_truncated(exact)  # float rounding of an exact-rank merge, not a rank cut
    assert rank_truncated({"modules": {"q": {"energy_kept": 1.0000000787}, "v": {"energy_kept": 0.97}}})
    fig = energy_kept(exact)
    assert list(fig.data[0].y) == [1.0, 0.99999989]  # never drawn above 100%


def test_accuracy_delta_in_points_and_coloured_by_sign():
    fig = accuracy_delta(result(0.85, 0.5), result(0.8, 0.6))
    (bar,) = fig.data
    assert list(bar.x) == ["a", "b", "average"]
    assert list(bar.y) == pytest.approx([5.0, -10.0, -2.5])
    assert list(bar.marker.color) == [ROLE_COLOURS["gain"], ROLE_COLOURS["loss"], ROLE_COLOURS["loss"]]
    assert list(bar.text) == ["+5.0 pp", "\u221210.0 pp", "\u22122.5 pp"]  # one decimal, a real minus
    same = accuracy_delta(result(0.8, 0.6), result(0.8, 0.6)).data[0]
    assert list(same.text) == ["0.0 pp", "0.0 pp", "0.0 pp"]  # no "+0.0": unchanged is not a gain
    assert set(same.marker.color) == {plots.style.OKABE_ITO["grey"]}
    assert "percentage points" in fig.layout.yaxis.title.text


def test_accuracy_delta_names_tasks_it_could_not_compare():
    previous = result(0.8, None)
    fig = accuracy_delta(result(0.85, 0.5), previous)
    assert list(fig.data[0].x) == ["a", "average"]
    note = fig.layout.title.subtitle.text
    assert "not compared" in note and note.endswith(": b")


# ----------------------------------------------------------------------------------------------
# 3. Energy kept


def test_energy_kept_per_module_from_whole_summary():
    fig = energy_kept({"method": "ties", "modules": MODULES})
    (bar,) = fig.data
    assert list(bar.y) == [0.9, 0.7, 1.0, 0.5]
    # the common "base_model.model." prefix is dropped from tick labels, full name kept for the hover
    assert list(bar.x)[0] == "encoder.layer.0.attention.self.query"
    assert bar.customdata[0][0] == "base_model.model.encoder.layer.0.attention.self.query"
    assert fig.layout.yaxis.range == (0, 1.08)


def test_energy_kept_per_layer_mean_with_min_max_error_bars():
    fig = energy_kept(MODULES, by="layer")
    (bar,) = fig.data
    assert list(bar.x) == ["0", "1", "other"]
    assert list(bar.y) == pytest.approx([0.8, 1.0, 0.5])
    assert list(bar.error_y.array) == pytest.approx([0.1, 0.0, 0.0])
    assert list(bar.error_y.arrayminus) == pytest.approx([0.1, 0.0, 0.0])
    assert "layer" in fig.layout.xaxis.title.text
    with pytest.raises(ValueError):
        energy_kept(MODULES, by="head")


# ----------------------------------------------------------------------------------------------
# 4. DO-Merging


def test_orthogonalize_loss_mean_and_band():
    curves = {"m1": [4.0, 2.0, 1.0], "m2": [2.0, 1.0], "m3": [3.0, 3.0, 3.0]}
    fig = orthogonalize_loss(curves)
    low, high, mean = fig.data
    assert list(mean.x) == [0, 1, 2]
    assert list(mean.y) == pytest.approx([3.0, 2.0, 2.0])  # step 2: only m1 and m3 reached it
    assert list(low.y) == [2.0, 1.0, 1.0]
    assert list(high.y) == [4.0, 3.0, 3.0]
    assert high.fill == "tonexty"
    assert fig.layout.xaxis.title.text == "Adam step"
    with_modules = orthogonalize_loss(curves, show_modules=True)
    assert len(with_modules.data) == 3 + 3
    assert sum(bool(t.showlegend) for t in with_modules.data[:3]) == 1


def test_orthogonalize_loss_empty_says_why():
    fig = orthogonalize_loss({})
    assert len(fig.data) == 0
    assert "no orthogonalisation" in fig.layout.annotations[0].text


def test_cosine_before_after_two_heatmaps_sharing_a_centred_axis():
    before = torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    after = [[1.0, -0.1], [-0.1, 1.0]]
    fig = cosine_before_after(before, after, ["x", "y"])
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert fig.data[0].xaxis == "x" and fig.data[1].xaxis == "x2"
    assert [v for r in fig.data[0].z for v in r] == pytest.approx([1.0, 0.6, 0.6, 1.0])
    assert [v for r in fig.data[1].z for v in r] == pytest.approx([1.0, -0.1, -0.1, 1.0])
    axis = fig.layout.coloraxis
    assert (axis.cmin, axis.cmax, axis.cmid) == (-1, 1, 0)
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("Before") and "0.600" in titles[0]
    assert titles[1].startswith("After") and "0.100" in titles[1]


# ----------------------------------------------------------------------------------------------
# 5–9. Metrics


def test_magnitude_variance_by_layer_both_views_in_layer_order():
    fig = magnitude_variance_by_layer({"adapters": ["sst2", "spam"], "layers": METRIC_LAYERS})
    lines = [t for t in fig.data if t.type == "scatter"]
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in lines] == ["sst2", "spam"]
    assert list(lines[0].x) == ["0", "1", "other"]
    assert list(lines[0].y) == [0.1, 0.3, 0.5]
    assert list(lines[1].y) == [0.2, 0.4, None]  # a null stays a gap, not a zero
    assert len(bars) == 1 and list(bars[0].y) == [0.01, 0.02, 0.03]
    assert bars[0].xaxis == "x2"
    assert "CV" in fig.layout.yaxis.title.text
    assert "Variance" in fig.layout.yaxis2.title.text
    # layers mapping alone: default adapter names
    plain = magnitude_variance_by_layer(METRIC_LAYERS)
    assert [t.name for t in plain.data if t.type == "scatter"] == ["adapter 1", "adapter 2"]


def test_overlap_heatmap_fixed_unit_range_and_annotated():
    fig = overlap_heatmap(torch.tensor([[1.0, 0.25], [0.25, 0.5]]), ["a", "b"], title="Input subspaces")
    (heat,) = fig.data
    assert heat.type == "heatmap"
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)
    assert [list(r) for r in heat.z] == [[1.0, 0.25], [0.25, 0.5]]
    assert list(heat.x) == ["a", "b"] and list(heat.y) == ["a", "b"]
    assert heat.texttemplate == "%{z:.2f}"
    assert fig.layout.title.text == "Input subspaces"
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 on top, like the matrix


def test_cosine_heatmap_diverging_centred_at_zero():
    fig = cosine_heatmap([[1.0, -0.5], [-0.5, float("nan")]], ["a", "b"])
    (heat,) = fig.data
    assert (heat.zmin, heat.zmax, heat.zmid) == (-1.0, 1.0, 0.0)
    assert [list(r) for r in heat.z] == [[1.0, -0.5], [-0.5, None]]
    colours = [c for _, c in heat.colorscale]
    assert colours[0] != colours[-1]  # diverging, not one hue


def test_sign_conflicts_by_layer_sorted_with_the_chance_line_for_the_adapters_chosen():
    from merging.analysis.metrics import chance_sign_conflict_rate

    fig = sign_conflicts_by_layer({None: 0.2, 1: 0.4, 0: 0.6}, chance=chance_sign_conflict_rate(5), adapters=5)
    bar = by_name(fig, "sign conflicts")
    assert list(bar.x) == ["0", "1", "other"]
    assert list(bar.y) == [0.6, 0.4, 0.2]
    # five adapters: the line sits at 1 − 2⁻⁴ = 93.75 %, not at two adapters' 50 %
    assert any(shape.y0 == pytest.approx(0.9375) and shape.line.dash == "dash" for shape in fig.layout.shapes)
    # named in the legend with the line's own dash, not written over the bars that reach up to it
    assert not fig.layout.annotations
    reference = by_name(fig, "5 random updates ≈ 94%")
    assert reference.line.dash == "dash" and reference.showlegend is not False
    # without a chance level there is no line that could mislead
    assert not sign_conflicts_by_layer({0: 0.6}).layout.shapes
    # the adapter_metrics layout works the same way
    from_metrics = sign_conflicts_by_layer({k: v["sign_conflict_rate"] for k, v in METRIC_LAYERS.items()})
    assert list(from_metrics.data[0].y) == [0.5, 0.45, 0.3]


def test_interference_heatmap_log_scale_centred_at_one():
    matrix = torch.tensor([[1.0, 0.01, 0.0], [20.0, 1.0, float("inf")], [float("nan"), 0.5, 1.0]])
    fig = interference_heatmap(matrix, ["t1", "t2", "t3"], ["A1", "A2", "A3"])
    (heat,) = fig.data
    z = [list(r) for r in heat.z]
    assert z[0][0] == 0.0 and z[1][1] == 0.0 and z[2][2] == 0.0  # diagonal: log10(1)
    assert z[0][1] == pytest.approx(-2.0)
    assert z[1][0] == pytest.approx(math.log10(20.0))
    assert z[1][2] is None and z[2][0] is None
    assert (heat.zmin, heat.zmax, heat.zmid) == (-2, 2, 0.0)
    assert z[0][2] == -2  # a 0 ratio sits at the bottom of the range
    assert heat.text[1][2] == "∞" and heat.text[2][0] == "n/a" and heat.text[1][0] == "20"
    assert list(heat.colorbar.ticktext) == ["0.01", "0.1", "1", "10", "100"]
    assert list(heat.y) == ["t1", "t2", "t3"] and list(heat.x) == ["A1", "A2", "A3"]
    linear = interference_heatmap(matrix, ["t1", "t2", "t3"], ["A1", "A2", "A3"], log=False).data[0]
    assert linear.zmid == 1.0 and linear.z[1][0] == 20.0


# ----------------------------------------------------------------------------------------------
# 10–11. Sweeps


@pytest.mark.parametrize("as_frame", [False, True])
def test_sweep_curves_tasks_by_colour_init_by_dash_and_average(as_frame):
    points = pd.DataFrame(SWEEP) if as_frame else SWEEP
    fig = sweep_curves(points)
    names = [t.name for t in fig.data]
    assert names == [f"{task} · {init}" for task in ("a", "b", "average") for init in ("standard", "osrm")]
    a_std, a_osrm = by_name(fig, "a · standard"), by_name(fig, "a · osrm")
    assert list(a_std.x) == [0.5, 1.0]
    assert list(a_std.y) == pytest.approx([0.5, 0.7])
    assert list(a_osrm.y) == pytest.approx([0.6, 0.8])
    assert a_std.line.color == a_osrm.line.color  # same task, same colour
    assert a_std.line.dash == INIT_STYLES["standard"]["dash"] == "solid"
    assert a_osrm.line.dash == INIT_STYLES["osrm"]["dash"] == "dash"
    average = by_name(fig, "average · osrm")
    assert list(average.y) == pytest.approx([0.5, 0.7])  # mean of a (0.6, 0.8) and b (0.4, 0.6)
    assert average.line.width > a_std.line.width
    assert fig.layout.yaxis.tickformat == ".0%"
    assert "λ" in fig.layout.xaxis.title.text


def test_sweep_points_from_lab_sweep_output():
    sweep = [([0.5, 0.5], result(0.7, 0.5)), ([1.0, 1.0], result(0.8, None))]
    points = sweep_points(sweep, init="osrm")
    assert points == [
        {"lambda": 0.5, "init": "osrm", "task": "a", "merged": 0.7, "majority": 0.55},
        {"lambda": 0.5, "init": "osrm", "task": "b", "merged": 0.5, "majority": 0.5},
        {"lambda": 1.0, "init": "osrm", "task": "a", "merged": 0.8, "majority": 0.55},
    ]
    assert len(sweep_curves(points).data) == 5  # a, b, average, and the chance lines at 50% and 55%


def test_sweep_points_and_curves_carry_the_intervals():
    with_intervals = result(0.7, 0.5)
    with_intervals["tasks"]["a"]["interval"] = {"merged": [0.6, 0.75]}
    with_intervals["average_interval"] = {"merged": [0.55, 0.65]}
    points = sweep_points([([0.5, 0.5], with_intervals)])
    assert points[0] == {"lambda": 0.5, "init": "standard", "task": "a", "merged": 0.7, "low": 0.6, "high": 0.75,
                         "majority": 0.55}
    assert "low" not in points[1]
    assert points[2] == {"lambda": 0.5, "init": "standard", "task": "average", "merged": 0.6, "low": 0.55, "high": 0.65}
    fig = sweep_curves(points)
    a = by_name(fig, "a · standard")
    assert a.error_y.array[0] == pytest.approx(0.05) and a.error_y.arrayminus[0] == pytest.approx(0.1)
    assert by_name(fig, "b · standard").error_y.array is None
    assert by_name(fig, "average · standard").error_y.arrayminus[0] == pytest.approx(0.05)


def test_sweep_curves_on_stage_keep_markers_and_whiskers_for_the_averages_only_and_set_them_apart():
    """On stage a task's line is context (no marker, no whisker); the inits' averages carry both and
    stand a little apart at each λ, so no marker sits on another line's whisker; one legend entry
    per task and one for chance, so the legend fits the chart instead of scrolling."""
    points = []
    for init in ("standard", "osrm"):
        for lam in (0.5, 1.0, 1.5):
            for task, value, majority in (("a", 0.7, 0.5), ("b", 0.6, 1 / 6)):
                points.append({"lambda": lam, "init": init, "task": task, "merged": value, "low": value - 0.05,
                               "high": value + 0.05, "majority": majority})
            points.append({"lambda": lam, "init": init, "task": "average", "merged": 0.65, "low": 0.6, "high": 0.7})
    stage, desk = sweep_curves(points, presentation=True), sweep_curves(points)
    for task in ("a", "b"):
        drawn = [t for t in stage.data if t.legendgroup == task]
        assert {t.mode for t in drawn} == {"lines"} and all(t.error_y.array is None for t in drawn)
        assert [t.showlegend for t in drawn] == [True, False] and drawn[0].name == task
        assert by_name(desk, f"{task} · osrm").error_y.array is not None  # off stage: unchanged
    standard, osrm = by_name(stage, "average · standard"), by_name(stage, "average · osrm")
    assert "markers" in standard.mode and standard.error_y.array is not None
    gaps = [b - a for a, b in zip(standard.x, osrm.x)]
    assert all(gap == pytest.approx(0.02) for gap in gaps)  # 2 % of the λ span apart
    assert list(standard.text) == ["0.50", "1.00", "1.50"] and "%{text}" in standard.hovertemplate
    assert list(by_name(desk, "average · standard").x) == [0.5, 1.0, 1.5]
    chance = [t for t in stage.data if t.legendgroup == "chance"]
    assert len(chance) == 2 and [t.showlegend for t in chance] == [True, False]


def test_best_parameters_shows_the_best_trial_and_follows_the_objective_direction():
    fig = plots.best_parameters(SEARCH_TRIALS, presentation=True)
    (bars,) = fig.data
    assert list(bars.y) == ["λ a", "λ b"] and list(bars.x) == [0.2, 0.9] and list(bars.text) == ["0.20", "0.90"]
    assert "trial 1" in fig.layout.xaxis.title.text
    (bars,) = plots.best_parameters(SEARCH_TRIALS, objective="loss").data  # lower is better: trial 0
    assert list(bars.x) == [1.0, 1.0]
    assert plots.best_parameters([], presentation=True).layout.annotations  # "No finished trial yet"


def test_optimization_history_ticks_whole_trials():
    trials = [{**SEARCH_TRIALS[0], "number": n} for n in range(3)]
    assert plots.optimization_history(trials).layout.xaxis.dtick == 1


def test_lambda_heatmap_grid_axes_and_best_star():
    grid = [[0.5, 0.6, 0.55], [0.7, 0.65, 0.6]]
    fig = lambda_heatmap([0.5, 1.0], [0.0, 0.5, 1.0], grid, names=["sst2", "spam"])
    (heat,) = fig.data
    assert [list(r) for r in heat.z] == grid
    assert list(heat.y) == [0.5, 1.0] and list(heat.x) == [0.0, 0.5, 1.0]
    assert (heat.zmin, heat.zmax) == (0.5, 0.7)
    # best 0.7 at λ₁ = 1.0 (row 1), λ₂ = 0.0 (column 0): outlined, and its value is still written
    (box,) = fig.layout.shapes
    assert (box.x0, box.x1, box.y0, box.y1) == (-0.5, 0.5, 0.5, 1.5)
    assert heat.text[1][0] == "★ 70.0%" and heat.text[0][1] == "60.0%"
    assert "λ₁ = 1, λ₂ = 0 → 70.0%" in fig.layout.title.subtitle.text
    assert "sst2" in fig.layout.yaxis.title.text and "spam" in fig.layout.xaxis.title.text


# ----------------------------------------------------------------------------------------------
# 12–14. One adapter, cross-task, runs


def test_layer_norms_one_series_per_module_kind():
    fig = layer_norms(ADAPTER_SUMMARY)
    assert [t.name for t in fig.data] == ["attention.self.query", "attention.self.value"]
    query, value = fig.data
    assert list(query.x) == ["0", "1"] and list(query.y) == [1.0, 3.0]
    assert list(value.y) == [2.0, 4.0]
    assert fig.layout.barmode == "group"
    assert fig.layout.title.text == "Update size per layer — sst2"
    assert "‖ΔW‖_F" in fig.layout.yaxis.title.text
    assert query.customdata[0][0] == "encoder.layer.0.attention.self.query"


def test_layer_norms_from_a_real_adapter_summary():
    from conftest import TWO_LAYERS, random_adapter

    summary = random_adapter("t", TWO_LAYERS).summary()
    fig = layer_norms(summary)
    query = by_name(fig, "attention.self.query")
    expected = [summary["modules"][f"encoder.layer.{i}.attention.self.query"]["delta_fro_norm"] for i in (0, 1)]
    assert list(query.y) == pytest.approx(expected)


def test_cross_task_heatmap_layout():
    data = {"adapters": ["A", "B", "C"], "tasks": ["a", "b"], "accuracy": [[0.9, 0.5], [0.4, 0.8], [0.6, 0.6]]}
    fig = cross_task_heatmap(data)
    (heat,) = fig.data
    assert list(heat.y) == ["A", "B", "C"] and list(heat.x) == ["a", "b"]
    assert [list(r) for r in heat.z] == data["accuracy"]
    assert (heat.zmin, heat.zmax) == (0.0, 1.0)


def test_runs_comparison_one_series_per_run_union_of_tasks():
    third = result(0.9, 0.4)
    third["tasks"]["c"] = {"base": 0.3, "single": 0.9, "merged": 0.7, "normalized": 0.7 / 0.9, "majority": 0.4}
    fig = runs_comparison([{"label": "run 1 · ta", "results": result()}, {"results": third}])
    first, second = fig.data
    assert first.name == "run 1 · ta" and second.name == "run 2"
    assert list(first.x) == ["a", "b", "c", "average"]
    assert list(first.y) == pytest.approx([0.8, 0.6, None, 0.7])
    assert list(second.y)[:3] == [0.9, 0.4, 0.7]
    assert first.marker.color != second.marker.color
    assert first.marker.pattern.shape != second.marker.pattern.shape  # not told apart by colour alone


# ----------------------------------------------------------------------------------------------
# Shared conventions

WHY_POINTS = [
    {"kind": "standard", "task": "a", "seed": 0, "input_overlap": 0.2, "drop": 0.05},
    {"kind": "osrm", "task": "a", "seed": 0, "input_overlap": 0.1, "drop": 0.02},
    {"kind": "osrm", "task": "b", "seed": 0, "input_overlap": None, "drop": 0.01},  # no measure: not drawn
]
SEED_DIFFERENCES = {
    "osrm-standard:single": {"mean": 0.004, "low": -0.01, "high": 0.018, "n": 5},
    "osrm-gaussian:ta_05": {"mean": 0.037, "low": 0.025, "high": 0.049, "n": 5},
}
ABLATIONS = {"kinds": {"standard": {"energy_share_init": 0.3, "energy_share_trained": 0.25,
                                    "overlap_init": 0.05, "overlap_trained": 0.08},
                       "osrm": {"energy_share_init": 0.0, "energy_share_trained": 0.02,
                                "overlap_init": 0.5, "overlap_trained": 0.4}},
             "random_reference": 0.02}
PAIR_POINTS = [{"kind": "osrm", "tasks": ["a", "b"], "magnitude_variance": 0.3, "normalised_accuracy": 0.9},
               {"kind": "standard", "tasks": ["a", "c"], "magnitude_variance": 0.5, "normalised_accuracy": 0.8}]


def test_study_figures_carry_the_study_numbers():
    why = plots.why_scatter(WHY_POINTS, "input_overlap", {"r": 0.5, "low": 0.1, "high": 0.8, "n": 2})
    drawn = sorted((x, y) for trace in why.data for x, y in zip(trace.x, trace.y))
    assert drawn == [(0.1, 2.0), (0.2, 5.0)]  # drops in pp; the point without a measure is left out, not put at 0
    assert "r = 0.50" in why.layout.title.subtitle.text
    forest = plots.seed_differences(SEED_DIFFERENCES)
    by_name = {trace.name: trace for trace in forest.data}
    gaussian = by_name["OSRM − gaussian LoRA (OSRM authors' baseline)"]
    assert gaussian.x[0] == pytest.approx(3.7)  # percentage points
    assert gaussian.error_x.array[0] == pytest.approx(1.2) and gaussian.error_x.arrayminus[0] == pytest.approx(1.2)
    mechanism = plots.osrm_mechanism(ABLATIONS)
    bars = [trace for trace in mechanism.data if trace.type == "bar"]
    assert list(bars[0].x) == pytest.approx([25.0, 2.0]) and list(bars[1].x) == pytest.approx([8.0, 40.0])
    # the trained values stand in a column right of every bar and marker, so no label meets a marker
    markers = [trace for trace in mechanism.data if trace.type == "scatter" and trace.mode == "markers"]
    labels = [trace for trace in mechanism.data if trace.type == "scatter" and trace.mode == "text"]
    assert [list(trace.text) for trace in labels] == [["25.0 %", "2.0 %"], ["8.0 %", "40.0 %"]]
    for bar, marker, label in zip(bars, markers, labels):
        column = min(label.x)
        assert label.textposition == "middle left"  # the text ends at the column's x
        assert all(column > value for value in list(bar.x) + list(marker.x) if value is not None)
    claims = plots.magnitude_variance_claims({"lora": {"osrm": 0.4}, "full_finetune": 0.1}, PAIR_POINTS,
                                             {"r": 0.45, "low": 0.1, "high": 0.7})
    assert list(claims.data[0].x) == [0.4, 0.1]
    assert "r = 0.45" in " ".join(a.text for a in claims.layout.annotations)


SEARCH_TRIALS = [
    {"number": 0, "params": {"weights.a": 1.0, "weights.b": 1.0}, "dev_objective": 0.5, "worker": "h:1"},
    {"number": 1, "params": {"weights.a": 0.2, "weights.b": 0.9}, "dev_objective": 0.7, "worker": "h:1"},
]

BUILDERS = {
    "accuracy_bars": lambda p: accuracy_bars(result(), presentation=p),
    "accuracy_delta": lambda p: accuracy_delta(result(0.9, 0.5), result(), presentation=p),
    "energy_kept": lambda p: energy_kept(MODULES, presentation=p),
    "orthogonalize_loss": lambda p: orthogonalize_loss({"m": [2.0, 1.0]}, show_modules=True, presentation=p),
    "cosine_before_after": lambda p: cosine_before_after([[1, 0.5], [0.5, 1]], [[1, 0], [0, 1]], ["x", "y"],
                                                         presentation=p),
    "magnitude_variance_by_layer": lambda p: magnitude_variance_by_layer(METRIC_LAYERS, presentation=p),
    "overlap_heatmap": lambda p: overlap_heatmap([[1, 0.2], [0.2, 1]], ["a", "b"], presentation=p),
    "cosine_heatmap": lambda p: cosine_heatmap([[1, 0.2], [0.2, 1]], ["a", "b"], presentation=p),
    "sign_conflicts_by_layer": lambda p: sign_conflicts_by_layer({0: 0.3}, presentation=p),
    "interference_heatmap": lambda p: interference_heatmap([[1, 0.1], [2, 1]], ["a", "b"], ["A", "B"],
                                                           presentation=p),
    "sweep_curves": lambda p: sweep_curves(SWEEP, presentation=p),
    "lambda_heatmap": lambda p: lambda_heatmap([0, 1], [0, 1], [[0.1, 0.2], [0.3, 0.4]], presentation=p),
    "layer_norms": lambda p: layer_norms(ADAPTER_SUMMARY, presentation=p),
    "cross_task_heatmap": lambda p: cross_task_heatmap(
        {"adapters": ["A"], "tasks": ["a"], "accuracy": [[0.5]]}, presentation=p),
    "runs_comparison": lambda p: runs_comparison([{"label": "r", "results": result()}], presentation=p),
    "optimization_history": lambda p: plots.optimization_history(SEARCH_TRIALS, presentation=p),
    "parallel_coordinates": lambda p: plots.parallel_coordinates(SEARCH_TRIALS, presentation=p),
    "best_parameters": lambda p: plots.best_parameters(SEARCH_TRIALS, presentation=p),
    "gain_and_cost": lambda p: plots.gain_and_cost(result(0.9, 0.5), result(), presentation=p),
    "merge_summary": lambda p: plots.merge_summary(
        [{"label": "TA", "merged": 0.6, "merged_interval": (0.55, 0.65), "single": 0.8}], presentation=p),
    "why_scatter": lambda p: plots.why_scatter(WHY_POINTS, "input_overlap", {"r": 0.5, "low": 0.1, "high": 0.8, "n": 2},
                                               presentation=p),
    "seed_differences": lambda p: plots.seed_differences(SEED_DIFFERENCES, presentation=p),
    "osrm_mechanism": lambda p: plots.osrm_mechanism(ABLATIONS, presentation=p),
    "magnitude_variance_claims": lambda p: plots.magnitude_variance_claims(
        {"lora": {"osrm": 0.4}, "full_finetune": 0.1}, PAIR_POINTS, {"r": 0.45, "low": 0.1, "high": 0.7},
        presentation=p),
}


def figure_functions() -> set[str]:
    """Public functions of the merging.plots package whose return type is a Figure."""
    names = set()
    for name, function in inspect.getmembers(plots, inspect.isfunction):
        if name.startswith("_") or not function.__module__.startswith(f"{plots.__name__}."):
            continue
        if typing.get_type_hints(function).get("return") is go.Figure:
            names.add(name)
    return names


def test_every_figure_function_is_explained_and_exercised():
    functions = figure_functions()
    assert len(functions) >= 15
    assert set(HOW_TO_READ) == functions
    assert set(BUILDERS) == functions
    for name, line in HOW_TO_READ.items():
        assert line.strip() and "\n" not in line, name


def test_each_figure_lives_in_its_page_module_with_its_caption_beside_it():
    # study: the seed study's figures, shown by both the Tour and the Interference page
    pages = {"merge", "interference", "sweep", "adapters", "runs", "search", "tour", "study"}
    for name in figure_functions():
        function = getattr(plots, name)
        assert function.__module__.rsplit(".", 1)[-1] in pages, (name, function.__module__)
        assert function.how_to_read == HOW_TO_READ[name], name
        source = inspect.getsource(function)  # the decorator, hence the caption, is part of it
        assert source.lstrip().startswith("@explained("), name


def test_every_figure_function_takes_presentation_and_type_hints():
    for name in figure_functions():
        signature = inspect.signature(getattr(plots, name))
        assert signature.parameters["presentation"].default is False, name
        hints = typing.get_type_hints(getattr(plots, name))
        assert set(signature.parameters) <= set(hints), name


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_titles_axes_hover_and_presentation(name):
    normal, talk = BUILDERS[name](False), BUILDERS[name](True)
    assert normal.layout.title.text, name
    assert talk.layout.font.size > normal.layout.font.size
    assert talk.layout.title.font.size > normal.layout.title.font.size
    # every trace says exactly what it shows on hover
    for trace in normal.data:
        if trace.type == "parcoords":  # Plotly draws no hover labels on parallel coordinates
            continue
        assert trace.hovertemplate and "%{" in trace.hovertemplate, (name, trace.name)
    # every axis in use has a title
    for key in ("xaxis", "yaxis", "xaxis2", "yaxis2"):
        axis = normal.layout[key] if key in normal.layout else None
        if axis is not None and any(getattr(t, key[:1] + "axis", None) == key.replace("axis", "") for t in normal.data):
            if axis.visible is not False:
                assert axis.title.text, (name, key)
    # markers and lines grow too
    for small, large in zip(normal.data, talk.data):
        dash_symbol = str(small.marker.symbol).startswith("line") if small.type == "scatter" else False
        # (a stage may draw a context line without its markers: the sweep's task lines)
        if small.type == "scatter" and "markers" in (small.mode or "") and "markers" in (large.mode or "") \
                and not dash_symbol:
            assert large.marker.size > small.marker.size, name
        if small.type == "scatter" and "lines" in (small.mode or "") and (small.line.width or 0) > 0:
            assert large.line.width > small.line.width, name


def test_colour_blind_cues_beyond_colour():
    # standard vs OSRM differ by dash and by marker symbol, not only by hue
    assert INIT_STYLES["standard"]["dash"] != INIT_STYLES["osrm"]["dash"]
    assert INIT_STYLES["standard"]["symbol"] != INIT_STYLES["osrm"]["symbol"]
    fig = sweep_curves(SWEEP)
    assert by_name(fig, "a · standard").marker.symbol != by_name(fig, "a · osrm").marker.symbol
    # no red–green pair among the role colours: the palette is Okabe–Ito
    assert ROLE_COLOURS["gain"].upper() == "#009E73" and ROLE_COLOURS["loss"].upper() == "#D55E00"


def test_figure_to_html_is_self_contained():
    html = figure_to_html(accuracy_bars(result()))
    assert "<html" in html[:200].lower()
    # no script fetched from anywhere: plotly.js is inlined
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, flags=re.IGNORECASE)
    assert "cdn.plot.ly/plotly" not in html
    assert len(html) > 1_000_000  # the library itself is in the file
    assert "Accuracy per task" in html


def test_heatmap_ticks_drop_a_suffix_every_adapter_shares_but_never_merge_two_names():
    from merging.plots import shared_suffix_dropped

    assert shared_suffix_dropped(["sst2-standard", "trec-standard"]) == ["sst2", "trec"]
    assert shared_suffix_dropped(["sst2-standard", "trec-osrm"]) == ["sst2-standard", "trec-osrm"]
    assert shared_suffix_dropped(["a-x", "a-x"]) == ["a-x", "a-x"]  # would become two identical labels
    assert shared_suffix_dropped(["solo-standard"]) == ["solo-standard"]


# ----------------------------------------------------------------------------------------------
# On stage (presentation=True): no text on a whisker, on another text, or past its chart

STAGE_FONT_PX = 20  # FONT_SIZE[True]: what a 1280 × 720 projector shows, ≥ 18 px
SMALLEST_STAGE_PLOT_PX = 160  # plot area of a 360 px chart (presentation_height's least) less margins


def with_intervals() -> dict:
    """result() with hand-picked 95% intervals: task a's highest point is the single bar's whisker top
    (0.95), task b has no intervals (its highest point is the single bar, 0.8), the average's is the
    single whisker top too (0.9)."""
    data = result()
    data["tasks"]["a"]["interval"] = {"base": [0.4, 0.6], "single": [0.85, 0.95], "merged": [0.7, 0.85]}
    data["tasks"]["b"]["interval"] = None
    data["average_interval"] = {"base": [0.4, 0.5], "single": [0.8, 0.9], "merged": [0.66, 0.74]}
    return data


def bar_tops(fig: go.Figure) -> dict[str, list[float]]:
    """Per category, every height something reaches there: bar ends, whisker tops, majority dashes."""
    tops: dict[str, list[float]] = {}
    for trace in fig.data:
        for i, (x, y) in enumerate(zip(trace.x, trace.y)):
            if y is None:
                continue
            up = trace.error_y.array[i] if trace.type == "bar" and trace.error_y.array is not None else None
            tops.setdefault(x, []).append(y + (up or 0.0))
    return tops


@pytest.mark.parametrize("presentation", [False, True])
def test_accuracy_labels_sit_over_the_merged_bar_above_every_whisker_of_their_group(presentation):
    fig = accuracy_bars(with_intervals(), presentation=presentation)
    merged = by_name(fig, "merged")
    groups = list(merged.x)
    labels = list(fig.layout.annotations)
    assert [a.text for a in labels] == (["89%", "75%", "82%"] if presentation else
                                        ["89% of single", "75% of single", "82% of single"])
    tops = bar_tops(fig)
    # the hand-picked highest point of each group: a's single whisker, b's single bar, the average's whisker
    assert [max(tops[g]) for g in groups] == pytest.approx([0.95, 0.8, 0.9])
    for position, (group, label) in enumerate(zip(groups, labels)):
        # horizontally over the merged bar: inside the span Plotly draws it in (category index + offset)
        assert position + merged.offset < label.x < position + merged.offset + merged.width, (group, label.x)
        # vertically above everything drawn in its group, growing upwards from there
        assert label.y >= max(tops[group]) - 1e-12, group
        assert label.yanchor == "bottom" and label.yshift > 0 and label.showarrow is False
    assert labels[0].y == pytest.approx(0.95) and labels[1].y == pytest.approx(0.8)
    # the bars are side by side: the merged one does not overlap the single one
    single = by_name(fig, "single adapter")
    assert single.offset + single.width <= merged.offset + 1e-12


def test_accuracy_label_clears_a_majority_dash_above_its_bars():
    data = result(0.1, 0.6)
    data["tasks"]["a"].update(single=0.2, base=0.15, majority=0.7, normalized=0.5)
    fig = accuracy_bars(data, presentation=True)
    assert fig.layout.annotations[0].text == "50%"
    assert fig.layout.annotations[0].y == pytest.approx(0.7)


def test_accuracy_labels_over_a_full_bar_fit_under_the_axis_top_and_no_tick_claims_more_than_100():
    data = result(1.0, 0.6)
    data["tasks"]["a"].update(single=1.0, normalized=1.0)
    fig = accuracy_bars(data, presentation=True)
    top = max(a.y for a in fig.layout.annotations)
    assert top == pytest.approx(1.0)
    low, high = fig.layout.yaxis.range
    room_px = (high - top) / (high - low) * SMALLEST_STAGE_PLOT_PX
    assert room_px >= 1.2 * STAGE_FONT_PX + fig.layout.annotations[0].yshift, room_px  # a line of text is ~1.2 em
    assert max(fig.layout.yaxis.tickvals) == 1.0


def test_loss_bars_and_singles_only_have_no_ratio_labels():
    assert not accuracy_bars(result(None, None), presentation=True).layout.annotations


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_on_stage_no_two_annotations_share_a_place_and_all_text_is_at_least_18px(name):
    fig = BUILDERS[name](True)
    places = [(a.xref, a.yref, a.x, a.y, a.xanchor, a.yanchor, a.yshift) for a in fig.layout.annotations]
    assert len(places) == len(set(places)), (name, places)
    sizes = [fig.layout.font.size, fig.layout.title.font.size, fig.layout.legend.font.size]
    sizes += [a.font.size for a in fig.layout.annotations]
    sizes += [t.textfont.size for t in fig.data if getattr(t, "text", None) is not None or
              getattr(t, "texttemplate", None)]
    assert min(sizes) >= 18, (name, sizes)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_on_stage_axis_titles_wrap_to_fit_and_a_horizontal_legend_sits_at_the_foot(name):
    fig = BUILDERS[name](True)
    for axis_name in [k for k in fig.layout if k.startswith(("xaxis", "yaxis"))]:
        text = fig.layout[axis_name].title.text or ""
        limit = 24 if axis_name.startswith("y") else 40  # ~240 px of plot height, half a 1280 px window
        assert all(len(line) <= limit for line in text.split("<br>")), (name, axis_name, text)
    legend = fig.layout.legend
    if legend.orientation == "h":
        # in the figure's own coordinates, at its bottom: Plotly grows the margin to hold every row
        assert (legend.yref, legend.y, legend.yanchor) == ("container", 0, "bottom"), name


def test_magnitude_variance_on_stage_has_no_subplot_titles_and_says_which_panel_in_its_y_titles():
    normal = magnitude_variance_by_layer(METRIC_LAYERS, ["sst2", "spam"])
    talk = magnitude_variance_by_layer(METRIC_LAYERS, ["sst2", "spam"], presentation=True)
    assert len(normal.layout.annotations) == 2  # the subplot titles, at 13 px they fit
    assert not talk.layout.annotations  # at 20 px they ran into each other, the title and the legend
    assert "within each adapter" in talk.layout.yaxis.title.text
    assert "across adapters" in talk.layout.yaxis2.title.text
    # the two panels' tick labels and y titles need the room between them
    assert talk.layout.xaxis2.domain[0] - talk.layout.xaxis.domain[1] > normal.layout.xaxis2.domain[0] - normal.layout.xaxis.domain[1]
    # one legend entry per adapter; the bars' meaning is their y title
    assert [t.name for t in talk.data if t.showlegend is not False] == ["sst2", "spam"]


def test_titles_wrap_before_a_bracket_when_both_parts_fit():
    from merging.plots.style import wrap_title

    assert wrap_title("Opposite signs (% of touched entries)", 24) == "Opposite signs<br>(% of touched entries)"
    assert wrap_title("Accuracy (%)", 24) == "Accuracy (%)"
    # a part too long for a line: words fill the lines instead
    assert wrap_title("Loss Σ cos² + μ‖δ‖² summed over all modules (unitless)", 24) == (
        "Loss Σ cos² + μ‖δ‖²<br>summed over all modules<br>(unitless)")


@pytest.mark.parametrize("name", ["overlap_heatmap", "cosine_heatmap", "interference_heatmap", "cross_task_heatmap"])
def test_on_stage_the_interference_heatmaps_colour_bar_title_runs_along_the_bar(name):
    # above the bar a 20 px title ("ratio (log scale)") is wider than the bar and reaches over the cells
    (heat,) = BUILDERS[name](True).data
    assert heat.colorbar.title.side == "right", name


def test_on_stage_cross_task_cells_hold_whole_percents():
    data = {"adapters": ["A", "B"], "tasks": ["a", "b"], "accuracy": [[0.904, 0.3], [0.3, 0.9]]}
    assert cross_task_heatmap(data).data[0].texttemplate == "%{z:.1%}"  # 90.4% in a full-width chart
    # on stage two sit side by side: "90.4%" at 20 px is wider than a cell, "90%" fits
    assert cross_task_heatmap(data, presentation=True).data[0].texttemplate == "%{z:.0%}"


def test_on_stage_interference_cells_show_two_digits_and_the_hover_keeps_three():
    matrix = [[1.0, 0.9876], [0.1234, float("inf")]]
    normal = interference_heatmap(matrix, ["a", "b"], ["A", "B"]).data[0]
    talk = interference_heatmap(matrix, ["a", "b"], ["A", "B"], presentation=True).data[0]
    assert [list(r) for r in normal.text] == [["1", "0.988"], ["0.123", "∞"]]
    assert [list(r) for r in talk.text] == [["1", "0.99"], ["0.12", "∞"]]
    assert [list(r) for r in talk.customdata] == [["1", "0.988"], ["0.123", "∞"]]  # what the hover shows


# Markers and whiskers on stage: a marker on another point's whisker hides the interval (the browser's
# check is tests/stage_checks.py's mark_clashes; these pin each fix without a browser)

SUMMARY_ROW_PX = 26.5  # the finale's nine rows in its 430-px chart at 1280 × 720, measured in Chromium
PLOTLY_DIAMOND = 1.3  # Plotly draws a diamond of marker size s with a half-diagonal of 1.3·s/2


def test_the_finale_draws_each_merges_whisker_and_its_adapters_alone_diamond_apart():
    from merging.plots.tour import SUMMARY_CAP_PX, SUMMARY_DIAMOND_SIZE

    # the post-hoc row of the shipped zoo: its adapters alone (61.4 %) fall inside the merge's interval
    rows = [{"label": "TIES", "merged": 0.739, "merged_interval": (0.71, 0.76), "single": 0.795},
            {"label": "OSRM post-hoc projection", "merged": 0.609, "merged_interval": (0.58, 0.635), "single": 0.614}]
    for presentation in (False, True):
        fig = plots.merge_summary(rows, presentation=presentation)
        (whiskers,) = [t for t in fig.data if t.error_x.array is not None]
        (diamonds,) = [t for t in fig.data if t.name == "adapters alone"]
        rows_at = dict(zip(fig.layout.yaxis.ticktext, fig.layout.yaxis.tickvals))
        assert list(rows_at) == ["TIES", "OSRM post-hoc projection"]
        for row, (label, centre) in enumerate(rows_at.items()):
            whisker_y, diamond_y = whiskers.y[row], diamonds.y[row]
            # above and below the row's centre (the first row is on top), within the row
            assert whisker_y < centre < diamond_y and diamond_y - whisker_y <= 0.6, label
            assert whisker_y + 0.5 > centre and diamond_y - 0.5 < centre, label
            assert whiskers.x[row] == fig.data[0].x[row]  # the whisker's centre is the bar's end
        if presentation:
            # at the smallest stage row the cross-bar and the diamond keep ≥ 2 px apart (the browser's tolerance)
            diamond_half_px = PLOTLY_DIAMOND * diamonds.marker.size / 2
            assert diamonds.marker.size == SUMMARY_DIAMOND_SIZE[True]
            gap_px = (diamonds.y[1] - whiskers.y[1]) * SUMMARY_ROW_PX - SUMMARY_CAP_PX - diamond_half_px
            assert gap_px >= 2, gap_px


def test_each_baselines_point_and_whisker_on_the_seed_forest_keep_a_lane_of_their_own():
    # two baselines in the same row were drawn on one line: each point sat on the other's whisker
    differences = {**SEED_DIFFERENCES, "osrm-gaussian:single": {"mean": 0.0, "low": -0.02, "high": 0.021, "n": 5}}
    for presentation in (False, True):
        fig = plots.seed_differences(differences, presentation=presentation)
        assert fig.layout.scattermode == "group"
        # Plotly dodges scatter points along their category axis only when told it is y ("h")
        assert {t.orientation for t in fig.data if t.type == "scatter"} == {"h"}
