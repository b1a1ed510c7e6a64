"""The Interference page, driven through the real app (st.navigation) with Streamlit's AppTest.

The tiny zoo (a random 2-layer BERT, 2 tasks × standard/OSRM, one short epoch) and the AppTest on
app.py come from conftest (`tiny_zoo`, `app_test`), so the tests need no downloaded model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.conftest import assert_page_ok, wait_for_job

PAGE = "pages/interference.py"
STANDARD = ["sms_spam-standard", "question_type-standard"]


def open_page(at: AppTest, **state) -> AppTest:
    """Set session state (sidebar settings and page widgets alike), then open the Interference page."""
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(PAGE).run()
    assert_page_ok(at, errors_allowed=True)
    return at


def chart_keys(at: AppTest) -> list[str]:
    return [chart.key for chart in at.get("plotly_chart")]


def chart_title(at: AppTest, key: str) -> str:
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(chart.proto.spec)["layout"]["title"]["text"]


def finish_job(at: AppTest, name: str) -> None:
    """Wait for the page's background job and rerun; the job must have ended without an error."""
    job = at.session_state[f"job:{name}"] if f"job:{name}" in at.session_state else None
    wait_for_job(at, name)
    assert job is None or job.error is None, job.error_detail or job.error


def test_charts_toggle_slider_and_background_jobs(app_test):
    at = open_page(app_test)
    assert at.multiselect(key="interference_adapters").value == STANDARD
    assert chart_keys(at) == [
        "chart:interference_magnitude_chosen",
        "chart:interference_overlap_input_chosen",
        "chart:interference_overlap_output_chosen",
        "chart:interference_cosine_chosen",
        "chart:interference_signs_chosen",
    ]

    # Side by side: every factor chart again for the OSRM twins, in a second column.
    at.toggle(key="interference_side_by_side").set_value(True).run()
    # no warning but the one flagging the tiny zoo's adapters at chance (they did not learn)
    assert not at.exception and all(w.value.startswith("At chance:") for w in at.warning)
    keys = chart_keys(at)
    assert {k.replace("_chosen", "_osrm") for k in keys if k.endswith("_chosen")} <= set(keys)
    assert len(keys) == 10

    # The layer slider moves both overlap heatmaps.
    slider = at.select_slider(key="interference_layer")
    assert slider.options == ["0", "1"]
    slider.set_value("1").run()
    assert "layer 1" in chart_title(at, "chart:interference_overlap_input_chosen")
    assert "layer 1" in chart_title(at, "chart:interference_overlap_output_osrm")

    # Data-parameter interference: forward passes in a background job, then a task × adapter heatmap each.
    at.button(key="interference_features_run").click().run()
    finish_job(at, "interference_features")
    assert_page_ok(at)
    assert {"chart:interference_dpi_chosen", "chart:interference_dpi_osrm"} <= set(chart_keys(at))
    spec = json.loads(next(c for c in at.get("plotly_chart") if c.key == "chart:interference_dpi_chosen").proto.spec)
    # the "-standard" all share is dropped; " ⚠" marks an adapter at chance (the tiny zoo's did not learn)
    columns = [x.removesuffix(" ⚠") for x in spec["data"][0]["x"]]
    assert spec["data"][0]["y"] == ["sms_spam", "question_type"] and columns == ["sms_spam", "question_type"]
    assert spec["data"][0]["text"][0][0] == "1" and spec["data"][0]["text"][1][1] == "1"  # own adapter = 1

    # Cached: another view of the same features needs no new job (no button, the chart at once).
    at.radio(key="interference_dpi_scope").set_value("The chosen layer").run()
    assert "layer 1" in chart_title(at, "chart:interference_dpi_osrm")
    assert all(b.key != "interference_features_run" for b in at.button)
    # Every token (second moments) needs features the first job did not keep: a second job.
    at.radio(key="interference_dpi_inputs").set_value("tokens").run()
    assert "chart:interference_dpi_chosen" not in chart_keys(at)
    at.button(key="interference_features_run").click().run()
    finish_job(at, "interference_features")
    assert {"chart:interference_dpi_chosen", "chart:interference_dpi_osrm"} <= set(chart_keys(at))

    # Cross-task accuracy, behind its own button.
    at.button(key="interference_cross_run").click().run()
    finish_job(at, "interference_cross")
    assert_page_ok(at)
    assert {"chart:interference_cross_chosen", "chart:interference_cross_osrm"} <= set(chart_keys(at))

    # Leaving the page and coming back keeps the choices and the results without recomputing.
    at.switch_page("pages/merge.py").run()
    at.switch_page(PAGE).run()
    assert at.toggle(key="interference_side_by_side").value is True
    assert at.select_slider(key="interference_layer").value == "1"
    assert len(chart_keys(at)) == 14 and not at.exception


