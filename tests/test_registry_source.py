"""The registry is the one source for everything method-shaped: the methods table in the docs is the
command's output, `--json` describes every parameter, mergekit_config.py has no method table of its
own, and the search reads what it may tune from the registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from merging.cli import main
from merging.methods import REGISTRY, get_method
from merging.methods.table import generated_block

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> str:
    assert main(["methods", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("doc", ["docs/METHODS.md"])
def test_the_docs_methods_table_is_the_commands_output(capsys, doc):
    """Regenerate with `mergescope methods --markdown` when this fails (never edit the table by hand)."""
    printed = run(capsys, "--markdown")
    held = generated_block((ROOT / doc).read_text(encoding="utf-8"))
    assert held is not None, f"{doc} has no generated methods table"
    assert held == printed
    for name in REGISTRY:
        assert f"| `{name}` |" in held


def test_methods_json_gives_each_methods_parameters_and_mergekit_name(capsys):
    data = json.loads(run(capsys, "--json"))
    assert [m["name"] for m in data] == list(REGISTRY)
    della = next(m for m in data if m["name"] == "della")
    assert della["mergekit"] == {"name": "della", "parameters": ["density", "epsilon"]}
    assert della["paper"].startswith("https://arxiv.org/")
    epsilon = next(p for p in della["parameters"] if p["name"] == "epsilon")
    assert epsilon["kind"] == "float" and epsilon["default"] == 0.15 and epsilon["help"]
    assert epsilon["range"] == {"minimum": 0.0, "maximum": 0.5, "exclusive_minimum": False}
    assert epsilon["searchable"] is True and epsilon["per_adapter"] is True
    assert della["rules"] and set(della["rules"][0]["fields"]) == {"density", "epsilon"}
    tsv = next(m for m in data if m["name"] == "tsv")
    assert tsv["mergekit"]["name"] is None and "mergekit" in tsv["mergekit"]["refusal"]
    sign = next(p for p in next(m for m in data if m["name"] == "ties")["parameters"] if p["name"] == "sign")
    assert sign["kind"] == "choice" and sign["choices"] == ["total", "frequency"] and sign["searchable"] is False


def test_the_plain_listing_marks_searchable_parameters(capsys):
    text = run(capsys)
    line = next(line for line in text.splitlines() if line.startswith("della "))
    assert "density*, epsilon*, sign, divide_by" in line and line.rstrip().endswith("della")


def test_every_method_has_a_paper_link_and_searchable_bounds_inside_its_range():
    for method in REGISTRY.values():
        assert method.paper.startswith("https://"), method.name
        for p in method.searchable:
            low, high = p.search
            assert p.kind in ("float", "int") and low < high
            p.validate(low, "low")
            p.validate(high, "high")


def test_mapped_parameters_default_to_mergekits_defaults():
    """mergekit_config.py reads a missing density/gamma/epsilon as the schema's default: these are
    mergekit's (generalized_task_arithmetic.py: density 1.0, gamma 0.01, epsilon 0.15)."""
    mergekit_defaults = {"density": 1.0, "gamma": 0.01, "epsilon": 0.15}
    for method in REGISTRY.values():
        for name in method.mergekit.parameters:
            assert method.param(name).default == mergekit_defaults[name], (method.name, name)


def test_mergekit_config_reads_its_methods_from_the_registry():
    from merging.recipe import mergekit_config

    declared = {m.mergekit.name: m.name for m in REGISTRY.values() if m.mergekit.name is not None}
    assert {name: family.native for name, family in mergekit_config.GTA_METHODS.items()} == declared
    assert set(mergekit_config.SUPPORTED_METHODS) == {"linear", *declared}
    assert "della" in declared and "della_linear" in declared


