"""The real dashboard in a real browser: a merge set up by clicking shows the CLI's numbers.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright against `streamlit run app.py` on
a free local port, on five of the shipped demo zoo's adapters (a manifest listing them in place, so
the page's background warm-up scores five adapters, not ten). By clicking only, it removes one of
the three adapters the page proposes, lowers one λ,
picks TIES (density 0.5, the page's default) and runs; the per-task accuracies the page then shows
(the accuracy chart's bars, the results table's CSV, the average metric) must equal what
`python -m merging evaluate RECIPE --json` prints for the same recipe, run in a subprocess meanwhile.
Then it switches OSRM on and runs again: the page must say it merged the OSRM twins, and its numbers
must change to the CLI's numbers for the recipe of those twins.

Screenshots (1280 × 720, the results in view): artifacts/browser-merge.png (TIES) and
artifacts/browser-merge-osrm.png (TIES with OSRM).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.browser_support import (
    HANG_GUARD_MS,
    HANG_GUARD_S,
    ROOT,
    browser_page,
    running_app,
    shown_charts,
    wait_for_app_idle,
    wait_for_plotly,
    wait_until_still,
)

pytestmark = pytest.mark.browser

KEPT = ("question_type", "sms_spam")  # the page's first two standard adapters, in its order
DROPPED = ("movie_sentiment",)
LOWERED = "question_type"  # its λ goes from 1.00 to 0.60 (8 steps of 0.05)
LOWERED_TO = 0.6
DENSITY = 0.5


def write_recipe(path: Path, adapters: list[tuple[str, float]], method: str, **params) -> Path:
    """The only place this file writes a recipe: zoo adapter names with their λ, the method and its
    parameters as legacy flat keys (density, sign), on the CPU like the page on this machine."""
    data = {
        "adapters": [{"path": str(ROOT / "zoo" / name), "name": name, "weight": weight} for name, weight in adapters],
        "method": method,
        **params,
        "device": "cpu",
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def small_zoo(folder: Path) -> Path:
    """A zoo manifest that lists the shipped adapters of KEPT (both inits) and DROPPED (standard),
    by absolute path: the same folders the CLI's recipes name."""
    manifest = json.loads((ROOT / "zoo" / "manifest.json").read_text(encoding="utf-8"))
    wanted = {f"{t}-{i}" for t in KEPT for i in ("standard", "osrm")} | {f"{t}-standard" for t in DROPPED}
    manifest["adapters"] = [
        dict(a, path=str(ROOT / "zoo" / a["path"])) for a in manifest["adapters"] if a["name"] in wanted
    ]
    manifest["tasks"] = [t for t in manifest["tasks"] if t["name"] in set(KEPT) | set(DROPPED)]
    assert len(manifest["adapters"]) == len(wanted)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return folder


