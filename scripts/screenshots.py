"""Take a screenshot of every page of the dashboard on the shipped zoo, for the README.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots]

Starts the app on a free local port, drives Debian's Chromium with Playwright, runs a merge, a small
sweep and the interference views by clicking, and saves one PNG per page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser_support import browser_page, running_app  # noqa: E402


def wait_idle(page, ms: int = 1500) -> None:
    page.wait_for_timeout(ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workspace:
        env = {"MERGESCOPE_WORKSPACE": workspace}
        with running_app(env=env) as url, browser_page(width=1400, height=2600) as page:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("button", name="Run merge").wait_for(timeout=120_000)
            page.get_by_role("button", name="Run merge").click()
            page.get_by_text("Average merged accuracy", exact=True).wait_for(timeout=300_000)
            wait_idle(page, 2500)
            page.screenshot(path=str(out / "merge.png"), full_page=True)
            print("merge.png")

            page.get_by_role("link", name="Interference").click()  # keeps the session
            page.get_by_text("Subspace overlap", exact=False).first.wait_for(timeout=120_000)
            wait_idle(page, 3000)
            page.screenshot(path=str(out / "interference.png"), full_page=True)
            print("interference.png")

            page.get_by_role("link", name="Sweep").click()  # keeps the session
            page.get_by_role("button", name="Run sweep").wait_for(timeout=120_000)
            page.get_by_role("button", name="Run sweep").click()
            page.get_by_text("Best average", exact=False).first.wait_for(timeout=600_000)
            wait_idle(page, 2500)
            page.screenshot(path=str(out / "sweep.png"), full_page=True)
            print("sweep.png")

            page.get_by_role("link", name="Adapters").click()  # keeps the session
            page.get_by_text("Inspect", exact=False).first.wait_for(timeout=120_000)
            wait_idle(page, 2500)
            page.screenshot(path=str(out / "adapters.png"), full_page=True)
            print("adapters.png")

            page.get_by_role("link", name="Runs").click()  # keeps the session
            page.get_by_text("Compare", exact=False).first.wait_for(timeout=120_000)
            wait_idle(page, 2500)
            page.screenshot(path=str(out / "runs.png"), full_page=True)
            print("runs.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
