"""What the stage browser tests check in the page a browser laid out (presentation mode, `?present=1`):
chart text at least 18 px that neither overlaps other text nor reaches past its chart; chart text
clear of markers, whiskers and bars, and markers clear of other points' whiskers; page text at least
18 px and no st.dataframe (its canvas draws ~13-px text). Used by tests/test_browser_stage.py (Merge,
Interference, Adapters), tests/test_browser_tour.py (every Tour step) and
tests/test_browser_stage_results.py (Sweep and Search with results).

The JavaScript snippets read the page as it is shown; the Python functions judge what they read.
"""

from __future__ import annotations

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
    // a field's value is no text node: a number input's "0.10", a text input's address
    for (const field of root.querySelectorAll('input:not([type="hidden"]):not([type="checkbox"]):not([type="radio"]), textarea')) {
      const r = field.getBoundingClientRect();
      if (!field.value || r.width === 0 || r.height === 0 || !field.checkVisibility({opacityProperty: true, visibilityProperty: true})) continue;
      if (r.bottom < 0 || r.top > window.innerHeight) continue;
      out.push({text: `field: ${field.value.slice(0, 60)}`, size: parseFloat(getComputedStyle(field).fontSize)});
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


def page_text_problems(page) -> list[str]:
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


def inside(a: dict, b: dict, slack: float = MARK_TOLERANCE_PX) -> bool:
    return a["x0"] >= b["x0"] - slack and a["x1"] <= b["x1"] + slack and a["y0"] >= b["y0"] - slack and a["y1"] <= b["y1"] + slack


def mark_clashes(found: dict, tolerance: float = MARK_TOLERANCE_PX) -> list[str]:
    """Chart text on a marker, a whisker or a bar, and a marker on another point's whisker (MARKS).

    Two boxes clash when they overlap by more than `tolerance` px both across and down. Left alone,
    as a chart draws them on purpose: a marker on its own error bar (same data point: the marker is
    the interval's centre), and a bar's own label drawn inside it (Plotly's `textposition="inside"`).
    Text is not checked against text here (`clashes` does that), nor a marker against a bar (a
    reference marker over a bar is how some charts compare two values)."""
    problems = []
    for text in found["texts"]:
        for kind in ("markers", "whiskers", "bars"):
            for mark in found[kind]:
                if mark["chart"] != text["chart"] or not meet(text, mark, tolerance):
                    continue
                if kind == "bars" and text["owner"] is not None and text["owner"] == mark["owner"] and inside(text, mark):
                    continue
                problems.append(f"chart {text['chart']}: text {text['text']!r} on a {kind[:-1]} "
                                f"at x {mark['x0']:.0f}-{mark['x1']:.0f}, y {mark['y0']:.0f}-{mark['y1']:.0f}")
    for marker in found["markers"]:
        for whisker in found["whiskers"]:
            if whisker["chart"] == marker["chart"] and whisker["owner"] != marker["owner"] and meet(marker, whisker, tolerance):
                problems.append(f"chart {marker['chart']}: a marker at x {marker['x0']:.0f}-{marker['x1']:.0f}, "
                                f"y {marker['y0']:.0f}-{marker['y1']:.0f} on another point's whisker "
                                f"(x {whisker['x0']:.0f}-{whisker['x1']:.0f}, y {whisker['y0']:.0f}-{whisker['y1']:.0f})")
    return sorted(set(problems))


def marks_checked(page, where: str) -> list[str]:
    """mark_clashes on what the page shows now, each problem prefixed by `where`; prints how many of
    each kind were looked at (-s shows it), so a check that saw nothing does not pass unnoticed."""
    found = page.evaluate(MARKS)
    print(f"{where}: " + ", ".join(f"{len(found[kind])} {kind}" for kind in ("texts", "markers", "whiskers", "bars")))
    return [f"{where}: {problem}" for problem in mark_clashes(found)]


def meet(a: dict, b: dict, slack: float = 2.0) -> bool:
    return min(a["x1"], b["x1"]) - max(a["x0"], b["x0"]) > slack and min(a["y1"], b["y1"]) - max(a["y0"], b["y0"]) > slack


def clashes(texts: list[dict]) -> list[tuple[str, str]]:
    """Pieces of text in one chart whose boxes overlap: run-together labels, a legend on a title."""
    return [(a["text"], b["text"]) for i, a in enumerate(texts) for b in texts[i + 1:]
            if a["chart"] == b["chart"] and meet(a, b)]


def cut(texts: list[dict]) -> list[str]:
    """Text reaching past its chart's box: a y title longer than the plot is tall, a label off the edge."""
    return [t["text"] for t in texts if t["x0"] < t["cx0"] - 1 or t["x1"] > t["cx1"] + 1
            or t["y0"] < t["cy0"] - 1 or t["y1"] > t["cy1"] + 1]


def small(texts: list[dict]) -> list[tuple[str, float]]:
    return [(t["text"], t["size"]) for t in texts if t["size"] < MIN_PX]


def overlapping_cells(texts: list[dict]) -> list[tuple[str, str]]:
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


def cut_titles(texts: list[dict]) -> list[str]:
    return [t["text"] for t in texts if "gtitle" in t["cls"] and (t["x1"] > t["cx1"] + 1 or t["x0"] < t["cx0"] - 1)]


def chart_text_problems(texts: list[dict]) -> list[str]:
    """Every check of TEXTS in one list of sentences: under 18 px, overlapping, cut, titles too wide."""
    problems = [f"chart text under {MIN_PX} px: {small(texts)[:6]}"] if small(texts) else []
    problems += [f"chart texts overlap: {pair}" for pair in clashes(texts)[:10]]
    problems += [f"chart text past its chart: {text!r}" for text in cut(texts)]
    problems += [f"chart title wider than its chart: {text!r}" for text in cut_titles(texts)]
    return problems
