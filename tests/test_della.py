"""DELLA (`della`, `della_linear`): MAGPRUNE against a float64 oracle written from the paper's and
mergekit's description (not from merging.methods), the rule across density and epsilon, the
streamed form, and mergekit import/export of both methods."""

from __future__ import annotations

import pytest
import torch
import yaml

from merging.adapters.lora import LoraModule
from merging.methods import MethodError, get_method
from merging.recipe.codec import AdapterRef, Recipe, RecipeError, recipe_from_dict
from merging.recipe.mergekit_config import mergekit_dict_from_recipe, recipe_dict_from_mergekit


def oracle_magprune(delta: torch.Tensor, uniform: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """One entry at a time, float64: rank each row by |x| (ties: the earlier position ranks lower),
    keep probability density − ε + 2ε·rank/(n − 1), keep when the uniform draw is below it, ÷ p."""
    rows, n = delta.shape
    out = torch.zeros(rows, n, dtype=torch.float64)
    for i in range(rows):
        row = [float(v) for v in delta[i]]
        order = sorted(range(n), key=lambda j: (abs(row[j]), j))
        for rank, j in enumerate(order):
            p = density - epsilon + 2 * epsilon * rank / (n - 1)
            if float(uniform[i, j]) < p:
                out[i, j] = row[j] / p
    return out


def oracle_merge(deltas, weights, density, epsilon, seed, consensus):
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for delta, weight in zip(deltas, weights):
        uniform = torch.rand(delta.shape, generator=generator)  # one draw per update, in order
        kept.append(oracle_magprune(delta.double(), uniform, density, epsilon) * weight)
    stacked = torch.stack(kept)
    if not consensus:
        return stacked.sum(0)
    out = torch.zeros_like(stacked[0])
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            values = [float(v) for v in stacked[:, i, j]]
            sign = 1.0 if sum(values) >= 0 else -1.0  # TIES: the sign of the total mass, 0 → +
            agreeing = [v for v in values if v != 0 and (v > 0) == (sign > 0)]
            out[i, j] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return out


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize(("density", "epsilon"), [(0.5, 0.1), (0.3, 0.25), (0.7, 0.0)])
def test_della_matches_a_float64_oracle(method, density, epsilon):
    generator = torch.Generator().manual_seed(11)
    deltas = [torch.randn(7, 9, generator=generator) for _ in range(3)]
    deltas[1][2, :4] = 0.25  # equal magnitudes in a row: ranked by position
    weights = [0.6, 1.0, 0.8]
    merged = get_method(method).merge_dense(
        deltas, weights, generator=torch.Generator().manual_seed(5), density=density, epsilon=epsilon
    )
    expected = oracle_merge(deltas, weights, density, epsilon, 5, consensus=method == "della")
    assert merged.dtype == torch.float32
    assert torch.allclose(merged.double(), expected, atol=1e-5, rtol=1e-5)
    assert (merged == 0).any() and (merged != 0).any()  # something dropped, something kept


def test_larger_entries_are_kept_more_often_and_the_expectation_is_the_update():
    delta = torch.arange(1, 11, dtype=torch.float32).reshape(1, 10)  # ranks 0..9 in one row
    spec = get_method("della_linear")
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([spec.merge_dense([delta], [1.0], generator=generator, density=0.5, epsilon=0.3)
                         for _ in range(4000)])
    kept = (draws != 0).double().mean(0)[0]
    expected_p = torch.tensor([0.2 + 0.6 * r / 9 for r in range(10)], dtype=torch.float64)
    assert torch.allclose(kept, expected_p, atol=0.03)
    assert torch.allclose(draws.double().mean(0)[0], delta.double()[0], rtol=0.08)


def test_density_one_keeps_the_update_and_needs_no_rule():
    delta = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    merged = get_method("della_linear").merge_dense(
        [delta], [1.0], generator=torch.Generator().manual_seed(0), density=1.0, epsilon=0.5
    )
    assert torch.equal(merged, delta)


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_streamed_from_factors_equals_the_dense_merge(method):
    generator = torch.Generator().manual_seed(3)
    modules = [LoraModule(torch.randn(4, 40, generator=generator), torch.randn(48, 4, generator=generator), 0.5)
               for _ in range(3)]
    modules.append(None)  # an adapter lacking the module contributes zero (and still draws)
    weights = [0.3, 1.0, 0.7, 0.9]
    spec = get_method(method)
    dense = [m.delta() if m is not None else torch.zeros(48, 40) for m in modules]
    expected = spec.merge_dense(dense, weights, generator=torch.Generator().manual_seed(9), density=0.4, epsilon=0.2)
    streamed = spec.merge_streamed(modules, weights, generator=torch.Generator().manual_seed(9), density=0.4, epsilon=0.2)
    assert torch.allclose(streamed, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# The rule across density and epsilon: refused when the recipe is made, naming both fields


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_density_with_too_wide_an_epsilon_is_refused_naming_both_fields(method):
    with pytest.raises(RecipeError, match=r"parameters\.density = 0\.1 and parameters\.epsilon = 0\.2"):
        recipe_from_dict({"adapters": ["a", "b"], "method": method, "parameters": {"density": 0.1, "epsilon": 0.2}})
    with pytest.raises(MethodError, match=r"parameters\.density = 0\.9 and parameters\.epsilon = 0\.1"):
        Recipe(adapters=(AdapterRef("a"),), method=method, parameters={"density": 0.9, "epsilon": 0.1})
    with pytest.raises(RecipeError, match=r"adapters\[1\]\.parameters\.density = 0\.05"):
        Recipe(adapters=(AdapterRef("a"), AdapterRef("b", parameters={"density": 0.05})), method=method,
               parameters={"density": 0.5, "epsilon": 0.1})
    with pytest.raises(MethodError, match="epsilon"):
        get_method(method).merge_dense([torch.ones(2, 2)], [1.0], generator=torch.Generator(), density=0.1, epsilon=0.2)


# ----------------------------------------------------------------------------------------------
# mergekit: della and della_linear read and written

TWO = "models: [{model: base+a, parameters: {weight: 1, density: 0.4}}, {model: base+b, parameters: {weight: 1}}]"


def test_mergekit_della_reads_density_and_epsilon_with_mergekits_defaults():
    native = recipe_dict_from_mergekit(yaml.safe_load(f"merge_method: della\nbase_model: base\n{TWO}"))
    assert native["method"] == "della"
    assert native["parameters"]["epsilon"] == 0.15  # mergekit's default
    assert native["parameters"]["divide_by"] == "count"  # normalize (della's default) with equal weights
    assert native["adapters"][0]["parameters"] == {"density": 0.4}
    linear = recipe_dict_from_mergekit(yaml.safe_load(
        f"merge_method: della_linear\nbase_model: base\nparameters: {{epsilon: 0.05, density: 0.5}}\n{TWO}"))
    assert linear["method"] == "della_linear"
    assert linear["parameters"] == {"density": 0.5, "epsilon": 0.05}


def test_mergekit_della_with_a_too_wide_epsilon_is_refused():
    text = f"merge_method: della_linear\nbase_model: base\nparameters: {{epsilon: 0.3, density: 0.2}}\n{TWO}"
    with pytest.raises(RecipeError, match=r"density = 0\.2 and .*epsilon = 0\.3"):
        Recipe.from_dict(recipe_dict_from_mergekit(yaml.safe_load(text)))
    with pytest.raises(RecipeError, match=r"parameters\.epsilon"):
        recipe_dict_from_mergekit(yaml.safe_load(text.replace("0.3", "0.9")))


@pytest.mark.parametrize(("method", "normalize"), [("della", True), ("della_linear", False)])
def test_della_exports_to_mergekit_and_reads_back(method, normalize):
    recipe = Recipe(adapters=(AdapterRef("/x/a", parameters={"epsilon": 0.05}), AdapterRef("/x/b")), method=method,
                    parameters={"density": 0.5, "epsilon": 0.1})
    config, notes = mergekit_dict_from_recipe(recipe, "base")
    assert config["merge_method"] == method
    assert config["parameters"]["density"] == 0.5 and config["parameters"]["epsilon"] == 0.1
    assert config["parameters"]["rescale"] is True and config["parameters"]["normalize"] is normalize
    assert config["models"][0]["parameters"]["epsilon"] == 0.05
    assert any("random masks" in note for note in notes)
    back = Recipe.from_dict(recipe_dict_from_mergekit(config))
    assert back.method == method
    assert back.parameters == recipe.parameters
    assert [a.parameters for a in back.adapters] == [{"epsilon": 0.05}, {}]
