"""A full-model export adds each module's dense merged update whole: W' = W + ΔW, no factorisation.

The oracle is computed here, independently of merging/: the base's weights and each PEFT layer's
factors in float64, TIES (trim to the top half by |x|, elect the sign of the sum, mean over the
agreeing entries) written out by hand, W64 + ΔW64. The export's float32 weights must be within a
few float32 roundings of it; the factored path (an SVD of each dense TIES result) is what it
replaced.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.engine.export import export_merged
from merging.engine.merge import merge_adapters
from tests.test_causal_models import _recipe, peft_adapter
from tests.test_export import _base_folder, _write_recipe

EPS32 = torch.finfo(torch.float32).eps


def _factors64(peft_model) -> dict[str, torch.Tensor]:
    """scaling·B·A per module in float64, from the PEFT layers' own factors."""
    deltas = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            A = module.lora_A["default"].weight.detach().double()
            B = module.lora_B["default"].weight.detach().double()
            deltas[name.removeprefix("base_model.model.")] = module.scaling["default"] * (B @ A)
    return deltas


def _ties64(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES in float64 by hand: top-k trim, sign of the sum (0 → +), mean over agreeing nonzeros."""
    trimmed = []
    for delta in deltas:
        k = int(density * delta.numel())
        flat = delta.reshape(-1)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.topk(flat.abs(), k).indices] = True
        trimmed.append(torch.where(keep, flat, torch.zeros_like(flat)).reshape(delta.shape))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).double()
    agree = (stacked * sign > 0)
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def _adapters(tmp_path, count: int):
    models = [peft_adapter("llama", tmp_path / f"a{i}", seed=200 + i, rank=4) for i in range(count)]
    return models, [tmp_path / f"a{i}" for i in range(count)]


def test_a_ties_full_model_export_is_w_plus_the_dense_update_within_float32_rounding(tmp_path, capsys):
    base_dir = _base_folder("llama", tmp_path)
    models, paths = _adapters(tmp_path, 4)
    recipe = _write_recipe(tmp_path, paths, [1.0] * 4, base_model=str(base_dir), method="ties", density=0.5)
    assert main(["merge", str(recipe), "--out", str(tmp_path / "full"), "--full-model", "--per-module"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {m["path"] for m in summary["modules"].values()} == {"dense, applied whole"}
    assert summary["output_rank"] is None  # nothing was factored

    base = load_file(str(base_dir / "model.safetensors"))
    out = load_file(str(tmp_path / "full" / "model.safetensors"))
    per_model = [_factors64(m) for m in models]
    worst = 0.0
    for module in per_model[0]:
        key = f"{module}.weight"
        reference = base[key].double() + _ties64([d[module] for d in per_model], 0.5)
        error = (out[key].double() - reference).abs()
        # float32: ΔW's entries are float32 products (a few roundings of |ΔW|), W + ΔW one more
        bound = 8 * EPS32 * (base[key].double().abs() + reference.abs())
        worst = max(worst, float((error / bound).max()))
        assert bool((error <= bound).all()), (key, float(error.max()))
    print(f"\nworst error / bound over the updated weights: {worst:.3f}")
    for key, tensor in base.items():  # everything else is the base's, bit for bit
        if not any(key == f"{m}.weight" for m in per_model[0]):
            assert torch.equal(out[key], tensor), key


def test_the_dense_export_is_more_exact_than_the_factored_merge_it_replaced(tmp_path):
    """Same merge, two outputs: the export's ΔW against the float64 oracle beats B·A of the SVD path."""
    base_dir = _base_folder("llama", tmp_path)
    models, paths = _adapters(tmp_path, 4)
    recipe = _recipe(paths, [1.0] * 4, base_model=str(base_dir), method="ties", density=0.5)
    merged = merge_adapters([load_adapter(p) for p in paths], recipe)
    export_merged(merged, base_dir, tmp_path / "full", dtype="float32")
    base = load_file(str(base_dir / "model.safetensors"))
    out = load_file(str(tmp_path / "full" / "model.safetensors"))
    per_model = [_factors64(m) for m in models]
    dense_error = factored_error = 0.0
    for module, factored in merged.adapter.modules.items():
        reference = _ties64([d[module] for d in per_model], 0.5)
        key = f"{module}.weight"
        dense_error = max(dense_error, float(((out[key].double() - base[key].double()) - reference).abs().max()))
        factored_error = max(factored_error, float((factored.delta().double() - reference).abs().max()))
    assert dense_error <= factored_error
    assert dense_error < 1e-5 * float(max(d.abs().max() for d in per_model[0].values()))


@pytest.mark.parametrize("extra", [{"method": "dare_ties", "density": 0.5, "seed": 3}, {"method": "ties", "density": 0.5, "rank": 2}])
def test_the_dense_export_draws_as_the_merge_draws_and_honours_an_output_rank(tmp_path, extra):
    """DARE's masks come from the recipe's seeded generator in module order: the export's ΔW is the
    merge's (up to the SVD's precision), not another draw; a recipe `rank` gives the truncated ΔW."""
    base_dir = _base_folder("llama", tmp_path)
    _, paths = _adapters(tmp_path, 3)
    recipe = _recipe(paths, [0.7, 1.0, 0.4], base_model=str(base_dir), **extra)
    merged = merge_adapters([load_adapter(p) for p in paths], recipe)
    export_merged(merged, base_dir, tmp_path / "full", dtype="float32")
    base = load_file(str(base_dir / "model.safetensors"))
    out = load_file(str(tmp_path / "full" / "model.safetensors"))
    for module, factored in merged.adapter.modules.items():
        key = f"{module}.weight"
        exported = out[key] - base[key]
        expected = factored.delta()
        assert torch.allclose(exported, expected, atol=1e-5 * float(expected.abs().max()) + 1e-6), module


def test_a_cut_short_or_garbled_base_file_is_refused_naming_the_file(tmp_path):
    from merging.engine.export import ExportError

    base_dir = _base_folder("llama", tmp_path)
    _, paths = _adapters(tmp_path, 1)
    merged = merge_adapters([load_adapter(paths[0])], _recipe(paths, [1.0], base_model=str(base_dir)))
    weights = base_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # the last tensor's bytes run past the end of the file
    with pytest.raises(ExportError, match=r"model\.safetensors: tensor .* do not fit its shape .* or the file"):
        export_merged(merged, base_dir, tmp_path / "out")
    weights.write_bytes(b"\x07\x00")
    with pytest.raises(ExportError, match=r"model\.safetensors: unreadable safetensors file"):
        export_merged(merged, base_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
