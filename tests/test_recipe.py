"""The Recipe codec: every bad field is named with what is allowed; every form it writes reads back.

The round trips are hypothesis properties over recipes drawn from the method registry's schemas:
to_dict/from_dict, to_url/from_url, to_json/load_recipe (.json) and to_yaml/load_recipe (.yaml).
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from merging.methods import REGISTRY, Param
from merging.methods.do_merging import MAGNITUDE_RULES, DoMergingOptions
from merging.recipe.codec import (
    DEVICES,
    DTYPES,
    MODULES_TO_SAVE_RULES,
    OSRM_MODES,
    AdapterRef,
    Recipe,
    RecipeError,
    WeightOverride,
    load_recipe,
    parse_recipe_text,
    recipe_from_dict,
    recipe_of_run,
)

ISSUE_EXAMPLE = {
    "adapters": [{"path": "zoo/a", "weight": 1.0}, {"path": "zoo/b", "weight": 0.5}],
    "method": "ties",
    "parameters": {"density": 0.5, "sign": "total"},
    "rank": None,
    "seed": 0,
    "device": "auto",
    "do_merging": {"decouple": False, "orthogonalize": False},
}


def test_the_documented_fields_parse_and_every_parameter_is_written():
    recipe = recipe_from_dict(ISSUE_EXAMPLE)
    assert recipe.method == "ties" and recipe.parameters == {"density": 0.5, "sign": "total", "divide_by": "count"}
    assert recipe.weights == [1.0, 0.5] and recipe.rank is None and recipe.osrm == "off"
    data = recipe.to_dict()
    assert list(data) == [
        "adapters", "method", "parameters", "rank", "seed", "device", "osrm", "base_model", "dtype",
        "modules_to_save", "do_merging", "overrides",
    ]
    assert recipe.modules_to_save == "average"  # the default rule for carried embed_tokens / lm_head
    assert recipe_from_dict(json.loads(recipe.to_json())) == recipe


def test_missing_parameters_take_the_schema_default_and_to_dict_writes_them():
    recipe = recipe_from_dict({"adapters": ["a", "b"], "method": "dare_ties"})
    expected = {p.name: p.default for p in REGISTRY["dare_ties"].params}
    assert recipe.parameters == expected and set(expected) == {"density", "sign", "divide_by"}
    assert recipe.to_dict()["parameters"] == expected


@pytest.mark.parametrize(
    "change, message",
    [
        ({"method": "tie"}, r"field 'method'.*allowed: task_arithmetic.*did you mean 'ties'"),
        ({"parameters": {"density": 1.5}}, r"field 'parameters\.density'.*1\.5"),
        ({"parameters": {"density": 0}}, r"field 'parameters\.density'"),
        ({"parameters": {"densty": 0.5}}, r"parameters.*'densty'.*did you mean 'density'"),
        ({"parameters": {"sign": "majority"}}, r"field 'parameters\.sign'.*'majority'.*allowed: total, frequency"),
        ({"parameters": [0.5]}, r"field 'parameters'"),
        ({"parameters": {}, "density": 5}, r"field 'density'.*5"),  # the old flat key, named as given
        ({"rank": 0}, r"field 'rank'"),
        ({"rank": 2.5}, r"field 'rank'"),
        ({"seed": True}, r"field 'seed'"),
        ({"seed": "abc"}, r"field 'seed'.*'abc'"),
        ({"seed": -1}, r"field 'seed'"),
        ({"device": "tpu"}, r"field 'device'.*'tpu'.*allowed: auto, cpu, cuda"),
        ({"device": "cpus"}, r"did you mean 'cpu'"),
        ({"osrm": "twin"}, r"field 'osrm'.*allowed: off, twins, posthoc.*did you mean 'twins'"),
        ({"osrm": "twins", "osrm_posthoc": True}, r"field 'osrm_posthoc'.*contradicts"),
        ({"dtype": "fp16"}, r"field 'dtype'.*allowed: auto, float32, bfloat16, float16"),
        ({"modules_to_save": "mean"}, r"field 'modules_to_save'.*'mean'.*allowed: average, first"),
        ({"base_model": 3}, r"field 'base_model'"),
        ({"base_model": ""}, r"field 'base_model'"),
        ({"adapters": []}, r"field 'adapters'"),
        ({"adapters": [{"weight": 1.0}]}, r"field 'adapters\[0\]\.path'"),
        ({"adapters": [{"path": "x", "weight": "heavy"}]}, r"field 'adapters\[0\]\.weight'.*'heavy'"),
        ({"adapters": [{"path": "x", "weight": 1e400}]}, r"field 'adapters\[0\]\.weight'.*finite"),
        ({"adapters": [{"path": "x", "weight": 10**400}]}, r"field 'adapters\[0\]\.weight'.*finite"),
        ({"adapters": [{"path": "a/x"}, {"path": "b/x"}]}, r"two adapters are named 'x'"),
        ({"adapters": [{"path": "x", "parameters": {"density": 2}}]}, r"field 'adapters\[0\]\.parameters\.density'"),
        ({"adapters": [{"path": "x", "parameters": {"sign": "total"}}]}, r"adapters\[0\]\.parameters\.sign.*allowed: density"),
        ({"adapters": [{"path": "x", "wieght": 1}]}, r"unknown field 'adapters\[0\]\.wieght'.*did you mean 'weight'"),
        ({"adapters": [{"path": "x", "eval": 3}]}, r"field 'adapters\[0\]\.eval'.*evaluation file"),
        ({"adapters": [{"path": "x", "eval": ""}]}, r"field 'adapters\[0\]\.eval'"),
        ({"adapters": [{"path": "x", "eval": "m.jsonl", "task": ""}]}, r"field 'adapters\[0\]\.task'"),
        ({"adapters": [{"path": "x", "task": "math"}]}, r"field 'adapters\[0\]\.task'.*needs.*'adapters\[0\]\.eval'"),
        ({"do_merging": {"decouple": "yes"}}, r"field 'do_merging\.decouple'"),
        ({"do_merging": {"magnitude": "median"}}, r"field 'do_merging\.magnitude'.*allowed: mean, sum, max"),
        ({"do_merging": {"steps": -1}}, r"field 'do_merging\.steps'"),
        ({"do_merging": {"lr": 0}}, r"field 'do_merging\.lr'"),
        ({"do_merging": {"orthogonalise": True}}, r"unknown field 'do_merging\.orthogonalise'.*did you mean 'orthogonalize'"),
        ({"merge_method": "ties"}, r"unknown field 'merge_method'"),
        ({"overrides": [{"match": "(", "weights": [1, 1]}]}, r"field 'overrides\[0\]\.match'"),
        ({"overrides": [{"layers": [0], "weights": [1]}]}, r"field 'overrides\[0\]\.weights'"),
        ({"overrides": [{"layers": [0], "weights": [1, None]}]}, r"field 'overrides\[0\]\.weights\[1\]'"),
    ],
)
def test_bad_fields_are_named(change, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({**ISSUE_EXAMPLE, **change})


def test_an_unknown_top_level_field_lists_only_the_current_fields():
    with pytest.raises(RecipeError) as caught:
        recipe_from_dict({**ISSUE_EXAMPLE, "methd": "ties"})
    message = str(caught.value)
    assert "did you mean 'method'" in message
    assert "osrm_posthoc" not in message and "knots_inner" not in message  # accepted, not offered


# ----------------------------------------------------------------------------------------------
# The old flat form is read and mapped; the new form never writes it


def test_old_flat_keys_map_onto_the_method_parameters():
    old = {"adapters": ["a", "b"], "method": "knots", "density": 0.3, "sign": "frequency",
           "knots_inner": "ties", "osrm_posthoc": True}
    recipe = recipe_from_dict(old)
    assert recipe.parameters == {"inner": "ties", "density": 0.3, "sign": "frequency"} or (
        recipe.parameters["inner"] == "ties" and recipe.parameters["density"] == 0.3
        and recipe.parameters["sign"] == "frequency"
    )
    assert recipe.osrm == "posthoc"
    written = recipe.to_dict()
    assert not {"density", "sign", "knots_inner", "osrm_posthoc"} & set(written)
    assert recipe_from_dict(written) == recipe


def test_old_stored_runs_wrote_density_and_sign_for_methods_that_take_neither():
    old = {"adapters": ["a"], "method": "task_arithmetic", "density": 1.0, "sign": "total",
           "knots_inner": "task_arithmetic"}
    assert recipe_from_dict(old).parameters == {}


def test_a_value_given_both_ways_must_agree():
    both = {"adapters": ["a"], "method": "ties", "density": 0.3, "parameters": {"density": 0.4}}
    with pytest.raises(RecipeError, match="field 'density': given twice"):
        recipe_from_dict(both)


def test_old_share_links_boolean_osrm_switch_means_twins():
    assert recipe_from_dict({"adapters": ["a"], "osrm": True}).osrm == "twins"
    assert recipe_from_dict({"adapters": ["a"], "osrm": False}).osrm == "off"


def test_a_run_stored_with_the_pages_osrm_switch_reopens_as_twins():
    stored = {"adapters": [{"path": "/z/a-osrm", "name": "a-osrm"}], "method": "ties", "density": 0.5}
    assert recipe_of_run(stored, {"osrm": {"switch": True, "posthoc": []}}).osrm == "twins"
    assert recipe_of_run(stored, {"osrm": {"switch": False}}).osrm == "off"
    assert recipe_of_run({**stored, "osrm": "posthoc"}, {"osrm": {"switch": True}}).osrm == "posthoc"


# ----------------------------------------------------------------------------------------------
# Files: JSON as JSON, YAML 1.2 numbers


def test_json_numbers_with_an_exponent_are_numbers(tmp_path):
    # issue 12: YAML 1.1 read these as strings
    text = json.dumps({"adapters": [{"path": "a", "weight": "PLACEHOLDER"}]}).replace('"PLACEHOLDER"', "5e-1")
    (tmp_path / "r.json").write_text(text.replace("}]}", '}], "do_merging": {"lr": 1e-3, "mu": 1E0}}'))
    recipe = load_recipe(tmp_path / "r.json")
    assert recipe.weights == [0.5]
    assert recipe.do_merging.lr == 1e-3 and recipe.do_merging.mu == 1.0


def test_a_small_lr_written_by_to_json_reads_back(tmp_path):
    recipe = recipe_from_dict({"adapters": [str(tmp_path / "a")], "do_merging": {"lr": 5e-05}})
    assert "5e-05" in recipe.to_json()
    (tmp_path / "r.json").write_text(recipe.to_json())
    assert load_recipe(tmp_path / "r.json") == recipe
    (tmp_path / "r.yaml").write_text(recipe.to_yaml())
    assert load_recipe(tmp_path / "r.yaml") == recipe


@pytest.mark.parametrize("number, value", [("5e-1", 0.5), ("1e-3", 1e-3), ("1E0", 1.0), ("-2.5E+1", -25.0), (".5", 0.5)])
def test_yaml_reads_yaml_1_2_numbers(number, value):
    recipe = parse_recipe_text(f"adapters:\n  - {{path: a, weight: {number}}}\n", syntax="yaml")
    assert recipe.weights == [value]


def test_yaml_1_1_booleans_are_strings_in_yaml_1_2():
    # `osrm: off` is false in YAML 1.1; here it is the mode "off"
    assert parse_recipe_text("adapters: [a]\nosrm: off\n", source="r.yaml").osrm == "off"
    with pytest.raises(RecipeError, match="field 'do_merging.decouple'.*'yes'"):
        parse_recipe_text("adapters: [a]\ndo_merging: {decouple: yes}\n", source="r.yml")


def test_a_json_file_is_not_read_as_yaml(tmp_path):
    (tmp_path / "r.json").write_text("adapters: [a]\n")
    with pytest.raises(RecipeError, match=r"r\.json: not valid JSON"):
        load_recipe(tmp_path / "r.json")


def test_json_refuses_nan_and_infinity(tmp_path):
    (tmp_path / "r.json").write_text('{"adapters": [{"path": "a", "weight": NaN}]}')
    with pytest.raises(RecipeError, match="not valid JSON.*NaN"):
        load_recipe(tmp_path / "r.json")


def test_yaml_and_json_give_the_same_recipe():
    yaml_text = """
