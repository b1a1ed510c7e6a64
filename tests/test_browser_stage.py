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

Screenshots (viewed when the tests were written): artifacts/stage-merge-1280x720.png,
artifacts/stage-interference-1280x720.png and the same at 1440x900.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import ROOT, browser_page, running_app, wait_for_app_idle, wait_for_plotly, wait_until_still

pytestmark = pytest.mark.browser

MIN_PX = 18

# Every <text> Plotly drew in the charts on screen: its font size, its box, its chart's box.
TEXTS = """() => {
  const out = [];
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((chart, index) => {
    const box = chart.getBoundingClientRect();
    chart.querySelectorAll('svg text').forEach(t => {
      const text = (t.textContent || '').trim();
      if (!text) return;
      const r = t.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) return;  // hidden (e.g. a hover label's template)
      out.push({chart: index, text: text, size: parseFloat(getComputedStyle(t).fontSize),
                cls: t.getAttribute('class') || '', x0: r.left, x1: r.right, y0: r.top, y1: r.bottom,
                cx0: box.left, cx1: box.right, cy0: box.top, cy1: box.bottom});
    });
  });
  return out;
}"""


# The boxes of the 95% interval whiskers Plotly drew, per chart.
WHISKERS = """() => {
  const out = [];
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((chart, index) => {
    chart.querySelectorAll('g.errorbar path').forEach(p => {
      const r = p.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) return;
      out.push({chart: index, x0: r.left, x1: r.right, y0: r.top, y1: r.bottom});
    });
  });
  return out;
}"""


def _meet(a: dict, b: dict, slack: float = 2.0) -> bool:
    return min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > slack and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > slack


def _clashes(texts: list[dict]) -> list[tuple[str, str]]:
    """Pieces of text in one chart whose boxes overlap: run-together labels, a legend on a title."""
    return [(a["text"], b["text"]) for i, a in enumerate(texts) for b in texts[i + 1:]
            if a["chart"] == b["chart"] and _meet(a, b)]


def _cut(texts: list[dict]) -> list[str]:
    """Text reaching past its chart's box: a y title longer than the plot is tall, a label off the edge."""
    return [t["text"] for t in texts if t["x0"] < t["cx0"] - 1 or t["x1"] > t["cx1"] + 1
            or t["y0"] < t["cy0"] - 1 or t["y1"] > t["cy1"] + 1]


def _small(texts: list[dict]) -> list[tuple[str, float]]:
    return [(t["text"], t["size"]) for t in texts if t["size"] < MIN_PX]


def _overlapping_cells(texts: list[dict]) -> list[tuple[str, str]]:
    """In the subspace-overlap heatmaps, pieces of text (cell values, tick labels, titles) whose boxes
    overlap another's in the same chart: run-together numbers or names."""
    heatmaps = {t["chart"] for t in texts if t["text"] == "overlap φ"}
    cells = [t for t in texts if t["chart"] in heatmaps]
    assert heatmaps, "no subspace-overlap heatmap on screen"
    clashes = []
    for i, a in enumerate(cells):
        for b in cells[i + 1:]:
            if a["chart"] != b["chart"]:
                continue
            if min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > 2 and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > 2:
                clashes.append((a["text"], b["text"]))
    return clashes


def _cut_titles(texts: list[dict]) -> list[str]:
    return [t["text"] for t in texts if "gtitle" in t["cls"] and (t["x1"] > t["cx1"] + 1 or t["x0"] < t["cx0"] - 1)]


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


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_presentation_mode_on_stage(tmp_path, width, height):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    # the server warm-up is off here only to keep the test short on a 2-core machine (AppTest covers it)
    env = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace"), "OMP_NUM_THREADS": "2", "MERGESCOPE_WARM_UP": "0"}
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
        assert not _small(texts), _small(texts)
        assert not _cut_titles(texts), _cut_titles(texts)
        assert not _clashes(texts), _clashes(texts)[:10]
        assert not _cut(texts), _cut(texts)
        # the merged ÷ single labels (annotations) clear every whisker
        labels = [t for t in texts if "annotation-text" in t["cls"]]
        assert labels, texts
        whiskers = page.evaluate(WHISKERS)
        assert whiskers
        assert not [(t["text"], w) for t in labels for w in whiskers if t["chart"] == w["chart"] and _meet(t, w, 0)]

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
        assert not _small(texts), _small(texts)
        assert not _clashes(texts), _clashes(texts)[:10]
        assert not _cut(texts), _cut(texts)
        # a clicker's key moves to the next section: subspace overlap
        page.keyboard.press("ArrowRight")
        page.get_by_text("Section 2 of 8").wait_for()
        page.wait_for_function("Array.from(document.querySelectorAll('[data-testid=\"stPlotlyChart\"] svg text'))"
                               ".some(t => t.textContent.trim() === 'overlap φ' && t.getBoundingClientRect().width > 0)")
        _wait_for_charts(page, 2)
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-interference-{width}x{height}.png"))
        texts = page.evaluate(TEXTS)
        assert not _small(texts), _small(texts)
        assert not _overlapping_cells(texts), _overlapping_cells(texts)[:10]
        assert not _cut_titles(texts), _cut_titles(texts)
        # nothing runs together or off the edge
        assert not _clashes(texts), _clashes(texts)[:10]
        assert not _cut(texts), _cut(texts)

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
            assert not _small(texts), (number, _small(texts))
            assert not _clashes(texts), (number, _clashes(texts)[:10])
