"""Adapter I/O against real PEFT folders: PEFT itself is the oracle for scales, ΔW and loading."""

from __future__ import annotations

import collections
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import merging.adapters.lora as lora
from merging.adapters.lora import (
    HEADS_FILE,
    AdapterError,
    check_compatible,
    load_adapter,
    lora_scale,
    save_adapter,
)
from merging.engine.merge import merge_adapters, save_merged
from merging.recipe.codec import AdapterRef, Recipe
from tests.peft_fixtures import (
    BASES,
    PICKLE_FILE,
    WEIGHTS_FILE,
    Payload,
    base_plus,
    cast_tensors,
    edit_config,
    first_key,
    load_into_fresh_base,
    logits,
    lora_layers,
    lora_model,
    peft_deltas,
    peft_scales,
    read_tensors,
    rewrite_tensors,
    sample_inputs,
    save_lora,
    save_peft,
)

ATOL = 1e-5


def recipe_for(adapters, weights, method="task_arithmetic", **kwargs) -> Recipe:
    refs = tuple(AdapterRef(path=str(a.path or a.name), weight=w, name=a.name) for a, w in zip(adapters, weights))
    return Recipe(adapters=refs, method=method, device="cpu", **kwargs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float = ATOL, what: str = "") -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    error = float((actual.float() - expected.float()).abs().max()) if actual.numel() else 0.0
    assert error <= atol, f"{what}: max abs error {error:.3g} > {atol}"


def weighted_sum(deltas_per_adapter, weights):
    """Σ λᵢ ΔWᵢ per module over the union of modules (an adapter lacking a module adds zero)."""
    total: dict[str, torch.Tensor] = {}
    for deltas, weight in zip(deltas_per_adapter, weights):
        for name, delta in deltas.items():
            total[name] = total.get(name, torch.zeros_like(delta)) + weight * delta
    return total


# ----------------------------------------------------------------------------------------------
# Loading: scales and ΔW against PEFT's own LoRA layers