adapters:
  - {path: zoo/a, weight: 1.0}
  - {path: zoo/b, weight: 0.5}
method: ties
parameters: {density: 0.5}
"""
    from_yaml = parse_recipe_text(yaml_text, source="r.yaml")
    from_json = parse_recipe_text(json.dumps({k: ISSUE_EXAMPLE[k] for k in ("adapters", "method", "parameters")}))
    assert from_yaml == from_json


def test_yaml_tags_are_never_executed():
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe_text("adapters: !!python/object/apply:os.system ['true']\n", source="r.yaml")


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(ISSUE_EXAMPLE))
    recipe = load_recipe(tmp_path / "r.json")
    assert recipe.adapters[0].path == str((tmp_path / "zoo" / "a").resolve())


def test_invalid_text_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_recipe_text("adapters: [unclosed", source="r.yaml")
    with pytest.raises(RecipeError, match="not valid JSON"):
        parse_recipe_text("{")
    with pytest.raises(RecipeError, match="must be an object"):
        parse_recipe_text("- just\n- a list\n", source="r.yaml")
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.json")
    with pytest.raises(RecipeError, match="a folder"):
        load_recipe(tmp_path)


def test_a_file_error_names_the_file(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({**ISSUE_EXAMPLE, "method": "tie"}))
    with pytest.raises(RecipeError, match=r"r\.json: field 'method'"):
        load_recipe(tmp_path / "r.json")


# ----------------------------------------------------------------------------------------------
# Share links


@pytest.mark.parametrize(
    "value, message",
    [
        ("not json", "not valid JSON"),
        ("[1]", "must be an object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"adapters":[{"name":"a","path":"a","weight":1e999}]}', "finite"),
        ('{"adapters":[{"path":"a"}],"seed":"abc"}', "field 'seed'"),
        ('{"adapters":[{"path":"a"}],"method":"ties","parameters":{"density":5}}', "parameters.density"),
    ],
)
def test_a_bad_share_link_is_one_recipe_error(value, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_url(value)


@pytest.mark.parametrize(
    "value",
    [
        '{"adapters":[{"path":"a","weight":"' + "x" * 100_000 + '"}]}',
        '{"adapters":[{"path":"a"}],"' + "k" * 100_000 + '":1}',
        '{"adapters":[{"path":"a"}],"method":"ties","parameters":{"sign":"' + "s" * 100_000 + '"}}',
    ],
)
def test_a_huge_value_gives_a_short_message(value):
    with pytest.raises(RecipeError) as caught:
        Recipe.from_url(value)
    assert len(str(caught.value)) < 400


# ----------------------------------------------------------------------------------------------
# Round trips: every form the codec writes reads back to the same Recipe

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _param_value(param: Param) -> st.SearchStrategy:
    if param.kind == "bool":
        return st.booleans()
    if param.kind == "choice":
        return st.sampled_from(param.choices)
    if param.kind == "int":
        return st.integers(
            min_value=None if param.minimum is None else math.ceil(param.minimum) + int(param.exclusive_minimum),
            max_value=None if param.maximum is None else int(param.maximum),
        )
    return st.floats(
        min_value=param.minimum, max_value=param.maximum, exclude_min=param.exclusive_minimum,
        allow_nan=False, allow_infinity=False,
    )


def _keeps_rules(method, given: dict) -> bool:
    """The method's rules across parameters hold for these values (defaults filled in)."""
    try:
        method.check_rules({**method.defaults(), **given})
    except ValueError:
        return False
    return True


