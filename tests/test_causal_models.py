"""Causal LMs as base models: where they come from, GPT-2's Conv1D, carried embeddings, dtypes.

Every model is built in-process from a config (tests/tiny_models.py: tiny_llama / tiny_gpt2, with a
word-level tokenizer made in-process) and saved as a local folder; nothing is downloaded. Adapters
are real PEFT LoRA adapters (peft.get_peft_model) with seeded random factors, since PEFT starts B at
zero. The oracle for "the merged update applied in place" is independent of mergescope's reader:
ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ taken from the PEFT modules' own lora_A / lora_B / scaling, written into a fresh
plain transformers model by hand (transposed for a Conv1D), whose logits are compared.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from merging.adapters.lora import load_adapter
from merging.engine.merge import merge_adapters, save_merged
from merging.evaluation.evaluate import Evaluator, updates_applied
from merging.models.base import (
    ModelLoadError,
    hub_cache_dir,
    load_base_model,
    model_kind,
    resolve_dtype,
    resolve_model_source,
)
from merging.recipe.codec import recipe_from_dict
from tests.tiny_models import save_model_folder, tiny_causal_tokenizer, tiny_gpt2, tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
PROMPTS = ["copy a b c :", "reverse 1 2 3 : 3", "next number 4 5 6 ?"]
BUILDERS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def _ids(tokenizer) -> torch.Tensor:
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def _logits(model, tokenizer) -> torch.Tensor:
    ids, mask = _ids(tokenizer)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits.float()


def peft_adapter(kind: str, folder: Path, seed: int, modules_to_save=None, rank: int = 4, alpha: float = 8, **base):
    """A PEFT LoRA adapter on the tiny `kind` model, factors and saved copies seeded; saved to `folder`."""
    model, _ = BUILDERS[kind](seed=0, **base)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0,
        target_modules=LLAMA_TARGETS if kind == "llama" else GPT2_TARGETS,
        fan_in_fan_out=kind == "gpt2",  # GPT-2's Conv1D stores its weight (d_in, d_out)
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(peft_model.named_parameters()):
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
            elif "modules_to_save" in name:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(str(folder))
    return peft_model.eval()


def peft_deltas(peft_model) -> dict[str, torch.Tensor]:
    """ΔW = scaling·B·A per module from the PEFT layers themselves, in (d_out, d_in) layout."""
    deltas = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            A = module.lora_A["default"].weight.detach().float()
            B = module.lora_B["default"].weight.detach().float()
            deltas[name.removeprefix("base_model.model.")] = module.scaling["default"] * (B @ A)
    return deltas


def written_in(kind: str, deltas: dict[str, torch.Tensor], weights, carried=None, **base):
    """A plain transformers model: base weights + Σ wᵢ·ΔWᵢ, written in by hand; then `carried`."""
    model, _ = BUILDERS[kind](seed=0, **base)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for delta_set, weight in zip(deltas, weights):
            for name, delta in delta_set.items():
                layer = modules[name]
                if kind == "gpt2":  # Conv1D: weight is (d_in, d_out)
                    assert tuple(layer.weight.shape) == tuple(delta.T.shape)
                    layer.weight += weight * delta.T
                else:
                    layer.weight += weight * delta
        parameters = dict(model.named_parameters(remove_duplicate=False))
        for key, tensor in (carried or {}).items():
            parameters[key].copy_(tensor)
    return model


def _recipe(paths, weights, **extra):
    return recipe_from_dict({"adapters": [{"path": str(p), "weight": w} for p, w in zip(paths, weights)], **extra})


# ----------------------------------------------------------------------------------------------
# Tiny models and their tokenizer


def test_the_in_process_tokenizer_splits_words_adds_bos_and_renders_chat():
    tokenizer = tiny_causal_tokenizer()
    prompt = tokenizer("copy a b :").input_ids
    completion = tokenizer("a b", add_special_tokens=False).input_ids
    assert prompt[0] == tokenizer.bos_token_id and len(prompt) == 5 and len(completion) == 2
    assert tokenizer.unk_token_id not in prompt + completion
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "copy a"}, {"role": "assistant", "content": "a"}], tokenize=False
    )
    assert text == "<|user|> copy a </s> <|assistant|> a </s> "
    assert tokenizer.decode(completion).strip() == "a b"


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_saved_tiny_model_loads_back_as_a_causal_lm_with_the_same_logits(tmp_path, kind):
    model, tokenizer = BUILDERS[kind](seed=3)
    folder = save_model_folder(model, tokenizer, tmp_path / kind, max_shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()  # sharded: the index path is read
    assert model_kind(folder) == "causal" and model_kind(model.config) == "causal"
    loaded, loaded_tokenizer = load_base_model(folder, dtype="auto", device="cpu")
    assert type(loaded) is type(model) and loaded.dtype == torch.float32  # auto on the CPU
    assert torch.equal(_logits(loaded, loaded_tokenizer), _logits(model, tokenizer))


def test_the_demo_encoder_is_a_classification_base():
    assert model_kind({"architectures": ["BertModel"], "model_type": "bert"}) == "classification"
    assert model_kind({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}) == "causal"
    assert model_kind({"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}) == "classification"
    assert model_kind({"model_type": "mistral"}) == "causal"


def test_dtype_auto_is_float32_on_the_cpu_and_bfloat16_on_cuda(tmp_path):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ModelLoadError, match="dtype must be one of"):
        resolve_dtype("fp8", "cpu")
    model, tokenizer = tiny_llama()
    folder = save_model_folder(model, tokenizer, tmp_path / "llama")
    loaded, _ = load_base_model(folder, kind="causal", dtype="bfloat16")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Where the base model comes from


def _fake_cache(root: Path, repo_id: str, model_folder: Path, revision: str = "0123abcd" * 5) -> Path:
    """A hub cache laid out as huggingface_hub lays it: models--org--name/{refs/main, snapshots/<hash>/}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    blobs = repo / "blobs"
    blobs.mkdir()
    for path in model_folder.iterdir():  # the hub stores blobs and links them from the snapshot
        blob = blobs / f"blob-{path.name}"
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_a_hub_id_is_found_in_the_cache_that_hf_hub_cache_names(tmp_path, monkeypatch):
    model, tokenizer = tiny_llama(seed=5)
    source = save_model_folder(model, tokenizer, tmp_path / "source")
    snapshot = _fake_cache(tmp_path / "cache", "acme/tiny-llama", source)
    monkeypatch.chdir(tmp_path)  # no folder ./acme/tiny-llama
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == tmp_path / "cache"
    assert resolve_model_source("acme/tiny-llama") == snapshot
    loaded, loaded_tokenizer = load_base_model("acme/tiny-llama", kind="causal")
    assert torch.equal(_logits(loaded, loaded_tokenizer), _logits(model, tokenizer))
    # HF_HOME/hub when HF_HUB_CACHE is not set
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    _fake_cache(tmp_path / "home" / "hub", "acme/other", source)
    assert resolve_model_source("acme/other").parent.parent.name == "models--acme--other"


