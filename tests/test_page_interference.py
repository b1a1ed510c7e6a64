"""The Interference page, driven through the real app (st.navigation) with Streamlit's AppTest.

A tiny zoo (a random 2-layer BERT, 2 tasks × standard/OSRM, one short epoch) is built once per test
session, so the tests need no downloaded model and finish in well under a minute on a CPU.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PAGE = "pages/interference.py"
STANDARD = ["sms_spam-standard", "question_type-standard"]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    """2 demo tasks × {standard, osrm} on a tiny random BERT saved to disk (a few seconds)."""
    from merging.models import tiny_bert
    from merging.zoo import BuildSettings, build_zoo

    root = tmp_path_factory.mktemp("interference")
    base = root / "tiny-bert"
    model, tokenizer = tiny_bert()
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    settings = BuildSettings(
        tasks=("sms_spam", "question_type"), inits=("standard", "osrm"),
        train_size=40, eval_size=24, epochs=1, osrm_samples=20,
    )
    build_zoo(root / "zoo", settings, base_model=str(base))
    return root / "zoo"


@pytest.fixture
def open_page(tiny_zoo, tmp_path, monkeypatch):
    """Open the Interference page on the tiny zoo with an empty workspace; returns the AppTest.

    ``via_app=True`` starts from app.py and switches page through st.navigation. Caveat (Streamlit
    1.67's AppTest): each run resets ``PagesManager.uses_pages_directory``, and because this repo keeps
    its pages in a ``pages/`` folder every run after the first executes the page file alone (MPA v1),
    without app.py's sidebar; its widgets' state is then dropped. So sidebar settings are given by
    running the page file directly with session state set (``via_app=False``).
    """
    from pages import _ui

    monkeypatch.setenv("MERGESCOPE_ZOO", str(tiny_zoo))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(_ui, "DEFAULT_WORKSPACE", tmp_path / "workspace")
    for cache in (_ui._zoo, _ui.lab_for, _ui._adapter):  # server-wide caches outlive one AppTest
        cache.clear()

    def open_(via_app: bool = True, **state) -> AppTest:
        at = AppTest.from_file(APP if via_app else str(ROOT / PAGE), default_timeout=120)
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        if via_app:
            at.switch_page(PAGE).run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return open_


def chart_keys(at: AppTest) -> list[str]:
    return [chart.key for chart in at.get("plotly_chart")]


def chart_title(at: AppTest, key: str) -> str:
    chart = next(c for c in at.get("plotly_chart") if c.key == key)
    return json.loads(chart.proto.spec)["layout"]["title"]["text"]


def wait_for_job(at: AppTest, name: str, timeout: float = 60.0) -> None:
    """Poll the background job in session state until its thread is done, then rerun the page."""
    deadline = time.monotonic() + timeout
    while True:
        job = at.session_state[f"job:{name}"] if f"job:{name}" in at.session_state else None
        if job is None or job.finished:
            break
        assert time.monotonic() < deadline, f"job {name} still running after {timeout} s: {job.what}"
        time.sleep(0.05)
    assert job is None or job.error is None, job.error_detail or job.error
    at.run()


def test_charts_toggle_slider_and_background_jobs(open_page):
    at = open_page()
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
    assert not at.exception and not at.warning
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
    wait_for_job(at, "interference_features")
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {"chart:interference_dpi_chosen", "chart:interference_dpi_osrm"} <= set(chart_keys(at))
    spec = json.loads(next(c for c in at.get("plotly_chart") if c.key == "chart:interference_dpi_chosen").proto.spec)
    assert spec["data"][0]["y"] == ["sms_spam", "question_type"] and spec["data"][0]["x"] == STANDARD
    assert spec["data"][0]["text"][0][0] == "1" and spec["data"][0]["text"][1][1] == "1"  # own adapter = 1

    # Cached: another view of the same features needs no new job (no button, the chart at once).
    at.radio(key="interference_dpi_scope").set_value("The chosen layer").run()
    assert "layer 1" in chart_title(at, "chart:interference_dpi_osrm")
    assert all(b.key != "interference_features_run" for b in at.button)
    # Every token (second moments) needs features the first job did not keep: a second job.
    at.radio(key="interference_dpi_inputs").set_value("tokens").run()
    assert "chart:interference_dpi_chosen" not in chart_keys(at)
    at.button(key="interference_features_run").click().run()
    wait_for_job(at, "interference_features")
    assert {"chart:interference_dpi_chosen", "chart:interference_dpi_osrm"} <= set(chart_keys(at))

    # Cross-task accuracy, behind its own button.
    at.button(key="interference_cross_run").click().run()
    wait_for_job(at, "interference_cross")
    assert not at.exception and not at.error
    assert {"chart:interference_cross_chosen", "chart:interference_cross_osrm"} <= set(chart_keys(at))

    # Leaving the page and coming back keeps the choices and the results without recomputing.
    at.switch_page("pages/merge.py").run()
    at.switch_page(PAGE).run()
    assert at.toggle(key="interference_side_by_side").value is True
    assert at.select_slider(key="interference_layer").value == "1"
    assert len(chart_keys(at)) == 14 and not at.exception


def test_fewer_than_two_adapters_is_a_clear_message(open_page):
    at = open_page()
    at.multiselect(key="interference_adapters").set_value(["sms_spam-standard"]).run()
    assert not at.exception
    assert any("at least two adapters" in w.value for w in at.warning)
    assert not at.get("plotly_chart")


def test_presentation_mode_hides_secondary_controls(open_page):
    at = open_page(via_app=False, presentation=True)
    widget_keys = {w.key for kind in ("slider", "number_input", "radio", "selectbox") for w in at.get(kind)}
    assert not widget_keys & {"interference_density", "interference_samples", "interference_split",
                              "interference_cosine_scope"}
    assert not at.get("download_button")  # show_figure drops downloads in presentation mode
    assert len(chart_keys(at)) == 5
    assert at.select_slider(key="interference_layer").value == "0"  # the main controls stay


def test_missing_twin_and_adapter_without_task(open_page, tiny_zoo, tmp_path):
    """A workspace adapter with no OSRM twin and no task: say so, keep the factor charts."""
    folder = tmp_path / "workspace" / "adapters" / "mystery"
    shutil.copytree(tiny_zoo / "sms_spam-standard", folder)
    meta = json.loads((folder / "mergescope.json").read_text())
    meta.pop("task")
    (folder / "mergescope.json").write_text(json.dumps(meta))

    at = open_page(via_app=False, interference_adapters=["mystery", "question_type-standard"],
                   interference_side_by_side=True)
    warnings = " ".join(w.value for w in at.warning)
    assert "No OSRM twin for: mystery" in warnings
    assert "no OSRM column" in warnings
    assert any("do not say which task" in e.value for e in at.error)
    assert len(chart_keys(at)) == 5  # the chosen adapters' factor charts still show