@st.composite
def recipes(draw) -> Recipe:
    method = REGISTRY[draw(st.sampled_from(list(REGISTRY)))]
    parameters = {p.name: draw(_param_value(p)) for p in method.params if draw(st.booleans())}
    assume(_keeps_rules(method, parameters))  # e.g. DELLA: density ± epsilon inside (0, 1)
    per_adapter = [p for p in method.params if p.per_adapter]
    count = draw(st.integers(1, 4))
    adapters = []
    names = draw(st.lists(_text, min_size=count, max_size=count, unique=True))
    for index in range(count):
        own = {p.name: draw(_param_value(p)) for p in per_adapter if draw(st.booleans())}
        assume(not own or _keeps_rules(method, {**parameters, **own}))
        path = "/" + draw(st.text(string.ascii_letters + string.digits + "-_./ é", min_size=1, max_size=20))
        eval_file = draw(st.one_of(st.none(), st.sampled_from(["/data/math.jsonl", "/d/chat é.jsonl", "/x/spam.csv"])))
        task = draw(st.one_of(st.none(), _text.filter(str.strip))) if eval_file is not None else None
        adapters.append(AdapterRef(path=path, weight=draw(_finite), name=names[index], parameters=own,
                                   eval=eval_file, task=task))
    overrides = draw(st.lists(
        st.builds(
            WeightOverride,
            weights=st.tuples(*[_finite] * count),
            match=st.sampled_from([None, r"layer\.0\.", "query$", "ü"]),
            layers=st.one_of(st.none(), st.lists(st.integers(0, 40), max_size=3).map(tuple)),
        ).filter(lambda o: o.match is not None or o.layers is not None),
        max_size=2,
    ))
    return Recipe(
        adapters=tuple(adapters),
        method=method.name,
        parameters=parameters,
        rank=draw(st.one_of(st.none(), st.integers(1, 4096))),
        seed=draw(st.integers(0, 2**63 - 1)),
        device=draw(st.sampled_from(DEVICES)),
        osrm=draw(st.sampled_from(OSRM_MODES)),
        base_model=draw(st.one_of(st.none(), _text.filter(str.strip))),
        dtype=draw(st.sampled_from(DTYPES)),
        modules_to_save=draw(st.sampled_from(MODULES_TO_SAVE_RULES)),
        do_merging=DoMergingOptions(
            decouple=draw(st.booleans()),
            orthogonalize=draw(st.booleans()),
            magnitude=draw(st.sampled_from(MAGNITUDE_RULES)),
            steps=draw(st.integers(0, 10_000)),
            lr=draw(st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False)),
            mu=draw(st.floats(min_value=0, allow_infinity=False, allow_nan=False)),
        ),
        overrides=tuple(overrides),
    )


