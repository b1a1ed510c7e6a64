"""mergekit LoRA configs become native recipes that merge exactly what mergekit merges, or are refused
with one line naming the key.

Two kinds of check: the translation itself (plain dicts, hand-checkable weights), and merges. The
merges are checked twice: against the equivalent native recipe (same merged body), and against an
oracle written here straight from mergekit's own arithmetic (generalized_task_arithmetic.py /
linear.py: weighted sum, sum-consensus mask, division by the agreeing weights), so a mapping that
were wrong in the same way on both sides would still fail.

The merge tests need the recipe form of RECIPE_SPEC (`parameters`, `base_model`, `dtype`,
per-adapter parameters): until the codec's recipe.py is merged they fail, naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.engine.merge import run_recipe
from merging.evaluation.evaluate import modules_fingerprint
from merging.recipe.codec import RecipeError, load_recipe
from merging.recipe.mergekit_config import is_mergekit_config, load_recipe_file, recipe_dict_from_mergekit
from tests.peft_fixtures import save_lora


def translate(text: str, base_dir: Path | None = None) -> dict:
    return recipe_dict_from_mergekit(yaml.safe_load(text), base_dir)


def refusal(text: str) -> str:
    with pytest.raises(RecipeError) as caught:
        translate(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def weights(native: dict) -> list[float]:
    return [a["weight"] for a in native["adapters"]]


# ----------------------------------------------------------------------------------------------
# Telling the two formats apart


def test_a_mapping_with_merge_method_is_a_mergekit_config_and_a_native_recipe_is_not():
    assert is_mergekit_config({"merge_method": "ties", "models": []})
    assert not is_mergekit_config({"method": "ties", "adapters": [{"path": "a"}]})
    assert not is_mergekit_config(["merge_method"])
    assert not is_mergekit_config(None)


# ----------------------------------------------------------------------------------------------
# Translation, method by method


def test_linear_with_normalize_averages_full_weights_so_each_lora_gets_its_share_of_the_total_weight():
    native = translate(
        """
        merge_method: linear
        models:
          - {model: base+a, parameters: {weight: 1.0}}
          - {model: base+b, parameters: {weight: 3.0}}
        """
    )
    # (1·(base+ΔA) + 3·(base+ΔB)) / 4 = base + ¼ΔA + ¾ΔB
    assert native["method"] == "task_arithmetic"
    assert weights(native) == [0.25, 0.75]
    assert native["parameters"] == {}
    assert native["base_model"] == "base"
    assert [a["name"] for a in native["adapters"]] == ["a", "b"]


def test_linear_counts_a_listed_base_model_in_the_average():
    native = translate(
        """
        merge_method: linear
        base_model: base
        models:
          - {model: base, parameters: {weight: 2.0}}
          - {model: base+a, parameters: {weight: 1.0}}
          - {model: base+b, parameters: {weight: 1.0}}
        """
    )
    # (2·base + (base+ΔA) + (base+ΔB)) / 4 = base + ¼ΔA + ¼ΔB
    assert weights(native) == [0.25, 0.25]


def test_linear_without_normalize_is_taken_only_when_the_weights_sum_to_one():
    accepted = translate(
        """
        merge_method: linear
        parameters: {normalize: false}
        models:
          - {model: base+a, parameters: {weight: 0.25}}
          - {model: base+b, parameters: {weight: 0.75}}
        """
    )
    assert weights(accepted) == [0.25, 0.75]
    message = refusal(
        """
        merge_method: linear
        parameters: {normalize: false}
        models:
          - {model: base+a, parameters: {weight: 1.0}}
          - {model: base+b, parameters: {weight: 1.0}}
        """
    )
    assert "'parameters.normalize'" in message and "2" in message


def test_task_arithmetic_scales_by_lambda_and_divides_by_the_weight_sum_only_with_normalize():
    plain = translate(
        """
        merge_method: task_arithmetic
        base_model: base
        parameters: {lambda: 2.0}
        models:
          - {model: base+a, parameters: {weight: 1.0}}
          - {model: base+b, parameters: {weight: 3.0}}
        """
    )
    assert plain["method"] == "task_arithmetic"
    assert weights(plain) == [2.0, 6.0]  # λ·wᵢ (mergekit's task_arithmetic does not normalize by default)
    normalized = translate(
        """
        merge_method: task_arithmetic
        base_model: base
        parameters: {lambda: 2.0, normalize: true}
        models:
          - {model: base+a, parameters: {weight: 1.0}}
          - {model: base+b, parameters: {weight: 3.0}}
        """
    )
    assert weights(normalized) == [0.5, 1.5]  # λ·wᵢ/Σw


def test_ties_with_equal_weights_keeps_per_model_density_and_elects_the_sign_by_mass():
    native = translate(
        """
        merge_method: ties
        base_model: base
        parameters: {density: 0.5, int8_mask: true}
        models:
          - {model: base+a, parameters: {weight: 0.7, density: 0.3}}
          - {model: base+b, parameters: {weight: 0.7}}
        dtype: bfloat16
        """
    )
    assert native["method"] == "ties"
    # mergekit divides Σ wᵢSᵢmᵢ by Σ wᵢmᵢ: with one w it cancels, leaving the mean of the agreeing entries
    assert weights(native) == [1.0, 1.0]
    assert native["parameters"] == {"density": 0.5, "sign": "total", "divide_by": "count"}
    assert native["adapters"][0]["parameters"] == {"density": 0.3}
    assert "parameters" not in native["adapters"][1]
    assert native["dtype"] == "bfloat16"


def test_ties_lambda_becomes_every_adapters_weight():
    native = translate(
        """
        merge_method: ties
        base_model: base
        parameters: {lambda: 1.5, weight: 2.0, density: 0.4}
        models: [{model: base+a}, {model: base+b}, {model: base+c}]
        """
    )
    assert weights(native) == [1.5, 1.5, 1.5]
    assert native["parameters"]["density"] == 0.4


def test_int8_mask_changes_nothing_in_the_translation():
    config = """
        merge_method: ties
        base_model: base
        parameters: {density: 0.5%s}
        models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]
        """
    assert translate(config % ", int8_mask: true") == translate(config % "")


def test_dare_ties_is_taken_with_normalize_and_equal_weights():
    native = translate(
        """
        merge_method: dare_ties
        base_model: base
        parameters: {normalize: true, density: 0.6}
        models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1, density: 0.2}}]
        """
    )
    assert native["method"] == "dare_ties"
    assert native["parameters"] == {"density": 0.6, "sign": "total", "divide_by": "count"}
    assert native["adapters"][1]["parameters"] == {"density": 0.2}


def test_dare_linear_keeps_the_weights_and_the_density():
    native = translate(
        """
        merge_method: dare_linear
        base_model: base
        parameters: {density: 0.5}
        models: [{model: base+a, parameters: {weight: 0.3}}, {model: base+b, parameters: {weight: 0.9}}]
        """
    )
    assert native["method"] == "dare_linear"
    assert weights(native) == [0.3, 0.9]
    assert native["parameters"] == {"density": 0.5}


def test_breadcrumbs_takes_density_and_gamma_with_mergekits_default_gamma():
    default = translate(
        """
        merge_method: breadcrumbs
        base_model: base
        parameters: {density: 0.8}
        models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]
        """
    )
    assert default["method"] == "breadcrumbs"
    assert default["parameters"] == {"density": 0.8, "gamma": 0.01}
    given = translate(
        """
        merge_method: breadcrumbs
        base_model: base
        parameters: {density: 0.8, gamma: 0.05}
        models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]
        """
    )
    assert given["parameters"] == {"density": 0.8, "gamma": 0.05}


def test_breadcrumbs_ties_maps_to_the_registrys_method():
    config = """
        merge_method: breadcrumbs_ties
        base_model: base
        parameters: {density: 0.8, normalize: true}
        models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]
        """
    native = translate(config)
    assert native["method"] == "breadcrumbs_ties" and native["parameters"]["sign"] == "total"


def test_relative_lora_paths_resolve_against_the_config_folder(tmp_path):
    native = translate(
        """
        merge_method: linear
        models: [{model: base+loras/a, parameters: {weight: 1}}, {model: base+/abs/b, parameters: {weight: 1}}]
        """,
        base_dir=tmp_path,
    )
    assert native["adapters"][0]["path"] == str((tmp_path / "loras" / "a").resolve())
    assert native["adapters"][1]["path"] == "/abs/b"
    assert native["base_model"] == "base"  # not a folder there: a model name, kept as written


def test_two_loras_with_the_same_folder_name_get_distinct_names():
    native = translate(
        """
        merge_method: linear
        models: [{model: base+x/lora, parameters: {weight: 1}}, {model: base+y/lora, parameters: {weight: 1}}]
        """
    )
    assert [a["name"] for a in native["adapters"]] == ["x/lora", "y/lora"]


def test_out_dtype_wins_over_dtype_and_torch_prefixes_are_read():
    config = """
        merge_method: linear
        dtype: %s
        %s
        models: [{model: base+a, parameters: {weight: 1}}]
        """
    assert translate(config % ("float16", "out_dtype: torch.bfloat16"))["dtype"] == "bfloat16"
    assert translate(config % ("torch.float32", ""))["dtype"] == "float32"
    assert translate("merge_method: linear\nmodels: [{model: base+a, parameters: {weight: 1}}]")["dtype"] == "auto"


# ----------------------------------------------------------------------------------------------
# Refusals: one line naming the key


TWO = "models: [{model: base+a, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (f"merge_method: slerp\nbase_model: base\nparameters: {{t: 0.5}}\n{TWO}", "'merge_method'"),
        (f"merge_method: nuslerp\nbase_model: base\n{TWO}", "'merge_method'"),
        (f"merge_method: model_stock\nbase_model: base\n{TWO}", "'merge_method'"),
        (
            "merge_method: ties\nbase_model: base\nparameters: {normalize: true}\n"
            "models: [{model: other-model, parameters: {weight: 1}}, {model: base+b, parameters: {weight: 1}}]",
            "'models[0].model'",
        ),
        (
            "merge_method: ties\nbase_model: base\nparameters: {normalize: true}\n"
            "models: [{model: base+a, parameters: {weight: 1}}, {model: other+b, parameters: {weight: 1}}]",
            "'models[1].model'",
        ),
        (
            "merge_method: linear\n"
            "models: [{model: base+a, parameters: {weight: 1}}, {model: other+b, parameters: {weight: 1}}]",
            "'models[1].model'",
        ),
        ("merge_method: linear\nmodels: [{model: base+a@main, parameters: {weight: 1}}]", "'models[0].model'"),
        ("merge_method: linear\nmodels: [{model: base+a+b, parameters: {weight: 1}}]", "'models[0].model'"),
        ("merge_method: linear\nmodels: [{model: base, parameters: {weight: 1}}]", "'models'"),
        (
            "merge_method: linear\nbase_model: base+a\nmodels: [{model: base+a, parameters: {weight: 1}}]",
            "'base_model'",
        ),
        ("merge_method: linear\nslices: []\n" + TWO, "'slices'"),
        ("merge_method: linear\nchat_template: chatml\n" + TWO, "'chat_template'"),
        ("merge_method: linear\ntokenizer_source: union\n" + TWO, "'tokenizer_source'"),
        ("merge_method: linear\nparameters: {weight: [0, 1]}\nmodels: [{model: base+a}]", "'parameters.weight'"),
        (
            "merge_method: linear\nmodels: [{model: base+a, parameters: {weight: [{filter: mlp, value: 1}]}}]",
            "'models[0].parameters.weight'",
        ),
        ("merge_method: linear\nmodels: [{model: base+a}]", "'models[0].parameters.weight'"),
        (
            "merge_method: linear\nmodels: [{model: base+a, parameters: {weight: .nan}}]",
            "'models[0].parameters.weight'",
        ),
        (
            "merge_method: linear\nmodels: [{model: base+a, parameters: {weight: 1, density: 0.5}}]",
            "'models[0].parameters.density'",
        ),
        ("merge_method: task_arithmetic\nbase_model: base\nparameters: {density: 0.5}\n" + TWO, "'parameters.density'"),
        ("merge_method: ties\nbase_model: base\nparameters: {epsilon: 0.1}\n" + TWO, "'parameters.epsilon'"),
        ("merge_method: ties\nbase_model: base\nparameters: {rescale: true}\n" + TWO, "'parameters.rescale'"),
        ("merge_method: dare_linear\nbase_model: base\nparameters: {rescale: false}\n" + TWO, "'parameters.rescale'"),
        (
            "merge_method: ties\nbase_model: base\nparameters: {lambda: 0.5}\nmodels: [{model: base+a, parameters: {weight: 1}}, "
            "{model: base+b, parameters: {weight: 2}}]",
            "'parameters.lambda'",
        ),
        ("merge_method: ties\nbase_model: base\nparameters: {lambda: -1}\n" + TWO, "'parameters.lambda'"),
        ("merge_method: ties\nbase_model: base\nparameters: {density: 1.5}\n" + TWO, "'parameters.density'"),
        ("merge_method: linear\nbase_model: base\n" + TWO, "'base_model'"),
        ("merge_method: linear\ndtype: int8\n" + TWO, "'dtype'"),
        (
            "merge_method: linear\n"
            "models: [{model: base+a, parameters: {weight: 1}}, {model: base+a, parameters: {weight: 1}}]",
            "'models[1].model'",
        ),
        ("merge_method: linear\nmodels: [{model: base+a, weight: 1}]", "'models[0].weight'"),
        ("merge_method: linear\nmodels: []", "'models'"),
        ("merge_method: 3\n" + TWO, "'merge_method'"),
    ],
)
def test_what_cannot_be_reproduced_exactly_is_refused_naming_the_key(config, key):
    message = refusal(config)
    assert message.startswith("mergekit config: ") and key in message, message


def test_the_cli_refuses_a_mergekit_config_with_exit_2_and_one_line_naming_file_and_key(tmp_path, capsys):
    config = tmp_path / "slerp.yaml"
    config.write_text(f"merge_method: slerp\nbase_model: base\n{TWO}\n")
    assert main(["merge", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: {config}: mergekit config: 'merge_method': 'slerp' is not supported")
    assert not (tmp_path / "out").exists()


def test_a_native_recipe_file_loads_as_before(tmp_path):
    lora = save_lora(tmp_path / "a", seed=3)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"adapters": [{"path": "a", "weight": 0.5}], "method": "task_arithmetic"}))
    assert load_recipe_file(recipe) == load_recipe(recipe)
    assert load_recipe_file(recipe).adapters[0].path == str(lora.resolve())


# ----------------------------------------------------------------------------------------------
# Merges: the mergekit config, the equivalent native recipe, and mergekit's arithmetic agree


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> Path:
    """Three tiny real PEFT adapters on one tiny base ("tiny-bert"), in one folder."""
    folder = tmp_path_factory.mktemp("mergekit")
    for seed, name in [(1, "a"), (2, "b"), (3, "c")]:
        save_lora(folder / name, seed=seed)
    return folder


def merged_from(path: Path):
    return run_recipe(load_recipe_file(path)).adapter.modules


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def dense(modules) -> dict[str, torch.Tensor]:
    return {name: module.delta("cpu") for name, module in modules.items()}


def sources(folder: Path, names: list[str]) -> list[dict[str, torch.Tensor]]:
    return [dense(load_adapter(folder / name).modules) for name in names]


def mergekit_ties(
    deltas: list[torch.Tensor], weights: list[float], densities: list[float], lam: float = 1.0
) -> torch.Tensor:
    """mergekit's ties with normalize, written from generalized_task_arithmetic.py and sparsify.magnitude."""
    kept = []
    for delta, density in zip(deltas, densities):
        if density >= 1:
            kept.append(delta)
            continue
        k = int(density * delta.numel())
        mask = torch.zeros(delta.numel())
        mask[torch.argsort(delta.abs().reshape(-1), descending=True)[:k]] = 1
        kept.append(delta * mask.reshape(delta.shape))
    stacked = torch.stack(kept)
    w = torch.tensor(weights).reshape(-1, 1, 1)
    weighted = stacked * w
    majority = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
    mask = weighted.sign() == majority
    mixed = (weighted * mask).sum(0)
    divisor = (w * mask).sum(0)
    divisor[divisor == 0] = 1
    return lam * mixed / divisor


