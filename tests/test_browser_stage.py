"""Stage-ready, measured in a real browser: presentation mode at 1280 × 720 (and 1440 × 900) as a
speaker would use it, on the shipped demo zoo.

Opens the dashboard with `?present=1` (the link a speaker shares), checks the sidebar is hidden,
presses Run merge and then checks, in the browser's own layout:
- the result is in view under Run: its header inside the window and the accuracy chart starting in it;
- every piece of text Plotly drew in every chart (ticks, titles, legends, bar labels, annotations) is
  at least 18 px;
- charts are sized to the window (no taller than it);
- after a reload, presentation mode and the result are still there.
Then the Interference page with standard vs OSRM side by side, one section per screen: the magnitude
section, then (by the clicker's ArrowRight) the overlap section: heatmap cell numbers at ≥ 18 px that
do not overlap their neighbours, and titles that fit their chart; then every section from the first
to the last: its first row of charts (standard and OSRM) wholly inside the window as it opens.
On both pages no two pieces of chart text overlap and none reaches past its chart (the two-panel
magnitude-variance chart included), and the accuracy chart's merged ÷ single labels clear every whisker.
Then the Adapters page: the shipped zoo's adapters in a stage table whose cells are ≥ 18 px.

On the Merge result, on every Interference section and on the Adapters page (and on every Tour step,
tests/test_browser_tour.py) two more checks, gathered and reported together at the end:
- page text (`page_text_problems`): no visible text outside the charts under 18 px (text in a closed
  expander is not visible), and no st.dataframe shown at all: it draws its cells on a canvas at ~13 px,
  which neither a style sheet nor the text check reaches (on stage a table is pages/_stage.table's HTML);
- marks (`mark_clashes` on MARKS): no chart text box overlaps a scatter marker (`g.points path.point`),
  an error-bar whisker (`g.errorbar path`) or a bar (`g.trace.bars` points), and no marker overlaps
  another point's whisker, by more than MARK_TOLERANCE_PX (2 px) both across and down — a glyph's box
  is a little larger than its ink. Left alone on purpose: a marker on its own error bar (the same
  Plotly data point: that is how an interval is drawn) and a bar's own label drawn inside it (Plotly's
  `textposition="inside"`). Text against text is `clashes`; a marker against a bar is not checked (a
  reference marker over a bar is how some charts compare two values).
`test_the_mark_check_finds_text_on_a_marker_or_whisker_and_a_marker_on_another_points_whisker` shows on a
chart drawn by plotly.js alone that the mark check finds what it should and leaves the rest.

Screenshots (viewed when the tests were written): artifacts/stage-merge-1280x720.png,
artifacts/stage-interference-1280x720.png, artifacts/stage-interference-section-<n>-1280x720.png,
artifacts/stage-adapters-1280x720.png and the same at 1440x900.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import ROOT, browser_page, running_app, wait_for_app_idle, wait_for_plotly, wait_until_still
from tests.stage_checks import (
    MARKS,
    MIN_PX,
    TABLE_CELLS,
    TEXTS,
    WHISKERS,
    clashes,
    cut,
    cut_titles,
    mark_clashes,
    marks_checked,
    meet,
    overlapping_cells,
    page_text_problems,
    small,
)

pytestmark = pytest.mark.browser

SECTIONS = 8  # the Interference page's, one per screen on stage
# the buttons of the sections that run the base model (5: data-parameter interference, 6: cross-task)
COMPUTE = {5: re.compile("^Compute data-parameter interference"), 6: re.compile("^Score every adapter on every task")}
# the sections whose first row is two charts, standard and OSRM (1, 7 and 8 stack full-width charts)
SIDE_BY_SIDE = {2: 2, 3: 2, 4: 2, 5: 2, 6: 2}
# the boxes of the charts on screen (hidden sections' charts have no size)
CHART_BOXES = """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
  .map(c => c.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0)
  .map(r => ({top: r.top, bottom: r.bottom, left: r.left, right: r.right}))"""
TO_TOP = """() => { window.scrollTo(0, 0);
  document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]').forEach(e => e.scrollTo(0, 0)); }"""


def _first_row(boxes: list[dict]) -> list[dict]:
    """The charts that start where the highest one does: a section's first row."""
    if not boxes:
        return []
    top = min(box["top"] for box in boxes)
    return [box for box in boxes if box["top"] - top < 2]


