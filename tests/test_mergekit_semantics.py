"""mergekit's semantics as a declared option of the registry, and native recipes written as mergekit configs.

The consensus step divides the agreeing sum by their count (the TIES paper), by the sum of the
agreeing weights (mergekit's `normalize: true`) or not at all (`normalize: false`): `divide_by`, a
parameter of every consensus method. mergekit's ties / dare_ties configs with unequal weights map
onto it, checked against mergekit's arithmetic written here in float64 from its
generalized_task_arithmetic.py (weighted deltas, the "sum" sign mask, division by Σ wᵢmᵢ with 0
read as 1), with ΔWᵢ rebuilt in float64 from each adapter's own factors, not from mergescope's merge.

The other way: `mergescope export-mergekit` writes a native recipe as the mergekit config that merges
the same; reading that config back gives the same recipe and the same merged body, and what has no
mergekit equivalent is refused with the reason.
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
from merging.methods import REGISTRY, get_method
from merging.recipe.codec import Recipe, load_recipe
from merging.recipe.mergekit_config import (
    MergekitExportError,
    load_recipe_file,
    mergekit_dict_from_recipe,
    recipe_dict_from_mergekit,
)
from tests.peft_fixtures import save_lora

NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("semantics")
    for seed, name in zip((11, 12, 13), NAMES):
        save_lora(folder / name, seed=seed)
    return folder


def float64_deltas(folder: Path, names) -> list[dict[str, torch.Tensor]]:
    """Each adapter's ΔW = s·B·A per module, in float64, from its saved factors."""
    out = []
    for name in names:
        adapter = load_adapter(folder / name)
        out.append({k: m.B.double() @ m.A.double() * m.scale for k, m in adapter.modules.items()})
    return out


def top_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """mergekit's sparsify.magnitude: keep the int(density·numel) entries of largest |x|."""
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    keep = torch.zeros(delta.numel(), dtype=torch.bool)
    keep[torch.topk(delta.abs().reshape(-1), k).indices] = True
    return torch.where(keep.reshape(delta.shape), delta, torch.zeros_like(delta))


def mergekit_gta(deltas, weights, densities, consensus: bool, normalize: bool) -> torch.Tensor:
    """mergekit's GTATask.execute on one tensor (magnitude sparsification), float64."""
    stacked = torch.stack([top_magnitude(d, p) for d, p in zip(deltas, densities)])
    w = torch.tensor(weights, dtype=torch.float64).reshape(-1, 1, 1)
    weighted = stacked * w
    if consensus:
        majority = (weighted.sum(dim=0) >= 0).to(torch.float64) * 2 - 1
        mask = (weighted.sign() == majority).to(torch.float64)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0).expand_as(mixed).clone()
        divisor[divisor.abs() < 1e-8] = 1
    return mixed / divisor if normalize else mixed


def merged_float64(recipe: Recipe) -> dict[str, torch.Tensor]:
    return {k: m.B.double() @ m.A.double() * m.scale for k, m in run_recipe(recipe).adapter.modules.items()}


