"""merging.lab.catalog: the adapter catalogue tolerates broken folders; a recipe's `osrm` mode and base
model are resolved from the recipe and the folders alone."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import save_adapter
from merging.lab import catalog
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter


def _write(folder: Path, name: str, task: str | None, init: str = "standard", seed: int = 0, **meta) -> Path:
    adapter = random_adapter(name, TWO_LAYERS, seed=seed)
    adapter = replace(adapter, meta={**({"task": task} if task else {}), "init": init, **meta})
    return save_adapter(adapter, folder / name)


@pytest.fixture
def workspace(tmp_path) -> Path:
    adapters = tmp_path / "adapters"
    _write(adapters, "spam-standard", "spam", seed=1, base_model="tiny")
    _write(adapters, "spam-osrm", "spam", "osrm", seed=2, base_model="tiny")
    _write(adapters, "topic-standard", "topic", seed=3, base_model="tiny")
    return tmp_path


def test_the_catalogue_lists_a_broken_adapter_with_its_error_instead_of_raising(workspace):
    broken = _write(workspace / "adapters", "list-meta", "spam", seed=4)
    (broken / "mergescope.json").write_text("[1]")
    not_json = _write(workspace / "adapters", "bad-json", "spam", seed=5)
    (not_json / "adapter_config.json").write_text("{")
    no_weights = _write(workspace / "adapters", "no-weights", "spam", seed=6)
    (no_weights / "adapter_model.safetensors").unlink()
    (workspace / "adapters" / ".staging.abc").mkdir()  # an import in progress: not listed

    (workspace / "adapters" / "no-config").mkdir()

    entries = catalog.catalog(workspace, None)
    by_name = {e.name: e for e in entries}
    assert set(by_name) == {"spam-standard", "spam-osrm", "topic-standard", "list-meta", "bad-json", "no-weights",
                            "no-config"}
    assert by_name["list-meta"].error == f"{broken / 'mergescope.json'}: expected a JSON object, got list"
    assert by_name["bad-json"].error.startswith(f"{not_json / 'adapter_config.json'}: not valid JSON")
    assert by_name["no-weights"].error == f"{no_weights}: missing adapter_model.safetensors"
    assert "missing adapter_config.json" in by_name["no-config"].error
    assert [e.name for e in catalog.usable(entries)] == ["spam-osrm", "spam-standard", "topic-standard"]
    assert by_name["spam-osrm"].init == "osrm" and by_name["spam-osrm"].task == "spam"


def test_the_catalogue_refuses_the_config_and_mergescope_json_fields_that_load_adapter_refuses(workspace):
    """Parsing is not enough: an adapter the catalogue offers must not fail only when merged."""
    from merging.adapters.lora import AdapterError, load_adapter

    adapters = workspace / "adapters"
    bad_alpha = _write(adapters, "bad-alpha", "spam", seed=4)
    config = json.loads((bad_alpha / "adapter_config.json").read_text())
    (bad_alpha / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": "sixteen"}))
    dora = _write(adapters, "dora", "spam", seed=5)
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    bad_meta = _write(adapters, "bad-meta", "spam", seed=6)
    (bad_meta / "mergescope.json").write_text('{"task": 5}')

    by_name = {e.name: e for e in catalog.catalog(workspace, None)}
    assert "field 'lora_alpha'" in by_name["bad-alpha"].error and "'sixteen'" in by_name["bad-alpha"].error
    assert "DoRA" in by_name["dora"].error
    assert "field 'task' must be a string" in by_name["bad-meta"].error
    for name in ("bad-alpha", "dora", "bad-meta"):
        assert str(adapters / name) in by_name[name].error  # the file is named
        with pytest.raises(AdapterError):
            load_adapter(adapters / name)
    assert {e.name for e in catalog.usable(by_name.values())} == {"spam-osrm", "spam-standard", "topic-standard"}


def test_a_broken_adapter_is_never_anyones_twin(workspace):
    broken = _write(workspace / "adapters", "topic-osrm", "topic", "osrm", seed=7)
    (broken / "mergescope.json").write_text("[1]")
    entries = catalog.catalog(workspace, None)
    topic = catalog.entry_by_name(entries, "topic-standard")
    assert catalog.twin_of(entries, topic) is None
    assert catalog.twin_path(topic.path) is None


def test_twins_are_found_among_the_adapters_of_the_same_folder(workspace):
    spam = workspace / "adapters" / "spam-standard"
    assert catalog.twin_path(spam).name == "spam-osrm"
    assert catalog.twin_path(workspace / "adapters" / "spam-osrm").name == "spam-osrm"  # its own twin
    assert catalog.twin_path(workspace / "adapters" / "topic-standard") is None


def test_twins_in_a_zoo_come_from_its_manifest(tmp_path):
    zoo = tmp_path / "zoo"
    _write(zoo, "a-standard", "spam")
    _write(zoo, "b-osrm", "spam", "osrm")  # a folder name that does not say it is the twin
    manifest = {
        "base_model": "tiny", "tasks": [{"name": "spam", "labels": ["ham", "spam"]}],
        "adapters": [{"name": "a-standard", "task": "spam", "init": "standard", "path": "a-standard"},
                     {"name": "b-osrm", "task": "spam", "init": "osrm", "path": "b-osrm"}],
    }
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    assert catalog.twin_path(zoo / "a-standard").path == (zoo / "b-osrm").resolve()


def test_resolve_inputs_applies_each_osrm_mode(workspace):
    adapters = workspace / "adapters"
    recipe = recipe_from_dict({
        "adapters": [{"path": str(adapters / "spam-standard")}, {"path": str(adapters / "topic-standard")}],
        "osrm": "twins",
    })
    inputs = catalog.resolve_inputs(recipe)
    assert inputs.names == ["spam-osrm", "topic-standard"]
    assert inputs.twins == {"spam-standard": "spam-osrm"}
    assert inputs.pending_posthoc == [1]  # no twin: projected post-hoc, as the dashboard always did
    assert inputs.base_model == "tiny"

    off = catalog.resolve_inputs(replace(recipe, osrm="off"))
    assert off.names == ["spam-standard", "topic-standard"] and not off.twins and not off.pending_posthoc

    posthoc = catalog.resolve_inputs(replace(recipe, osrm="posthoc"))
    assert posthoc.names == ["spam-standard", "topic-standard"] and posthoc.pending_posthoc == [0, 1]


def test_project_posthoc_swaps_in_the_labs_projection_for_the_pending_adapters_only(workspace):
    adapters = workspace / "adapters"
    recipe = recipe_from_dict({
        "adapters": [{"path": str(adapters / "spam-standard")}, {"path": str(adapters / "topic-standard")}],
        "osrm": "twins",
    })

    class FakeLab:  # stands in for the base model: marks what it projected
        def posthoc_osrm(self, adapters):
            return [replace(a, name=f"{a.name}-posthoc") for a in adapters]

    inputs = catalog.project_posthoc(catalog.resolve_inputs(recipe), FakeLab())
    assert inputs.names == ["spam-osrm", "topic-standard-posthoc"]
    assert inputs.posthoc == ["topic-standard"] and inputs.pending_posthoc == []


def test_one_adapter_is_not_projected_and_the_inputs_say_so(workspace):
    recipe = recipe_from_dict({"adapters": [str(workspace / "adapters" / "topic-standard")], "osrm": "posthoc"})
    inputs = catalog.merge_inputs(recipe, lab_for=None)
    assert inputs.pending_posthoc == [] and "at least two adapters" in inputs.notes[0]


def test_the_base_model_comes_from_the_recipe_then_the_adapters_then_the_fallback(workspace):
    adapters = workspace / "adapters"
    recipe = recipe_from_dict({"adapters": [str(adapters / "spam-standard")]})
    loaded = catalog.resolve_inputs(recipe).adapters
    assert catalog.resolve_base_model(recipe, loaded) == "tiny"
    assert catalog.resolve_base_model(replace(recipe, base_model="other"), loaded) == "other"
    anonymous = [replace(a, meta={}, base_model=None) for a in loaded]
    assert catalog.resolve_base_model(recipe, anonymous, fallback="zoo-model") == "zoo-model"
    with pytest.raises(ValueError, match="set the recipe's 'base_model'"):
        catalog.resolve_base_model(recipe, anonymous)
    mixed = [loaded[0], replace(loaded[0], meta={"base_model": "elsewhere"})]
    with pytest.raises(ValueError, match="different base models: elsewhere, tiny"):
        catalog.resolve_base_model(recipe, mixed)


def test_results_key_changes_with_the_recipe_and_the_adapters_version_not_the_device(workspace):
    adapters = workspace / "adapters"
    recipe = recipe_from_dict({"adapters": [str(adapters / "spam-standard")], "method": "ties", "device": "cpu"})
    key = catalog.results_key(recipe, grid=[[1.0]])
    assert catalog.results_key(replace(recipe, device="auto"), grid=[[1.0]]) == key
    assert catalog.results_key(recipe, grid=[[0.5]]) != key
    assert catalog.results_key(replace(recipe, parameters={"density": 0.2}), grid=[[1.0]]) != key
    weights = adapters / "spam-standard" / "adapter_model.safetensors"
    stat = weights.stat()
    import os

    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # retrained in place
    assert catalog.results_key(recipe, grid=[[1.0]]) != key


def test_merged_twins_differ_from_the_listed_adapters(workspace):
    """A twins recipe really merges the twin's weights (not just renames them)."""
    adapters = workspace / "adapters"
    listed = recipe_from_dict({"adapters": [str(adapters / "spam-standard")], "osrm": "twins"})
    twin = catalog.resolve_inputs(listed).adapters[0]
    plain = catalog.resolve_inputs(replace(listed, osrm="off")).adapters[0]
    name = next(iter(TWO_LAYERS))
    assert not torch.equal(twin.modules[name].A, plain.modules[name].A)


def test_a_plain_merge_needs_no_base_model_but_a_projection_does(tmp_path):
    paths = [str(_write(tmp_path, name, task)) for name, task in (("x", "spam"), ("y", "topic"))]
    plain = recipe_from_dict({"adapters": paths})
    assert catalog.merge_inputs(plain).base_model is None  # the factors alone define a merge
    with pytest.raises(ValueError, match="set the recipe's 'base_model'"):
        catalog.merge_inputs(replace(plain, osrm="posthoc"), lab_for=lambda name: None)
    with pytest.raises(ValueError, match="field 'base_model'"):  # checked on every merge (merging.models.base_check)
        catalog.resolve_inputs(replace(plain, base_model="tiny", osrm="posthoc"))
    base = tmp_path / "tiny"
    base.mkdir()
    (base / "config.json").write_text("{}")
    assert catalog.resolve_inputs(replace(plain, base_model=str(base), osrm="posthoc")).base_model == str(base)