def test_no_spec_and_the_demos_names_give_the_packaged_minilm():
    from merging.models.base import DEMO_BASE_MODEL, DEMO_MODEL_ID, demo_model_dir

    folder = demo_model_dir()
    assert resolve_model_source(None) == resolve_model_source(DEMO_MODEL_ID) == resolve_model_source(DEMO_BASE_MODEL) == folder
    assert model_kind(folder) == "classification"


def test_a_missing_model_names_the_folder_and_the_cache_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_source("Qwen/Qwen2-0.5B")
    message = str(caught.value)
    assert str(tmp_path / "Qwen" / "Qwen2-0.5B") in message
    assert str(tmp_path / "empty-cache") in message and "models--Qwen--Qwen2-0.5B" in message
    assert "never downloads" in message


def test_a_folder_with_pickled_weights_only_is_refused(tmp_path):
    model, tokenizer = tiny_llama()
    folder = save_model_folder(model, tokenizer, tmp_path / "pickled")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pickled weights.*safetensors only"):
        load_base_model(folder, kind="causal")


def test_a_sharded_index_naming_a_missing_shard_is_refused(tmp_path):
    model, tokenizer = tiny_llama()
    folder = save_model_folder(model, tokenizer, tmp_path / "sharded", max_shard_size="40KB")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelLoadError, match=f"names shard {shard.name}, which is missing"):
        resolve_model_source(folder)


