"""The Tour on stage, in a real browser (Chromium through Playwright), on the shipped demo zoo:

- every step at 1280 × 720 and 1440 × 900 in presentation mode: a headline of at most 15 words at
  28 px or more, no visible text under 18 px (captions, buttons and the chart's text) and no
  st.dataframe, no two pieces of chart text overlapping and none cut by the chart's edge — the
  finale's merge names included — and no chart text on a marker, a whisker or a bar, nor a marker on
  another point's whisker (the finale's diamonds included; the rule, its 2-px tolerance and what it
  leaves alone are tests/stage_checks.py's `mark_clashes`);
- a clicker moves it: ArrowRight / PageDown / Space next, ArrowLeft / PageUp back (the walk itself
  goes forward by ArrowRight);
- the steps come from the workspace's measure cache (merging.store.measure_cache), filled by the library
  beforehand as the server's warm-up would: no step waits for a measurement.

Screenshots: artifacts/stage-tour-<step>-<width>x<height>.png.
"""

from __future__ import annotations

import time

import pytest

from tests.browser_support import ROOT, browser_page, running_app, wait_for_app_idle, wait_for_plotly
from tests.stage_checks import TEXTS, clashes, cut, marks_checked, page_text_problems, small

# the first run measures the shipped zoo's tour (minutes on 2 shared cores); later runs read it from disk
pytestmark = [pytest.mark.browser, pytest.mark.timeout(3600)]

HEADLINE_PX = 28

@pytest.fixture(scope="module")
def measured_workspace():
    """The shipped zoo's tour measured into a workspace's measure cache, as the warm-up does."""
    from merging.analysis import tour as story
    from merging.lab.lab import Lab
    from merging.store.measure_cache import MeasureCache
    from merging.training.zoo import load_zoo

    # kept between runs (artifacts/ is ignored): its keys (adapter versions, code) keep it honest
    workspace = ROOT / "artifacts" / "stage-tour-workspace"
    zoo = load_zoo()
    tour = story.tour_steps(zoo)
    story.measure_tour(tour, Lab(zoo.base_model, device="cpu"), MeasureCache.in_workspace(workspace))
    return workspace, tour


SHOWN_STEP = """() => {
  const found = Array.from(document.querySelectorAll('strong')).map(e => e.textContent.match(/^Step (\\d+) of/))
    .filter(m => m);
  return found.length ? parseInt(found[0][1], 10) : null;
}"""
SETTLED = """() => !document.querySelector('[data-stale="true"]')
  && !document.querySelector('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]')"""


def _step_shown(page, number: int, count: int) -> None:
    # waits end on the page's state; the page's default timeout is only the hang guard
    page.wait_for_function(f"({SHOWN_STEP})() === {number}")
    page.locator(".ms-headline").first.wait_for()
    page.wait_for_function(SETTLED)
    wait_for_plotly(page, 1)  # drawn and settled after Plotly's relayout to the window's height


def _shown_step(page) -> int:
    return page.evaluate(SHOWN_STEP)


# where each drawn chart ends, in window pixels, scrolled to the page's top as the step opens
CHART_BOTTOMS = """() => Array.from(document.querySelectorAll('[data-testid="stPlotlyChart"]'))
  .map(c => c.getBoundingClientRect()).filter(r => r.height > 0).map(r => r.bottom)"""


@pytest.mark.parametrize("width, height", [(1280, 720), (1440, 900)])
def test_every_tour_step_reads_cleanly_and_a_clicker_moves_it(measured_workspace, width, height):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    workspace, tour = measured_workspace
    count = len(tour.steps)
    env = {"MERGESCOPE_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "2", "MERGESCOPE_WARM_UP": "0"}
    problems: list[str] = []
    with running_app(env=env) as url, browser_page(width=width, height=height) as page:
        page.goto(f"{url}/tour?present=1&step=1", wait_until="domcontentloaded")
        # under a plain `streamlit run` a fresh server's very first request may run the page without app.py
        # (docs/DASHBOARD.md: Streamlit's pages/-folder mode); the speaker's reload is what the room sees
        _step_shown(page, 1, count)
        page.reload(wait_until="domcontentloaded")
        seconds = []
        for number in range(1, count + 1):
            started = time.perf_counter()
            _step_shown(page, number, count)
            seconds.append(time.perf_counter() - started)  # includes the wait for the chart to settle (≥ 1 s)
            body = page.inner_text("body")
            assert "Traceback" not in body, body[:3000]
            assert "Measuring step" not in body  # read from disk, not measured while the room waits
            page.screenshot(path=str(ROOT / "artifacts" / f"stage-tour-{number:02d}-{width}x{height}.png"))
            headline = page.locator(".ms-headline").first
            words = headline.inner_text().split()
            size = float(headline.evaluate("e => parseFloat(getComputedStyle(e).fontSize)"))
            if len(words) > 15 or size < HEADLINE_PX:
                problems.append(f"step {number}: headline {len(words)} words at {size} px: {' '.join(words)}")
            texts = page.evaluate(TEXTS)
            for what, found in (("small chart text", small(texts)), ("overlapping chart text", clashes(texts)),
                                ("cut chart text", cut(texts))):
                if found:
                    problems.append(f"step {number}: {what}: {found[:6]}")
            # the step's chart, its axis and legend included, ends inside the window: nothing the
            # room needs is below the fold
            bottoms = page.evaluate(CHART_BOTTOMS)
            if not bottoms or max(bottoms) > height + 1:
                problems.append(f"step {number}: chart ends at {bottoms} px, the window at {height}")
            problems += [f"step {number}: {problem}" for problem in page_text_problems(page)]
            problems += marks_checked(page, f"step {number}")
            if number < count:
                page.keyboard.press("ArrowRight")
        print(f"{width}x{height}: seconds from the key to the step shown: " + ", ".join(f"{v:.1f}" for v in seconds))
        assert not problems, "\n".join(problems)
        # the last step: Next is disabled, ArrowRight stays; back and forth with the clicker's other keys
        page.keyboard.press("ArrowRight")
        wait_for_app_idle(page)  # any rerun the key caused is over
        assert _shown_step(page) == count
        for key, expected in (("ArrowLeft", count - 1), ("PageUp", count - 2), ("PageDown", count - 1),
                              ("Space", count)):
            page.keyboard.press(key)
            _step_shown(page, expected, count)
            assert _shown_step(page) == expected, key
        assert f"step={count}" in page.url