def test_a_linear_config_merges_like_its_native_recipe_and_like_mergekits_weighted_average(loras):
    config = write(
        loras,
        "linear.yaml",
        """
merge_method: linear
base_model: tiny-bert
models:
  - {model: tiny-bert, parameters: {weight: 1.0}}
  - {model: tiny-bert+a, parameters: {weight: 1.0}}
  - {model: tiny-bert+b, parameters: {weight: 2.0}}
""",
    )
    native = write(
        loras,
        "linear.json",
        json.dumps(
            {
                "adapters": [{"path": "a", "weight": 0.25}, {"path": "b", "weight": 0.5}],
                "method": "task_arithmetic",
                "parameters": {},
                "base_model": "tiny-bert",
            }
        ),
    )
    from_config = merged_from(config)
    assert modules_fingerprint(from_config) == modules_fingerprint(merged_from(native))
    a, b = sources(loras, ["a", "b"])
    for name, delta in dense(from_config).items():
        # (1·base + 1·(base+ΔA) + 2·(base+ΔB)) / 4 − base
        torch.testing.assert_close(delta, (a[name] + 2 * b[name]) / 4, atol=1e-6, rtol=1e-5)


def test_a_ties_config_with_per_model_density_merges_like_its_native_recipe_and_like_mergekits_ties(loras):
    config = write(
        loras,
        "ties.yaml",
        """
merge_method: ties
base_model: tiny-bert
parameters: {density: 0.5, normalize: true, int8_mask: true, lambda: 0.8}
models:
  - {model: tiny-bert+a, parameters: {weight: 0.6, density: 0.3}}
  - {model: tiny-bert+b, parameters: {weight: 0.6}}
  - {model: tiny-bert+c, parameters: {weight: 0.6, density: 0.9}}
""",
    )
    native = write(
        loras,
        "ties.json",
        json.dumps(
            {
                "adapters": [
                    {"path": "a", "weight": 0.8, "parameters": {"density": 0.3}},
                    {"path": "b", "weight": 0.8},
                    {"path": "c", "weight": 0.8, "parameters": {"density": 0.9}},
                ],
                "method": "ties",
                "parameters": {"density": 0.5, "sign": "total", "divide_by": "count"},
                "base_model": "tiny-bert",
            }
        ),
    )
    from_config = merged_from(config)
    assert modules_fingerprint(from_config) == modules_fingerprint(merged_from(native))
    deltas = sources(loras, ["a", "b", "c"])
    for name, delta in dense(from_config).items():
        expected = mergekit_ties([d[name] for d in deltas], [0.6, 0.6, 0.6], [0.3, 0.5, 0.9], lam=0.8)
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4)


