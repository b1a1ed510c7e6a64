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
- page text (`_page_text_problems`): no visible text outside the charts under 18 px (text in a closed
  expander is not visible), and no st.dataframe shown at all: it draws its cells on a canvas at ~13 px,
  which neither a style sheet nor the text check reaches (on stage a table is pages/_stage.table's HTML);
- marks (`_mark_clashes` on MARKS): no chart text box overlaps a scatter marker (`g.points path.point`),
  an error-bar whisker (`g.errorbar path`) or a bar (`g.trace.bars` points), and no marker overlaps
  another point's whisker, by more than MARK_TOLERANCE_PX (2 px) both across and down — a glyph's box
  is a little larger than its ink. Left alone on purpose: a marker on its own error bar (the same
  Plotly data point: that is how an interval is drawn) and a bar's own label drawn inside it (Plotly's
  `textposition="inside"`). Text against text is `_clashes`; a marker against a bar is not checked (a
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


# Every visible piece of text outside the charts in the page's main part and top navigation: its size.
PAGE_TEXTS = """() => {
  const out = [];
  for (const root of document.querySelectorAll('[data-testid="stMain"], [data-testid="stHeader"]')) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const node = walker.currentNode;
      const text = (node.textContent || '').trim();
      const el = node.parentElement;
      if (!text || !el || el.closest('svg') || el.closest('style') || el.closest('script')) continue;
      // a closed expander (<details>) keeps its content's boxes but does not paint it
      if (!el.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
      const r = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      if (r.width === 0 || r.height === 0 || style.visibility === 'hidden' || style.opacity === '0') continue;
      if (r.bottom < 0 || r.top > window.innerHeight) continue;  // not on screen
      out.push({text: text.slice(0, 80), size: parseFloat(style.fontSize)});
    }
  }
  return out;
}"""

# st.dataframe draws its cells on a canvas (~13 px) that PAGE_TEXTS cannot read: any one with a size,
# anywhere on the page, is text under 18 px on stage.
DATAFRAMES = """() => Array.from(document.querySelectorAll('[data-testid="stDataFrame"]'))
  .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && e.checkVisibility(); }).length"""

# The cells of the stage tables (pages/_stage.table): text and computed size.
TABLE_CELLS = """() => Array.from(document.querySelectorAll('.ms-table th, .ms-table td'))
  .map(c => ({text: c.textContent.trim(), size: parseFloat(getComputedStyle(c).fontSize)}))"""


def _page_text_problems(page) -> list[str]:
    """On stage: visible page text under 18 px (outside the charts), and any st.dataframe shown."""
    problems = []
    small = [(t["text"], t["size"]) for t in page.evaluate(PAGE_TEXTS) if t["size"] < MIN_PX]
    if small:
        problems.append(f"page text under {MIN_PX} px: {small[:6]}")
    frames = page.evaluate(DATAFRAMES)
    if frames:
        problems.append(f"{frames} st.dataframe shown: its canvas draws ~13-px text (pages/_stage.table is the stage's table)")
    return problems


# Everything drawn in the charts on screen that text must keep clear of, from one look at the page
# (so that `owner`, the Plotly data point an element was drawn for, is comparable across them):
# - texts: as TEXTS, plus `owner` when the text is a bar's own label (Plotly's text in the bar's g.point);
# - markers: scatter points (`g.points path.point`);
# - whiskers: error bars (`g.errorbar path`, one per data point: its `owner` is that point);
# - bars: `g.trace.bars` points' paths.
# Elements with no size or hidden (display, visibility, opacity 0 up to the chart's svg) are left out.
MARKS = """() => {
  const out = {texts: [], markers: [], whiskers: [], bars: []};
  const owners = new Map();
  const owner = d => {
    if (d === null || typeof d !== 'object') return null;
    if (!owners.has(d)) owners.set(d, owners.size);
    return owners.get(d);
  };
  const box = el => {
    const r = el.getBoundingClientRect();
    if ((r.width === 0 && r.height === 0) || !el.checkVisibility()) return null;
    for (let e = el; e && e.tagName.toLowerCase() !== 'svg'; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === 'none' || s.visibility === 'hidden' || parseFloat(s.opacity) === 0) return null;
    }
    return {x0: r.left, x1: r.right, y0: r.top, y1: r.bottom};
  };
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach((chart, index) => {
    chart.querySelectorAll('g.trace').forEach((trace, t) => {
      const bars = trace.classList.contains('bars');
      trace.querySelectorAll('g.points path.point').forEach(p => {
        const b = box(p); if (b) out.markers.push({chart: index, trace: t, owner: owner(p.__data__), ...b});
      });
      trace.querySelectorAll('g.errorbar').forEach(g => g.querySelectorAll('path').forEach(p => {
        const b = box(p); if (b) out.whiskers.push({chart: index, trace: t, owner: owner(g.__data__), ...b});
      }));
      if (bars) trace.querySelectorAll('g.point').forEach(g => {
        const p = g.querySelector('path'); const b = p && box(p);
        if (b) out.bars.push({chart: index, trace: t, owner: owner(g.__data__), ...b});
      });
    });
    chart.querySelectorAll('svg text').forEach(el => {
      const text = (el.textContent || '').trim();
      const b = text && box(el);
      if (!b) return;
      const point = el.closest('g.trace.bars g.point');
      out.texts.push({chart: index, text: text, cls: el.getAttribute('class') || '',
                      owner: point ? owner(point.__data__) : null, ...b});
    });
  });
  return out;
}"""

# How far two boxes may overlap (in both directions) before they are said to meet: a glyph's box is a
# little larger than its ink, and a marker's edge touching a whisker's end is not a clash.
MARK_TOLERANCE_PX = 2.0


def _inside(a: dict, b: dict, slack: float = MARK_TOLERANCE_PX) -> bool:
    return a["x0"] >= b["x0"] - slack and a["x1"] <= b["x1"] + slack and a["y0"] >= b["y0"] - slack and a["y1"] <= b["y1"] + slack


def _mark_clashes(found: dict, tolerance: float = MARK_TOLERANCE_PX) -> list[str]:
    """Chart text on a marker, a whisker or a bar, and a marker on another point's whisker (MARKS).

    Two boxes clash when they overlap by more than `tolerance` px both across and down. Left alone,
    as a chart draws them on purpose: a marker on its own error bar (same data point: the marker is
    the interval's centre), and a bar's own label drawn inside it (Plotly's `textposition="inside"`).
    Text is not checked against text here (`_clashes` does that), nor a marker against a bar (a
    reference marker over a bar is how some charts compare two values)."""
    problems = []
    for text in found["texts"]:
        for kind in ("markers", "whiskers", "bars"):
            for mark in found[kind]:
                if mark["chart"] != text["chart"] or not _meet(text, mark, tolerance):
                    continue
                if kind == "bars" and text["owner"] is not None and text["owner"] == mark["owner"] and _inside(text, mark):
                    continue
                problems.append(f"chart {text['chart']}: text {text['text']!r} on a {kind[:-1]} "
                                f"at x {mark['x0']:.0f}-{mark['x1']:.0f}, y {mark['y0']:.0f}-{mark['y1']:.0f}")
    for marker in found["markers"]:
        for whisker in found["whiskers"]:
            if whisker["chart"] == marker["chart"] and whisker["owner"] != marker["owner"] and _meet(marker, whisker, tolerance):
                problems.append(f"chart {marker['chart']}: a marker at x {marker['x0']:.0f}-{marker['x1']:.0f}, "
                                f"y {marker['y0']:.0f}-{marker['y1']:.0f} on another point's whisker "
                                f"(x {whisker['x0']:.0f}-{whisker['x1']:.0f}, y {whisker['y0']:.0f}-{whisker['y1']:.0f})")
    return sorted(set(problems))


def _marks_checked(page, where: str) -> list[str]:
    """_mark_clashes on what the page shows now, each problem prefixed by `where`; prints how many of
    each kind were looked at (-s shows it), so a check that saw nothing does not pass unnoticed."""
    found = page.evaluate(MARKS)
    print(f"{where}: " + ", ".join(f"{len(found[kind])} {kind}" for kind in ("texts", "markers", "whiskers", "bars")))
    return [f"{where}: {problem}" for problem in _mark_clashes(found)]


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


def test_the_mark_check_finds_text_on_a_marker_or_whisker_and_a_marker_on_another_points_whisker():
    """_mark_clashes on a Plotly chart drawn by plotly.js itself (no server): what it must find and what
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
    clashes = _mark_clashes(found)
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
        problems += [f"merge result: {p}" for p in _page_text_problems(page)] + _marks_checked(page, "merge result")

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
            where = f"interference section {number}"
            problems += [f"{where}: {p}" for p in _page_text_problems(page)] + _marks_checked(page, where)

        # Adapters: the shipped zoo's adapters in a stage table (HTML at ≥ 18 px), not st.dataframe's canvas
        page.get_by_role("link", name="Adapters").click()
        page.locator(".ms-table").first.wait_for()
        wait_for_app_idle(page)
        page.evaluate(TO_TOP)
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-adapters-{width}x{height}.png"))
        cells = page.evaluate(TABLE_CELLS)
        assert "sms_spam-standard" in [c["text"] for c in cells], cells[:20]
        assert not [c for c in cells if c["size"] < MIN_PX], cells[:20]
        problems += [f"adapters: {p}" for p in _page_text_problems(page)]
        assert not problems, "\n".join(problems)
