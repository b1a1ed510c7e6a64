"""Full-model export (merging/engine/export.py, `merge --full-model`): loadable, exact, sharded, atomic, lean.

The oracle is a plain transformers model with base weights + Σ wᵢ·sᵢ·Bᵢ·Aᵢ written in by hand from
the PEFT layers' own factors (tests/test_causal_models.py `written_in`), plus the carried tensors or
the task head; the export must load with from_pretrained and give its logits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from merging.adapters.lora import load_adapter
from merging.cli import main
from merging.engine.export import EXPORT_MARKER, ExportError, export_merged
from merging.engine.merge import merge_adapters
from tests.browser_support import HANG_GUARD_S
from tests.test_causal_models import BUILDERS, _logits, _recipe, peft_adapter, peft_deltas, written_in
from tests.tiny_models import save_model_folder, tiny_bert

REPO = Path(__file__).resolve().parent.parent


def _base_folder(kind: str, tmp_path: Path, **base) -> Path:
    model, tokenizer = BUILDERS[kind](seed=0, **base)
    return save_model_folder(model, tokenizer, tmp_path / f"{kind}-base")


def _shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_sharded_export_loads_with_from_pretrained_and_gives_base_plus_the_merge(tmp_path, kind):
    base_dir = _base_folder(kind, tmp_path)
    carried = ["embed_tokens", "lm_head"] if kind == "llama" else ["lm_head"]
    models = [peft_adapter(kind, tmp_path / f"a{i}", seed=50 + i, modules_to_save=carried) for i in range(2)]
    weights = [0.8, 0.3]
    recipe = _recipe([tmp_path / "a0", tmp_path / "a1"], weights, base_model=str(base_dir))
    merged = merge_adapters([load_adapter(tmp_path / f"a{i}") for i in range(2)], recipe)
    report = export_merged(merged, base_dir, tmp_path / "out", max_shard_size="30KB")

    out = tmp_path / "out"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert report.shards == len(_shards(out)) > 2
    assert set(index["weight_map"].values()) == {p.name for p in _shards(out)}
    assert index["metadata"]["total_size"] == report.bytes
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", EXPORT_MARKER):
        assert (out / name).is_file(), name
    loaded = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    _, tokenizer = BUILDERS[kind]()
    oracle = written_in(kind, [peft_deltas(m) for m in models], weights, carried=merged.adapter.saved_modules)
    assert torch.allclose(_logits(loaded, tokenizer), _logits(oracle, tokenizer), atol=1e-4)
    base, _ = BUILDERS[kind]()
    assert not torch.allclose(_logits(loaded, tokenizer), _logits(base, tokenizer), atol=1e-2)


def test_a_tied_gpt2_export_stays_tied_with_the_carried_lm_head(tmp_path):
    base_dir = _base_folder("gpt2", tmp_path)
    peft_adapter("gpt2", tmp_path / "a", seed=60, modules_to_save=["lm_head"])
    merged = merge_adapters([load_adapter(tmp_path / "a")], _recipe([tmp_path / "a"], [1.0]))
    export_merged(merged, base_dir, tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert loaded.config.tie_word_embeddings
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    assert torch.equal(loaded.transformer.wte.weight, merged.adapter.saved_modules["lm_head.weight"])


def test_a_tied_llama_whose_adapters_carry_two_different_copies_keeps_the_embedding_and_says_so(tmp_path):
    base_dir = _base_folder("llama", tmp_path, tie_word_embeddings=True)
    peft_adapter("llama", tmp_path / "a", seed=61, modules_to_save=["embed_tokens", "lm_head"],
                 tie_word_embeddings=True)
    merged = merge_adapters([load_adapter(tmp_path / "a")], _recipe([tmp_path / "a"], [1.0]))
    saved = merged.adapter.saved_modules
    assert not torch.equal(saved["model.embed_tokens.weight"], saved["lm_head.weight"])
    report = export_merged(merged, base_dir, tmp_path / "out")
    assert any("tied" in note and "model.embed_tokens.weight" in note for note in report.notes)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.model.embed_tokens.weight, saved["model.embed_tokens.weight"])


def _bert_adapter(folder: Path, seed: int, labels: int = 3):
    base, _ = tiny_bert(num_labels=labels)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                            modules_to_save=["classifier"], lora_dropout=0.0))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(str(folder))
    (folder / "mergescope.json").write_text(json.dumps({"task": f"t{seed}", "labels": ["x", "y", "z"]}))
    return model.eval()


@pytest.mark.parametrize("bare_encoder", [False, True])
def test_a_classification_export_takes_one_tasks_head_and_loads_as_a_classifier(tmp_path, bare_encoder):
    model, tokenizer = tiny_bert(num_labels=3)
    # bare_encoder: a BertModel checkpoint without the "bert." prefix and without a head (the demo MiniLM)
    base_dir = save_model_folder(model.bert if bare_encoder else model, tokenizer, tmp_path / "base")
    models = [_bert_adapter(tmp_path / f"a{i}", seed=70 + i) for i in range(2)]
    weights = [0.5, 1.2]
    merged = merge_adapters([load_adapter(tmp_path / f"a{i}") for i in range(2)],
                            _recipe([tmp_path / "a0", tmp_path / "a1"], weights))
    report = export_merged(merged, base_dir, tmp_path / "out", head_from="a1")
    assert report.head_from == "a1" and report.kind == "classification"
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out")).eval()
    assert loaded.config.id2label == {0: "x", 1: "y", 2: "z"}

    oracle, _ = tiny_bert(num_labels=3)
    modules = dict(oracle.named_modules())
    head = models[1].base_model.model.classifier.modules_to_save["default"]
    with torch.no_grad():
        for deltas, weight in zip([peft_deltas(m) for m in models], weights):
            for name, delta in deltas.items():
                modules[name].weight += weight * delta
        oracle.classifier.weight.copy_(head.weight)
        oracle.classifier.bias.copy_(head.bias)
    batch = tokenizer(["good great film", "awful boring plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, oracle(**batch).logits, atol=1e-5)


def test_a_failed_export_leaves_nothing_and_only_an_export_is_replaced(tmp_path):
    base_dir = _base_folder("llama", tmp_path)
    peft_adapter("llama", tmp_path / "wide", seed=80, hidden=48)  # adapter of another base model
    merged = merge_adapters([load_adapter(tmp_path / "wide")], _recipe([tmp_path / "wide"], [1.0]))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ExportError, match="does not fit the base weight"):
        export_merged(merged, base_dir, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no staging leftovers

    peft_adapter("llama", tmp_path / "a", seed=81)
    merged = merge_adapters([load_adapter(tmp_path / "a")], _recipe([tmp_path / "a"], [1.0]))
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not a mergescope/PEFT output"):
        export_merged(merged, base_dir, precious, overwrite=True)
    assert (precious / "notes.txt").read_text() == "mine"
    export_merged(merged, base_dir, tmp_path / "out")
    with pytest.raises(ExportError, match="already exists"):
        export_merged(merged, base_dir, tmp_path / "out")
    export_merged(merged, base_dir, tmp_path / "out", overwrite=True, dtype="float16")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def _write_recipe(tmp_path: Path, paths, weights, **extra) -> Path:
    recipe = {"adapters": [{"path": str(p), "weight": w} for p, w in zip(paths, weights)], **extra}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def test_the_cli_writes_a_full_model_in_the_asked_dtype_and_the_peft_folder_by_default(tmp_path, capsys):
    base_dir = _base_folder("gpt2", tmp_path)
    for i in range(2):
        peft_adapter("gpt2", tmp_path / f"a{i}", seed=90 + i)
    recipe = _write_recipe(tmp_path, [tmp_path / "a0", tmp_path / "a1"], [0.5, 0.5], base_model=str(base_dir))
    assert main(["merge", str(recipe), "--out", str(tmp_path / "peft")]) == 0
    assert (tmp_path / "peft" / "adapter_config.json").is_file()
    capsys.readouterr()
    code = main(["merge", str(recipe), "--out", str(tmp_path / "full"), "--full-model", "--dtype", "bfloat16",
                 "--max-shard-size", "50KB"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["output"] == "full model" and summary["dtype"] == "bfloat16"
    assert summary["export"]["shards"] == len(_shards(tmp_path / "full")) > 1
    assert summary["memory"]["peak_rss_bytes"] > 0
    with safe_open(str(_shards(tmp_path / "full")[0]), "pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}  # noqa: SIM118
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full"))
    assert loaded.dtype == torch.bfloat16


def test_the_cli_says_which_folder_and_cache_it_searched_for_a_missing_base(tmp_path, capsys, monkeypatch):
    peft_adapter("llama", tmp_path / "a", seed=95)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    recipe = _write_recipe(tmp_path, [tmp_path / "a"], [1.0], base_model="acme/not-cached")
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out"), "--full-model"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: base model 'acme/not-cached' not found")
    assert str(tmp_path / "cache") in error and str(tmp_path / "acme" / "not-cached") in error
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Peak memory: streamed shard by shard, about one base copy at most

_MEASURE = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from merging.engine.export import export_merged, model_layout
    from merging.adapters.lora import load_adapter
    from merging.engine.merge import merge_adapters
    from merging.recipe.codec import recipe_from_dict

    def status(field):  # kB in /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    base, adapter, out = sys.argv[1:4]
    merged = merge_adapters([load_adapter(adapter)], recipe_from_dict({"adapters": [adapter]}))
    model_layout(Path(base), "causal")  # one-time imports of the model's code are not the export's
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = status("VmRSS")
    report = export_merged(merged, base, out, max_shard_size="16MB")
    print(json.dumps({"before": before, "peak": status("VmHWM"), "bytes": report.bytes, "shards": report.shards}))
    """
)


def test_a_full_model_export_holds_well_under_one_copy_of_the_base(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_models import tiny_causal_tokenizer

    tokenizer = tiny_causal_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base_dir = save_model_folder(model, tokenizer, tmp_path / "base")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.01)
    peft.save_pretrained(str(tmp_path / "a"))
    del model, peft
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(base_dir), str(tmp_path / "a"), str(tmp_path / "out")],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=HANG_GUARD_S,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["before"]
    print(f"\nfull-model export: base {size / 1e6:.1f} MB, {measured['shards']} shards, "
          f"peak RSS growth {growth / 1e6:.1f} MB ({growth / size:.2f}× the base), "
          f"peak RSS {measured['peak'] / 1e6:.1f} MB (process, imports included)")
    assert measured["bytes"] == size
    # streamed: one 16 MB output shard and the input pages behind it; loading the base whole would be ≥ 1× (measured: ~0.5×)
    assert growth < 1.0 * size