def test_a_parameter_of_another_method_is_named_with_its_owners():
    import yaml

    from merging.recipe.codec import RecipeError
    from merging.recipe.mergekit_config import recipe_dict_from_mergekit

    text = ("merge_method: ties\nbase_model: base\nparameters: {epsilon: 0.1}\n"
            "models: [{model: base+a, parameters: {weight: 1}}]")
    with pytest.raises(RecipeError, match="'epsilon' belongs to della and della_linear"):
        recipe_dict_from_mergekit(yaml.safe_load(text))


def test_a_rule_names_every_field_it_spans():
    with pytest.raises(ValueError, match=r"parameters\.density = 0\.95 and parameters\.epsilon = 0\.1"):
        get_method("della").validate({"density": 0.95, "epsilon": 0.1})
    assert get_method("della").validate({"density": 0.5, "epsilon": 0.1})["epsilon"] == 0.1


# ----------------------------------------------------------------------------------------------
# The search tunes any parameter the registry marks searchable

ZOO = ROOT / "zoo"
PAIR = ["sms_spam-standard", "movie_sentiment-standard"]


def zoo_recipe(method: str, **parameters):
    from merging.recipe.codec import recipe_from_dict

    return recipe_from_dict({"adapters": [{"path": str(ZOO / n), "name": n} for n in PAIR], "device": "cpu",
                             "method": method, "parameters": parameters})


def test_the_searchable_list_comes_from_the_registry():
    from merging.search.study import searchable_parameters

    for method in REGISTRY.values():
        expected = ("weights", *(p.name for p in method.params if p.search is not None))
        assert searchable_parameters(zoo_recipe(method.name)) == expected
    assert searchable_parameters(zoo_recipe("breadcrumbs")) == ("weights", "density", "gamma")
    assert searchable_parameters(zoo_recipe("tsv")) == ("weights", "fraction")


def test_the_space_takes_the_registrys_bounds_and_the_flags_override_them():
    from merging.search.study import SearchError, space_for

    space = space_for(zoo_recipe("breadcrumbs", density=0.5, gamma=0.02), ("weights", "density", "gamma"))
    assert dict(space.param_bounds) == {"density": (0.1, 1.0), "gamma": (0.0, 0.1)}
    assert space.start["gamma"] == 0.02 and space.start["density"] == 0.5
    tsv = space_for(zoo_recipe("tsv"), ("fraction",), param_bounds={"fraction": (0.2, 0.6)})
    assert dict(tsv.param_bounds) == {"fraction": (0.2, 0.6)} and tsv.start == {"fraction": 0.6}
    with pytest.raises(SearchError, match=r"--param-bounds gamma: must lie within \[0, 1\]"):
        space_for(zoo_recipe("breadcrumbs"), ("gamma",), param_bounds={"gamma": (0.0, 2.0)})
    with pytest.raises(SearchError, match="--params gamma: method 'ties' has no gamma"):
        space_for(zoo_recipe("ties"), ("weights", "gamma"))
    with pytest.raises(SearchError, match="--params: sign is not searchable"):
        space_for(zoo_recipe("ties"), ("sign",))
    with pytest.raises(SearchError, match="--param-bounds epsilon: not searched"):
        space_for(zoo_recipe("della"), ("weights",), param_bounds={"epsilon": (0.0, 0.1)})
    with pytest.raises(SearchError, match="--param-bounds fraction: the fraction must stay above 0"):
        space_for(zoo_recipe("tsv"), ("fraction",), param_bounds={"fraction": (0.0, 0.5)})