# ----------------------------------------------------------------------------------------------
# The merged update applied in place: Llama-style and GPT-2 (Conv1D, fan_in_fan_out)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_single_adapter_applied_in_place_gives_the_peft_models_logits(tmp_path, kind):
    peft_model = peft_adapter(kind, tmp_path / "a", seed=1)
    adapter = load_adapter(tmp_path / "a")
    if kind == "gpt2":
        assert adapter.config["fan_in_fan_out"] is True and "transformer.h.0.attn.c_attn" in adapter.modules
    base, tokenizer = BUILDERS[kind](seed=0)
    before = _logits(base, tokenizer)
    with updates_applied(base, adapter.modules):
        inside = _logits(base, tokenizer)
    assert torch.allclose(inside, _logits(peft_model, tokenizer), atol=1e-5)
    assert not torch.allclose(inside, before, atol=1e-3)  # the update is not negligible
    assert torch.equal(_logits(base, tokenizer), before)  # restored exactly


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_merge_applied_in_place_equals_base_plus_the_weighted_sum_written_by_hand(tmp_path, kind):
    models = [peft_adapter(kind, tmp_path / f"a{i}", seed=10 + i, alpha=a) for i, a in enumerate((8, 4))]
    weights = [0.7, -0.4]
    merged = merge_adapters([load_adapter(tmp_path / f"a{i}") for i in range(2)], _recipe(
        [tmp_path / "a0", tmp_path / "a1"], weights))
    oracle = written_in(kind, [peft_deltas(m) for m in models], weights)
    base, tokenizer = BUILDERS[kind](seed=0)
    evaluator = Evaluator(base, tokenizer, [])  # a causal model: no head needed to apply updates
    assert evaluator.head_name is None
    with evaluator.updates_applied(merged.adapter.modules):
        got = _logits(base, tokenizer)
    assert torch.allclose(got, _logits(oracle, tokenizer), atol=1e-4)


def test_a_bfloat16_base_gets_w_plus_delta_rounded_once(tmp_path):
    peft_adapter("llama", tmp_path / "a", seed=4)
    adapter = load_adapter(tmp_path / "a")
    base, _ = tiny_llama()
    base = base.to(torch.bfloat16)
    name = "model.layers.0.self_attn.q_proj"
    layer = dict(base.named_modules())[name]
    original = layer.weight.detach().clone()
    with updates_applied(base, {name: adapter.modules[name]}):
        expected = (original.float() + adapter.modules[name].delta()).to(torch.bfloat16)
        assert torch.equal(layer.weight, expected)
    assert torch.equal(layer.weight, original)


# ----------------------------------------------------------------------------------------------
# modules_to_save: carried by the recipe's rule, tied embeddings stay tied


