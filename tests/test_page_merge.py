"""AppTest: the Merge page runs a merge in a background job, stores it, and shows the scores; its
controls are set from a Recipe (share link, "Reopen in Merge") and build the Recipe it runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from merging.methods import REGISTRY
from merging.store.runs import RunStore
from tests.browser_support import HANG_GUARD_S
from tests.conftest import assert_page_ok, new_app_test, wait_for_job

_no_errors = assert_page_ok


def _click_run(at):
    next(b for b in at.button if b.label == "Run merge").click()
    return at.run()


def _url_recipe(at) -> dict:
    value = at.query_params["recipe"]
    return json.loads(value[0] if isinstance(value, list) else value)


def _fresh_session(workspace) -> AppTest:
    """A second browser session on the same workspace: nothing left over from the first one."""
    return new_app_test(workspace)


def control(at, key):
    """The value of the widget with this key, whatever its kind."""
    for kind in ("multiselect", "selectbox", "radio", "slider", "number_input", "toggle"):
        for widget in at.get(kind):
            if getattr(widget, "key", None) == key:
                return widget.value
    raise KeyError(key)


def expected_controls(recipe: dict) -> dict:
    """What every Merge-page control must show for a stored/linked recipe, read from its JSON alone."""
    names = [a["name"] for a in recipe["adapters"]]
    method = recipe["method"]
    expected = {
        "merge_adapters": names,
        "merge_osrm": recipe["osrm"],
        "merge_method": method,
        "merge_exact": recipe["rank"] is None,
        "merge_seed": recipe["seed"],
        "do_decouple": recipe["do_merging"]["decouple"],
        "do_orthogonalize": recipe["do_merging"]["orthogonalize"],
        "do_magnitude": recipe["do_merging"]["magnitude"],
        "do_steps": recipe["do_merging"]["steps"],
        "do_lr": recipe["do_merging"]["lr"],
        "do_mu": recipe["do_merging"]["mu"],
    }
    if recipe["rank"] is not None:
        expected["merge_rank"] = recipe["rank"]
    for adapter in recipe["adapters"]:
        expected[f"weight:{adapter['name']}"] = adapter["weight"]
        for name, value in (adapter.get("parameters") or {}).items():
            expected[f"merge_adapter_param:{method}:{adapter['name']}:{name}"] = value
    for name in REGISTRY[method].param_names:
        expected[f"merge_param:{method}:{name}"] = recipe["parameters"][name]
    return expected


def assert_every_control(at, recipe: dict) -> None:
    expected = expected_controls(recipe)
    actual = {key: control(at, key) for key in expected}
    for key, value in expected.items():
        if isinstance(value, float):
            assert actual[key] == pytest.approx(value), key
        else:
            assert actual[key] == value, key
    # and the page's own Recipe from these controls is the same merge
    assert {k: v for k, v in _recipe_from_page(at).items() if k != "device"} == {
        k: v for k, v in recipe.items() if k != "device"
    }


def _recipe_from_page(at) -> dict:
    """The Recipe the page would run now (the URL is written on Run)."""
    at = wait_for_job(_click_run(at), "merge")
    return _url_recipe(at)


# ----------------------------------------------------------------------------------------------
# Running merges


def test_merge_page_runs_a_merge_and_shows_per_task_accuracy(app_test, tmp_path):
    at = app_test.run()
    _no_errors(at)
    assert at.multiselect(key="merge_adapters").value == ["sms_spam-standard", "question_type-standard"]
    at.selectbox(key="merge_method").set_value("ties").run()
    # the method's controls come from its schema
    assert at.slider(key="merge_param:ties:density").value == REGISTRY["ties"].param("density").start_value == 0.5
    assert at.radio(key="merge_param:ties:sign").options == list(REGISTRY["ties"].param("sign").choices)
    at = _click_run(at)
    at = wait_for_job(at, "merge")
    _no_errors(at)
    assert at.toggle(key="presentation") is not None  # app.py's sidebar ran on the rerun too
    assert any(m.label == "Average merged accuracy" for m in at.metric)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bar_names = {trace.get("name") for chart in charts for trace in chart["data"]}
    assert {"base body + task head", "single adapter", "merged"} <= {str(n).lower() for n in bar_names if n}
    # the run was stored before it was shown, with the recipe that produced it
    runs = RunStore(tmp_path / "workspace" / "runs.sqlite").list()
    assert len(runs) == 1 and runs[0].recipe["method"] == "ties"
    assert runs[0].recipe["parameters"] == {"density": 0.5, "sign": "total", "divide_by": "count"}
    assert set(runs[0].results["tasks"]) == {"sms_spam", "question_type"}
    # the recipe lives in the URL, in the Recipe's own form
    assert _url_recipe(at)["method"] == "ties" and _url_recipe(at)["osrm"] == "off"


def test_second_run_shows_the_delta_and_osrm_twins_are_in_the_recipe(app_test, tmp_path):
    at = wait_for_job(_click_run(app_test.run()), "merge")
    at.radio(key="merge_osrm").set_value("twins")
    at.toggle(key="do_decouple").set_value(True)
    at = wait_for_job(_click_run(at), "merge")
    _no_errors(at)
    merged_metric = next(m for m in at.metric if m.label == "Average merged accuracy")
    newest, first = RunStore(tmp_path / "workspace" / "runs.sqlite").list()
    # the numbers, not just the unit: this run's stored average and its change from the first run's
    new, old = newest.results["average"]["merged"], first.results["average"]["merged"]
    assert merged_metric.value == f"{100 * new:.1f}%"
    assert merged_metric.delta == f"{100 * (new - old):+.1f} pp"
    # the recipe lists what the user chose and says how OSRM enters: it alone reproduces the merge
    assert [a["name"] for a in newest.recipe["adapters"]] == ["sms_spam-standard", "question_type-standard"]
    assert newest.recipe["osrm"] == "twins"
    assert newest.results["osrm"]["twins"] == {"sms_spam-standard": "sms_spam-osrm",
                                                "question_type-standard": "question_type-osrm"}
    assert newest.recipe["do_merging"]["decouple"] is True
    assert any("OSRM-initialised twins" in i.value for i in at.info)


def test_a_failing_merge_shows_its_error_and_the_page_stays_usable(app_test, monkeypatch):
    from merging.lab import lab

    def broken(self, adapters, recipe, progress=None, on_preview=None):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(lab.Lab, "merge_and_evaluate", broken)
    at = wait_for_job(_click_run(app_test.run()), "merge")
    assert not at.exception
    assert any("simulated failure" in e.value for e in at.error)
    assert not next(b for b in at.button if b.label == "Run merge").disabled


def test_a_preview_shows_while_the_rest_of_the_evaluation_runs(app_test, monkeypatch):
    import threading
    import time

    from merging.lab import lab

    real = lab.Lab.merge_and_evaluate
    release = threading.Event()

    def held_after_the_preview(self, adapters, recipe, progress=None, on_preview=None):
        def hold(preview):
            on_preview(preview)
            assert release.wait(HANG_GUARD_S), "the test never released the evaluation"

        return real(self, adapters, recipe, progress, on_preview=hold)

    monkeypatch.setattr(lab.Lab, "merge_and_evaluate", held_after_the_preview)
    at = _click_run(app_test.run())
    job = at.session_state["job:merge"]
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard: the loop ends on the job's state
    while job.partial is None:
        assert time.monotonic() < deadline and not job.finished, job.error
        time.sleep(0.05)
    at = at.run()
    _no_errors(at)
    preview = next(m for m in at.metric if m.label == "Preview: average merged accuracy")
    assert preview.value.endswith("%")
    assert not any(m.label == "Average merged accuracy" for m in at.metric)  # not passed off as the result
    assert job.partial["preview"] is True
    release.set()
    at = wait_for_job(at, "merge")
    _no_errors(at)
    assert any(m.label == "Average merged accuracy" for m in at.metric)
    assert not any(m.label.startswith("Preview") for m in at.metric)


# ----------------------------------------------------------------------------------------------
# Links and Reopen: every control comes back


def _full_recipe(tiny_zoo: Path, osrm: str) -> dict:
    """A recipe that sets every control away from its default."""
    return {
        "adapters": [
            {"path": str(tiny_zoo / "sms_spam-standard"), "weight": 0.7, "name": "sms_spam-standard",
             "parameters": {"density": 0.4}},
            {"path": str(tiny_zoo / "question_type-standard"), "weight": 1.35, "name": "question_type-standard"},
        ],
        "method": "dare_ties",
        "parameters": {"density": 0.3, "sign": "frequency"},
        "rank": 6, "seed": 7, "device": "cpu", "osrm": osrm, "base_model": None, "dtype": "auto",
        "do_merging": {"decouple": True, "orthogonalize": True, "magnitude": "max", "steps": 12, "lr": 0.05,
                       "mu": 2.5},
        "overrides": [{"match": "layer\\.0\\.", "weights": [0.5, 1.0]}],
    }


@pytest.mark.parametrize("osrm", ["off", "twins", "posthoc"])
def test_a_share_link_sets_every_control(app_test, tiny_zoo, osrm):
    from merging.recipe.codec import Recipe

    recipe = Recipe.from_dict(_full_recipe(tiny_zoo, osrm))
    app_test.query_params["recipe"] = recipe.to_url()
    at = app_test.run()
    _no_errors(at)
    # the link's warnings: none (the tiny zoo's adapters are at chance, which the page says apart)
    link_warnings = [w.value for w in at.warning if not w.value.startswith("At chance:")]
    assert not link_warnings, link_warnings
    assert any("1 per-module weight override" in c.value for c in at.caption)  # said, not dropped
    assert_every_control(at, recipe.to_dict())


def test_an_old_share_link_still_opens(app_test):
    old = {"adapters": [{"name": "question_type-standard", "weight": 0.4}], "method": "dare_ties", "density": 0.3,
           "sign": "total", "osrm": True}
    app_test.query_params["recipe"] = json.dumps(old)
    at = app_test.run()
    _no_errors(at)
    assert at.multiselect(key="merge_adapters").value == ["question_type-standard"]
    assert at.selectbox(key="merge_method").value == "dare_ties"
    assert at.slider(key="weight:question_type-standard").value == pytest.approx(0.4)
    assert at.slider(key="merge_param:dare_ties:density").value == pytest.approx(0.3)
    assert at.radio(key="merge_osrm").value == "twins"


@pytest.mark.parametrize("osrm", ["posthoc", "twins"])
def test_reopen_in_merge_brings_back_every_control_of_an_osrm_run(app_test, tiny_zoo, tmp_path, osrm):
    """Issue 9: a post-hoc OSRM run came back with OSRM off and the adapters swapped to their twins;
    a twin run came back with OSRM off. Run one, reopen it in a fresh session, check every control."""
    from merging.recipe.codec import Recipe

    recipe = Recipe.from_dict({**_full_recipe(tiny_zoo, osrm), "rank": None, "overrides": [],
                               "do_merging": {"decouple": True}})
    app_test.query_params["recipe"] = recipe.to_url()
    at = wait_for_job(_click_run(app_test.run()), "merge")
    _no_errors(at)
    stored = RunStore(tmp_path / "workspace" / "runs.sqlite").list()[0]
    assert stored.recipe["osrm"] == osrm
    if osrm == "posthoc":
        assert stored.results["osrm"]["posthoc"] == ["sms_spam-standard", "question_type-standard"]

    runs = _fresh_session(tmp_path / "workspace").switch_page("pages/runs.py").run()
    _no_errors(runs)
    runs.selectbox(key="runs_detail").set_value(stored.id).run()
    runs.button(key="runs_reopen").click().run()
    _no_errors(runs)
    assert runs.title[0].value == "Merge"
    assert_every_control(runs, stored.recipe)


# ----------------------------------------------------------------------------------------------
# Hostile links (issue 12): clamped or refused with a warning, never an exception


@pytest.mark.parametrize(
    "link, warning",
    [
        ('{"adapters":[{"name":"sms_spam-standard","weight":99}]}', "λ of sms_spam-standard"),
        ('{"adapters":[{"name":"sms_spam-standard"}],"density":5}', "field 'density'"),
        ('{"adapters":[{"name":"sms_spam-standard"}],"seed":"abc"}', "field 'seed'"),
        ('{"adapters":[{"name":"sms_spam-standard"}],"method":"ties","parameters":{"density":5}}',
         "parameters.density"),
        ('{"adapters":[{"name":"sms_spam-standard"}],"rank":100000}', "Output rank"),
        ('{"adapters":[{"name":"nope"}]}', "left out: nope"),
        ('{"adapters":[{"path":"/etc","name":"x"}]}', "left out: x"),
        ("[" * 5000, "not valid JSON"),
    ],
)
def test_a_hostile_link_gives_a_warning_and_a_usable_page(app_test, link, warning):
    app_test.query_params["recipe"] = link
    at = app_test.run()
    _no_errors(at)
    assert any(warning in w.value for w in at.warning), [w.value for w in at.warning]
    assert not next(b for b in at.button if b.label == "Run merge").disabled or not control(at, "merge_adapters")


def test_a_clamped_weight_is_what_the_page_runs(app_test):
    app_test.query_params["recipe"] = '{"adapters":[{"name":"sms_spam-standard","weight":99}]}'
    at = app_test.run()
    assert at.slider(key="weight:sms_spam-standard").value == 2.0
    assert _recipe_from_page(at)["adapters"][0]["weight"] == 2.0


@pytest.mark.parametrize("method", list(REGISTRY))
def test_each_methods_controls_are_drawn_from_its_schema(app_test, method):
    at = app_test.run()
    at.selectbox(key="merge_method").set_value(method).run()
    _no_errors(at)
    for param in REGISTRY[method].params:
        key = f"merge_param:{method}:{param.name}"
        if param.kind == "bool":
            widget = at.toggle(key=key)
        elif param.kind == "choice":
            widget = next(w for kind in ("radio", "selectbox") for w in at.get(kind) if w.key == key)
            assert list(widget.options) == list(param.choices)
        elif param.kind == "float" and param.minimum is not None and param.maximum is not None:
            widget = at.slider(key=key)
            assert widget.max == param.maximum
            assert widget.min >= param.minimum and (widget.min > param.minimum or not param.exclusive_minimum)
        else:
            widget = at.number_input(key=key)
        assert widget.value == param.start_value, key
        assert widget.help == (param.help or None) or param.help in (widget.help or "")


# ----------------------------------------------------------------------------------------------
# The server's warm-up


def test_the_server_warm_up_makes_the_first_merge_cached_and_the_cross_task_matrix_ready(
    app_test, tiny_zoo, monkeypatch
):
    import time

    from pages import _warm

    monkeypatch.setenv("MERGESCOPE_WARM_UP", "1")
    _warm._started.clear()
    _warm.cross_task_results.clear()
    try:
        at = app_test.run()
        readiness = _warm.start("cpu")
        deadline = time.monotonic() + HANG_GUARD_S  # a hang guard: the loop ends on the warm-up's state
        while not readiness.done:
            assert time.monotonic() < deadline, readiness.line()
            time.sleep(0.2)
        assert set(readiness.state.values()) == {"ready"}, readiness.line()
        at = wait_for_job(_click_run(at.run()), "merge")
        _no_errors(at)
        # the page's defaults are what the warm-up merged: the evaluation is a cache hit, and says so
        timing = next(m for m in at.metric if m.label == "Merge + evaluation time")
        assert timing.value == "cached"
        at = at.switch_page("pages/interference.py").run()
        assert not at.exception
        titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
        assert "Each adapter on every task" in titles  # shown at once, from the warm-up
        assert not [b for b in at.button if b.key == "interference_cross_run"]
    finally:
        _warm._started.clear()
        _warm.cross_task_results.clear()


def test_presentation_mode_and_the_last_result_survive_a_reload(app_test, tmp_path):
    at = wait_for_job(_click_run(app_test.run()), "merge")
    at.toggle(key="presentation").set_value(True).run()
    assert at.query_params["present"] in ("1", ["1"])
    run_id = RunStore(tmp_path / "workspace" / "runs.sqlite").list()[0].id
    assert at.query_params["run"] in (str(run_id), [str(run_id)])
    # a reload: a new session with the same URL
    fresh = _fresh_session(tmp_path / "workspace")
    fresh.query_params["present"] = "1"
    fresh.query_params["run"] = str(run_id)
    fresh = fresh.run()
    _no_errors(fresh)
    assert fresh.session_state["presentation"] is True
    assert fresh.subheader[0].value.startswith(f"Run {run_id}: ")
    assert any(c.value.startswith("Recipe: ") for c in fresh.caption)
    assert any(m.label == "Average merged accuracy" for m in fresh.metric)


def test_a_pinned_named_baseline_is_what_the_change_chart_compares_with(app_test, tmp_path):
    at = wait_for_job(_click_run(app_test.run()), "merge")
    first = RunStore(tmp_path / "workspace" / "runs.sqlite").list()[0].id
    at.text_input(key="merge_baseline_name").set_value("plain TA")
    at.button(key="merge_pin").click().run()
    assert at.query_params["baseline"] in (str(first), [str(first)])
    at.selectbox(key="merge_method").set_value("ties").run()
    at = wait_for_job(_click_run(at), "merge")
    at = wait_for_job(_click_run(at), "merge")  # a third run: still compared with the pinned one
    _no_errors(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [chart["layout"]["title"]["text"] for chart in charts]
    assert any(f"vs baseline 'plain TA' (run {first})" in t for t in titles), titles
    assert any(c.value.startswith(f"Compared with baseline 'plain TA' (run {first}): Task arithmetic")
               for c in at.caption)


@pytest.mark.parametrize("hostile", ["abc", "-1", "9" * 30, "9" * 5000, "1.5", "999999"])
def test_a_hostile_run_or_baseline_in_the_link_is_ignored_with_a_warning(app_test, tmp_path, hostile):
    fresh = _fresh_session(tmp_path / "workspace")
    fresh.query_params["run"] = hostile
    fresh.query_params["baseline"] = hostile
    fresh = fresh.run()
    _no_errors(fresh)
    assert not any(s.value.startswith("Run ") for s in fresh.subheader)
    assert any("run" in w.value.lower() for w in fresh.warning)
