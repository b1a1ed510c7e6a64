"""AppTest: an adapter at chance carries its badge on every page that offers or plots it, and one
that learned does not.

The zoo is the tiny test zoo with its manifest's accuracies and losses rewritten by the test:
sms_spam-osrm at chance (accuracy 50 % against sms_spam's 50 % majority class, loss ≈ ln 2), every
other adapter well above chance (90 %, loss 0.1). So the verdicts do not depend on which zoo is shipped nor on how the tiny BERT trained."""

from __future__ import annotations

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from merging.lab.chance_badges import BADGE
from tests.conftest import assert_page_ok, wait_for_job

AT_CHANCE, LEARNED = "sms_spam-osrm", "sms_spam-standard"


@pytest.fixture
def badge_zoo(tiny_zoo, tmp_path):
    zoo = tmp_path / "badge-zoo"
    shutil.copytree(tiny_zoo, zoo)
    manifest = json.loads((zoo / "manifest.json").read_text(encoding="utf-8"))
    assert {t["name"]: t["majority_baseline"] for t in manifest["tasks"]}["sms_spam"] == 0.5  # the balanced split
    for entry in manifest["adapters"]:
        for key in ("did_not_learn", "epoch_losses"):
            entry.pop(key, None)
        at_chance = entry["name"] == AT_CHANCE
        entry["single_task_accuracy"] = 0.5 if at_chance else 0.9
        entry["final_loss"] = 0.6957 if at_chance else 0.1
    (zoo / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return zoo


@pytest.fixture
def app(app_test, badge_zoo, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_ZOO", str(badge_zoo))  # read by each page run (pages/_ui.zoo_folder)
    yield app_test
    job = app_test.session_state["job:sweep"] if "job:sweep" in app_test.session_state else None
    if job is not None:
        job.cancel_event.set()


def _badge_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.warning if w.value.startswith("At chance:")]


def test_the_merge_picker_badges_the_adapter_at_chance_and_only_it(app):
    at = app.run()
    assert_page_ok(at)
    options = at.multiselect(key="merge_adapters").options
    assert f"{AT_CHANCE}  {BADGE}" in options and LEARNED in options
    assert not any(o.startswith(LEARNED) and BADGE in o for o in options)
    assert not _badge_warnings(at)  # the default choice (standard adapters, OSRM off) merges none at chance

    # OSRM twins swap sms_spam-osrm in for sms_spam-standard: the page says so before anything runs
    at.radio(key="merge_osrm").set_value("twins").run()
    assert_page_ok(at)
    (note,) = _badge_warnings(at)
    assert AT_CHANCE in note and "50.0 %" in note and "merged here" in note and LEARNED not in note

    # the run's result says it again, and its chart marks the task whose adapter is at chance
    at.button(key="merge_run").click().run()
    wait_for_job(at, "merge")
    assert_page_ok(at)
    assert any("in this run" in w and AT_CHANCE in w for w in _badge_warnings(at))
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "chart:merge_accuracy")
    assert chart["layout"]["xaxis"]["ticktext"] == ["sms_spam ⚠", "question_type", "average"]


def test_the_sweep_draws_the_chance_line_and_badges_the_twin_at_chance(app, badge_zoo):
    at = app.switch_page("pages/sweep.py").run()
    assert_page_ok(at)
    assert at.multiselect(key="sweep_adapters").value == [LEARNED, "question_type-standard"]
    (note,) = _badge_warnings(at)  # the overlay (OSRM twins, the default) sweeps the adapter at chance
    assert AT_CHANCE in note and "swept here" in note
    at.number_input(key="sweep_points").set_value(2)
    at.button(key="sweep_run").click().run()
    wait_for_job(at, "sweep")
    assert_page_ok(at)
    (chart,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    traces = {t["name"]: t for t in chart["data"]}
    chance = [t for t in chart["data"] if t.get("legendgroup") == "chance"]
    # one line per task here, at its majority class as the zoo build measured it on the same evaluation split
    tasks = json.loads((badge_zoo / "manifest.json").read_text(encoding="utf-8"))["tasks"]
    assert sorted(t["y"][0] for t in chance) == pytest.approx(sorted(t["majority_baseline"] for t in tasks))
    assert "chance 50% (majority class: sms_spam)" in traces
    assert f"sms_spam · osrm {BADGE}" in traces and "sms_spam · standard" in traces
    assert "question_type · osrm" in traces  # learned: no badge


def test_the_adapters_table_flags_the_adapter_at_chance(app):
    at = app.switch_page("pages/adapters.py").run()
    assert_page_ok(at)
    table = at.dataframe[0].value.set_index("Adapter")
    assert table.loc[AT_CHANCE, "Learned its task"] == BADGE
    assert table.loc[LEARNED, "Learned its task"] == "yes"
    (note,) = _badge_warnings(at)
    assert AT_CHANCE in note and LEARNED not in note


def test_the_interference_picker_badges_the_adapter_at_chance(app):
    at = app.switch_page("pages/interference.py").run()
    assert_page_ok(at)
    options = at.multiselect(key="interference_adapters").options
    assert f"{AT_CHANCE}  {BADGE}" in options and LEARNED in options
    assert not _badge_warnings(at)  # the default: the standard adapters, none at chance
    at.toggle(key="interference_side_by_side").set_value(True).run()  # the OSRM column shows the twin
    assert_page_ok(at)
    (note,) = _badge_warnings(at)
    assert AT_CHANCE in note and "shown here" in note


def test_the_search_picker_badges_the_adapter_at_chance(app):
    pytest.importorskip("optuna")  # the page stops before its controls without it
    at = app.switch_page("pages/search.py").run()
    assert_page_ok(at)
    options = at.multiselect(key="search_adapters").options
    assert f"{AT_CHANCE}  {BADGE}" in options and LEARNED in options
    assert not _badge_warnings(at)
    at.radio(key="search_osrm").set_value("twins").run()  # the search would merge the twin at chance
    (note,) = _badge_warnings(at)
    assert AT_CHANCE in note and "searched here" in note