LOAD_CASES = {
    "plain": dict(base="bert", rank=4, lora_alpha=8),
    "rslora": dict(base="bert", rank=4, lora_alpha=6, use_rslora=True),
    "patterns": dict(
        base="bert",
        rank=4,
        lora_alpha=8,
        rank_pattern={"layer.1.attention.self.query": 2, "intermediate.dense": 6},
        alpha_pattern={"value": 3, "layer.0.intermediate.dense": 12},
    ),
    "patterns_rslora": dict(
        base="bert",
        rank=8,
        lora_alpha=4,
        use_rslora=True,
        rank_pattern={"query": 2},
        alpha_pattern={"layer.1.attention.self.value": 10},
    ),
    "llama_patterns": dict(
        base="llama", rank=2, lora_alpha=5, rank_pattern={"down_proj": 6}, alpha_pattern={"q_proj": 1}
    ),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_matches_peft_scales_ranks_and_deltas(tmp_path, case):
    kwargs = LOAD_CASES[case]
    model = lora_model(**kwargs, seed=11)
    folder = save_peft(model, tmp_path / case)
    adapter = load_adapter(folder)

    layers = lora_layers(model)
    scales = peft_scales(model)
    deltas = peft_deltas(model)
    assert set(adapter.modules) == set(layers)
    for name, module in adapter.modules.items():
        assert module.rank == layers[name].r["default"], name
        assert module.scale == pytest.approx(scales[name], rel=1e-12), name
        assert_close(module.delta(), deltas[name], what=name)
        assert float(deltas[name].abs().max()) > 1e-3, f"{name}: the fixture made a zero update"


def test_scales_follow_the_formulas_and_patterns(tmp_path):
    """Independent of PEFT: alpha/r, alpha/√r, and the per-module patterns (last match wins nowhere)."""
    rslora = load_adapter(save_lora(tmp_path / "rs", **LOAD_CASES["patterns_rslora"]))
    q0 = rslora.modules["bert.encoder.layer.0.attention.self.query"]
    v1 = rslora.modules["bert.encoder.layer.1.attention.self.value"]
    v0 = rslora.modules["bert.encoder.layer.0.attention.self.value"]
    assert (q0.rank, q0.scale) == (2, pytest.approx(4 / math.sqrt(2)))
    assert (v1.rank, v1.scale) == (8, pytest.approx(10 / math.sqrt(8)))
    assert (v0.rank, v0.scale) == (8, pytest.approx(4 / math.sqrt(8)))

    plain = load_adapter(save_lora(tmp_path / "plain", **LOAD_CASES["patterns"]))
    expected = {
        "bert.encoder.layer.0.attention.self.query": (4, 8 / 4),
        "bert.encoder.layer.1.attention.self.query": (2, 8 / 2),
        "bert.encoder.layer.0.attention.self.value": (4, 3 / 4),
        "bert.encoder.layer.0.intermediate.dense": (6, 12 / 6),
        "bert.encoder.layer.1.intermediate.dense": (6, 8 / 6),
    }
    for name, (rank, scale) in expected.items():
        assert plain.modules[name].rank == rank, name
        assert plain.modules[name].scale == pytest.approx(scale), name

    config = {"lora_alpha": 16, "alpha_pattern": {"layer\\.1\\..*query": 2}, "use_rslora": False}
    assert lora_scale(config, "bert.encoder.layer.1.attention.self.query", 4) == pytest.approx(0.5)
    assert lora_scale(config, "bert.encoder.layer.0.attention.self.query", 4) == pytest.approx(4.0)
    # A pattern matches at a name boundary only: "query" must not match "subquery".
    assert lora_scale({"lora_alpha": 8, "alpha_pattern": {"query": 1}}, "x.subquery", 4) == pytest.approx(2.0)


def test_modules_to_save_are_kept_per_adapter(tmp_path):
    models = [lora_model("bert", modules_to_save=["classifier"], seed=s) for s in (3, 4)]
    folders = [save_peft(m, tmp_path / f"task{i}") for i, m in enumerate(models)]
    adapters = [load_adapter(f) for f in folders]
    for model, adapter in zip(models, adapters):
        head = model.base_model.model.classifier.modules_to_save["default"]
        assert set(adapter.saved_modules) == {"classifier.weight", "classifier.bias"}
        assert torch.equal(adapter.saved_modules["classifier.weight"], head.weight.detach())
        assert torch.equal(adapter.saved_modules["classifier.bias"], head.bias.detach())
        assert not any("classifier" in name for name in adapter.modules)
    head_weights = [a.saved_modules["classifier.weight"] for a in adapters]
    assert not torch.equal(head_weights[0], head_weights[1])

    merged = merge_adapters(adapters, recipe_for(adapters, [0.5, 0.5]))
    assert set(merged.heads) == {"task0", "task1"}
    for adapter in adapters:
        for key, tensor in adapter.saved_modules.items():
            assert torch.equal(merged.heads[adapter.name][key], tensor)
    out = save_merged(merged, tmp_path / "merged")
    heads = load_file(str(out / HEADS_FILE))
    assert set(heads) == {f"task{i}/classifier.{p}" for i in range(2) for p in ("weight", "bias")}
    assert torch.equal(heads["task1/classifier.weight"], adapters[1].saved_modules["classifier.weight"])
    # The merged body carries no head of its own: PEFT must not load one task's head for all.
    assert not any(k.startswith("base_model.model.classifier") for k in read_tensors(out))


def test_save_adapter_round_trips_through_peft(tmp_path):
    """load → save_adapter (scale folded into B) → PeftModel.from_pretrained gives PEFT's ΔW and head."""
    patterns = {k: v for k, v in LOAD_CASES["patterns"].items() if k != "base"}
    model = lora_model("bert", modules_to_save=["classifier"], seed=5, **patterns)
    adapter = load_adapter(save_peft(model, tmp_path / "source"))
    out = save_adapter(adapter, tmp_path / "copy", template_config=adapter.config)
    reloaded = load_into_fresh_base(out)
    expected = peft_deltas(model)
    got = peft_deltas(reloaded)
    for name, delta in expected.items():
        assert_close(got[name], delta, what=name)
    assert all(float(d.abs().max()) == 0.0 for n, d in got.items() if n not in expected)
    inputs = sample_inputs()
    assert_close(logits(reloaded, inputs), logits(model, inputs), atol=1e-4, what="logits")


# ----------------------------------------------------------------------------------------------
# Merging real adapters


def test_adapters_of_different_ranks_merge_exactly(tmp_path):
    models = [
        lora_model("bert", rank=4, lora_alpha=8, seed=21),
        lora_model("bert", rank=2, lora_alpha=16, use_rslora=True, seed=22),
        lora_model("bert", rank=8, lora_alpha=4, rank_pattern={"value": 3}, seed=23),
    ]
    adapters = [load_adapter(save_peft(m, tmp_path / f"a{i}")) for i, m in enumerate(models)]
    weights = [0.7, -0.3, 1.2]
    merged = merge_adapters(adapters, recipe_for(adapters, weights))
    expected = weighted_sum([peft_deltas(m) for m in models], weights)
    assert set(merged.adapter.modules) == set(expected)
    for name, delta in expected.items():
        assert_close(merged.adapter.modules[name].delta(), delta, what=name)
    assert any("different ranks" in note for note in merged.compatibility.notes)


def _merge_and_save(tmp_path, base, specs, weights):
    models = [lora_model(base, seed=30 + i, **spec) for i, spec in enumerate(specs)]
    adapters = [load_adapter(save_peft(m, tmp_path / f"{base}{i}")) for i, m in enumerate(models)]
    merged = merge_adapters(adapters, recipe_for(adapters, weights))
    out = save_merged(merged, tmp_path / f"{base}-merged")
    expected = weighted_sum([peft_deltas(m) for m in models], weights)
    return merged, out, expected


ROUND_TRIP = {
    "bert": [
        dict(rank=4, lora_alpha=8, modules_to_save=["classifier"]),
        dict(
            rank=2,
            lora_alpha=4,
            use_rslora=True,
            rank_pattern={"intermediate.dense": 5},
            modules_to_save=["classifier"],
        ),
    ],
    "llama": [
        dict(rank=4, lora_alpha=8, rank_pattern={"layers.1.mlp.down_proj": 1}),
        dict(rank=3, lora_alpha=9, alpha_pattern={"v_proj": 2}, target_modules=["q_proj", "v_proj", "down_proj"]),
    ],
}


@pytest.mark.parametrize("base", list(ROUND_TRIP))
def test_saved_merge_loads_in_peft_with_the_merged_delta(tmp_path, base):
    weights = [0.6, 0.9]
    merged, out, expected = _merge_and_save(tmp_path, base, ROUND_TRIP[base], weights)
    merged_deltas = {name: m.delta() for name, m in merged.adapter.modules.items()}
    assert set(merged_deltas) == set(expected)
    for name, delta in expected.items():
        assert_close(merged_deltas[name], delta, what=f"merged {name}")

    model = load_into_fresh_base(out, base)
    loaded = peft_deltas(model)
    assert set(merged_deltas) <= set(loaded), "PEFT did not put LoRA on every merged module"
    for name, delta in merged_deltas.items():
        assert_close(loaded[name], delta, what=f"PEFT {name}")
    for name in set(loaded) - set(merged_deltas):
        assert float(loaded[name].abs().max()) == 0.0, f"{name}: PEFT loaded a non-zero update for it"

    inputs = sample_inputs(seed=1)
    reference = logits(base_plus(merged_deltas, base), inputs)
    plain = logits(BASES[base](0), inputs)
    assert float((reference - plain).abs().max()) > 1e-3, "the merged update changes nothing: weak test"
    assert_close(logits(model, inputs), reference, atol=1e-4, what="PeftModel forward")

    unloaded = model.merge_and_unload()
    fresh = dict(base_plus(merged_deltas, base).named_modules())
    for name in merged_deltas:
        assert_close(dict(unloaded.named_modules())[name].weight, fresh[name].weight, what=f"merge_and_unload {name}")
    assert_close(logits(unloaded, inputs), reference, atol=1e-4, what="merge_and_unload forward")


@pytest.mark.parametrize("base", list(ROUND_TRIP))
def test_merged_folder_targets_exactly_the_merged_modules(tmp_path, base):
    """PEFT must put LoRA on the merged modules and no others (no zero-update layers elsewhere)."""
    merged, out, _ = _merge_and_save(tmp_path, base, ROUND_TRIP[base], [1.0, 1.0])
    model = load_into_fresh_base(out, base)
    extra = sorted(set(lora_layers(model)) - set(merged.adapter.modules))
    assert not extra, f"target_modules of the merged config also match {extra}"


SOURCE_FILTERS = {
    "layers_to_transform": [dict(layers_to_transform=[0]), dict(layers_to_transform=[1])],
    "exclude_modules": [dict(exclude_modules=["bert.encoder.layer.1.attention.self.query"]), {}],
}


@pytest.mark.parametrize("case", list(SOURCE_FILTERS))
def test_merged_folder_loads_every_merged_module(tmp_path, case):
    """The first adapter's module filters (layers_to_transform, exclude_modules) must not leak into the
    merged config: PEFT would then skip modules that other adapters brought in, and drop their ΔW."""
    filters = SOURCE_FILTERS[case]
    models = [lora_model("bert", target_modules=["query"], seed=60 + i, **f) for i, f in enumerate(filters)]
    adapters = [load_adapter(save_peft(m, tmp_path / f"task{i}")) for i, m in enumerate(models)]
    merged = merge_adapters(adapters, recipe_for(adapters, [1.0, 1.0]))
    assert "bert.encoder.layer.1.attention.self.query" in merged.adapter.modules
    out = save_merged(merged, tmp_path / "merged")
    loaded = peft_deltas(load_into_fresh_base(out))
    missing = sorted(set(merged.adapter.modules) - set(loaded))
    assert not missing, f"PEFT put no LoRA on {missing}: their merged update is lost on load"
    for name, module in merged.adapter.modules.items():
        assert_close(loaded[name], module.delta(), what=name)


def test_module_present_in_only_some_adapters(tmp_path):
    models = [
        lora_model("bert", target_modules=["query", "value"], seed=41),
        lora_model("bert", target_modules=["query"], rank=2, seed=42),
    ]
    adapters = [load_adapter(save_peft(m, tmp_path / f"task{i}")) for i, m in enumerate(models)]
    weights = [0.8, 1.5]
    merged = merge_adapters(adapters, recipe_for(adapters, weights))
    expected = weighted_sum([peft_deltas(m) for m in models], weights)
    values = [n for n in expected if n.endswith("value")]
    assert len(values) == 2
    for name, delta in expected.items():
        assert_close(merged.adapter.modules[name].delta(), delta, what=name)
    for name in values:  # only task0 contributes there: λ₀·ΔW₀
        assert_close(merged.adapter.modules[name].delta(), 0.8 * peft_deltas(models[0])[name], what=name)
        assert merged.compatibility.missing[name] == ["task1"]
        assert any(name in note and "task1" in note and "zero" in note for note in merged.compatibility.notes)
    assert not any(n.endswith("query") for n in merged.compatibility.missing)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adapters_merge_in_float32(tmp_path, dtype):
    folders = [save_lora(tmp_path / f"h{i}", rank=r, seed=50 + i) for i, r in enumerate((4, 2))]
    for folder in folders:
        cast_tensors(folder, dtype)
    stored = [read_tensors(f) for f in folders]
    assert all(t.dtype == dtype for s in stored for t in s.values())
    adapters = [load_adapter(f) for f in folders]
    weights = [0.37, 1.13]
    merged = merge_adapters(adapters, recipe_for(adapters, weights))

    for name, module in merged.adapter.modules.items():
        assert module.A.dtype == torch.float32 and module.B.dtype == torch.float32, name
        expected = torch.zeros(module.shape, dtype=torch.float64)
        for adapter, tensors, weight in zip(adapters, stored, weights):
            key = f"base_model.model.{name}"
            A = tensors[f"{key}.lora_A.weight"].double()
            B = tensors[f"{key}.lora_B.weight"].double()
            expected += weight * adapter.modules[name].scale * (B @ A)
        # float32 arithmetic on the upcast factors: far tighter than any half-precision product.
        assert_close(module.delta().double(), expected, atol=2e-6 * max(1.0, float(expected.abs().max())), what=name)
    out = save_merged(merged, tmp_path / "merged")
    assert {t.dtype for t in read_tensors(out).values()} == {torch.float32}


# ----------------------------------------------------------------------------------------------
# Saving is atomic


def test_failed_save_leaves_no_folder_and_no_staging(tmp_path, monkeypatch):
    adapter = load_adapter(save_lora(tmp_path / "src" / "a"))
    merged = merge_adapters([adapter], recipe_for([adapter], [1.0]))
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    (out_parent / "unrelated.txt").write_text("keep me")

    def broken_save_file(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lora, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_merged(merged, out_parent / "merged")
    assert not (out_parent / "merged").exists()
    assert sorted(os.listdir(out_parent)) == ["unrelated.txt"], "a staging folder was left behind"


def test_failed_overwrite_keeps_the_old_folder(tmp_path, monkeypatch):
    adapter = load_adapter(save_lora(tmp_path / "src" / "a"))
    merged = merge_adapters([adapter], recipe_for([adapter], [1.0]))
    out = save_merged(merged, tmp_path / "out" / "merged")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(AdapterError, match="already exists"):
        save_merged(merged, out)

    monkeypatch.setattr(lora, "save_file", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_merged(merged, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(out.parent)) == ["merged"]


# ----------------------------------------------------------------------------------------------
# Bad input: one test each, AdapterError naming the problem


@pytest.fixture
def good(tmp_path) -> Path:
    return save_lora(tmp_path / "good", seed=7)


def test_truncated_safetensors_is_refused(good):
    path = good / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterError, match="safetensors") as err:
        load_adapter(good)
    assert str(path) in str(err.value)


def test_corrupt_safetensors_is_refused(good):
    path = good / WEIGHTS_FILE
    noise = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    path.write_bytes(noise.numpy().tobytes())
    with pytest.raises(AdapterError, match="unreadable safetensors"):
        load_adapter(good)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("factor", ["lora_A", "lora_B"])
def test_non_finite_factor_is_refused(good, bad, factor):
    key = first_key(good, f".{factor}.weight")

    def poison(tensors):
        tensors[key][0, 1] = bad

    rewrite_tensors(good, poison)
    module = key[len("base_model.model."):].rsplit(f".{factor}", 1)[0]
    word = "NaN" if math.isnan(bad) else "Inf"
    with pytest.raises(AdapterError, match=word) as err:
        load_adapter(good)
    assert module in str(err.value) and factor in str(err.value)


def test_mismatched_shapes_across_adapters(tmp_path):
    small = load_adapter(save_lora(tmp_path / "small", seed=1))
    wide = load_adapter(save_lora(tmp_path / "wide", seed=2, hidden_size=24))
    assert small.base_model == wide.base_model  # same name: only the shapes tell them apart
    with pytest.raises(AdapterError, match=r"shape \(16, 16\).*\(24, 24\)") as err:
        check_compatible([small, wide])
    assert "bert.encoder.layer.0.attention.self.query" in str(err.value)
    with pytest.raises(AdapterError, match="shape"):
        merge_adapters([small, wide], recipe_for([small, wide], [1.0, 1.0]))


def test_adapters_of_different_base_models(tmp_path):
    one = load_adapter(save_lora(tmp_path / "one", seed=1))
    other = load_adapter(save_lora(tmp_path / "other", seed=2, base_name="some-other-bert"))
    with pytest.raises(AdapterError, match="different base models") as err:
        check_compatible([one, other])
    assert "tiny-bert" in str(err.value) and "some-other-bert" in str(err.value)


def test_missing_adapter_config(good):
    (good / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="missing adapter_config.json"):
        load_adapter(good)


def test_missing_weights_file(good):
    (good / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"missing {WEIGHTS_FILE}"):
        load_adapter(good)


def test_folder_that_does_not_exist(tmp_path):
    with pytest.raises(AdapterError, match="not a folder"):
        load_adapter(tmp_path / "nowhere")


def test_loha_adapter_is_refused(tmp_path):
    from peft import LoHaConfig, get_peft_model

    from tests.peft_fixtures import tiny_bert

    model = get_peft_model(tiny_bert(), LoHaConfig(r=2, target_modules=["query", "value"]))
    folder = save_peft(model, tmp_path / "loha")
    with pytest.raises(AdapterError, match="PEFT type LOHA is not supported"):
        load_adapter(folder)


def test_prompt_tuning_adapter_is_refused(good):
    edit_config(good, peft_type="PROMPT_TUNING")
    with pytest.raises(AdapterError, match="PROMPT_TUNING"):
        load_adapter(good)


def test_dora_adapter_is_refused(tmp_path):
    folder = save_lora(tmp_path / "dora", use_dora=True)
    assert any("lora_magnitude_vector" in k for k in read_tensors(folder))
    with pytest.raises(AdapterError, match="DoRA"):
        load_adapter(folder)


def test_pickled_bin_with_code_is_refused_without_running_it(tmp_path):
    folder = save_lora(tmp_path / "pickled", safe_serialization=False)
    path = folder / PICKLE_FILE
    assert path.is_file() and not (folder / WEIGHTS_FILE).exists()
    state = torch.load(str(path), weights_only=True)
    sentinel = tmp_path / "pwned.txt"
    state["base_model.model.evil"] = Payload(str(sentinel))
    torch.save(state, str(path))

    with pytest.raises(AdapterError, match="pickle") as err:
        load_adapter(folder)
    assert str(path) in str(err.value)
    assert not sentinel.exists(), "loading the adapter ran the pickle's code"
    # The payload is live: an unsafe load would have run it (so the test above can fail).
    torch.load(str(path), weights_only=False)
    assert sentinel.exists()


def test_pickled_bin_with_non_tensor_values_is_refused(tmp_path):
    folder = save_lora(tmp_path / "pickled", safe_serialization=False)
    path = folder / PICKLE_FILE
    state = torch.load(str(path), weights_only=True)
    state["base_model.model.step"] = 3  # weights_only accepts an int; the loader must not
    torch.save(state, str(path))
    with pytest.raises(AdapterError, match="tensor"):
        load_adapter(folder)


def test_pickled_bin_with_only_tensors_is_accepted(tmp_path):
    model = lora_model("bert", modules_to_save=["classifier"], seed=9)
    from_bin = load_adapter(save_peft(model, tmp_path / "bin", safe_serialization=False))
    from_st = load_adapter(save_peft(model, tmp_path / "st"))
    assert (tmp_path / "bin" / PICKLE_FILE).is_file()
    # An OrderedDict of tensors (what torch.save of a state_dict gives) is fine too.
    state = torch.load(str(tmp_path / "bin" / PICKLE_FILE), weights_only=True)
    torch.save(collections.OrderedDict(state), str(tmp_path / "bin" / PICKLE_FILE))
    from_bin = load_adapter(tmp_path / "bin")
    assert set(from_bin.modules) == set(from_st.modules)
    for name, module in from_bin.modules.items():
        assert torch.equal(module.A, from_st.modules[name].A) and torch.equal(module.B, from_st.modules[name].B)
        assert module.scale == from_st.modules[name].scale
    assert set(from_bin.saved_modules) == {"classifier.weight", "classifier.bias"}


def test_embedding_lora_is_refused(tmp_path):
    folder = save_lora(tmp_path / "emb", target_modules=["word_embeddings", "query"])
    assert any("lora_embedding_A" in k for k in read_tensors(folder))
    with pytest.raises(AdapterError, match="lora_embedding_A.*not a plain linear LoRA factor"):
        load_adapter(folder)


def test_non_finite_saved_module_is_refused(tmp_path):
    folder = save_lora(tmp_path / "head", modules_to_save=["classifier"])

    def poison(tensors):
        tensors["base_model.model.classifier.weight"][0, 0] = float("nan")

    rewrite_tensors(folder, poison)
    with pytest.raises(AdapterError, match="classifier.weight contains NaN"):
        load_adapter(folder)


def test_factor_without_its_partner_is_refused(good):
    key = first_key(good, ".lora_B.weight")
    rewrite_tensors(good, lambda tensors: tensors.pop(key))
    module = key[len("base_model.model."):].rsplit(".lora_B", 1)[0]
    with pytest.raises(AdapterError, match=f"module {module} has no lora_B"):
        load_adapter(good)


def test_update_entry_bound_is_an_upper_bound_and_tight_for_rank_one():
    """|scale·B·A|_max ≤ the bound, on random factors; equal when B and A are outer-product aligned."""
    from merging.adapters.lora import update_entry_bound

    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        A, B = torch.randn(3, 7, generator=generator), torch.randn(5, 3, generator=generator)
        actual = float((0.25 * B.double() @ A.double()).abs().max())
        assert actual <= update_entry_bound(A, B, 0.25) * (1 + 1e-9)
    # rank 1 with B = [[2]] and A = [[3]]: the bound is exactly |scale|·2·3
    assert update_entry_bound(torch.tensor([[3.0]]), torch.tensor([[2.0]]), -0.5) == 3.0
