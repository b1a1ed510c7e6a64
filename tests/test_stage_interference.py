"""The Interference page for a room (issue 18): a takeaway and a which-way-is-good line per section, and
a reload (a fresh session with the same link and workspace) keeps the setup and shows what was
computed — the data-parameter interference and the cross-task matrix — without computing it again."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from merging.analysis import interference_story as telling
from tests.conftest import new_app_test
from tests.test_page_interference import PAGE, chart_keys, finish_job, open_page


def _fresh(app_test: AppTest, params: dict) -> AppTest:
    at = new_app_test(app_test.session_state["workspace"])
    for key, value in params.items():
        at.query_params[key] = value
    at.switch_page(PAGE).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _params(at: AppTest) -> dict:
    return {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}


def test_every_section_says_its_finding_and_which_way_is_good(app_test):
    at = open_page(app_test)
    bold = [m.value for m in at.markdown if m.value.startswith("**")]
    for start in ("**Magnitudes — CV ", "**Subspaces — mean overlap ", "**Task vectors — ", "**Signs — "):
        assert any(b.startswith(start) for b in bold), (start, bold)
    captions = [c.value for c in at.caption]
    for kind in ("magnitude", "overlap", "cosine", "signs", "dpi", "cross"):
        assert telling.GOOD[kind] in captions, kind
    assert telling.EXPLAIN["magnitude"] in captions


def test_a_reload_keeps_the_setup_and_the_computed_figures(app_test):
    at = open_page(app_test)
    at.toggle(key="interference_side_by_side").set_value(True).run()
    at.select_slider(key="interference_layer").set_value("1").run()
    at.button(key="interference_features_run").click().run()
    finish_job(at, "interference_features")
    at.button(key="interference_cross_run").click().run()
    finish_job(at, "interference_cross")
    before = chart_keys(at)
    assert {"chart:interference_dpi_chosen", "chart:interference_cross_osrm"} <= set(before)
    params = _params(at)
    assert params["osrm"] == "1" and params["layer"] == "1"

    fresh = _fresh(app_test, params)  # a reload: a new session, the same link
    assert fresh.toggle(key="interference_side_by_side").value is True
    assert fresh.select_slider(key="interference_layer").value == "1"
    assert not [b.key for b in fresh.button if b.key in ("interference_features_run", "interference_cross_run")]
    assert "job:interference_features" not in fresh.session_state
    assert chart_keys(fresh) == before
    bold = [m.value for m in fresh.markdown if m.value.startswith("**")]
    assert any(b.startswith("**Data-parameter interference — ") for b in bold)
    assert any(b.startswith("**Cross-task accuracy — ") for b in bold)


@pytest.mark.parametrize("params", [{"adapters": "not json"}, {"adapters": '{"a": 1}'}, {"osrm": "yes"},
                                    {"layer": "9" * 50}])
def test_a_hostile_setup_link_gives_one_warning_and_the_defaults(app_test, params):
    fresh = _fresh(app_test, params)
    assert any("was not understood" in w.value for w in fresh.warning)
    assert fresh.multiselect(key="interference_adapters").value  # the defaults
    assert not fresh.error


def test_on_stage_one_section_per_screen_moved_by_back_and_next_and_kept_in_the_link(app_test):
    at = open_page(app_test, presentation=True)

    def where(at):
        return next(m.value for m in at.markdown if m.value.startswith("**Section "))

    def hidden(at):
        style = next(m.value for m in at.markdown if "interference_section_" in m.value and "<style>" in m.value)
        return {k for k in range(1, 9) if f".st-key-interference_section_{k}" in style}

    assert where(at).startswith("**Section 1 of 8** · Magnitude variance")
    assert hidden(at) == {2, 3, 4, 5, 6, 7, 8}
    at.button(key="interference_next").click().run()
    at.button(key="interference_next").click().run()
    assert where(at).startswith("**Section 3 of 8** · Task-vector cosine") and hidden(at) == {1, 2, 4, 5, 6, 7, 8}
    assert _params(at)["section"] == "3"
    assert len(chart_keys(at)) == 5  # the hidden sections are drawn: their widgets keep their values
    fresh = _fresh(app_test, {**_params(at), "present": "1"})
    assert where(fresh).startswith("**Section 3 of 8**")
    fresh.button(key="interference_back").click().run()
    assert where(fresh).startswith("**Section 2 of 8**")