ROUND_TRIPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIPS
@given(recipes())
def test_to_dict_and_from_dict_round_trip(recipe):
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@ROUND_TRIPS
@given(recipes())
def test_to_url_and_from_url_round_trip(recipe):
    assert Recipe.from_url(recipe.to_url()) == recipe


@ROUND_TRIPS
@given(recipes())
def test_json_and_yaml_files_round_trip(recipe):
    with tempfile.TemporaryDirectory() as folder:
        files = [(Path(folder) / name, text) for name, text in
                 (("r.json", recipe.to_json()), ("r.yaml", recipe.to_yaml()), ("r.yml", recipe.to_yaml()))]
        for path, text in files:
            path.write_text(text, encoding="utf-8")
        # a base_model naming a path beside the file resolves to it (merging.models.base_check's path rule)
        assume(recipe.base_model is None or not (Path(folder) / recipe.base_model).exists())
        for path, _ in files:
            assert load_recipe(path) == recipe, path.name


@ROUND_TRIPS
@given(recipes())
def test_a_recipe_is_its_own_fixed_point(recipe):
    once = recipe.to_dict()
    assert Recipe.from_dict(once).to_dict() == once


@ROUND_TRIPS
@given(recipes())
def test_the_run_store_round_trips(recipe):
    from merging.store.runs import RunStore

    with tempfile.TemporaryDirectory() as folder:
        store = RunStore(Path(folder) / "runs.sqlite")
        run_id = store.add(recipe.to_dict(), {"average": {}})
        assert recipe_of_run(store.get(run_id).recipe, store.get(run_id).results) == recipe


