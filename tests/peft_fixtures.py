"""Tiny real PEFT adapters, built in-process from configs (no network, no hub names).

`tiny_bert` / `tiny_llama` build a small base model with a fixed seed, so two calls with the same
arguments give the same weights: an adapter saved from one copy can be loaded into a fresh one.
`lora_model` wraps a base with `peft.get_peft_model` and fills LoRA A and B (and any
`modules_to_save` copies) with seeded random values, since PEFT initialises B to zero and a zero
update would make every comparison pass trivially. `save_lora` does both and writes the folder.

Helpers that damage a saved folder (edit the config, rewrite tensors, cast dtypes) live here too,
so the tests read as one line per bad input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from tests.tiny_models import bare_bert, bare_llama

# PEFT looks a base model name up on the Hub when saving unless offline; never reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

BERT_NAME = "tiny-bert"
LLAMA_NAME = "tiny-llama"
BERT_TARGETS = ("query", "value", "intermediate.dense")
LLAMA_TARGETS = ("q_proj", "v_proj", "up_proj", "down_proj")

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"


tiny_bert = bare_bert  # the names the PEFT tests use
tiny_llama = bare_llama


BASES: dict[str, Callable[..., torch.nn.Module]] = {"bert": tiny_bert, "llama": tiny_llama}
TARGETS = {"bert": BERT_TARGETS, "llama": LLAMA_TARGETS}


def randomize_lora(model: torch.nn.Module, seed: int, adapter: str = "default", std: float = 0.3) -> None:
    """Fill every LoRA A and B (and every modules_to_save copy) of `adapter` with seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, module in sorted(model.named_modules(), key=lambda item: item[0]):
            for attr in ("lora_A", "lora_B"):
                holder = getattr(module, attr, None)
                if isinstance(holder, torch.nn.ModuleDict) and adapter in holder:
                    weight = holder[adapter].weight
                    weight.copy_(torch.randn(weight.shape, generator=generator) * std)
            copies = getattr(module, "modules_to_save", None)
            if isinstance(copies, torch.nn.ModuleDict) and adapter in copies:
                for parameter in copies[adapter].parameters():
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))


def lora_model(
    base: str | torch.nn.Module = "bert",
    *,
    rank: int = 4,
    lora_alpha: float = 8,
    target_modules: Iterable[str] | None = None,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    modules_to_save: Iterable[str] | None = None,
    seed: int = 1,
    base_seed: int = 0,
    base_name: str | None = None,
    hidden_size: int = 16,
    **extra,
) -> PeftModel:
    """A PeftModel with random non-zero LoRA factors on a tiny base ("bert", "llama" or a model)."""
    if isinstance(base, str):
        kind = base
        kwargs = {"hidden_size": hidden_size}
        if base_name is not None:
            kwargs["name"] = base_name
        base = BASES[kind](base_seed, **kwargs)
        target_modules = list(target_modules or TARGETS[kind])
    config = LoraConfig(
        r=rank,
        lora_alpha=lora_alpha,
        target_modules=list(target_modules) if target_modules is not None else None,
        use_rslora=use_rslora,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        lora_dropout=0.0,
        **extra,
    )
    model = get_peft_model(base, config)
    randomize_lora(model, seed)
    return model.eval()


def save_peft(model: PeftModel, folder: str | os.PathLike, safe_serialization: bool = True) -> Path:
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=safe_serialization, save_embedding_layers=False)
    return folder


def save_lora(folder: str | os.PathLike, base: str = "bert", safe_serialization: bool = True, **kwargs) -> Path:
    """Build a random LoRA adapter on a tiny base (see `lora_model`) and save it as a PEFT folder."""
    return save_peft(lora_model(base, **kwargs), folder, safe_serialization)


# ----------------------------------------------------------------------------------------------
# Oracles: what PEFT itself says about a PeftModel


def lora_layers(model: PeftModel, adapter: str = "default") -> dict[str, torch.nn.Module]:
    """PEFT's LoRA layers by the base model's own module name (no `base_model.model.` prefix)."""
    prefix = "base_model.model."
    layers = {}
    for name, module in model.named_modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and adapter in scaling and hasattr(module, "get_delta_weight"):
            layers[name[len(prefix):] if name.startswith(prefix) else name] = module
    return layers


def peft_scales(model: PeftModel, adapter: str = "default") -> dict[str, float]:
    return {name: float(layer.scaling[adapter]) for name, layer in lora_layers(model, adapter).items()}


def peft_deltas(model: PeftModel, adapter: str = "default") -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            name: layer.get_delta_weight(adapter).detach().float().clone()
            for name, layer in lora_layers(model, adapter).items()
        }


def load_into_fresh_base(folder: str | os.PathLike, base: str = "bert", base_seed: int = 0) -> PeftModel:
    return PeftModel.from_pretrained(BASES[base](base_seed), str(folder)).eval()


def base_plus(deltas: Mapping[str, torch.Tensor], base: str = "bert", base_seed: int = 0) -> torch.nn.Module:
    """A fresh base model with the dense updates added to its weights."""
    model = BASES[base](base_seed)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, delta in deltas.items():
            modules[name].weight.add_(delta.to(modules[name].weight.dtype))
    return model


def sample_inputs(seed: int = 0, batch: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, 64, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits.float()


# ----------------------------------------------------------------------------------------------
# Damaging a saved folder


def edit_config(folder: str | os.PathLike, **changes) -> dict:
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")
    return config


def read_tensors(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / WEIGHTS_FILE))


def rewrite_tensors(folder: str | os.PathLike, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Load the safetensors file, let `change` edit the dict in place, write it back."""
    path = Path(folder) / WEIGHTS_FILE
    tensors = {k: v.clone() for k, v in load_file(str(path)).items()}
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def cast_tensors(folder: str | os.PathLike, dtype: torch.dtype) -> None:
    def cast(tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            if tensor.is_floating_point():
                tensors[key] = tensor.to(dtype)

    rewrite_tensors(folder, cast)


def first_key(folder: str | os.PathLike, suffix: str) -> str:
    return sorted(k for k in read_tensors(folder) if k.endswith(suffix))[0]


# A pickle payload that does something when unpickled: a safe loader must never run it.
def touch(path: str) -> str:
    Path(path).write_text("the pickle ran code", encoding="utf-8")
    return path


class Payload:
    """Unpickling this calls `touch(path)`; `weights_only=True` refuses the global."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (touch, (self.path,))
