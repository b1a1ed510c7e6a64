"""AppTest: the Sweep page runs a small λ sweep in a background job and draws it; the Runs page lists,
compares, reopens and deletes stored runs.

The tiny zoo (two demo tasks × standard/OSRM on a randomly initialised tiny BERT) and the AppTest on
the real app.py come from conftest (`tiny_zoo`, `app_test`); missing demo data fails there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from merging.methods import REGISTRY
from merging.store.runs import RunStore
from pages._stage import TABLE_ROWS
from tests.conftest import assert_page_ok, wait_for_job
from tests.test_stage_table import stage_tables

SWEEP = "pages/sweep.py"
RUNS = "pages/runs.py"


@pytest.fixture
def app(app_test):
    """The app under AppTest; a sweep job still running at the end is cancelled."""
    yield app_test
    job = app_test.session_state["job:sweep"] if "job:sweep" in app_test.session_state else None
    if job is not None:
        job.cancel_event.set()


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _no_errors(at: AppTest) -> None:
    assert_page_ok(at)


def test_sweep_curves_standard_vs_osrm_then_cached(app: AppTest, tiny_zoo):
    at = app.switch_page(SWEEP).run()
    _no_errors(at)
    assert at.multiselect(key="sweep_adapters").value == ["sms_spam-standard", "question_type-standard"]
    at.number_input(key="sweep_start").set_value(0.5)
    at.number_input(key="sweep_stop").set_value(1.5)
    at.number_input(key="sweep_points").set_value(3)
    at.button(key="sweep_run").click().run()
    assert "job:sweep" in at.session_state
    wait_for_job(at, "sweep")
    _no_errors(at)

    charts = _charts(at)
    assert len(charts) == 1
    names = {trace["name"] for trace in charts[0]["data"]}
    assert {"average · standard", "average · osrm"} <= names
    assert any(name.startswith("sms_spam · osrm") for name in names)  # "⚠ at chance" after it when it did not learn
    table = at.dataframe[0].value
    assert len(table) == 6 and set(table["init"]) == {"standard", "osrm"}
    assert sorted(set(table["λ"])) == [0.5, 1.0, 1.5]

    runs = RunStore(Path(at.session_state["workspace"]) / "runs.sqlite").list()
    assert [r.kind for r in runs] == ["sweep", "sweep"]
    assert {r.results["sweep"]["init"] for r in runs} == {"standard", "osrm"}
    assert all(len(r.results["sweep"]["points"]) == 3 for r in runs)
    # each stored recipe is its best point's, and says how OSRM entered (twins of the listed adapters)
    by_init = {r.results["sweep"]["init"]: r for r in runs}
    assert by_init["standard"].recipe["osrm"] == "off" and by_init["osrm"].recipe["osrm"] == "twins"
    for run in runs:
        assert [a["weight"] for a in run.recipe["adapters"]] == run.results["best_weights"]
        assert [a["name"] for a in run.recipe["adapters"]] == ["sms_spam-standard", "question_type-standard"]
    assert by_init["osrm"].results["sweep"]["names"] == ["sms_spam-osrm", "question_type-osrm"]

    # Away to the Runs page and back: the settings and the results come back at once, with no new job.
    at.switch_page(RUNS).run()
    _no_errors(at)
    assert len(at.dataframe[0].value) == 2
    at.switch_page(SWEEP).run()
    _no_errors(at)
    assert "job:sweep" not in at.session_state
    assert at.number_input(key="sweep_points").value == 3
    assert len(_charts(at)) == 1
    assert any("from the cache" in c.value for c in at.caption)

    # Reopen the OSRM set in Merge: its best point, with the OSRM mode it was swept with
    osrm_run = next(r for r in runs if r.results["sweep"]["init"] == "osrm")
    at.switch_page(RUNS).run()
    at.selectbox(key="runs_detail").set_value(osrm_run.id).run()
    at.button(key="runs_reopen").click().run()
    _no_errors(at)
    assert at.title[0].value == "Merge"
    assert at.radio(key="merge_osrm").value == "twins"
    assert at.multiselect(key="merge_adapters").value == ["sms_spam-standard", "question_type-standard"]
    best = osrm_run.results["best_weights"]
    assert [at.slider(key=f"weight:{n}").value for n in ("sms_spam-standard", "question_type-standard")] == best


def test_sweep_heatmap_for_two_adapters(app: AppTest):
    at = app.switch_page(SWEEP).run()
    at.radio(key="sweep_osrm").set_value("off")
    at.radio(key="sweep_mode").set_value("heatmap").run()
    at.number_input(key="sweep_grid_points").set_value(2)
    at.button(key="sweep_run").click().run()
    wait_for_job(at, "sweep")
    _no_errors(at)
    charts = _charts(at)
    assert len(charts) == 1
    assert charts[0]["data"][0]["type"] == "heatmap"
    assert len(at.dataframe[0].value) == 4  # 2 × 2 pairs, standard only


def _results(merged: dict[str, float]) -> dict:
    tasks = {
        t: {"base": 0.5, "single": 0.9, "merged": m, "normalized": m / 0.9, "majority": 0.5} for t, m in merged.items()
    }
    mean = sum(merged.values()) / len(merged)
    return {"tasks": tasks, "average": {"base": 0.5, "single": 0.9, "merged": mean, "normalized": mean / 0.9,
                                        "majority": 0.5}}


def _merge_recipe(zoo: Path, weights: tuple[float, float], method: str) -> dict:
    return {
        "adapters": [
            {"path": str(zoo / "sms_spam-standard"), "name": "sms_spam-standard", "weight": weights[0]},
            {"path": str(zoo / "question_type-standard"), "name": "question_type-standard", "weight": weights[1]},
        ],
        "method": method, "density": 0.5, "sign": "total", "rank": None, "seed": 0, "device": "cpu",
        "knots_inner": "task_arithmetic", "overrides": [],
        "do_merging": {"decouple": False, "orthogonalize": False, "magnitude": "mean", "steps": 50, "lr": 0.01,
                       "mu": 1.0},
    }


def test_runs_page_lists_compares_reopens_and_deletes(app: AppTest, tiny_zoo):
    store = RunStore(Path(app.session_state["workspace"]) / "runs.sqlite")
    first = store.add(_merge_recipe(tiny_zoo, (0.7, 1.3), "ties"), _results({"sms_spam": 0.8, "question_type": 0.6}),
                      device="cpu", seconds=1.5)
    second = store.add(_merge_recipe(tiny_zoo, (1.0, 1.0), "task_arithmetic"),
                       _results({"sms_spam": 0.7, "question_type": 0.5}), device="cpu", seconds=1.2)
    sweep_results = {**_results({"sms_spam": 0.75, "question_type": 0.55}), "best_weights": [0.5, 0.5],
                     "sweep": {"init": "standard", "mode": "curves", "axes": [[0.5, 1.0]],
                               "names": ["sms_spam-standard", "question_type-standard"],
                               "points": [{"weights": [w, w], "results": _results({"sms_spam": 0.8 - w / 10,
                                                                                  "question_type": 0.6})}
                                          for w in (0.5, 1.0)]}}
    third = store.add(_merge_recipe(tiny_zoo, (1.0, 1.0), "ties"), sweep_results, device="cpu", seconds=3.0,
                      kind="sweep")

    at = app.switch_page(RUNS).run()
    _no_errors(at)
    table = at.dataframe[0].value
    assert list(table["id"]) == [third, second, first]
    assert list(table["kind"]) == ["sweep (standard)", "merge", "merge"]
    assert table["λ"].iloc[2] == "0.7, 1.3"

    # Compare two merges side by side: one bar series per run.
    at.multiselect(key="runs_compare").set_value([first, second]).run()
    _no_errors(at)
    comparison = _charts(at)[0]
    assert len(comparison["data"]) == 2
    assert comparison["data"][0]["name"].startswith(f"run {first}")

    # The sweep run's own chart redraws from the store.
    at.selectbox(key="runs_detail").set_value(third).run()
    _no_errors(at)
    assert any(t["name"] == "average · standard" for chart in _charts(at) for t in chart["data"])

    # Delete asks first; Cancel keeps the run, Yes deletes it.
    at.multiselect(key="runs_delete").set_value([second]).run()
    at.button(key="runs_delete_ask").click().run()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key="runs_delete_no").click().run()
    assert len(store.list()) == 3
    at.button(key="runs_delete_ask").click().run()
    at.button(key="runs_delete_yes").click().run()
    _no_errors(at)
    assert [r.id for r in store.list()] == [third, first]
    assert any("Deleted 1 run" in s.value for s in at.success)
    assert list(at.dataframe[0].value["id"]) == [third, first]
    assert at.multiselect(key="runs_compare").value == [first]

    # Reopen the first merge in the Merge page: its recipe arrives through the URL.
    at.selectbox(key="runs_detail").set_value(first).run()
    at.button(key="runs_reopen").click().run()
    _no_errors(at)
    assert at.title[0].value == "Merge"
    recipe = json.loads(at.query_params["recipe"])
    assert recipe["method"] == "ties" and [a["weight"] for a in recipe["adapters"]] == [0.7, 1.3]
    assert recipe["parameters"] == {"density": 0.5, "sign": "total", "divide_by": "count"}  # the old flat form, mapped
    assert at.multiselect(key="merge_adapters").value == ["sms_spam-standard", "question_type-standard"]
    assert at.selectbox(key="merge_method").value == "ties"
    assert at.slider(key="weight:sms_spam-standard").value == pytest.approx(0.7)
    assert at.slider(key="merge_param:ties:density").value == pytest.approx(0.5)


def test_runs_page_with_an_empty_store(app: AppTest):
    at = app.switch_page(RUNS).run()
    _no_errors(at)
    assert any("No runs stored" in i.value for i in at.info)
    assert not at.dataframe


def test_sweep_error_is_shown_and_the_page_stays_usable(app: AppTest, monkeypatch):
    from merging.lab.lab import Lab

    def broken(self, *args, **kwargs):
        raise RuntimeError("the sweep broke")

    monkeypatch.setattr(Lab, "sweep", broken)
    at = app.switch_page(SWEEP).run()
    at.number_input(key="sweep_points").set_value(2)
    at.button(key="sweep_run").click().run()
    wait_for_job(at, "sweep")
    assert not at.exception
    assert any("the sweep broke" in e.value for e in at.error)
    assert not at.get("plotly_chart")
    assert not at.button(key="sweep_run").disabled
    assert RunStore(Path(at.session_state["workspace"]) / "runs.sqlite").list() == []


def test_the_runs_table_shows_each_runs_method_parameters(app: AppTest, tiny_zoo):
    store = RunStore(Path(app.session_state["workspace"]) / "runs.sqlite")
    first = store.add(_merge_recipe(tiny_zoo, (0.7, 1.3), "ties"), _results({"sms_spam": 0.8, "question_type": 0.6}))
    second = store.add({**_merge_recipe(tiny_zoo, (1.0, 1.0), "knots"), "osrm_posthoc": True},
                       _results({"sms_spam": 0.7, "question_type": 0.5}))
    at = app.switch_page(RUNS).run()
    at.multiselect(key="runs_compare").set_value([first, second]).run()
    _no_errors(at)
    table = at.dataframe[1].value
    values = {"inner": "task_arithmetic", "density": 0.5, "sign": "total"}
    knots = ", ".join(f"{p.name}={values[p.name]}" for p in REGISTRY["knots"].params)
    assert table.loc["parameters"].tolist() == ["density=0.5, sign=total, divide_by=count", knots]
    assert table.loc["OSRM"].tolist() == ["off", "posthoc"]


def test_on_stage_the_runs_tables_are_html_and_the_comparison_keeps_every_field(app: AppTest, tiny_zoo):
    store = RunStore(Path(app.session_state["workspace"]) / "runs.sqlite")
    ids = [store.add(_merge_recipe(tiny_zoo, (1.0, 1.0 + i / 10), "ties"), _results({"sms_spam": 0.8, "question_type": 0.6}))
           for i in range(12)]
    app.session_state["presentation"] = True
    at = app.switch_page(RUNS).run()
    at.multiselect(key="runs_compare").set_value([ids[0], ids[1]]).run()
    _no_errors(at)
    assert not at.dataframe  # st.dataframe's canvas draws ~13-px text: none on stage
    listing, comparison = stage_tables(at)
    assert len(listing) == 1 + TABLE_ROWS and listing[0][0] == "id"
    assert any(c.value == f"First {TABLE_ROWS} of 12 rows." for c in at.caption)
    fields = [row[0] for row in comparison[1:]]  # the index (field names) is the first column
    assert fields[0] == "time" and "OSRM" in fields and fields[-3:] == ["normalised %", "device", "seconds"]
    assert sorted(comparison[1 + fields.index("λ")][1:]) == ["1, 1", "1, 1.1"]


def test_a_sweep_link_sets_the_method_its_parameters_and_the_overlay(app: AppTest, tiny_zoo):
    from merging.recipe.codec import Recipe

    recipe = Recipe.from_dict({
        "adapters": [{"path": str(tiny_zoo / "question_type-standard"), "name": "question_type-standard"},
                     {"path": str(tiny_zoo / "sms_spam-osrm"), "name": "sms_spam-osrm"}],  # not sweepable
        "method": "dare_linear", "parameters": {"density": 0.35}, "osrm": "posthoc",
    })
    app.query_params["recipe"] = recipe.to_url()
    at = app.switch_page(SWEEP).run()
    assert not at.exception
    assert at.multiselect(key="sweep_adapters").value == ["question_type-standard"]
    assert any("left out: sms_spam-osrm" in w.value for w in at.warning)
    assert at.selectbox(key="sweep_method").value == "dare_linear"
    assert at.slider(key="sweep_param:dare_linear:density").value == pytest.approx(0.35)
    assert at.radio(key="sweep_osrm").value == "posthoc"


def test_a_cancelled_sweep_keeps_and_stores_the_points_scored_before_cancel(app: AppTest, monkeypatch):
    from merging.lab.lab import Lab

    real_sweep = Lab.sweep
    calls = []

    def sweep_then_cancel(self, adapters, recipe, grid, progress=None):
        result = real_sweep(self, adapters, recipe, grid, progress)
        calls.append(grid)
        if len(calls) == 2:  # the user presses Cancel while the second point is scored
            app.session_state["job:sweep"].cancel_event.set()
        return result

    monkeypatch.setattr(Lab, "sweep", sweep_then_cancel)
    at = app.switch_page(SWEEP).run()
    at.radio(key="sweep_osrm").set_value("off")
    at.number_input(key="sweep_points").set_value(4)
    at.button(key="sweep_run").click().run()
    at = wait_for_job(at, "sweep")
    assert not at.exception
    assert any("2 points scored before it stopped" in w.value for w in at.warning)
    table = at.dataframe[0].value
    assert len(table) == 2  # the two scored points, not none
    assert at.get("plotly_chart")
    (run,) = RunStore(Path(at.session_state["workspace"]) / "runs.sqlite").list()
    assert run.summary["cancelled"] == "after 2 of 4 points" and len(run.results["sweep"]["points"]) == 2


def test_the_runs_page_names_the_rows_it_could_not_read(app: AppTest, tiny_zoo):
    import sqlite3

    path = Path(app.session_state["workspace"]) / "runs.sqlite"
    store = RunStore(path)
    good = store.add({"method": "task_arithmetic", "adapters": []}, {"tasks": {}, "average": {}}, {}, "cpu", 1.0)
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (1.0, "merge", "{}", "not json", "{}", "cpu", 1.0),
        )
    at = app.switch_page(RUNS).run()
    assert not at.exception
    (warning,) = [w.value for w in at.warning if "could not be read back" in w.value]
    assert f"row {good + 1}: column 'results' is not valid JSON" in warning
