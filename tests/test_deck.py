"""`mergescope tour --export deck.html` (merging/analysis/deck.py): one self-contained offline deck of the Tour,
with each step's headline, chart and speaker notes; a real browser with the network off steps
through it with the keyboard."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from merging.analysis import tour as story
from merging.cli import main
from merging.store.measure_cache import MeasureCache
from merging.training.zoo import load_zoo
from tests.browser_support import HANG_GUARD_MS


@pytest.fixture(scope="module")
def exported(tiny_zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deck")
    out = folder / "deck.html"
    code = main(["tour", "--export", str(out), "--zoo", str(tiny_zoo), "--workspace", str(folder / "ws"),
                 "--device", "cpu"])
    assert code == 0
    return out, folder / "ws"


def _figures(text: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="figures">(.*?)</script>', text, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def test_the_deck_holds_every_step_with_headline_chart_and_notes_from_the_measurements(exported, tiny_zoo):
    out, workspace = exported
    text = out.read_text(encoding="utf-8")
    tour = story.tour_steps(load_zoo(tiny_zoo))
    assert text.count('<section class="slide"') == len(tour.steps)
    assert len(_figures(text)) == len(tour.steps)
    assert "cdn.plot.ly/plotly" not in text.split("<script>")[0]  # no external script or style
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing loaded from elsewhere
    # the numbers are the library's: the values kept in the workspace's measure cache
    cache = MeasureCache.in_workspace(workspace)
    measured = {m.key: story.stored(m, cache, None) for m in tour.measurements.values()}
    assert all(v is not None for v in measured.values())
    for step in tour.steps:
        needs = {k: measured[k] for k in step.needs}
        assert html.escape(story.headline(step, needs, tour)) in text, step.key
        assert html.escape(story.takeaway(step, needs, tour)) in text, step.key


def test_a_second_export_reads_the_measurements_back_and_a_bad_path_is_refused(exported, tiny_zoo, monkeypatch, capsys):
    out, workspace = exported

    def refused(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(story, "measure", refused)
    again = out.parent / "again.html"
    assert main(["tour", "--export", str(again), "--zoo", str(tiny_zoo), "--workspace", str(workspace),
                 "--device", "cpu"]) == 0
    assert _figures(again.read_text(encoding="utf-8")) == _figures(out.read_text(encoding="utf-8"))
    capsys.readouterr()
    assert main(["tour", "--export", str(again), "--zoo", str(tiny_zoo), "--workspace", str(workspace)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["tour", "--export", str(out.parent), "--zoo", str(tiny_zoo)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["tour", "--export", str(out.parent / "no" / "deck.html"), "--zoo", str(tiny_zoo)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.browser
def test_the_deck_opens_offline_and_the_keyboard_steps_through_it(exported, tiny_zoo):
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, CHROMIUM_ARGS

    out, _ = exported
    count = story.tour_steps(load_zoo(tiny_zoo)).steps.__len__()
    requests = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 720}, offline=True)

            def deny(route):
                if not route.request.url.startswith("file://"):
                    requests.append(route.request.url)
                    route.abort()
                else:
                    route.continue_()

            context.route("**/*", deny)
            page = context.new_page()
            page.set_default_timeout(HANG_GUARD_MS)  # every wait ends on the page's state; this only stops a hang
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(Path(out).as_uri())
            page.wait_for_selector("#slide-1.current .chart .main-svg")

            def at() -> int:
                return int(page.evaluate("document.body.getAttribute('data-slide')"))

            assert at() == 1
            for key, expected in [("ArrowRight", 2), ("PageDown", 3), ("Space", 4), ("ArrowLeft", 3), ("PageUp", 2)]:
                page.keyboard.press(key)
                assert at() == expected, key
                page.wait_for_selector(f"#slide-{expected}.current .chart .main-svg")
            page.keyboard.press("End")
            assert at() == count
            page.wait_for_selector(f"#slide-{count}.current .chart .main-svg")
            assert not page.locator(f"#slide-{count} .notes").is_visible()
            page.keyboard.press("n")
            assert page.locator(f"#slide-{count} .notes").is_visible()
            # each chart has its data drawn (bars or markers), not an empty frame
            drawn = page.evaluate(f"document.querySelector('#chart-{count}').data.length")
            assert drawn >= 1
            page.screenshot(path=str(Path(out).parent / "deck-last.png"))
            assert "#" + str(count) in page.url
            assert not errors, errors
        finally:
            browser.close()
    assert requests == []  # nothing asked of the network
