"""The Search page on causal-LM adapters (issue 19, item 1), through the real app with AppTest: a
tiny Llama's two adapters with evaluation files attached, the completion-loss objective, and the
split the page states (dev rows carved from each evaluation file, the report on the others)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import wait_for_job
from tests.test_page_causal import _app, _no_exception, built, workspace  # noqa: F401  (fixtures)

pytest.importorskip("optuna")


def test_the_search_page_minimises_the_loss_of_causal_tasks_and_states_the_split(
    monkeypatch, tmp_path, built, workspace  # noqa: F811
):
    from merging.store.workspace import attach_eval_file

    for task in ("copy", "reverse"):
        attach_eval_file(workspace, f"{task}-lora", built["evals"][task])
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/search.py").run()
    _no_exception(at)
    assert at.multiselect(key="search_adapters").value == ["copy-lora", "reverse-lora"]
    at.radio(key="search_objective").set_value("loss")
    at.number_input(key="search_trials").set_value(2)
    at.number_input(key="search_dev_size").set_value(4)
    at.button(key="search_run").click().run()
    at = wait_for_job(at, "search", timeout=180)
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    result = at.session_state["search_result"]
    assert result["objective"] == "loss" and result["direction"] == "minimize"
    assert result["best"]["dev_objective"] == min(t["dev_objective"] for t in result["trials"])
    rows = {task: len(built["evals"][task].read_text().splitlines()) for task in ("copy", "reverse")}
    statements = [s["statement"] for s in result["split"]]
    assert [s["task"] for s in result["split"]] == ["copy", "reverse"]
    for statement, task in zip(statements, ("copy", "reverse")):
        assert f"dev = 4 of the {rows[task]} rows" in statement and f"the other {rows[task] - 4}" in statement
    shown = " ".join(m.value for m in at.markdown)
    assert all(statement in shown for statement in statements)
    table = at.dataframe[0].value  # the comparison on the held-out rows: exact match, loss and perplexity
    assert {"mean loss", "perplexity"} <= set(table.columns)
    for _, row in table.iterrows():
        assert row["perplexity"] == pytest.approx(2.718281828 ** row["mean loss"], rel=1e-3)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("loss on the dev split" in t for t in titles), titles


def test_the_loss_objective_is_offered_only_for_a_causal_base_model(app_test):
    at = app_test.switch_page("pages/search.py").run()  # the demo zoo: classification
    _no_exception(at)
    assert "loss" not in at.radio(key="search_objective").options
