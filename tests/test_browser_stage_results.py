"""Sweep and Search on stage, with results: presentation mode at 1280 × 720 and 1440 × 900, as a
speaker would show a λ sweep and a search after the Merge page (tests/test_browser_stage.py walks
the Merge result and Interference; tests/test_browser_tour.py the Tour).

On the small zoo of tests/test_browser.py (three shipped MiniLM adapters, two with OSRM twins), each
page is opened by its link with `?present=1`, its settings (in the collapsed settings expander, as on
stage) are made small enough to finish in seconds, and the run is pressed. Then, in the browser's
own layout and from the page's state (never a clock):
- every chart's text is at least 18 px, none overlaps another piece or reaches past its chart;
- no chart text sits on a marker, a whisker or a bar, and no marker on another point's whisker;
- no page text under 18 px (the opened settings' fields and select boxes included) and no
  st.dataframe (its canvas text is ~13 px) — tables are HTML on stage;
- each chart fits the window (no taller than it).

Screenshots, one per chart scrolled into the window (viewed when the test was written):
artifacts/stage-sweep-N-1280x720.png, artifacts/stage-search-N-1280x720.png and the same at 1440x900.
"""

from __future__ import annotations

import pytest

from tests.browser_support import ROOT, browser_page, running_app, wait_for_app_idle, wait_for_plotly
from tests.stage_checks import TEXTS, chart_text_problems, marks_checked, page_text_problems
from tests.test_browser import small_zoo

pytestmark = pytest.mark.browser

CHARTS = """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
  .map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0)
  .map(r => ({top: r.top, bottom: r.bottom, height: r.height}))"""


def _set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_for_app_idle(page)


def _checked(page, where: str, width: int, height: int, charts: int) -> list[str]:
    wait_for_plotly(page, charts)
    wait_for_app_idle(page)
    charts_shown = page.get_by_test_id("stPlotlyChart")
    for index in range(charts_shown.count()):  # each as the room sees it, scrolled into the window
        charts_shown.nth(index).scroll_into_view_if_needed()
        page.screenshot(path=str(ROOT / "artifacts" / f"stage-{where}-{index + 1}-{width}x{height}.png"))
    body = page.inner_text("body")
    assert "Traceback" not in body, body[:3000]
    problems = [f"{where}: {p}" for p in chart_text_problems(page.evaluate(TEXTS))]
    problems += [f"{where}: {p}" for p in page_text_problems(page)] + marks_checked(page, where)
    tall = [box for box in page.evaluate(CHARTS) if box["height"] > height + 1]
    if tall:
        problems.append(f"{where}: a chart taller than the {height}-px window: {tall}")
    return problems


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_sweep_and_search_results_on_stage(tmp_path, width, height):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    env = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace"), "MERGESCOPE_ZOO": str(small_zoo(tmp_path / "zoo")),
           "OMP_NUM_THREADS": "2", "MERGESCOPE_WARM_UP": "0"}  # fmt: skip
    problems: list[str] = []
    with running_app(env=env) as url, browser_page(width=width, height=height) as page:
        # Sweep: the page's three standard adapters (two with OSRM twins), three points of λ
        page.goto(f"{url}/sweep?present=1", wait_until="domcontentloaded")
        run = page.get_by_role("button", name="Run sweep")
        run.wait_for(state="visible")
        wait_for_app_idle(page)
        assert not page.get_by_test_id("stSidebar").is_visible()
        page.get_by_text("Sweep settings").click()
        _set_number(page, "Number of points", 3)
        # the settings as a speaker opens them: fields, select boxes and tags at 18 px too
        problems += [f"sweep settings: {p}" for p in page_text_problems(page)]
        run.click()
        page.get_by_text("Sweep time").wait_for()  # a result's metric: shown once the sweep has finished
        problems += _checked(page, "sweep", width, height, charts=1)

        # Search: three trials on eight dev examples per task
        page.goto(f"{url}/search?present=1", wait_until="domcontentloaded")
        run = page.get_by_role("button", name="Run search")
        run.wait_for(state="visible")
        wait_for_app_idle(page)
        page.get_by_text("Search settings").click()
        _set_number(page, "Trials (budget)", 3)
        _set_number(page, "Dev examples per task", 8)
        page.get_by_label("Trials (budget)", exact=True).scroll_into_view_if_needed()
        problems += [f"search settings: {p}" for p in page_text_problems(page)]
        run.click()
        page.get_by_role("link", name="Open best in Merge").wait_for()
        problems += _checked(page, "search", width, height, charts=2)
    assert not problems, "\n".join(problems)
