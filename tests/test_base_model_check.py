"""The recipe's base_model is checked on every merge, recorded as given, and recipe paths travel
(merging.models.base_check, merging.recipe.codec's path rule)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.engine.merge import run_recipe
from merging.recipe.codec import load_recipe
from tests.peft_fixtures import save_lora


@pytest.fixture()
def folder(tmp_path, monkeypatch) -> Path:
    """Two adapters (trained on "tiny-bert", as their configs say), a base-model folder and an empty HF cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    project = tmp_path / "project"
    save_lora(project / "a", seed=41)
    save_lora(project / "b", seed=42)
    (project / "base").mkdir()
    (project / "base" / "config.json").write_text("{}")
    return project


def write_recipe(path: Path, **fields) -> Path:
    path.write_text(json.dumps({"adapters": ["a", "b"], **fields}))
    return path


def merge(capsys, recipe: Path, out: Path) -> tuple[int, str]:
    code = main(["merge", str(recipe), "--out", str(out)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("base_model", "said"),
    [
        ("/etc", "/etc has no config.json"),
        ("acme/no-such-model", "base model 'acme/no-such-model' not found"),
        ("tiny-bret", "base model 'tiny-bret' not found"),  # a typo of the adapters' own base
        ("a/adapter_config.json", "is a file, not a Hugging Face model folder"),
        ("../nowhere/../x", "no such folder"),
    ],
)
def test_a_base_model_that_is_no_model_folder_and_not_in_the_cache_is_refused_in_one_line(
    folder, capsys, base_model, said
):
    recipe = write_recipe(folder / "recipe.json", base_model=base_model)
    out = folder / "out"
    code, err = merge(capsys, recipe, out)
    assert code == 2 and err.count("\n") == 1 and "base_model" in err and said in err, err
    assert not out.exists()


def test_a_folder_base_is_recorded_as_the_recipe_gives_it_not_copied_from_the_inputs(folder, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: "base" is found beside the recipe
    recipe = write_recipe(folder / "recipe.json", base_model="base")
    code, err = merge(capsys, recipe, folder / "out")
    assert code == 0, err
    expected = str((folder / "base").resolve())
    config = json.loads((folder / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == expected
    assert json.loads((folder / "out" / "mergescope.json").read_text())["recipe"]["base_model"] == expected
    assert load_adapter(folder / "a").base_model == "tiny-bert"  # what the inputs say, not recorded


def test_a_hub_id_in_the_local_cache_is_accepted_and_recorded_as_given(folder, capsys, tmp_path):
    repo = tmp_path / "cache" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    recipe = write_recipe(folder / "hub.json", base_model="acme/tiny")
    code, err = merge(capsys, recipe, folder / "out")
    assert code == 0, err
    assert json.loads((folder / "out" / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny"


def test_without_a_base_model_the_output_takes_the_adapters_own(folder, capsys):
    code, err = merge(capsys, write_recipe(folder / "plain.json"), folder / "out")
    assert code == 0, err
    assert json.loads((folder / "out" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-bert"


def test_recipe_paths_are_relative_to_the_recipe_file_and_the_folder_travels_whole(folder, tmp_path, monkeypatch):
    (folder / "data").mkdir()
    (folder / "data" / "spam.csv").write_text("text,label\nhi,ham\n")
    (folder / "data" / "spam-dev.csv").write_text("text,label\nhello,ham\n")
    data = {"adapters": [{"path": "a", "eval": "data/spam.csv", "dev": "data/spam-dev.csv"}, {"path": "b"}],
            "base_model": "base",
            "method": "ties", "parameters": {"density": 0.5}}
    (folder / "recipe.json").write_text(json.dumps(data))
    monkeypatch.chdir(tmp_path)  # the working folder plays no part
    here = load_recipe(folder / "recipe.json")
    assert [a.path for a in here.adapters] == [str((folder / n).resolve()) for n in "ab"]
    assert here.adapters[0].eval == str((folder / "data" / "spam.csv").resolve())
    assert here.base_model == str((folder / "base").resolve())

    moved = tmp_path / "elsewhere" / "project"
    shutil.copytree(folder, moved)
    there = load_recipe(moved / "recipe.json")
    assert [a.path for a in there.adapters] == [str((moved / n).resolve()) for n in "ab"]
    assert there.base_model == str((moved / "base").resolve())
    first, second = run_recipe(here).adapter.modules, run_recipe(there).adapter.modules
    assert all(bool((first[k].delta("cpu") == second[k].delta("cpu")).all()) for k in first)

    # written back with to_file: paths inside the folder relative again, the same Recipe read back
    for name in ("again.json", "again.yaml"):
        written = here.to_file(folder / name)
        stored = json.loads(written.read_text()) if name.endswith(".json") else None
        if stored is not None:
            assert [a["path"] for a in stored["adapters"]] == ["a", "b"]
            assert stored["adapters"][0]["eval"] == "data/spam.csv" and stored["base_model"] == "base"
            assert stored["adapters"][0]["dev"] == "data/spam-dev.csv"
        assert load_recipe(written) == here
    shutil.copy(folder / "again.json", moved / "again.json")
    assert load_recipe(moved / "again.json") == there
