"""The real dashboard in a real browser: open it, run a merge by clicking, see per-task accuracy.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against `streamlit run app.py` on
a free local port, on the shipped demo zoo. Saves a screenshot to artifacts/browser-merge.png.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import ROOT, browser_page, running_app

pytestmark = pytest.mark.browser


def test_merge_by_clicking_shows_per_task_accuracy(tmp_path):
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    workspace = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace")}
    # a tall window: Streamlit scrolls inside its main container, so a screenshot shows one window
    with running_app(env=workspace) as url, browser_page(height=2600) as page:
        page.goto(url, wait_until="domcontentloaded")
        run_button = page.get_by_role("button", name="Run merge")
        run_button.wait_for(state="visible", timeout=60_000)
        # TIES with the OSRM switch on: two of the page's own controls, then Run
        page.get_by_text("OSRM twins", exact=True).first.click()
        run_button.click()
        # exact: the preview's "Preview: average merged accuracy" shows first and must not count
        page.get_by_text("Average merged accuracy", exact=True).wait_for(timeout=180_000)
        page.wait_for_timeout(1500)  # let the charts draw before the screenshot
        page.screenshot(path=str(artifacts / "browser-merge.png"), full_page=True)
        body = page.inner_text("body")
        assert "Traceback" not in body and "Error" not in body.split("Average merged accuracy")[0][-200:]
        # the results table and the accuracy chart are there
        assert re.search(r"Average merged accuracy\s*\n?\s*\d+\.\d%", body), body[:2000]
        assert page.locator(".js-plotly-plot").count() >= 1
        for task in ("sms_spam", "question_type"):
            assert task in body