def test_fewer_than_two_adapters_is_a_clear_message(app_test):
    at = open_page(app_test)
    at.multiselect(key="interference_adapters").set_value(["sms_spam-standard"]).run()
    assert not at.exception
    assert any("at least two adapters" in w.value for w in at.warning)
    assert not at.get("plotly_chart")


def test_presentation_mode_hides_secondary_controls(app_test):
    at = open_page(app_test, presentation=True)
    widget_keys = {w.key for kind in ("slider", "number_input", "radio", "selectbox") for w in at.get(kind)}
    assert not widget_keys & {"interference_density", "interference_samples", "interference_split",
                              "interference_cosine_scope"}
    assert not at.get("download_button")  # show_figure drops downloads in presentation mode
    assert len(chart_keys(at)) == 5
    assert at.select_slider(key="interference_layer").value == "0"  # the main controls stay


def test_missing_twin_and_adapter_without_task(app_test, tiny_zoo):
    """A workspace adapter with no OSRM twin and no task: say so, keep the factor charts."""
    folder = Path(app_test.session_state["workspace"]) / "adapters" / "mystery"
    shutil.copytree(tiny_zoo / "sms_spam-standard", folder)
    meta = json.loads((folder / "mergescope.json").read_text())
    meta.pop("task")
    (folder / "mergescope.json").write_text(json.dumps(meta))

    at = open_page(app_test, interference_adapters=["mystery", "question_type-standard"],
                   interference_side_by_side=True)
    warnings = " ".join(w.value for w in at.warning)
    assert "No OSRM twin for: mystery" in warnings
    assert "no OSRM column" in warnings
    assert any("do not say which task" in e.value for e in at.error)
    assert len(chart_keys(at)) == 5  # the chosen adapters' factor charts still show


def test_the_zoo_study_sections_show_osrm_mechanism_and_do_merging_claims(app_test, tiny_zoo, tmp_path, monkeypatch):
    from pages import _ui
    from tests.study_fixtures import zoo_with_synthetic_study

    without = open_page(app_test)
    assert "no seed study" in " ".join(i.value for i in without.info)
    folder = zoo_with_synthetic_study(tiny_zoo, tmp_path / "zoo_with_study")
    monkeypatch.setenv("MERGESCOPE_ZOO", str(folder))
    _ui._zoo.clear()
    at = open_page(app_test)
    keys = chart_keys(at)
    assert {"chart:interference_osrm_mechanism", "chart:interference_why",
            "chart:interference_magnitude_claims"} <= set(keys)  # fmt: skip
    text = " ".join(m.value for m in at.markdown)
    assert "OSRM's A starts reading 0.0 % of the other tasks' mean input energy" in text
    assert "More input disturbance, more loss" in text
    assert "full fine-tuning 0.20, LoRA standard 0.50, osrm 0.40 — this zoo agrees with claim (b)" in text
    mechanism = next(c for c in at.get("plotly_chart") if c.key == "chart:interference_osrm_mechanism")
    bars = json.loads(mechanism.proto.spec)["data"]
    assert [round(v, 1) for v in bars[0]["x"]] == [5.0, 4.0]  # trained energy shares, standard then OSRM, in %
