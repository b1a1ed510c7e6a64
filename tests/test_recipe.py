"""Recipe validation: every bad field is named, with what is allowed."""

from __future__ import annotations

import json

import pytest

from merging.recipe import RecipeError, load_recipe, parse_recipe_text, recipe_from_dict

ISSUE_EXAMPLE = {
    "adapters": [{"path": "zoo/a", "weight": 1.0}, {"path": "zoo/b", "weight": 0.5}],
    "method": "ties",
    "density": 0.5,
    "sign": "total",
    "rank": None,
    "seed": 0,
    "device": "auto",
    "do_merging": {"decouple": False, "orthogonalize": False},
}


def test_the_documented_fields_parse_and_round_trip():
    recipe = recipe_from_dict(ISSUE_EXAMPLE)
    assert recipe.method == "ties" and recipe.density == 0.5 and recipe.rank is None
    assert recipe.weights == [1.0, 0.5]
    again = recipe_from_dict(json.loads(recipe.to_json()))
    assert again == recipe


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "tie"}, r"field 'method'.*did you mean 'ties'"),
        ({"density": 1.5}, r"field 'density'"),
        ({"density": 0}, r"field 'density'"),
        ({"sign": "majority"}, r"field 'sign'.*allowed: total, frequency"),
        ({"rank": 0}, r"field 'rank'"),
        ({"rank": 2.5}, r"field 'rank'"),
        ({"device": "tpu"}, r"field 'device'.*allowed: auto, cpu, cuda"),
        ({"adapters": []}, r"field 'adapters'"),
        ({"adapters": [{"weight": 1.0}]}, r"field 'adapters\[0\]\.path'"),
        ({"adapters": [{"path": "x", "weight": "heavy"}]}, r"field 'adapters\[0\]\.weight'"),
        ({"adapters": [{"path": "a/x"}, {"path": "b/x"}]}, r"two adapters are named 'x'"),
        ({"do_merging": {"decouple": "yes"}}, r"field 'do_merging\.decouple'"),
        ({"do_merging": {"magnitude": "median"}}, r"field 'do_merging\.magnitude'"),
        ({"do_merging": {"steps": -1}}, r"field 'do_merging\.steps'"),
        ({"do_merging": {"orthogonalise": True}}, r"unknown field 'do_merging\.orthogonalise'"),
        ({"merge_method": "ties"}, r"unknown field 'merge_method'"),
        ({"overrides": [{"match": "(", "weights": [1, 1]}]}, r"field 'overrides\[0\]\.match'"),
        ({"overrides": [{"layers": [0], "weights": [1]}]}, r"field 'overrides\[0\]\.weights'"),
        ({"seed": True}, r"field 'seed'"),
    ],
)
def test_bad_fields_are_named(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**ISSUE_EXAMPLE, **change})


def test_yaml_and_json_give_the_same_recipe(tmp_path):
    yaml_text = """
adapters:
  - {path: zoo/a, weight: 1.0}
  - {path: zoo/b, weight: 0.5}
method: ties
density: 0.5
"""
    from_yaml = parse_recipe_text(yaml_text)
    from_json = parse_recipe_text(json.dumps({k: ISSUE_EXAMPLE[k] for k in ("adapters", "method", "density")}))
    assert from_yaml == from_json


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(ISSUE_EXAMPLE))
    recipe = load_recipe(tmp_path / "r.json")
    assert recipe.adapters[0].path == str((tmp_path / "zoo" / "a").resolve())


def test_invalid_text_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid JSON or YAML"):
        parse_recipe_text("adapters: [unclosed")
    with pytest.raises(RecipeError, match="must be an object"):
        parse_recipe_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.json")