def assert_matches(merged: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]) -> None:
    assert set(merged) == set(oracle)
    for name, expected in oracle.items():
        scale = float(expected.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(merged[name], expected, atol=2e-5 * scale, rtol=0, msg=name)


def config_file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------
# The registry declares it


def test_every_consensus_method_declares_divide_by_with_count_as_the_default_and_a_mergekit_mapping():
    consensus = [m for m in REGISTRY.values() if m.has_param("divide_by")]
    assert {m.name for m in consensus} == {"ties", "dare_ties", "breadcrumbs_ties", "della"}
    for method in consensus:
        assert method.param("divide_by").choices == ("count", "weights", "none")
        assert method.param("divide_by").default == "count"
        assert method.mergekit.name == method.name
    assert get_method("ties").mergekit.normalize is True  # mergekit's default for ties
    assert get_method("dare_ties").mergekit.normalize is False and get_method("dare_ties").mergekit.rescale is True
    for name in ("knots", "tsv", "peft_naive", "magnitude_prune"):
        assert get_method(name).mergekit.name is None and get_method(name).mergekit.refusal


def test_divide_by_on_hand_numbers():
    # two updates, weights 1 and 3 already applied: entries [2, 3] and [-1, 6]
    x = [torch.tensor([2.0, 3.0, 0.0]), torch.tensor([-3.0, 6.0, 0.0])]
    ties = get_method("ties")
    # entry 0: mass -1 → sign −, only the second agrees; entry 1: both agree; entry 2: nobody
    assert ties.merge_dense(x, [1.0, 1.0], divide_by="count").tolist() == [-3.0, 4.5, 0.0]
    assert ties.merge_dense(x, [1.0, 1.0], divide_by="none").tolist() == [-3.0, 9.0, 0.0]
    raw = [torch.tensor([2.0, 3.0, 0.0]), torch.tensor([-1.0, 2.0, 0.0])]
    # weighted: [2, 3, 0] and [-3, 6, 0]; divided by the agreeing weights: 3, 1 + 3, (none: 1)
    assert ties.merge_dense(raw, [1.0, 3.0], divide_by="weights").tolist() == [-1.0, 9.0 / 4.0, 0.0]


# ----------------------------------------------------------------------------------------------
# mergekit configs that were refused now give mergekit's result


def test_ties_with_unequal_weights_and_normalize_gives_mergekits_result(loras):
    path = config_file(loras, "ties.yaml", """
merge_method: ties
base_model: tiny-bert
parameters: {density: 0.5}
models:
  - {model: tiny-bert+a, parameters: {weight: 0.3}}
  - {model: tiny-bert+b, parameters: {weight: 1.0, density: 0.7}}
  - {model: tiny-bert+c, parameters: {weight: 0.6}}
""")
    native = recipe_dict_from_mergekit(yaml.safe_load(path.read_text()), loras)
    assert native["parameters"]["divide_by"] == "weights" and [a["weight"] for a in native["adapters"]] == [0.3, 1.0, 0.6]
    deltas = float64_deltas(loras, NAMES)
    oracle = {
        name: mergekit_gta([d[name] for d in deltas], [0.3, 1.0, 0.6], [0.5, 0.7, 0.5], consensus=True, normalize=True)
        for name in deltas[0]
    }
    assert_matches(merged_float64(load_recipe_file(path)), oracle)


@pytest.mark.parametrize("normalize", [None, True, False])
def test_dare_ties_with_unequal_weights_gives_mergekits_result(loras, normalize):
    # density 1 keeps every entry (no random mask), so the consensus and the division are what is checked
    given = "" if normalize is None else f"parameters: {{normalize: {str(normalize).lower()}}}\n"
    path = config_file(loras, f"dare_ties_{normalize}.yaml", f"""
merge_method: dare_ties
base_model: tiny-bert
{given}models:
  - {{model: tiny-bert+a, parameters: {{weight: 0.5}}}}
  - {{model: tiny-bert+b, parameters: {{weight: 1.5}}}}
  - {{model: tiny-bert+c, parameters: {{weight: -0.4}}}}
""")
    deltas = float64_deltas(loras, NAMES)
    oracle = {
        name: mergekit_gta([d[name] for d in deltas], [0.5, 1.5, -0.4], [1, 1, 1], consensus=True,
                           normalize=bool(normalize))  # mergekit's default for dare_ties: false
        for name in deltas[0]
    }
    recipe = load_recipe_file(path)
    assert recipe.parameters["divide_by"] == ("weights" if normalize else "none")
    assert_matches(merged_float64(recipe), oracle)


def test_a_native_recipe_with_divide_by_weights_is_mergekits_ties_on_both_merge_paths(loras, tmp_path):
    recipe_path = tmp_path / "ties.json"
    recipe_path.write_text(json.dumps({
        "adapters": [{"path": str(loras / n), "weight": w} for n, w in zip(NAMES, (0.2, 0.9, 1.4))],
        "method": "ties", "parameters": {"density": 0.4, "divide_by": "weights"},
    }))
    recipe = load_recipe(recipe_path)
    deltas = float64_deltas(loras, NAMES)
    oracle = {
        name: mergekit_gta([d[name] for d in deltas], [0.2, 0.9, 1.4], [0.4] * 3, consensus=True, normalize=True)
        for name in deltas[0]
    }
    assert_matches(merged_float64(recipe), oracle)  # the streamed path (from the factors, by rows)
    method = get_method("ties")
    dense = {name: method.merge_dense([d[name].float() for d in deltas], [0.2, 0.9, 1.4], density=0.4,
                                      divide_by="weights").double() for name in deltas[0]}
    assert_matches(dense, oracle)  # the dense path (DO-Merging's)


# ----------------------------------------------------------------------------------------------
# Native recipe -> mergekit YAML -> native recipe


ROUND_TRIPS = {
    "task_arithmetic": ("task_arithmetic", {}, (0.5, -0.3, 1.2), {}),
    "ties_count_equal": ("ties", {"density": 0.5, "divide_by": "count"}, (0.7, 0.7, 0.7), {}),
    "ties_weights": ("ties", {"density": 0.5, "divide_by": "weights"}, (0.3, 1.0, 0.6), {1: {"density": 0.8}}),
    "dare_ties_none": ("dare_ties", {"density": 0.6, "divide_by": "none"}, (1.0, 0.5, 0.8), {}),
    "dare_linear": ("dare_linear", {"density": 0.5}, (1.0, 0.4, 0.9), {}),
    "breadcrumbs": ("breadcrumbs", {"density": 0.8, "gamma": 0.05}, (1.0, 1.0, 0.5), {}),
    "breadcrumbs_ties": ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05, "divide_by": "weights"}, (0.5, 1.0, 2.0), {}),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_a_native_recipe_exports_to_mergekit_and_reads_back_to_the_same_merged_body(loras, tmp_path, case, capsys):
    method, parameters, weights, own = ROUND_TRIPS[case]
    adapters = []
    for index, (name, weight) in enumerate(zip(NAMES, weights)):
        entry = {"path": str(loras / name), "weight": weight}
        if index in own:
            entry["parameters"] = own[index]
        adapters.append(entry)
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps({"adapters": adapters, "method": method, "parameters": parameters}))
    out = tmp_path / "mergekit.yaml"
    assert main(["export-mergekit", str(recipe_path), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["merge_method"] == method
    config = yaml.safe_load(out.read_text())
    assert config["merge_method"] == method and config["base_model"] == "tiny-bert"
    original, back = load_recipe(recipe_path), load_recipe_file(out)
    assert back.method == original.method and back.parameters == original.parameters
    assert back.weights == pytest.approx(original.weights, rel=1e-12)
    assert [a.parameters for a in back.adapters] == [a.parameters for a in original.adapters]
    first, second = run_recipe(original).adapter.modules, run_recipe(back).adapter.modules
    assert set(first) == set(second)
    for name in first:
        assert torch.equal(first[name].delta("cpu"), second[name].delta("cpu")), name


def test_export_without_out_prints_the_yaml_and_an_existing_file_needs_overwrite(loras, tmp_path, capsys):
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps({"adapters": [str(loras / "a"), str(loras / "b")], "method": "ties",
                                       "parameters": {"density": 0.5, "divide_by": "weights"}}))
    assert main(["export-mergekit", str(recipe_path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# mergekit config written by `mergescope export-mergekit`")
    assert yaml.safe_load(text)["parameters"] == {"normalize": True, "rescale": False, "density": 0.5}
    out = tmp_path / "taken.yaml"
    out.write_text("keep me")
    assert main(["export-mergekit", str(recipe_path), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["export-mergekit", str(recipe_path), "--out", str(out), "--overwrite"]) == 0
    assert yaml.safe_load(out.read_text())["merge_method"] == "ties"


REFUSED = [
    ({"method": "knots"}, "'method'", "KnOTS"),
    ({"method": "tsv"}, "'method'", "TSV-Merge"),
    ({"method": "peft_naive"}, "'method'", "separately"),
    ({"method": "magnitude_prune", "parameters": {"density": 0.5}}, "'method'", "consensus"),
    ({"do_merging": {"decouple": True}}, "'do_merging.decouple'", "DO-Merging"),
    ({"do_merging": {"orthogonalize": True}}, "'do_merging.orthogonalize'", "DO-Merging"),
    ({"osrm": "twins"}, "'osrm'", "OSRM"),
    ({"osrm": "posthoc"}, "'osrm'", "OSRM"),
    ({"rank": 4}, "'rank'", "truncation"),
    ({"overrides": [{"match": "query", "weights": [1.0, 0.5]}]}, "'overrides'", "override"),
    ({"method": "ties", "parameters": {"sign": "frequency"}}, "'parameters.sign'", "mass"),
    ({"method": "ties", "weights": (1.0, 0.5)}, "'parameters.divide_by'", "count"),
]


@pytest.mark.parametrize(("change", "key", "reason"), REFUSED)
def test_what_mergekit_cannot_merge_is_refused_with_the_reason(loras, tmp_path, change, key, reason, capsys):
    change = dict(change)
    weights = change.pop("weights", (1.0, 1.0))
    data = {"adapters": [{"path": str(loras / n), "weight": w} for n, w in zip(("a", "b"), weights)], **change}
    with pytest.raises(MergekitExportError) as caught:
        mergekit_dict_from_recipe(Recipe.from_dict(data), "tiny-bert")
    message = str(caught.value)
    assert key in message and reason in message and "\n" not in message, message
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(data))
    out = tmp_path / "never.yaml"
    assert main(["export-mergekit", str(recipe_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no mergekit equivalent: ") and key in err
    assert not out.exists()
