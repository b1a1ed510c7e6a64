"""The real dashboard in a real browser on causal-LM adapters: a merge set up by clicking shows the
CLI's exact match and completion loss per task.

The workspace (tests/causal_workspace.py) holds a tiny Llama folder's two LoRA adapters, each with
its evaluation file attached (prompt/completion JSONL). The app starts on the demo model (no
built-in zoo, so nothing warms up in the background); by clicking only, the test picks the tiny
Llama in the sidebar's base-model chooser, lowers one λ and runs the Merge page's default method.
The numbers the page then shows — the exact-match chart's bars, the loss chart's bars, the results
table's CSV and the average metric — must equal what `python -m merging evaluate RECIPE --json`
prints for the same recipe, written here by hand and run in a subprocess meanwhile.

Screenshot (1280 × 720, the results in view): artifacts/browser-causal-merge.png.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from merging.store.workspace import attach_eval_file
from tests.browser_support import (
    HANG_GUARD_MS,
    ROOT,
    browser_page,
    running_app,
    shown_charts,
    wait_for_app_idle,
    wait_for_plotly,
    wait_until_still,
)
from tests.causal_workspace import TASKS, build_causal_workspace
from tests.test_browser import cli_result, start_cli_evaluate

pytestmark = pytest.mark.browser

LOWERED = "copy-lora"  # its λ goes from 1.00 to 0.60 (8 steps of 0.05)
LOWERED_TO = 0.6
SCREENSHOT = "browser-causal-merge.png"


def shown_table(page) -> dict[str, dict[str, str]]:
    """The results table, as its 'Download table (CSV)' button gives it: {task: {column: text}}."""
    button = page.get_by_role("button", name="Download table (CSV)")
    assert button.count() == 1
    with page.expect_download(timeout=HANG_GUARD_MS) as download:
        button.click()
    text = Path(download.value.path()).read_text(encoding="utf-8")
    return {row["task"]: row for row in csv.DictReader(io.StringIO(text))}


def chart_titled(charts: dict, words: str) -> dict[str, dict[str, float]]:
    found = [traces for title, traces in charts.items() if words in title]
    assert len(found) == 1, list(charts)
    return found[0]


def test_a_causal_lm_merge_set_up_by_clicking_shows_the_clis_exact_match_and_loss(tmp_path):
    (ROOT / "artifacts").mkdir(exist_ok=True)
    built = build_causal_workspace(tmp_path)
    workspace, model = built["workspace"], str(built["model"])
    stored = {task: attach_eval_file(workspace, f"{task}-lora", built["evals"][task]) for task in TASKS}
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "adapters": [
            {"path": str(built["adapters"][task].resolve()), "name": f"{task}-lora", "eval": str(stored[task]),
             "task": task, "weight": LOWERED_TO if f"{task}-lora" == LOWERED else 1.0}
            for task in TASKS
        ],
        "method": "task_arithmetic", "base_model": model, "device": "cpu",
    }), encoding="utf-8")
    cli = None
    try:
        env = {"MERGESCOPE_WORKSPACE": str(workspace), "MERGESCOPE_ZOO": str(tmp_path / "no-zoo")}
        with running_app(env=env) as url, browser_page(width=1280, height=720) as page:
            page.goto(url, wait_until="domcontentloaded")
            page.get_by_text("No adapters", exact=False).first.wait_for()  # none for MiniLM
            cli = start_cli_evaluate(recipe)

            page.get_by_test_id("stSelectbox").filter(has_text="Base model").click()
            page.get_by_role("option", name=model, exact=True).click()
            page.get_by_role("button", name="Run merge").wait_for(state="visible")
            assert "Causal LM" in page.inner_text("[data-testid='stSidebar']")
            for task in TASKS:
                assert page.get_by_role("slider", name=f"{task}-lora").count() == 1

            slider = page.get_by_role("slider", name=LOWERED)
            slider.focus()
            for _ in range(round((1.0 - LOWERED_TO) / 0.05)):
                slider.press("ArrowLeft")
            expect(slider).to_have_attribute("aria-valuetext", f"{LOWERED_TO:.2f}", timeout=HANG_GUARD_MS)

            wait_for_app_idle(page)  # the λ's rerun is over before Run
            page.get_by_role("button", name="Run merge").click()
            heading = page.get_by_text("Run 1: Task arithmetic of 2 adapters")
            heading.wait_for()  # Playwright's default here: the hang guard
            page.get_by_text("Average merged exact match", exact=True).wait_for()
            body = page.inner_text("body")
            assert "Traceback" not in body, body[:3000]
            page.get_by_test_id("stPlotlyChart").first.scroll_into_view_if_needed()
            wait_for_app_idle(page)
            wait_for_plotly(page, 2)  # both charts drawn and settled before they are read

            expected = cli_result(cli)
            assert set(expected["tasks"]) == set(TASKS)
            charts = shown_charts(page)
            metric_chart = chart_titled(charts, "Exact match per task")
            loss_chart = chart_titled(charts, "Completion loss per task")
            table = shown_table(page)
            for task, scores in expected["tasks"].items():
                assert scores["metric"] == "exact_match" and table[task]["metric"] == "exact_match"
                for role, trace in (("base", "base model"), ("single", "single adapter"), ("merged", "merged")):
                    assert metric_chart[trace][task] == scores[role], (task, role)
                    assert float(table[task][role]) == round(scores[role], 4), (task, role)
                    # float32 loss sums may still differ in the 7th digit between the two processes (both one OpenMP thread)
                    assert loss_chart[trace][task] == pytest.approx(scores["loss"][role], rel=1e-5), (task, role, "loss")
                    assert float(table[task][f"loss {role}"]) == round(scores["loss"][role], 4), (task, role)
                # each adapter learned its own task (its file is what it generates), the base did not
                assert scores["single"] == 1.0 and scores["base"] == 0.0
                assert scores["loss"]["single"] < scores["loss"]["base"]
            assert metric_chart["merged"]["average"] == pytest.approx(expected["average"]["merged"], abs=1e-12)
            metric = page.get_by_test_id("stMetric").filter(has_text="Average merged exact match").first
            assert f"{100 * expected['average']['merged']:.1f}%" in metric.inner_text()

            heading.evaluate("e => e.scrollIntoView({block: 'start'})")
            wait_until_still(heading)
            page.screenshot(path=str(ROOT / "artifacts" / SCREENSHOT))
    finally:
        if cli is not None and cli.poll() is None:
            cli.kill()
            cli.wait()

