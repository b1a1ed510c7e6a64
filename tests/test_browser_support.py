"""tests/browser_support.py itself: a browser test that fails leaves what its page showed in artifacts/."""

from __future__ import annotations

import pytest

from tests import browser_support

pytestmark = pytest.mark.browser


def test_a_failed_browser_test_leaves_the_page_it_saw(tmp_path, monkeypatch):
    monkeypatch.setattr(browser_support, "ROOT", tmp_path)
    with pytest.raises(RuntimeError, match="the test's own error"):
        with browser_support.browser_page(width=640, height=480) as page:
            page.set_content("<h1>what the page showed</h1>")
            raise RuntimeError("the test's own error")
    texts = list((tmp_path / "artifacts").glob("failed-*.txt"))
    assert len(texts) == 1 and "what the page showed" in texts[0].read_text(encoding="utf-8")
    assert len(list((tmp_path / "artifacts").glob("failed-*.png"))) == 1


def test_a_passing_browser_test_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(browser_support, "ROOT", tmp_path)
    with browser_support.browser_page(width=640, height=480) as page:
        page.set_content("<h1>fine</h1>")
    assert not (tmp_path / "artifacts").exists()