def _wait_for_charts(page, count: int = 1) -> None:
    wait_for_plotly(page, count)  # drawn, and settled after Plotly's relayout to the window's height


def test_the_mark_check_finds_text_on_a_marker_or_whisker_and_a_marker_on_another_points_whisker():
    """mark_clashes on a Plotly chart drawn by plotly.js itself (no server): what it must find and what
    it must leave alone, in pixels the test can reason about (fixed size and axis range)."""
    import plotly.graph_objects as go

    from tests.browser_support import wait_for_plotly

    fig = go.Figure()
    # a bar's own label inside it (left alone), its whisker crossing the label (found)
    fig.add_trace(go.Bar(x=["a", "b"], y=[1, 2], text=["low", "high"], textposition="inside",
                         insidetextanchor="start", error_y={"type": "data", "array": [0.3, 0.3]}))
    # markers on their own whiskers (left alone); b's marker sits on the b bar's whisker (found)
    fig.add_trace(go.Scatter(x=["a", "b"], y=[1.6, 2.1], mode="markers", marker={"size": 14},
                             error_y={"type": "data", "array": [0.2, 0.2]}))
    fig.add_trace(go.Scatter(x=["a"], y=[2.6], mode="markers+text", text=["on it"], textposition="middle center",
                             marker={"size": 14}))  # a label drawn on a marker (found)
    fig.update_layout(width=600, height=400, yaxis_range=[0, 3], showlegend=False, margin={"t": 10})
    with browser_page(width=800, height=600) as page:
        page.set_content(f"<div data-testid='stPlotlyChart'>{fig.to_html(full_html=False, include_plotlyjs=True)}</div>")
        wait_for_plotly(page)
        found = page.evaluate(MARKS)
    assert (len(found["markers"]), len(found["whiskers"]), len(found["bars"])) == (3, 4, 2)
    clashes = mark_clashes(found)
    assert len(clashes) == 2 and sum("on a marker" in c and "'on it'" in c for c in clashes) == 1, clashes
    assert sum("on another point's whisker" in c for c in clashes) == 1, clashes
    assert not [c for c in clashes if "'low'" in c or "'high'" in c]  # each inside its own bar, clear of whiskers


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_presentation_mode_on_stage(tmp_path, width, height):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    # the server warm-up is off here only to keep the test short on a 2-core machine (AppTest covers it)
    env = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace"), "OMP_NUM_THREADS": "2", "MERGESCOPE_WARM_UP": "0"}
    # the page-text and mark checks are gathered and asserted at the end: one run names every clash
    problems: list[str] = []
    with running_app(env=env) as url, browser_page(width=width, height=height) as page:
        page.goto(f"{url}/?present=1", wait_until="domcontentloaded")
        run = page.get_by_role("button", name="Run merge")
        run.wait_for(state="visible")  # Playwright's default here: the hang guard
        wait_for_app_idle(page)
        assert not page.get_by_test_id("stSidebar").is_visible()

        run.click()
        header = page.locator("#merge-result")
        header.wait_for()
        wait_for_app_idle(page)
        _wait_for_charts(page)
        body = page.inner_text("body")
        assert "Traceback" not in body, body[:3000]
        wait_until_still(header)  # the page's own scroll to the result has ended
        # in view under Run: the header inside the window, the accuracy chart starting in it
        top = header.evaluate("e => e.getBoundingClientRect().top")
        assert 0 <= top < height / 3, top
        chart = page.get_by_test_id("stPlotlyChart").first
        chart_box = chart.bounding_box()
        assert chart_box["y"] < height * 0.6, chart_box
        assert chart_box["height"] <= height, chart_box  # sized to the window, not taller than it
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-merge-{width}x{height}.png"))
        texts = page.evaluate(TEXTS)
        assert len(texts) > 20, texts
        assert not small(texts), small(texts)
        assert not cut_titles(texts), cut_titles(texts)
        assert not clashes(texts), clashes(texts)[:10]
        assert not cut(texts), cut(texts)
        # the merged ÷ single labels (annotations) clear every whisker
        labels = [t for t in texts if "annotation-text" in t["cls"]]
        assert labels, texts
        whiskers = page.evaluate(WHISKERS)
        assert whiskers
        assert not [(t["text"], w) for t in labels for w in whiskers if t["chart"] == w["chart"] and meet(t, w, 0)]
        problems += [f"merge result: {p}" for p in page_text_problems(page)] + marks_checked(page, "merge result")

        # a reload keeps presentation mode and the result (both are in the URL)
        assert "present=1" in page.url and "run=" in page.url
        page.reload(wait_until="domcontentloaded")
        page.locator("#merge-result").wait_for()
        wait_for_app_idle(page)  # the run that drew the result has ended (its style sheet drawn too)
        assert not page.get_by_test_id("stSidebar").is_visible()

        # Interference, standard vs OSRM side by side
        page.get_by_role("link", name="Interference").click()
        # a page switch waits for the Merge page's run to reach a checkpoint: under a loaded CI runner
        # this took over Playwright's default 30 s once (2 cores, two torch threads per server)
        page.get_by_text("Section 1 of 8").first.wait_for()  # on stage: one section per screen
        page.get_by_text("Side by side: standard LoRA vs OSRM").click()
        _wait_for_charts(page, 2)
        # on stage one section per screen: the first is magnitude variance (two two-panel charts)
        page.get_by_text("Section 1 of 8").wait_for()
        _wait_for_charts(page, 2)
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-interference-1-{width}x{height}.png"))
        texts = page.evaluate(TEXTS)
        assert any("within each adapter" in t["text"] for t in texts), "no magnitude-variance chart"
        assert not small(texts), small(texts)
        assert not clashes(texts), clashes(texts)[:10]
        assert not cut(texts), cut(texts)
        # a clicker's key moves to the next section: subspace overlap
        page.keyboard.press("ArrowRight")
        page.get_by_text("Section 2 of 8").wait_for()
        page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=\"stPlotlyChart\"] svg text'))"
                               ".some(t => t.textContent.trim() === 'overlap φ' && t.getBoundingClientRect().width > 0)")
        _wait_for_charts(page, 2)
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-interference-{width}x{height}.png"))
        texts = page.evaluate(TEXTS)
        assert not small(texts), small(texts)
        assert not overlapping_cells(texts), overlapping_cells(texts)[:10]
        assert not cut_titles(texts), cut_titles(texts)
        # nothing runs together or off the edge
        assert not clashes(texts), clashes(texts)[:10]
        assert not cut(texts), cut(texts)

        # every section on one screen: its chart (the first row of charts: standard and OSRM side by
        # side) starts and ends inside the window, as it opens; the two sections that run the base
        # model are computed by their button first
        for number in range(1, SECTIONS + 1):
            page.keyboard.press("ArrowLeft" if number == 1 else "ArrowRight")
            page.get_by_text(f"Section {number} of {SECTIONS}").wait_for()
            wait_for_app_idle(page)
            button = page.get_by_role("button", name=COMPUTE[number]) if number in COMPUTE else None
            if button is not None and button.count():
                button.click()
            # this section's charts shown (the hidden sections' are drawn too, without a size), then settled
            page.wait_for_function(f"({CHART_BOXES})().length >= {SIDE_BY_SIDE.get(number, 1)}", polling=250)
            _wait_for_charts(page)
            wait_for_app_idle(page)
            page.evaluate(TO_TOP)
            row = _first_row(page.evaluate(CHART_BOXES))
            page.screenshot(path=str(ROOT / "artifacts" / f"stage-interference-section-{number}-{width}x{height}.png"))
            assert len(row) == SIDE_BY_SIDE.get(number, 1), (number, row)
            assert all(0 <= box["top"] and box["bottom"] <= height + 1 for box in row), (number, row, height)
            texts = page.evaluate(TEXTS)
            assert not small(texts), (number, small(texts))
            assert not clashes(texts), (number, clashes(texts)[:10])
            where = f"interference section {number}"
            problems += [f"{where}: {p}" for p in page_text_problems(page)] + marks_checked(page, where)

        # Adapters: the shipped zoo's adapters in a stage table (HTML at ≥ 18 px), not st.dataframe's canvas
        page.get_by_role("link", name="Adapters").click()
        page.locator(".ms-table").first.wait_for()
        wait_for_app_idle(page)
        page.evaluate(TO_TOP)
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-adapters-{width}x{height}.png"))
        cells = page.evaluate(TABLE_CELLS)
        assert "sms_spam-standard" in [c["text"] for c in cells], cells[:20]
        assert not [c for c in cells if c["size"] < MIN_PX], cells[:20]
        problems += [f"adapters: {p}" for p in page_text_problems(page)]
        assert not problems, "\n".join(problems)
