"""Charts of causal-LM results: they name the task's metric and draw the completion loss beside it,
from the same `EvaluationResult.to_dict()` shape (hand-written numbers below)."""

from __future__ import annotations

import pytest

from merging import plots

CAUSAL = {
    "tasks": {
        "copy": {"base": 0.0, "single": 1.0, "merged": 0.25, "normalized": 0.25, "majority": None,
                 "metric": "exact_match", "loss": {"base": 4.5, "single": 2.0, "merged": 3.25},
                 "interval": {"base": [0.0, 0.0], "single": [1.0, 1.0], "merged": [0.0, 0.5]}},
        "reverse": {"base": 0.0, "single": 1.0, "merged": 0.5, "normalized": 0.5, "majority": None,
                    "metric": "exact_match", "loss": {"base": 4.0, "single": 2.5, "merged": None}},
    },
    "average": {"base": 0.0, "single": 1.0, "merged": 0.375, "normalized": 0.375, "majority": None},
}
CLASSIFICATION = {
    "tasks": {"spam": {"base": 0.5, "single": 0.9, "merged": 0.8, "normalized": 0.8 / 0.9, "majority": 0.5}},
    "average": {"base": 0.5, "single": 0.9, "merged": 0.8, "normalized": 0.8 / 0.9, "majority": 0.5},
}


def _traces(figure) -> dict[str, dict]:
    return {t.name: dict(zip(t.x, t.y)) for t in figure.data}


def test_the_metric_is_named_from_the_results_and_old_results_are_accuracy():
    assert plots.metric_name(CAUSAL) == "exact match"
    assert plots.metric_name(CLASSIFICATION) == "accuracy"  # no "metric" field: stored before it existed
    assert plots.has_loss(CAUSAL) and not plots.has_loss(CLASSIFICATION)


def test_the_metric_chart_says_exact_match_and_has_no_majority_dash_for_causal_tasks():
    figure = plots.accuracy_bars(CAUSAL)
    assert figure.layout.title.text.startswith("Exact match per task")
    assert figure.layout.yaxis.title.text == "Exact match (%)"
    traces = _traces(figure)
    assert set(traces) == {"base model", "single adapter", "merged"}
    assert traces["merged"] == {"copy": 0.25, "reverse": 0.5, "average": 0.375}
    assert "majority-class baseline" in _traces(plots.accuracy_bars(CLASSIFICATION))


def test_the_loss_chart_draws_each_tasks_loss_per_role_and_leaves_a_missing_one_empty():
    figure = plots.accuracy_bars(CAUSAL, score="loss")
    assert figure.layout.title.text.startswith("Completion loss per task")
    traces = _traces(figure)
    assert traces["base model"] == {"copy": 4.5, "reverse": 4.0}
    assert traces["single adapter"] == {"copy": 2.0, "reverse": 2.5}
    assert traces["merged"] == {"copy": 3.25, "reverse": None}
    with pytest.raises(ValueError, match="score must be"):
        plots.accuracy_bars(CAUSAL, score="nll")


def test_the_results_table_has_the_metric_the_loss_per_role_and_the_intervals():
    rows = {row["task"]: row for row in plots.results_rows(CAUSAL)}
    assert rows["copy"]["metric"] == "exact_match"
    assert (rows["copy"]["loss base"], rows["copy"]["loss single"], rows["copy"]["loss merged"]) == (4.5, 2.0, 3.25)
    assert rows["reverse"]["loss merged"] is None
    assert rows["copy"]["merged 95% interval"] == "0.000–0.500"
    assert "loss base" not in plots.results_rows(CLASSIFICATION)[0]


def test_sweep_and_runs_charts_take_the_loss_of_each_point_and_run():
    sweep = [([0.5, 0.5], CAUSAL), ([1.0, 1.0], CLASSIFICATION)]
    losses = plots.sweep_points(sweep, score="loss")
    assert losses == [{"lambda": 0.5, "init": "standard", "task": "copy", "merged": 3.25}]
    curves = plots.sweep_curves(losses, metric="loss")
    assert "loss" in curves.layout.yaxis.title.text and curves.layout.title.text.startswith("Merged loss over")
    runs = [{"label": "run 1", "results": CAUSAL}]
    assert _traces(plots.runs_comparison(runs, metric="loss"))["run 1"] == {"copy": 3.25, "reverse": None}
    compared = plots.runs_comparison(runs, metric="exact match")
    assert compared.layout.title.text.startswith("Merged exact match of the selected runs")
    assert _traces(compared)["run 1"]["average"] == 0.375


def test_on_stage_the_loss_bars_carry_no_numbers_that_could_run_together():
    normal, talk = plots.accuracy_bars(CAUSAL, score="loss"), plots.accuracy_bars(CAUSAL, score="loss", presentation=True)
    assert list(normal.data[0].text) == ["4.500", "4.000"]
    # three bars to a task in half the window: 20 px numbers would overlap; hover and the table keep them
    assert all(trace.text is None for trace in talk.data)
    assert all("%{y:.4f}" in trace.hovertemplate for trace in talk.data)


def test_the_results_table_of_causal_tasks_has_no_majority_column_and_perplexity_beside_the_loss():
    import math

    rows = {row["task"]: row for row in plots.results_rows(CAUSAL)}
    assert all("majority" not in row for row in rows.values())
    assert rows["copy"]["perplexity merged"] == round(math.exp(3.25), 4)
    assert rows["copy"]["perplexity base"] == round(math.exp(4.5), 4)
    assert rows["reverse"]["perplexity merged"] is None
    assert plots.results_rows(CLASSIFICATION)[0]["majority"] == 0.5