def test_a_merged_folder_records_the_recipe_that_made_it(tmp_path, capsys):
    """The merged adapter's mergescope.json (written by every `merge`) reads back to the same Recipe."""
    from merging.adapters.lora import save_adapter
    from merging.cli import main
    from tests.conftest import TWO_LAYERS, random_adapter

    paths = [str(save_adapter(random_adapter(f"a{i}", TWO_LAYERS, seed=i), tmp_path / f"a{i}")) for i in range(2)]
    recipe = recipe_from_dict({
        "adapters": [{"path": paths[0], "weight": 0.7, "parameters": {"density": 0.5}}, {"path": paths[1]}],
        "method": "ties", "parameters": {"density": 0.8, "sign": "frequency"}, "seed": 3, "device": "cpu",
        "rank": 3, "do_merging": {"lr": 5e-05}, "overrides": [{"match": "query", "weights": [1.0, 0.25]}],
    })
    (tmp_path / "r.json").write_text(recipe.to_json())
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "merged" / "mergescope.json").read_text())
    assert Recipe.from_dict(meta["recipe"]) == recipe


def test_an_adapters_eval_file_resolves_like_its_path_and_names_the_task_by_its_stem(tmp_path):
    data = {"adapters": [{"path": "zoo/a", "eval": "data/math.jsonl"},
                         {"path": "zoo/b", "eval": "data/chat.jsonl", "task": "talk"}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    recipe = load_recipe(tmp_path / "r.json")
    assert recipe.adapters[0].eval == str((tmp_path / "data" / "math.jsonl").resolve())
    assert [a.task_name for a in recipe.adapters] == ["math", "talk"]
    assert recipe.adapters[0].to_dict()["eval"] == recipe.adapters[0].eval
    assert "task" not in recipe.adapters[0].to_dict() and recipe.adapters[1].to_dict()["task"] == "talk"
    assert Recipe.from_dict(recipe.to_dict()) == recipe
