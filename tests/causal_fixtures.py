"""Tiny causal LMs and LoRA adapters trained on them in the test, on learnable synthetic tasks.

The base models are tests/tiny_models.py's in-process `tiny_llama` (q,k,v,o,gate,up,down) and `tiny_gpt2`
(Conv1D c_attn, c_proj, c_fc) with the word-level tokenizer made there; both are saved as local
model folders, so the code under test loads them as a user's would. Each task is a mapping from one
digit to another behind its own cue word ("next 3 =" → " 4", "the 3 =" → " 2"), which a rank-4 LoRA
learns in a few dozen full-batch steps: a trained adapter clearly beats the random base, and two
adapters that rewrite the same digit embeddings in opposite directions interfere when merged.

The oracles here are independent of merging/: the adapters' factors are read straight from the
safetensors file PEFT wrote, ΔW = Σ wᵢ·(α/r)·Bᵢ·Aᵢ is written into a plain transformers model
(transposed for GPT-2's Conv1D), and loss and greedy output are computed from its logits by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}

TASKS = {
    "next": ("next {d} =", lambda d: (d + 1) % 10),
    "previous": ("the {d} =", lambda d: (d - 1) % 10),
}


def task_rows(task: str) -> list[dict]:
    """The ten prompt/completion rows of a synthetic task."""
    template, answer = TASKS[task]
    return [{"prompt": template.format(d=d), "completion": f" {answer(d)}"} for d in range(10)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def base_model(kind: str):
    from tests.tiny_models import tiny_gpt2, tiny_llama

    return tiny_llama(seed=0) if kind == "llama" else tiny_gpt2(seed=0)


def save_base(kind: str, folder: Path) -> Path:
    from tests.tiny_models import save_model_folder

    model, tokenizer = base_model(kind)
    return save_model_folder(model, tokenizer, folder)


def train_adapter(
    kind: str, base_folder: Path, task: str, out: Path, steps: int = 60, seed: int = 0, modules_to_save=None
) -> Path:
    """Train a rank-4 LoRA on `task` for `steps` full-batch Adam steps (and whole copies of
    `modules_to_save`, e.g. ["lm_head"]); save the PEFT folder."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_folder))
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=TARGETS[kind], lora_dropout=0.0,
        fan_in_fan_out=kind == "gpt2", init_lora_weights=True, modules_to_save=modules_to_save,
    )
    peft_model = get_peft_model(model, config)
    rows = task_rows(task)
    inputs, labels = [], []
    for row in rows:
        prompt = tokenizer(row["prompt"]).input_ids
        completion = tokenizer(row["completion"], add_special_tokens=False).input_ids
        inputs.append(prompt + completion)
        labels.append([-100] * len(prompt) + completion)
    ids, targets = torch.tensor(inputs), torch.tensor(labels)  # every row has the same length
    optimiser = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=targets).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    peft_model.eval()
    peft_model.save_pretrained(str(out))
    return out


# ----------------------------------------------------------------------------------------------
# Independent oracles


def lora_updates(folder: Path) -> dict[str, torch.Tensor]:
    """Module name → dense ΔW = (α/r)·B·A of shape (d_out, d_in), from PEFT's own files."""
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    updates = {}
    for key, A in tensors.items():
        if ".lora_A." not in key:
            continue
        name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        B = tensors[key.replace(".lora_A.", ".lora_B.")]
        updates[name] = scale * B.float() @ A.float()
    return updates


def saved_whole_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The modules_to_save tensors PEFT wrote, by the base model's parameter name."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    return {
        key.removeprefix("base_model.model.").replace(".modules_to_save.default", ""): tensor
        for key, tensor in tensors.items()
        if ".lora_" not in key
    }


def model_with_updates(base_folder: Path, adapters: list[Path], weights: list[float], whole: dict | None = None):
    """A plain transformers model with W + Σ wᵢ·ΔWᵢ written into its weights (and the `whole`
    tensors, by parameter name, copied over the base's)."""
    model = AutoModelForCausalLM.from_pretrained(str(base_folder), dtype=torch.float32).eval()
    with torch.no_grad():
        for key, tensor in (whole or {}).items():
            model.get_parameter(key).copy_(tensor)
        for folder, weight in zip(adapters, weights):
            for name, delta in lora_updates(folder).items():
                layer = model.get_submodule(name)
                is_conv1d = type(layer).__name__ == "Conv1D"  # GPT-2 stores (d_in, d_out)
                layer.weight += weight * (delta.T if is_conv1d else delta)
    return model


def hand_loss_and_greedy(
    model, tokenizer, rows: list[dict], max_length: int = 10_000, prompt_special_tokens: bool = True
) -> tuple[float, float]:
    """(mean completion NLL in nats, exact-match share) by hand: one example at a time, a greedy
    loop without a cache, the prompt cut from the left to fit max_length. `prompt_special_tokens`
    False: the prompt is a rendered chat, tokenised as apply_chat_template(tokenize=True) does."""
    nll, tokens, matches = 0.0, 0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"], add_special_tokens=prompt_special_tokens).input_ids
            completion = tokenizer(row["completion"], add_special_tokens=False).input_ids
            prompt = prompt[max(0, len(prompt) + len(completion) - max_length):]
            ids = torch.tensor([prompt + completion])
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for offset, token in enumerate(completion):
                nll -= float(log_probs[len(prompt) - 1 + offset, token])
            tokens += len(completion)
            generated = list(prompt)
            for _ in completion:
                logits = model(input_ids=torch.tensor([generated])).logits[0, -1]
                generated.append(int(logits.argmax()))
            text = tokenizer.decode(generated[len(prompt):], skip_special_tokens=True).strip()
            matches += text == tokenizer.decode(completion, skip_special_tokens=True).strip()
    return nll / tokens, matches / len(rows)
