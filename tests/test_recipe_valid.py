"""A Recipe is valid when it is made: the constructor refuses what `from_dict` refuses, naming the field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from merging.methods import MethodError
from merging.methods.do_merging import DoMergingOptions
from merging.recipe.codec import AdapterRef, Recipe, RecipeError, WeightOverride, recipe_from_dict

ONE = (AdapterRef(path="zoo/a", name="a"),)


def test_the_issue_example_is_refused_naming_a_field():
    with pytest.raises(RecipeError, match=r"field 'adapters'"):
        Recipe(adapters=(), osrm="bogus", device="tpu", rank=-3)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"osrm": "bogus"}, r"field 'osrm': 'bogus' is not allowed"),
        ({"device": "tpu"}, r"field 'device': 'tpu' is not allowed"),
        ({"rank": -3}, r"field 'rank': .* got -3"),
        ({"rank": 2.5}, r"field 'rank': expected a whole number"),
        ({"seed": -1}, r"field 'seed'"),
        ({"seed": "abc"}, r"field 'seed'"),
        ({"dtype": "int8"}, r"field 'dtype'"),
        ({"modules_to_save": "last"}, r"field 'modules_to_save'"),
        ({"base_model": "  "}, r"field 'base_model'"),
        ({"method": "tie"}, r"field 'method': 'tie' is not a method.*did you mean 'ties'"),
        ({"do_merging": DoMergingOptions(steps=-1)}, r"field 'do_merging.steps'"),
        ({"do_merging": DoMergingOptions(lr=0.0)}, r"field 'do_merging.lr'"),
        ({"do_merging": DoMergingOptions(magnitude="median")}, r"field 'do_merging.magnitude'"),
        ({"overrides": (WeightOverride(weights=(1.0, 2.0), match="x"),)}, r"field 'overrides\[0\].weights'"),
        ({"overrides": (WeightOverride(weights=(1.0,), match="("),)}, r"field 'overrides\[0\].match'"),
    ],
)
def test_each_field_is_checked_by_the_constructor(fields, named):
    with pytest.raises(RecipeError, match=named):
        Recipe(adapters=ONE, **fields)


@pytest.mark.parametrize(
    ("ref", "named"),
    [
        (AdapterRef(path=""), r"field 'adapters\[0\].path'"),
        (AdapterRef(path="a", weight=float("nan")), r"field 'adapters\[0\].weight': expected a finite number"),
        (AdapterRef(path="a", weight=True), r"field 'adapters\[0\].weight'"),
        (AdapterRef(path="a", name=""), r"field 'adapters\[0\].name'"),
        (AdapterRef(path="a", dev="d.jsonl"), r"field 'adapters\[0\].dev': a dev file needs"),
        (AdapterRef(path="a", task="t"), r"field 'adapters\[0\].task': a task name needs"),
        (AdapterRef(path="a", parameters={"gamma": 0.1}), r"adapters\[0\].parameters.gamma"),
    ],
)
def test_adapters_are_checked_by_the_constructor(ref, named):
    with pytest.raises(RecipeError, match=named):
        Recipe(adapters=(ref,), method="ties")


def test_per_adapter_values_out_of_range_are_refused_when_made():
    with pytest.raises(RecipeError, match=r"field 'adapters\[0\].parameters.density'"):
        Recipe(adapters=(AdapterRef(path="a", parameters={"density": 3}),), method="ties")


def test_two_adapters_of_one_name_are_refused():
    with pytest.raises(RecipeError, match="two adapters are named 'a'"):
        Recipe(adapters=(AdapterRef(path="x/a"), AdapterRef(path="y/a")))


def test_method_parameters_stay_method_errors_as_before():
    with pytest.raises(MethodError, match=r"parameters\.density"):
        Recipe(adapters=ONE, method="ties", parameters={"density": 5})


def test_replace_is_checked_too():
    recipe = Recipe(adapters=ONE)
    with pytest.raises(RecipeError, match="field 'device'"):
        replace(recipe, device="tpu")


def test_the_same_refusals_as_from_dict():
    """Every case above, given as a dict, is refused by from_dict with the same message."""
    base = {"adapters": [{"path": "zoo/a", "name": "a"}]}
    for key, value in [("osrm", "bogus"), ("device", "tpu"), ("rank", -3), ("seed", -1), ("dtype", "int8")]:
        with pytest.raises(RecipeError) as from_dict:
            recipe_from_dict({**base, key: value})
        with pytest.raises(RecipeError) as made:
            Recipe(adapters=ONE, **{key: value})
        assert str(made.value) == str(from_dict.value)


def test_a_valid_recipe_is_unchanged_by_the_round_trip():
    recipe = Recipe(
        adapters=(AdapterRef(path="zoo/a", name="a", weight=0.5, parameters={"density": 0.3}), AdapterRef(path="zoo/b")),
        method="ties", parameters={"density": 0.4}, rank=4, seed=3, device="cpu", osrm="posthoc",
        overrides=(WeightOverride(weights=(1.0, 0.0), layers=(0,)),),
    )
    assert recipe.parameters == {"density": 0.4, "sign": "total", "divide_by": "count"}
    assert recipe_from_dict(recipe.to_dict()) == recipe