def test_a_normalized_task_arithmetic_config_merges_like_mergekit(loras):
    config = write(
        loras,
        "ta.yaml",
        """
merge_method: task_arithmetic
base_model: tiny-bert
parameters: {normalize: true, lambda: 1.5}
models:
  - {model: tiny-bert+a, parameters: {weight: 1.0}}
  - {model: tiny-bert+c, parameters: {weight: 3.0}}
""",
    )
    from_config = merged_from(config)
    a, c = sources(loras, ["a", "c"])
    for name, delta in dense(from_config).items():
        torch.testing.assert_close(delta, 1.5 * (a[name] + 3 * c[name]) / 4, atol=1e-6, rtol=1e-5)


def mergekit_breadcrumbs(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """mergekit's sparsify.magnitude_outliers: drop the top gamma fraction by |x|, then the smallest,
    to keep int(density·numel) entries (written for gamma·numel ≥ 1, where mergekit's slice is sound)."""
    numel = delta.numel()
    target, n_top = int(density * numel), int(gamma * numel)
    n_bot = numel - target - n_top
    if n_bot < 0:
        n_top, n_bot = n_top + n_bot, 0
    order = torch.sort(delta.abs().reshape(-1)).indices
    mask = torch.zeros(numel)
    mask[order[n_bot : numel - n_top]] = 1
    return delta * mask.reshape(delta.shape)


def test_a_breadcrumbs_config_merges_like_mergekits_magnitude_outliers(loras):
    config = write(
        loras,
        "breadcrumbs.yaml",
        """
merge_method: breadcrumbs
base_model: tiny-bert
parameters: {density: 0.6, gamma: 0.05}
models:
  - {model: tiny-bert+a, parameters: {weight: 0.5}}
  - {model: tiny-bert+b, parameters: {weight: 1.5, density: 0.4}}
""",
    )
    from_config = dense(merged_from(config))
    a, b = sources(loras, ["a", "b"])
    for name, delta in from_config.items():
        assert int(0.05 * delta.numel()) >= 1  # the oracle's range: mergekit's own slice is sound there
        expected = 0.5 * mergekit_breadcrumbs(a[name], 0.6, 0.05) + 1.5 * mergekit_breadcrumbs(b[name], 0.4, 0.05)
        # the merged update comes back factored: a dropped entry reads as float32 round-off of the
        # factors (≈ 1e-6 on some CPUs), far below any entry at the keep/drop cut (a mid-quantile |x|)
        torch.testing.assert_close(delta, expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-5)


def test_a_dare_linear_config_merges_like_its_native_recipe(loras):
    config = write(
        loras,
        "dare.yaml",
        """
merge_method: dare_linear
base_model: tiny-bert
parameters: {density: 0.5, normalize: true}
models:
  - {model: tiny-bert+a, parameters: {weight: 1.0}}
  - {model: tiny-bert+c, parameters: {weight: 3.0, density: 0.7}}
""",
    )
    native = write(
        loras,
        "dare.json",
        json.dumps(
            {
                "adapters": [
                    {"path": "a", "weight": 0.25},
                    {"path": "c", "weight": 0.75, "parameters": {"density": 0.7}},
                ],
                "method": "dare_linear",
                "parameters": {"density": 0.5},
                "base_model": "tiny-bert",
                "seed": 0,
            }
        ),
    )
    assert modules_fingerprint(merged_from(config)) == modules_fingerprint(merged_from(native))
