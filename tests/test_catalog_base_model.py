"""The dashboard works on one base model at a time: the catalogue says each adapter's base model,
keeps the adapters of the chosen one, and the workspace keeps an evaluation file per adapter."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from merging.adapters.lora import save_adapter
from merging.lab import catalog
from merging.models.base import DEMO_BASE_MODEL
from merging.recipe.codec import recipe_from_dict
from merging.store.workspace import (
    EVALS_FILE,
    WorkspaceError,
    attach_eval_file,
    attached_eval_files,
    detach_eval_file,
    remove_adapter,
)
from tests.conftest import TWO_LAYERS, random_adapter

PROMPTS = '{"prompt": "copy: a b", "completion": " a b"}\n{"prompt": "copy: c", "completion": " c"}\n'


def _write(folder: Path, name: str, seed: int = 0, meta_base: str | None = None, config_base: str | None = None):
    adapter = random_adapter(name, TWO_LAYERS, seed=seed)
    adapter = replace(adapter, meta={"task": name, **({"base_model": meta_base} if meta_base else {})},
                      base_model=config_base)
    return save_adapter(adapter, folder / name)


@pytest.fixture
def workspace(tmp_path) -> Path:
    model = tmp_path / "models" / "Qwen2-0.5B"
    model.mkdir(parents=True)
    adapters = tmp_path / "ws" / "adapters"
    _write(adapters, "demo-a", 1, meta_base=DEMO_BASE_MODEL)
    _write(adapters, "qwen-hub", 2, config_base="Qwen/Qwen2-0.5B")
    _write(adapters, "qwen-local", 3, config_base=str(model))
    _write(adapters, "llama", 4, config_base="meta-llama/Llama-3.2-1B")
    _write(adapters, "unknown", 5)
    return tmp_path / "ws"


def test_each_entry_says_its_base_model_from_mergescope_json_first_then_the_peft_config(workspace):
    by_name = {e.name: e for e in catalog.catalog(workspace, None)}
    assert by_name["demo-a"].base_model == DEMO_BASE_MODEL
    assert by_name["qwen-hub"].base_model == "Qwen/Qwen2-0.5B"
    assert by_name["unknown"].base_model is None


def test_a_hub_id_and_a_local_folder_named_after_it_are_the_same_base_model(workspace):
    folder = str(workspace.parent / "models" / "Qwen2-0.5B")
    assert catalog.same_base_model("Qwen/Qwen2-0.5B", folder)
    assert catalog.same_base_model(folder + "/", folder)
    assert not catalog.same_base_model("Qwen/Qwen2-1.5B", folder)
    assert not catalog.same_base_model("meta-llama/Llama-3.2-1B", "Qwen/Qwen2-0.5B")


def test_filtering_by_base_model_keeps_its_adapters_and_those_that_do_not_say(workspace):
    entries = catalog.catalog(workspace, None)
    qwen = catalog.for_base_model(entries, "Qwen/Qwen2-0.5B")
    assert [e.name for e in qwen] == ["qwen-hub", "qwen-local", "unknown"]
    demo = catalog.for_base_model(entries, DEMO_BASE_MODEL)
    assert [e.name for e in demo] == ["demo-a", "unknown"]


def test_the_choices_list_the_default_first_and_each_named_model_once(workspace):
    choices = catalog.base_model_choices(catalog.catalog(workspace, None), DEMO_BASE_MODEL)
    assert choices[0] == DEMO_BASE_MODEL
    assert len(choices) == 3  # the demo, one Qwen (hub id and its local copy are one), Llama
    assert "meta-llama/Llama-3.2-1B" in choices
    assert sum(catalog.same_base_model(c, "Qwen/Qwen2-0.5B") for c in choices) == 1


def test_a_chosen_base_model_is_written_into_a_recipe_that_names_none(workspace):
    recipe = recipe_from_dict({"adapters": [{"path": str(workspace / "adapters" / "llama")}]})
    assert catalog.with_base_model(recipe, DEMO_BASE_MODEL, DEMO_BASE_MODEL).base_model is None
    assert catalog.with_base_model(recipe, "/m/llama", DEMO_BASE_MODEL).base_model == "/m/llama"
    named = replace(recipe, base_model="/m/other")
    assert catalog.with_base_model(named, "/m/llama", DEMO_BASE_MODEL).base_model == "/m/other"


def test_an_attached_eval_file_is_stored_in_tasks_and_listed_with_its_adapter(workspace, tmp_path):
    source = tmp_path / "math.jsonl"
    source.write_text(PROMPTS, encoding="utf-8")
    stored = attach_eval_file(workspace, "qwen-hub", source)
    assert stored.parent == workspace / "tasks" and stored.read_text(encoding="utf-8") == PROMPTS
    assert stored.name.startswith("math-") and stored.suffix == ".jsonl"
    assert attached_eval_files(workspace) == {"qwen-hub": stored}
    by_name = {e.name: e for e in catalog.catalog(workspace, None)}
    assert by_name["qwen-hub"].eval_file == stored and by_name["llama"].eval_file is None
    detach_eval_file(workspace, "qwen-hub")
    assert attached_eval_files(workspace) == {} and stored.is_file()  # the file stays for stored runs


def test_an_upload_is_attached_from_its_bytes_and_replaces_the_previous_attachment(workspace, tmp_path):
    first = tmp_path / "a.jsonl"
    first.write_text(PROMPTS, encoding="utf-8")
    attach_eval_file(workspace, "llama", first)
    second = attach_eval_file(workspace, "llama", PROMPTS.replace("copy", "echo").encode(), file_name="b.jsonl")
    assert attached_eval_files(workspace) == {"llama": second}
    assert json.loads((workspace / EVALS_FILE).read_text()) == {"llama": second.name}


def test_a_bad_eval_file_is_refused_naming_the_file_and_nothing_is_attached(workspace):
    with pytest.raises(ValueError, match="bad.jsonl"):
        attach_eval_file(workspace, "llama", b'{"prompt": "x"\n', file_name="bad.jsonl")
    with pytest.raises(WorkspaceError, match="no adapter named 'nope'"):
        attach_eval_file(workspace, "nope", PROMPTS.encode(), file_name="a.jsonl")
    with pytest.raises(WorkspaceError, match="unsupported file type '.txt'"):
        attach_eval_file(workspace, "llama", b"hello", file_name="a.txt")
    assert attached_eval_files(workspace) == {}
    assert not list((workspace / "tasks").glob("bad*")) if (workspace / "tasks").exists() else True


def test_a_damaged_evals_json_reads_as_no_attachments_and_cannot_point_outside_tasks(workspace):
    (workspace / EVALS_FILE).write_text("[1]")
    assert attached_eval_files(workspace) == {}
    (workspace / "secret.jsonl").write_text(PROMPTS)
    (workspace / EVALS_FILE).write_text(json.dumps({"llama": "../secret.jsonl"}))
    assert attached_eval_files(workspace) == {}


def test_removing_an_adapter_drops_its_attachment(workspace):
    attach_eval_file(workspace, "llama", PROMPTS.encode(), file_name="a.jsonl")
    remove_adapter(workspace, "llama")
    assert attached_eval_files(workspace) == {}


def test_attached_eval_files_are_written_into_the_recipe_unless_it_names_its_own(workspace, tmp_path):
    stored = attach_eval_file(workspace, "llama", PROMPTS.encode(), file_name="math.jsonl")
    entries = catalog.catalog(workspace, None)
    recipe = recipe_from_dict({"adapters": [
        {"path": str(workspace / "adapters" / "llama"), "name": "llama"},
        {"path": str(workspace / "adapters" / "qwen-hub"), "name": "qwen-hub"},
        {"path": str(workspace / "adapters" / "unknown"), "name": "unknown", "eval": "mine.jsonl", "task": "t"},
    ]})
    completed = catalog.with_eval_files(recipe, entries)
    assert (completed.adapters[0].eval, completed.adapters[0].task) == (str(stored), "math")
    assert completed.adapters[1].eval is None
    assert (completed.adapters[2].eval, completed.adapters[2].task) == ("mine.jsonl", "t")


def test_a_hub_id_is_the_same_model_as_its_snapshot_in_the_local_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (snapshot / "model.safetensors").write_bytes(b"")
    (snapshot / "tokenizer.json").write_text("{}")
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    kind, folder = catalog.base_model_summary("org/tiny")
    assert kind == "causal" and folder == snapshot
    assert catalog.same_base_model("org/tiny", str(snapshot))