def start_cli_evaluate(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "merging", "evaluate", str(recipe), "--json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def cli_result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)  # a hang guard: the CLI ends on its own
    assert process.returncode == 0, stderr[-2000:]
    return json.loads(stdout)


def shown_accuracy_chart(page) -> dict[str, dict[str, float]]:
    """{trace name: {task: value}} of the 'Accuracy per task' chart as Plotly drew it."""
    charts = shown_charts(page)
    titles = [title for title in charts if "Accuracy per task" in title]
    assert len(titles) == 1, list(charts)
    return charts[titles[0]]


def shown_table(page) -> dict[str, dict[str, float]]:
    """The results table, as its 'Download table (CSV)' button gives it: {task: {column: value}}."""
    button = page.get_by_role("button", name="Download table (CSV)")
    assert button.count() == 1
    with page.expect_download(timeout=HANG_GUARD_MS) as download:
        button.click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    numeric = lambda k: k not in ("task", "metric") and "interval" not in k  # noqa: E731 - text columns
    return {row["task"]: {k: float(v) for k, v in row.items() if numeric(k) and v} for row in csv.DictReader(io.StringIO(text))}


def assert_page_matches_cli(page, cli: dict) -> None:
    chart = shown_accuracy_chart(page)
    table = shown_table(page)
    assert set(cli["tasks"]) == set(KEPT)
    assert set(table) == set(KEPT)
    for task, scores in cli["tasks"].items():
        for role, trace in (("base", "base body + task head"), ("single", "single adapter"), ("merged", "merged")):
            assert chart[trace][task] == scores[role], (task, role, chart[trace][task], scores[role])
            assert table[task][role] == round(scores[role], 4), (task, role)
        assert table[task]["normalized"] == round(scores["normalized"], 4), task
    assert chart["merged"]["average"] == pytest.approx(cli["average"]["merged"], abs=1e-12)
    metric = page.get_by_test_id("stMetric").filter(has_text="Average merged accuracy").first
    assert f"{100 * cli['average']['merged']:.1f}%" in metric.inner_text()


def run_and_wait(page, run_number: int) -> None:
    wait_for_app_idle(page)
    page.get_by_role("button", name="Run merge").click()
    page.get_by_text(f"Run {run_number}: TIES of 2 adapters").wait_for()  # Playwright's default: the hang guard
    # .first: while the result replaces its preview, Streamlit briefly keeps the stale metric beside the new one
    page.get_by_text("Average merged accuracy", exact=True).first.wait_for()
    body = page.inner_text("body")
    assert "Traceback" not in body, body[:3000]
    # Streamlit draws a chart once it scrolls into view; the page's own scroll-to-result and the
    # job's last reruns can replace the chart element meanwhile, so try again on a detached one
    for attempt in range(10):
        try:
            page.get_by_test_id("stPlotlyChart").first.scroll_into_view_if_needed()
            break
        except PlaywrightError:
            if attempt == 9:
                raise
    wait_for_app_idle(page)  # the result's own reruns are over: the next click is not undone by them
    wait_for_plotly(page)  # drawn, and no longer changing, before it is read and photographed


def screenshot_results(page, run_number: int, name: str) -> Path:
    """The run's heading at the top of the window: its metrics and the accuracy chart below."""
    path = ROOT / "artifacts" / name
    heading = page.get_by_text(f"Run {run_number}: TIES of 2 adapters")
    heading.evaluate("e => e.scrollIntoView({block: 'start'})")
    wait_until_still(heading)
    page.screenshot(path=str(path))
    return path


def test_ties_with_one_lowered_lambda_shows_the_cli_numbers_then_osrm_switches_to_the_twins(tmp_path):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    weights = [LOWERED_TO if task == LOWERED else 1.0 for task in KEPT]
    recipes = {
        init: write_recipe(
            tmp_path / f"{init}.json", [(f"{task}-{init}", w) for task, w in zip(KEPT, weights)], "ties",
            density=DENSITY, sign="total",
        )
        for init in ("standard", "osrm")
    }
    cli_runs: dict[str, subprocess.Popen] = {}
    try:
        env = {"MERGESCOPE_WORKSPACE": str(tmp_path / "workspace"), "MERGESCOPE_ZOO": str(small_zoo(tmp_path / "zoo"))}
        with running_app(env=env) as url, browser_page(width=1280, height=720) as page:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_role("button", name="Run merge").wait_for(state="visible")
            # the CLI runs while the browser works (started once the page has loaded its model, so
            # the three model loads do not compete); each scores from scratch in its own process
            cli_runs.update({init: start_cli_evaluate(path) for init, path in recipes.items()})

            for task in DROPPED:
                page.get_by_role("button", name=f"Remove {task}-standard").click()
                page.get_by_role("slider", name=f"{task}-standard").wait_for(state="detached")
            assert page.get_by_role("slider", name=f"{KEPT[1]}-standard").count() == 1

            slider = page.get_by_role("slider", name=f"{LOWERED}-standard")
            slider.focus()
            for _ in range(round((1.0 - LOWERED_TO) / 0.05)):
                slider.press("ArrowLeft")
            expect(slider).to_have_attribute("aria-valuetext", f"{LOWERED_TO:.2f}", timeout=HANG_GUARD_MS)

            page.get_by_test_id("stSelectbox").filter(has_text="Method").click()
            page.get_by_role("option", name="TIES", exact=True).click()
            page.get_by_text(
                "Keep each update's top-density entries by |x|, elect a sign per entry", exact=False
            ).wait_for()
            density = page.get_by_role("slider", name="Density (fraction kept)")
            assert density.get_attribute("aria-valuetext") == f"{DENSITY:.2f}"

            run_and_wait(page, 1)
            standard = cli_result(cli_runs["standard"])
            assert_page_matches_cli(page, standard)
            screenshot_results(page, 1, "browser-merge.png")

            page.get_by_text("OSRM twins", exact=True).first.click()
            expect(page.get_by_role("radio", name="OSRM twins")).to_be_checked(timeout=HANG_GUARD_MS)
            wait_for_app_idle(page)
            run_and_wait(page, 2)
            body = page.inner_text("body")
            twins = ", ".join(f"{task}-osrm" for task in KEPT)
            assert f"OSRM: merged the OSRM-initialised twins {twins} —" in body
            osrm = cli_result(cli_runs["osrm"])
            assert_page_matches_cli(page, osrm)
            # the switch took: other adapters, other merged accuracies
            assert [osrm["tasks"][t]["merged"] for t in KEPT] != [standard["tasks"][t]["merged"] for t in KEPT]
            screenshot_results(page, 2, "browser-merge-osrm.png")
    finally:
        for process in cli_runs.values():
            if process.poll() is None:
                process.kill()
                process.wait()