def test_embed_tokens_and_lm_head_are_carried_as_the_weighted_average_or_the_first_copy(tmp_path):
    carried = ["embed_tokens", "lm_head"]
    models = [peft_adapter("llama", tmp_path / f"a{i}", seed=20 + i, modules_to_save=carried) for i in range(2)]
    adapters = [load_adapter(tmp_path / f"a{i}") for i in range(2)]
    copies = [
        {k: dict(m.named_parameters())[f"base_model.model.{k.rsplit('.', 1)[0]}.modules_to_save.default.weight"]
         for k in ("model.embed_tokens.weight", "lm_head.weight")} for m in models
    ]
    weights = [0.6, 0.2]
    paths = [tmp_path / "a0", tmp_path / "a1"]
    average = merge_adapters(adapters, _recipe(paths, weights))
    first = merge_adapters(adapters, _recipe(paths, weights, modules_to_save="first"))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        expected = (0.6 * copies[0][key] + 0.2 * copies[1][key]) / 0.8
        assert torch.allclose(average.adapter.saved_modules[key], expected, atol=1e-6)
        assert torch.equal(first.adapter.saved_modules[key], copies[0][key].detach())
    assert average.summary()["modules_to_save"]["lm_head.weight"] == {
        "rule": "average", "from": ["a0", "a1"], "shares": [0.75, 0.25]}
    assert first.summary()["modules_to_save"]["lm_head.weight"]["from"] == ["a0"]
    assert not average.heads  # embeddings are not task heads

    # the merged PEFT folder carries them as modules_to_save, and PEFT loads it to the same model
    out = save_merged(average, tmp_path / "merged")
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["modules_to_save"]) == ["lm_head", "model.embed_tokens"]
    from peft import PeftModel

    base, tokenizer = tiny_llama()
    reloaded = PeftModel.from_pretrained(tiny_llama()[0], str(out)).eval()
    oracle = written_in(
        "llama", [peft_deltas(m) for m in models], weights,
        carried={k: average.adapter.saved_modules[k] for k in ("model.embed_tokens.weight", "lm_head.weight")},
    )
    assert torch.allclose(_logits(reloaded, tokenizer), _logits(oracle, tokenizer), atol=1e-4)
    with updates_applied(base, average.adapter.modules, average.adapter.saved_modules):
        assert torch.allclose(_logits(base, tokenizer), _logits(oracle, tokenizer), atol=1e-4)


def test_a_carried_lm_head_of_a_tied_gpt2_serves_both_names_in_place(tmp_path):
    peft_adapter("gpt2", tmp_path / "a", seed=30, modules_to_save=["lm_head"])
    adapter = load_adapter(tmp_path / "a")
    assert set(adapter.saved_modules) == {"lm_head.weight"}
    base, _ = tiny_gpt2()
    embedding = base.transformer.wte.weight
    original = embedding.detach().clone()
    with updates_applied(base, adapter.modules, adapter.saved_modules):
        assert base.lm_head.weight is embedding  # still one tensor
        assert torch.equal(embedding, adapter.saved_modules["lm_head.weight"])
    assert torch.equal(embedding, original)


def test_gpt2_merges_keep_fan_in_fan_out_in_the_written_config(tmp_path):
    for i in range(2):
        peft_adapter("gpt2", tmp_path / f"a{i}", seed=40 + i)
    adapters = [load_adapter(tmp_path / f"a{i}") for i in range(2)]
    merged = merge_adapters(adapters, _recipe([tmp_path / "a0", tmp_path / "a1"], [0.5, 0.5], dtype="bfloat16"))
    out = save_merged(merged, tmp_path / "merged")
    assert json.loads((out / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    reread = load_adapter(out)
    assert {m.A.dtype for m in reread.modules.values()} == {torch.bfloat16}  # the recipe's dtype


def test_trained_biases_of_lora_layers_are_carried_under_the_base_models_names(tmp_path):
    from peft import PeftModel

    model, tokenizer = tiny_gpt2()
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True,
                                                  bias="lora_only", lora_dropout=0.0))
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in sorted(peft_model.named_parameters()):
            if "lora_" in name or name.endswith("c_attn.base_layer.bias"):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(str(tmp_path / "a"))
    adapter = load_adapter(tmp_path / "a")
    # PEFT saves them as ...c_attn.base_layer.bias; the base model calls them ...c_attn.bias
    assert set(adapter.saved_modules) == {f"transformer.h.{i}.attn.c_attn.bias" for i in range(2)}
    merged = merge_adapters([adapter], _recipe([tmp_path / "a"], [1.0]))
    expected = _logits(peft_model.eval(), tokenizer)
    base, _ = tiny_gpt2()
    with updates_applied(base, merged.adapter.modules, merged.adapter.saved_modules):
        assert torch.allclose(_logits(base, tokenizer), expected, atol=1e-5)
    out = save_merged(merged, tmp_path / "merged")
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] is None  # PEFT's `bias` loads them
    reloaded = PeftModel.from_pretrained(tiny_gpt2()[0], str(out)).eval()
    assert torch.allclose(_logits(reloaded, tokenizer), expected, atol=1e-5)
