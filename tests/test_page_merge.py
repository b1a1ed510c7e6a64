"""AppTest: the Merge page runs a merge in a background job, stores it, and shows the scores."""

from __future__ import annotations

import json

from merging.runs import RunStore
from tests.conftest import wait_for_job


def _no_errors(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _click_run(at):
    next(b for b in at.button if b.label == "Run merge").click()
    return at.run()


def test_merge_page_runs_a_merge_and_shows_per_task_accuracy(app_test, tmp_path):
    at = app_test.run()
    _no_errors(at)
    assert at.multiselect(key="merge_adapters").value == ["sms_spam-standard", "question_type-standard"]
    at.selectbox(key="merge_method").set_value("ties")
    at = _click_run(at)
    at = wait_for_job(at, "merge")
    _no_errors(at)
    assert at.toggle(key="presentation") is not None  # app.py's sidebar ran on the rerun too
    assert any(m.label == "Average merged accuracy" for m in at.metric)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    bar_names = {trace.get("name") for chart in charts for trace in chart["data"]}
    assert {"base model", "single adapter", "merged"} <= {str(n).lower() for n in bar_names if n}
    # the run was stored before it was shown, with the recipe that produced it
    runs = RunStore(tmp_path / "workspace" / "runs.sqlite").list()
    assert len(runs) == 1 and runs[0].recipe["method"] == "ties"
    assert set(runs[0].results["tasks"]) == {"sms_spam", "question_type"}
    # the recipe lives in the URL
    assert json.loads(at.query_params["recipe"][0] if isinstance(at.query_params["recipe"], list) else at.query_params["recipe"])["method"] == "ties"


def test_second_run_shows_the_delta_and_osrm_uses_the_twins(app_test, tmp_path):
    at = wait_for_job(_click_run(app_test.run()), "merge")
    at.toggle(key="merge_osrm").set_value(True)
    at.toggle(key="do_decouple").set_value(True)
    at = wait_for_job(_click_run(at), "merge")
    _no_errors(at)
    merged_metric = next(m for m in at.metric if m.label == "Average merged accuracy")
    assert merged_metric.delta is not None and merged_metric.delta.endswith("pp")
    runs = RunStore(tmp_path / "workspace" / "runs.sqlite").list()
    newest = runs[0]
    assert [a["name"] for a in newest.recipe["adapters"]] == ["sms_spam-osrm", "question_type-osrm"]
    assert newest.recipe["do_merging"]["decouple"] is True


def test_a_failing_merge_shows_its_error_and_the_page_stays_usable(app_test, monkeypatch):
    from merging import lab

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

    from merging import lab

    real = lab.Lab.merge_and_evaluate
    release = threading.Event()

    def held_after_the_preview(self, adapters, recipe, progress=None, on_preview=None):
        def hold(preview):
            on_preview(preview)
            assert release.wait(60), "the test never released the evaluation"

        return real(self, adapters, recipe, progress, on_preview=hold)

    monkeypatch.setattr(lab.Lab, "merge_and_evaluate", held_after_the_preview)
    at = _click_run(app_test.run())
    job = at.session_state["job:merge"]
    deadline = time.monotonic() + 60
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


def test_a_link_reopens_the_same_merge(app_test):
    recipe = {"adapters": [{"name": "question_type-standard", "weight": 0.4}], "method": "dare_ties", "density": 0.3}
    app_test.query_params["recipe"] = json.dumps(recipe)
    at = app_test.run()
    _no_errors(at)
    assert at.multiselect(key="merge_adapters").value == ["question_type-standard"]
    assert at.selectbox(key="merge_method").value == "dare_ties"
    assert at.slider(key="weight:question_type-standard").value == 0.4
    assert abs(at.slider(key="merge_density").value - 0.3) < 1e-9
