"""The dashboard on causal-LM adapters, through the real app with Streamlit's AppTest: the sidebar's
base-model chooser filters the adapters, and the Adapters page attaches an evaluation file to one.

The workspace (tests/causal_workspace.py) holds a tiny Llama folder's two LoRA adapters; the
built-in zoo is switched off (MERGESCOPE_ZOO names an empty folder), so the default base model is
the demo MiniLM, for which the workspace has no adapters."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from merging.models.base import DEMO_BASE_MODEL
from tests.causal_workspace import build_causal_workspace
from tests.conftest import _run_app_py_on_every_rerun, assert_page_ok, new_app_test

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ADAPTERS_PAGE = "pages/adapters.py"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    return build_causal_workspace(tmp_path_factory.mktemp("causal"))


@pytest.fixture
def workspace(built, tmp_path) -> Path:
    """A fresh copy of the built workspace (each test may attach files)."""
    import shutil

    copy = tmp_path / "workspace"
    shutil.copytree(built["workspace"], copy)
    return copy


def _app(monkeypatch, tmp_path, workspace: Path, base_model: str | None = None) -> AppTest:
    from pages import _ui

    monkeypatch.setenv("MERGESCOPE_ZOO", str(tmp_path / "no-zoo"))
    if base_model is None:
        monkeypatch.delenv("MERGESCOPE_BASE_MODEL", raising=False)
    else:
        monkeypatch.setenv("MERGESCOPE_BASE_MODEL", base_model)
    _run_app_py_on_every_rerun(monkeypatch)
    _ui._zoo.clear()
    _ui.base_model_status.clear()
    return new_app_test(workspace)


def _no_exception(at: AppTest) -> None:
    assert_page_ok(at, errors_allowed=True)


def _adapter_names(at: AppTest) -> list[str]:
    return sorted(at.dataframe[0].value["Adapter"]) if at.dataframe else []


def test_the_chooser_starts_on_the_demo_model_and_lists_the_workspace_adapters_base_model(
    monkeypatch, tmp_path, built, workspace
):
    at = _app(monkeypatch, tmp_path, workspace).switch_page(ADAPTERS_PAGE).run()
    _no_exception(at)
    chooser = at.selectbox(key="base_model")
    assert chooser.value == DEMO_BASE_MODEL
    assert str(built["model"]) in chooser.options
    assert _adapter_names(at) == []  # the causal adapters are not made for MiniLM
    assert any("2 adapter(s) made for other base models are hidden" in i.value for i in at.info)
    assert any("Sequence classification" in c.value for c in at.sidebar.caption)

    chooser.set_value(str(built["model"])).run()
    _no_exception(at)
    assert _adapter_names(at) == ["copy-lora", "reverse-lora"]
    assert any("Causal LM" in c.value and str(built["model"]) in c.value for c in at.sidebar.caption)
    # training (classification on the demo model) is not offered for a causal base model
    assert any("trained elsewhere and imported" in c.value for c in at.caption)
    assert not [b for b in at.button if b.key == "adapters_train"]


def test_mergescope_base_model_sets_the_default_and_another_folder_can_be_typed(monkeypatch, tmp_path, built, workspace):
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page(ADAPTERS_PAGE).run()
    _no_exception(at)
    assert at.selectbox(key="base_model").value == str(built["model"])
    assert _adapter_names(at) == ["copy-lora", "reverse-lora"]

    from pages._ui import OTHER_BASE_MODEL

    at.selectbox(key="base_model").set_value(OTHER_BASE_MODEL).run()
    at.text_input(key="base_model_other").set_value(str(tmp_path / "no-such-model")).run()
    _no_exception(at)
    errors = [e.value for e in at.sidebar.error]
    assert errors and str(tmp_path / "no-such-model") in errors[0], "a missing model says which folder was searched"
    at.text_input(key="base_model_other").set_value(str(built["model"])).run()
    assert _adapter_names(at) == ["copy-lora", "reverse-lora"] and not at.sidebar.error


def test_the_adapters_page_attaches_an_eval_file_and_refuses_a_bad_one(monkeypatch, tmp_path, built, workspace):
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page(ADAPTERS_PAGE).run()
    _no_exception(at)
    table = at.dataframe[0].value
    assert set(table["Evaluation file"]) == {"—"}

    at.selectbox(key="adapters_eval_adapter").set_value("reverse-lora").run()
    at.text_input(key="adapters_eval_path").set_value(str(built["evals"]["reverse"])).run()
    at.button(key="adapters_eval_attach").click().run()
    _no_exception(at)
    assert any("**reverse-lora** is now scored on **reverse**" in s.value for s in at.success)
    table = at.dataframe[0].value
    assert dict(zip(table["Adapter"], table["Evaluation file"])) == {"copy-lora": "—", "reverse-lora": "reverse"}
    stored = json.loads((workspace / "evals.json").read_text())["reverse-lora"]
    assert (workspace / "tasks" / stored).read_bytes() == built["evals"]["reverse"].read_bytes()
    assert any("Now scored on" in c.value and stored in c.value for c in at.caption)

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    at.selectbox(key="adapters_eval_adapter").set_value("copy-lora").run()
    at.text_input(key="adapters_eval_path").set_value(str(bad)).run()
    at.button(key="adapters_eval_attach").click().run()
    _no_exception(at)
    errors = [e.value for e in at.error]
    assert errors and "broken.jsonl" in errors[0] and "line 2" in errors[0]
    assert list(json.loads((workspace / "evals.json").read_text())) == ["reverse-lora"]

    at.selectbox(key="adapters_eval_adapter").set_value("reverse-lora").run()
    at.button(key="adapters_eval_detach").click().run()
    _no_exception(at)
    assert set(at.dataframe[0].value["Evaluation file"]) == {"—"}


def test_data_parameter_interference_reads_the_attached_prompts(monkeypatch, tmp_path, built, workspace):
    from merging.store.workspace import attach_eval_file
    from tests.conftest import wait_for_job

    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/interference.py")
    at.run()
    _no_exception(at)
    assert any("Attach an evaluation file" in e.value for e in at.error), "no task, no inputs: the page says what to do"

    for task in ("copy", "reverse"):
        attach_eval_file(workspace, f"{task}-lora", built["evals"][task])
    at.run()
    _no_exception(at)
    assert any("read its prompts" in c.value for c in at.caption)
    at.button(key="interference_features_run").click().run()
    at = wait_for_job(at, "interference_features")
    _no_exception(at)
    heatmaps = [c for c in at.get("plotly_chart") if "Data-parameter interference" in c.proto.spec]
    assert heatmaps, "the heatmap is drawn"
    spec = json.loads(heatmaps[0].proto.spec)
    matrix = [[10.0 ** z for z in row] for row in spec["data"][0]["z"]]  # the colour is log₁₀ of the ratio
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    # row i, column i: ‖ΔWᵢXᵢᵀ‖ / ‖ΔWᵢXᵢᵀ‖ = 1; off the diagonal another, positive ratio
    assert matrix[0][0] == pytest.approx(1.0) and matrix[1][1] == pytest.approx(1.0)
    assert 0 < matrix[0][1] != pytest.approx(1.0) and 0 < matrix[1][0] != pytest.approx(1.0)
    assert any("this matrix needs each classification task's own head" in i.value for i in at.info)
    # each task's inputs are its file's prompts: one row of module inputs per prompt
    cache = at.session_state["interference_features_cache"]
    rows = {key[1]: len(built["evals"][key[1]].read_text().splitlines()) for key in cache}
    assert set(rows) == {"copy", "reverse"}
    for key, features in cache.items():
        assert {f.means.shape[0] for f in features.values()} == {rows[key[1]]}


def test_a_sweep_over_causal_adapters_shows_exact_match_and_loss_as_evaluate_gives_them(
    monkeypatch, tmp_path, built, workspace
):
    from merging.adapters.lora import load_adapter
    from merging.lab.lab import Lab
    from merging.recipe.codec import recipe_from_dict
    from merging.store.workspace import attach_eval_file
    from tests.conftest import wait_for_job

    stored = {task: attach_eval_file(workspace, f"{task}-lora", built["evals"][task]) for task in ("copy", "reverse")}
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/sweep.py").run()
    _no_exception(at)
    assert at.multiselect(key="sweep_adapters").value == ["copy-lora", "reverse-lora"]
    at.number_input(key="sweep_start").set_value(0.5)
    at.number_input(key="sweep_stop").set_value(1.0)
    at.number_input(key="sweep_points").set_value(2)
    at.button(key="sweep_run").click().run()
    at = wait_for_job(at, "sweep")
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Best average merged exact match") for label in labels), labels
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("Merged exact match over" in t for t in titles) and any("Merged loss over" in t for t in titles)
    table = at.dataframe[0].value

    # the same points from the library, on the recipe the page stored: exact match and loss per task
    recipe = recipe_from_dict({
        "adapters": [{"path": str(workspace / "adapters" / f"{t}-lora"), "name": f"{t}-lora",
                      "eval": str(stored[t]), "task": t} for t in ("copy", "reverse")],
        "base_model": str(built["model"]), "device": "cpu",
    })
    lab = Lab(str(built["model"]), device="cpu")
    adapters = [load_adapter(workspace / "adapters" / f"{t}-lora") for t in ("copy", "reverse")]
    for lam, result in lab.sweep(adapters, recipe, [[0.5, 0.5], [1.0, 1.0]]):
        row = table[(table["λ"] == lam[0]) & (table["init"] == "standard")].iloc[0]
        for task, scores in result.to_dict()["tasks"].items():
            assert row[task] == round(scores["merged"], 4)
            assert row[f"{task} loss"] == round(scores["loss"]["merged"], 4)
            assert row[f"{task} perplexity"] == round(math.exp(scores["loss"]["merged"]), 3)
    # the stored runs' recipes name the base model and the evaluation files: they re-run from the CLI
    from merging.store.runs import RunStore

    stored_runs = RunStore(workspace / "runs.sqlite").list(kind="sweep")
    assert len(stored_runs) == 2  # standard and its OSRM post-hoc overlay
    for run in stored_runs:
        assert run.recipe["base_model"] == str(built["model"])
        assert [a["eval"] for a in run.recipe["adapters"]] == [str(stored["copy"]), str(stored["reverse"])]

    # the Runs page names the metric and draws the loss beside it, for the comparison and the sweep
    at.switch_page("pages/runs.py").run()
    _no_exception(at)
    assert set(at.dataframe[0].value["metric"]) == {"exact match"}
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any("Merged exact match of the selected runs" in t for t in titles), titles
    assert any("Merged loss of the selected runs" in t for t in titles), titles
    assert any("Merged exact match over" in t for t in titles) and any("Merged loss over" in t for t in titles)


def test_reopening_a_causal_run_in_merge_switches_the_sidebar_to_its_base_model(monkeypatch, tmp_path, built, workspace):
    from merging.store.runs import RunStore
    from merging.store.workspace import attach_eval_file

    stored = attach_eval_file(workspace, "copy-lora", built["evals"]["copy"])
    recipe = {"adapters": [{"path": str(workspace / "adapters" / "copy-lora"), "name": "copy-lora", "weight": 0.5,
                            "eval": str(stored), "task": "copy"}], "method": "task_arithmetic", "device": "cpu"}
    run_id = RunStore(workspace / "runs.sqlite").add(recipe, {"tasks": {}, "average": {}}, {}, "cpu", 0.1)
    at = _app(monkeypatch, tmp_path, workspace).switch_page("pages/runs.py").run()  # the sidebar on MiniLM
    _no_exception(at)
    assert at.selectbox(key="base_model").value == DEMO_BASE_MODEL
    at.selectbox(key="runs_detail").set_value(run_id).run()
    at.button(key="runs_reopen").click().run()
    _no_exception(at)
    assert at.selectbox(key="base_model").value == str(built["model"])  # named by the adapter's config
    assert at.multiselect(key="merge_adapters").value == ["copy-lora"]
    assert at.slider(key="weight:copy-lora").value == 0.5


@pytest.mark.parametrize("page", ["merge", "sweep"])
def test_a_share_link_naming_another_base_model_switches_the_sidebar_to_it(monkeypatch, tmp_path, built, workspace, page):
    from merging.recipe.codec import Recipe

    recipe = Recipe.from_dict({"adapters": [{"path": str(workspace / "adapters" / "reverse-lora"), "name": "reverse-lora",
                                             "weight": 0.5}], "method": "ties", "parameters": {"density": 0.4},
                               "base_model": str(built["model"]), "device": "cpu"})
    at = _app(monkeypatch, tmp_path, workspace)  # a new session: the sidebar starts on MiniLM
    at.query_params["recipe"] = recipe.to_url()
    at.switch_page(f"pages/{page}.py").run()
    for _ in range(2):  # the link is read once: a rerun keeps what it set
        _no_exception(at)
        assert not at.main.warning, [w.value for w in at.main.warning]  # (the sidebar says there is no zoo)
        assert at.selectbox(key="base_model").value == str(built["model"])
        assert at.multiselect(key=f"{page}_adapters").value == ["reverse-lora"]
        assert at.session_state[f"{page}_method"] == "ties"
        assert at.slider(key=f"{page}_param:ties:density").value == 0.4
        if page == "merge":
            assert at.slider(key="weight:reverse-lora").value == 0.5
        at.run()


def test_a_causal_merge_on_the_merge_page_is_stored_with_its_recipe_and_exports_a_full_model(
    monkeypatch, tmp_path, built, workspace
):
    import torch
    from transformers import AutoModelForCausalLM

    from merging.store.runs import RunStore
    from merging.store.workspace import attach_eval_file
    from tests.conftest import wait_for_job

    for task in ("copy", "reverse"):
        attach_eval_file(workspace, f"{task}-lora", built["evals"][task])
    at = _app(monkeypatch, tmp_path, workspace, base_model=str(built["model"])).switch_page("pages/merge.py").run()
    _no_exception(at)
    at.button(key="merge_run").click().run()
    at = wait_for_job(at, "merge")
    _no_exception(at)
    assert not at.error, [e.value for e in at.error]
    assert any(m.label == "Average merged exact match" for m in at.metric)
    table = at.dataframe[0].value
    assert list(table["task"]) == ["copy", "reverse"] and set(table["metric"]) == {"exact_match"}
    assert table["loss single"].notna().all() and (table["loss single"] < table["loss base"]).all()
    (run,) = RunStore(workspace / "runs.sqlite").list()
    assert run.recipe["base_model"] == str(built["model"])
    assert [a["task"] for a in run.recipe["adapters"]] == ["copy", "reverse"]

    out = tmp_path / "merged-model"
    at.text_input(key="export_full_dir").set_value(str(out)).run()
    at.button(key="export_full").click().run()
    at = wait_for_job(at, "merge-export")
    _no_exception(at)
    assert any("Wrote the full model" in s.value for s in at.success), [e.value for e in at.error]
    # the folder loads with transformers alone and holds base + ΔW₁ + ΔW₂ (λ = 1 each, plain torch)
    exported = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(built["model"]))
    from merging.adapters.lora import load_adapter

    name = "model.layers.0.self_attn.q_proj"
    expected = base.get_submodule(name).weight.detach().clone()
    for task in ("copy", "reverse"):
        module = load_adapter(built["adapters"][task]).modules[name]
        expected += module.scale * module.B @ module.A
    assert torch.allclose(exported.get_submodule(name).weight, expected, atol=1e-5)
