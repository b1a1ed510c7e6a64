"""Causal adapters spoken of as such (issue 19, items 5 and 6), through the real app with AppTest on
a tiny Llama's two adapters (tests/causal_workspace.py): the Adapters page names the task from the
attached file and shows the single-task exact match and loss once a file is attached, with no talk of
classification heads; the Merge page's table has no majority column, shows perplexity = exp(loss),
DO-Merging's cosines before/after, and examples side by side equal to merging.evaluation.examples' rows."""

from __future__ import annotations

import math

import pytest

from tests.conftest import wait_for_job
from tests.test_page_causal import _app, _no_exception, built, workspace  # noqa: F401  (fixtures)


def test_the_adapters_page_speaks_of_a_causal_adapter_and_scores_it_once_a_file_is_attached(
    monkeypatch, tmp_path, built, workspace  # noqa: F811
):
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/adapters.py").run()
    _no_exception(at)
    table = at.dataframe[0].value
    assert "Single-task accuracy (%)" not in table.columns
    assert set(table["Single-task exact match (%)"].dropna()) == set()  # nothing attached: no score yet
    at.selectbox(key="adapters_inspect").set_value("reverse-lora").run()
    captions = " ".join(c.value for c in at.caption)
    assert "classification head" not in captions and "attach an evaluation file below" in captions

    at.selectbox(key="adapters_eval_adapter").set_value("reverse-lora").run()
    at.text_input(key="adapters_eval_path").set_value(str(built["evals"]["reverse"])).run()
    at.button(key="adapters_eval_attach").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    row = table[table["Adapter"] == "reverse-lora"].iloc[0]
    assert row["Task"] == "reverse"
    # the workspace's adapter produces every completion of its file: exact match 100 %
    assert row["Single-task exact match (%)"] == 100.0
    assert row["Perplexity"] == pytest.approx(math.exp(row["Single-task loss"]), rel=1e-3)
    assert table[table["Adapter"] == "copy-lora"].iloc[0]["Task"] == "—"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Task"] == "reverse"
    captions = " ".join(c.value for c in at.caption)
    assert "classification head" not in captions and "scored on prompt/completion or chat rows" in captions


def test_the_merge_page_shows_perplexity_cosines_and_examples_side_by_side_for_causal_tasks(
    monkeypatch, tmp_path, built, workspace  # noqa: F811
):
    from merging.evaluation.examples import side_by_side
    from merging.store.workspace import attach_eval_file

    for task in ("copy", "reverse"):
        attach_eval_file(workspace, f"{task}-lora", built["evals"][task])
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/merge.py").run()
    _no_exception(at)
    at.toggle(key="do_orthogonalize").set_value(True).run()
    at.number_input(key="do_steps").set_value(5).run()
    at.button(key="merge_run").click().run()
    at = wait_for_job(at, "merge", timeout=180)
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    frames = {tuple(d.value.columns): d.value for d in at.dataframe}
    results = next(f for cols, f in frames.items() if "loss merged" in cols)
    assert "majority" not in results.columns
    for _, row in results.iterrows():
        assert row["perplexity merged"] == pytest.approx(math.exp(row["loss merged"]), rel=1e-3)
    cosines = next(f for cols, f in frames.items() if "mean |cos| before" in cols)
    assert cosines.iloc[0]["module"] == "all modules" and len(cosines) > 1
    last = at.session_state["merge_last"]
    orthogonalize = last["run"].results["orthogonalize"]
    module = cosines.iloc[1]["module"]
    before = orthogonalize[module]["cosine_before"]
    assert cosines.iloc[1]["mean |cos| before"] == pytest.approx(abs(before[0][1]), abs=1e-4)  # two adapters: one pair

    at.number_input(key="merge_examples_count").set_value(2).run()
    at.button(key="merge_examples_run").click().run()
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    shown = next(d.value for d in at.dataframe if "output merged" in d.value.columns)
    from pages import _ui

    lab = _ui.lab_for(last["base_model"], "cpu")
    merged = last["merged"]
    rows = side_by_side(lab, last["adapters"], last["run"].recipe, 2, merged.adapter.modules)
    assert list(shown["output merged"]) == [r["output merged"] for r in rows]
    assert list(shown["task"]) == ["copy", "copy", "reverse", "reverse"]
    assert list(shown["reference"]) == [r["reference"] for r in rows]
