"""The method registry: schemas that validate, and a merge that dispatches on what a method has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from merging.adapters.lora import Adapter, AdapterError
from merging.engine.merge import merge_adapters, merge_module, method_parameters
from merging.methods import REGISTRY, Method, MethodArgs, MethodError, Param, get_method
from merging.recipe.codec import recipe_from_dict
from tests.conftest import TWO_LAYERS, random_adapter


def recipe_for(adapters: list[Adapter], weights=None, **fields):
    weights = weights or [1.0] * len(adapters)
    entries = [{"path": a.name, "weight": w} for a, w in zip(adapters, weights)]
    return recipe_from_dict({"adapters": entries, "device": "cpu", **fields})


# ----------------------------------------------------------------------------------------------
# Param and Method.validate


def test_a_float_param_refuses_values_outside_its_range_naming_where():
    density = get_method("ties").param("density")
    assert density.validate(0.5, "x") == 0.5
    assert density.validate(1, "x") == 1.0 and isinstance(density.validate(1, "x"), float)
    with pytest.raises(MethodError, match=r"parameters\.density: expected a number above 0"):
        density.validate(0.0, "parameters.density")
    with pytest.raises(MethodError, match="≤ 1"):
        density.validate(1.5, "here")
    for bad in (float("nan"), float("inf"), "0.5", True, None):
        with pytest.raises(MethodError, match="here"):
            density.validate(bad, "here")


def test_int_bool_and_choice_params_validate_their_kind():
    steps = Param("steps", "int", 3, minimum=1, maximum=10)
    assert steps.validate(4.0, "s") == 4
    with pytest.raises(MethodError, match="whole number"):
        steps.validate(2.5, "s")
    with pytest.raises(MethodError, match="≥ 1"):
        steps.validate(0, "s")
    flag = Param("flag", "bool", False)
    assert flag.validate(True, "f") is True
    with pytest.raises(MethodError, match="true or false"):
        flag.validate(1, "f")
    sign = get_method("ties").param("sign")
    with pytest.raises(MethodError, match="did you mean 'frequency'"):
        sign.validate("frequncy", "parameters.sign")


def test_a_schema_whose_default_is_out_of_range_is_refused_when_declared():
    with pytest.raises(MethodError, match="default of 'density'"):
        Param("density", "float", 0.0, minimum=0.0, maximum=1.0, exclusive_minimum=True)


def test_validate_fills_defaults_in_schema_order_and_refuses_unknown_keys_with_a_hint():
    ties = get_method("ties")
    assert ties.validate({"sign": "frequency"}) == {"density": 1.0, "sign": "frequency", "divide_by": "count"}
    assert list(ties.validate({})) == ["density", "sign", "divide_by"]
    with pytest.raises(MethodError, match=r"'densty' is not a parameter of ties; did you mean 'density'\?"):
        ties.validate({"densty": 0.5})
    with pytest.raises(MethodError, match="allowed: none"):
        get_method("task_arithmetic").validate({"density": 0.5})


def test_per_adapter_values_accept_only_parameters_marked_per_adapter():
    ties = get_method("ties")
    assert ties.validate_per_adapter({"density": 0.3}, "adapters[1].parameters") == {"density": 0.3}
    assert ties.validate_per_adapter(None, "w") == {}
    with pytest.raises(MethodError, match=r"adapters\[1\]\.parameters: 'sign' is not a parameter"):
        ties.validate_per_adapter({"sign": "total"}, "adapters[1].parameters")
    with pytest.raises(MethodError, match=r"adapters\[0\]\.parameters\.density"):
        ties.validate_per_adapter({"density": 2.0}, "adapters[0].parameters")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_method_is_whole(name):
    method = REGISTRY[name]
    assert method.name == name and method.label and method.description
    assert method.factored or method.streamed or method.dense
    assert method.validate({}) == method.defaults()
    for param in method.params:
        assert param.help, f"{name}.{param.name} has no help"
        assert param.validate(param.default, "default") == param.default
    if method.dense is None:
        assert method.dense_refusal  # the user is told why DO-Merging cannot run


def test_unknown_method_names_suggest_the_closest():
    with pytest.raises(MethodError, match="did you mean 'breadcrumbs'"):
        get_method("breadcrumb")
    with pytest.raises(MethodError, match="unknown method"):
        get_method(3)


# ----------------------------------------------------------------------------------------------
# Dispatch: merge.py learns about a method from the registry alone


def test_merge_py_names_no_method():
    source = Path("merging/engine/merge.py").read_text(encoding="utf-8")
    for name in REGISTRY:
        assert not re.search(rf"[\"']{name}[\"']", source), f"merge.py names the method '{name}'"


def _doubled_sum(deltas, weights, args: MethodArgs) -> torch.Tensor:
    return args["factor"] * sum(w * d for d, w in zip(deltas, weights))


def test_a_method_registered_with_only_a_dense_form_is_merged_by_merge_py(monkeypatch):
    toy = Method(
        name="toy_scaled_sum", label="Toy", description="factor · Σ λᵢ ΔWᵢ, dense only.",
        params=(Param("factor", "float", 2.0, help="How much to scale the sum."),), dense=_doubled_sum,
    )
    monkeypatch.setitem(REGISTRY, toy.name, toy)
    adapters = [random_adapter(n, TWO_LAYERS, seed=i) for i, n in enumerate("ab")]
    merged = merge_adapters(adapters, recipe_for(adapters, [1.0, 0.5], method="toy_scaled_sum"))
    for module in TWO_LAYERS:
        expected = 2.0 * (adapters[0].modules[module].delta() + 0.5 * adapters[1].modules[module].delta())
        assert torch.allclose(merged.adapter.modules[module].delta(), expected, atol=1e-5)
        assert merged.reports[module].path == "dense"


def test_a_method_without_a_dense_form_refuses_do_merging_with_its_reason():
    adapters = [random_adapter(n, TWO_LAYERS, seed=i) for i, n in enumerate("ab")]
    recipe = recipe_for(adapters, method="peft_naive", do_merging={"decouple": True})
    with pytest.raises(AdapterError, match="cannot run on DO-Merging directions"):
        merge_adapters(adapters, recipe)


def test_the_path_taken_is_what_the_method_has(three_adapters):
    for name, path in [("task_arithmetic", "factored"), ("knots", "factored"), ("tsv", "factored"),
                       ("ties", "dense"), ("breadcrumbs", "dense")]:
        merged = merge_adapters(three_adapters, recipe_for(three_adapters, method=name, density=0.5))
        assert {r.path for r in merged.reports.values()} == {path}, name


def test_method_parameters_map_the_flat_recipe_fields_onto_the_schema():
    adapters = [random_adapter(n, TWO_LAYERS, seed=i) for i, n in enumerate("ab")]
    knots = recipe_for(adapters, method="knots", density=0.4, sign="frequency", knots_inner="ties")
    assert method_parameters(knots) == ({"inner": "ties", "density": 0.4, "sign": "frequency"}, ({}, {}))
    plain = recipe_for(adapters, method="task_arithmetic", density=0.4)
    assert method_parameters(plain) == ({}, ({}, {}))  # density means nothing to task arithmetic
    assert method_parameters(recipe_for(adapters, method="breadcrumbs"))[0] == {"density": 1.0, "gamma": 0.01}


@pytest.mark.parametrize("method", ["ties", "magnitude_prune", "dare_linear", "breadcrumbs"])
def test_per_adapter_density_prunes_each_update_at_its_own_density(method):
    """The streamed merge with per-adapter densities equals merging each update pruned on its own."""
    modules = [random_adapter(f"a{i}", {"m": (96, 80)}, rank=6, seed=20 + i).modules["m"] for i in range(3)]
    weights = [1.0, 0.6, 0.8]
    own = ({"density": 0.2}, {}, {"density": 0.7})
    spec = get_method(method)
    args = MethodArgs(spec.validate({"density": 0.5}), own, torch.Generator().manual_seed(5), "cpu")
    streamed = spec.streamed(modules, weights, args)
    # reference: each update alone through the same method (its own density), same generator sequence
    reference_generator = torch.Generator().manual_seed(5)
    pruned = []
    for module, density in zip(modules, [0.2, 0.5, 0.7]):
        one = spec.merge_dense([module.delta()], [1.0], reference_generator, density=density)
        pruned.append(one)
    expected = get_method("ties" if spec.has_param("sign") else "task_arithmetic").merge_dense(pruned, weights)
    assert torch.allclose(streamed, expected, atol=1e-5)
    kept = [int((p != 0).sum()) for p in pruned]
    if method != "dare_linear":  # DARE keeps about density, the others exactly int(density·numel)
        assert kept == [int(d * (96 * 80)) for d in (0.2, 0.5, 0.7)]


def test_merge_module_takes_per_adapter_parameters(three_adapters):
    module = "encoder.layer.0.attention.self.query"
    modules = [a.modules[module] for a in three_adapters]
    recipe = recipe_for(three_adapters, method="magnitude_prune", density=0.5)
    values, _ = method_parameters(recipe)
    together, _ = merge_module(modules, [1.0, 1.0, 1.0], recipe, torch.device("cpu"), None,
                               (values, ({"density": 0.1}, {}, {"density": 1.0})))
    from merging.methods import keep_top_magnitude

    expected = (keep_top_magnitude(modules[0].delta(), 0.1) + keep_top_magnitude(modules[1].delta(), 0.5)
                + modules[2].delta())
    assert torch.allclose(together.B @ together.A, expected, atol=1e-5)
