"""A deep link as the very first request to a freshly started server, in a real browser.

Streamlit decides once per process whether the app uses the old `pages/` folder multipage mode: the
first session's PagesManager sets the flag from whether a `pages/` folder sits next to app.py, and
only app.py's first `st.navigation` call clears it. Ours has one (the pages app.py's st.navigation
lists), so a link to a page opened before any session ran app.py ran that page's file alone, under
Streamlit's own sidebar listing every file in pages/ (app, adapters, ... _ui, _warm) and without
app.py's navigation, presentation mode or sidebar. Seen once on stage with
`/interference?present=1&section=7` right after `streamlit run app.py`: not a race but the rule
above; it looked like one because any earlier visit to / had already cleared the flag.
"""

from __future__ import annotations

import re

import pytest

from tests.browser_support import ROOT, browser_page, running_app, wait_for_app_idle

pytestmark = pytest.mark.browser

# app.py's pages, as its st.navigation names them
APP_PAGES = ["Merge", "Interference", "Sweep", "Search", "Adapters", "Runs", "Tour"]


def test_deep_link_as_first_request_gets_app_navigation(tmp_path):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    env = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace"), "MERGESCOPE_WARM_UP": "0"}
    with running_app(env=env) as url, browser_page(width=1280, height=720) as page:
        # the server is fresh: nothing has run app.py yet
        page.goto(f"{url}/interference?present=1&section=7", wait_until="domcontentloaded")
        # the page drawn by either kind of run — the section line (ours), or Streamlit's own list of
        # pages (the old mode; not a heading: on stage the page shows none) — and no run going on any more
        page.get_by_text("Section 7 of 8").or_(page.get_by_test_id("stSidebarNav")).first.wait_for()
        wait_for_app_idle(page)
        body = page.inner_text("body")
        assert "Traceback" not in body, body[:3000]
        # Streamlit's own list of pages/ files is not shown anywhere ...
        assert page.get_by_test_id("stSidebarNav").count() == 0
        for raw in ("app", "ui", "warm", "stage", "server"):  # how it names app.py and our helper modules
            assert page.get_by_role("link", name=raw, exact=True).count() == 0, raw
        # ... app.py's navigation is, at the top (presentation mode), with the sidebar hidden
        for name in APP_PAGES:
            # (a link's name starts with its icon's ligature, e.g. "merge_type Merge")
            assert page.get_by_role("link", name=re.compile(rf"(^|\s){name}$")).first.is_visible(), name
        assert not page.get_by_test_id("stSidebar").is_visible()
        # the page itself, on stage, at the linked section
        assert page.get_by_text("Section 7 of 8").first.is_visible()
        assert "present=1" in page.url and "section=7" in page.url
        page.screenshot(path=str(ROOT / "artifacts" / "stage-deep-link-1280x720.png"))