def test_a_trial_sets_any_searched_parameter_and_one_breaking_a_rule_fails_without_running():
    from merging.search.study import InProcessBackend, run_study, space_for, trial_recipe

    base = zoo_recipe("della", density=0.5, epsilon=0.1)
    recipe = trial_recipe(base, {"weights.sms_spam-standard": 0.5, "density": 0.3, "epsilon": 0.05})
    assert recipe.parameters["density"] == 0.3 and recipe.parameters["epsilon"] == 0.05 and recipe.weights == [0.5, 1.0]
    space = space_for(base, ("density", "epsilon"), param_bounds={"density": (0.02, 0.2), "epsilon": (0.0, 0.1)})
    assert space.refusal({"density": 0.05, "epsilon": 0.08}) is not None
    assert space.refusal({"density": 0.15, "epsilon": 0.08}) is None
    scored = []

    def objective(params):
        scored.append(dict(params))
        return params["density"] + params["epsilon"], None

    result = run_study(space, 40, InProcessBackend(objective), seed=1)
    assert len(result.outcomes) + len(result.failed) == 40
    assert result.failed, "draws with density ≤ epsilon break the rule"
    assert len(scored) == len(result.outcomes)  # a refused trial never reached the objective
    assert all(p["density"] - p["epsilon"] > 0 and p["density"] + p["epsilon"] < 1 for p in scored)
    assert {"density", "epsilon"} <= set(result.best.params)


def test_the_cli_search_flag_names_the_registrys_searchable_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    out = capsys.readouterr().out
    assert "--param-bounds" in out
    for name in ("density", "gamma", "epsilon", "fraction"):
        assert name in out


# ----------------------------------------------------------------------------------------------
# DO-Merging's options: one schema, read by the options, the Recipe, the pages and the run labels


def test_do_merging_options_take_their_fields_and_defaults_from_the_schema():
    from dataclasses import fields

    from merging.methods.do_merging import SCHEMA, DoMergingOptions
    from merging.recipe.codec import recipe_from_dict

    assert [f.name for f in fields(DoMergingOptions)] == [p.name for p in SCHEMA]
    assert DoMergingOptions().to_dict() == {p.name: p.default for p in SCHEMA}
    recipe = recipe_from_dict({"adapters": ["a"]})
    assert list(recipe.to_dict()["do_merging"]) == [p.name for p in SCHEMA]
    assert all(p.help and p.label for p in SCHEMA)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"steps": 10_001}, r"field 'do_merging.steps': expected a number ≤ 10000"),
        ({"lr": 0}, r"field 'do_merging.lr': expected a number above 0"),
        ({"mu": -1}, r"field 'do_merging.mu': expected a number ≥ 0"),
        ({"magnitude": "median"}, r"field 'do_merging.magnitude': 'median' is not allowed"),
        ({"decouple": "yes"}, r"field 'do_merging.decouple': expected true or false"),
    ],
)
def test_the_recipe_checks_do_merging_against_the_schema(given, message):
    from merging.recipe.codec import RecipeError, recipe_from_dict

    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"adapters": ["a"], "do_merging": given})


def test_the_run_label_fills_in_the_schemas_defaults():
    from merging.store.run_labels import describe_recipe

    label = describe_recipe({"method": "ties", "adapters": [{"name": "a"}], "do_merging": {"orthogonalize": True}})
    assert "DO orthogonalize (50 steps, lr 0.01, μ 1)" in label


def test_the_pages_name_no_do_merging_default_of_their_own():
    """pages/merge.py and pages/_recipe_ui.py read DO-Merging's fields from do_merging.SCHEMA."""
    merge_page = (ROOT / "pages" / "merge.py").read_text(encoding="utf-8")
    codec = (ROOT / "pages" / "_recipe_ui.py").read_text(encoding="utf-8")
    for text in (merge_page, codec):
        assert '"do_steps"' not in text and '"do_lr"' not in text and '"do_mu"' not in text
        assert "MAGNITUDE_RULES" not in text


@pytest.mark.parametrize("value", ["gamma", "=0,1", "gamma=0", "gamma=a,b"])
def test_a_malformed_param_bounds_flag_is_one_line_naming_it(tmp_path, capsys, value):
    from merging.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(zoo_recipe("breadcrumbs").to_json())
    code = main(["search", str(recipe), "--params", "weights,gamma", "--param-bounds", value, "--no-store",
                 "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "--param-bounds" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
