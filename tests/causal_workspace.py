"""A workspace of causal-LM adapters for the dashboard's tests: a tiny Llama folder, two LoRA
adapters with fixed random factors, and each adapter's evaluation file.

No training is needed for a task an adapter has learned: each adapter's evaluation file holds the
completions that the base model *with that adapter's update written into its weights* produces
greedily (plain torch and `transformers.generate`, not mergescope's code), kept only where the
base model alone produces something else. So on its own task an adapter scores exact match 1 and
the base model 0, and a merge lands measurably in between: the interference the pages show.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from merging.adapters.lora import Adapter, LoraModule, save_adapter
from tests.tiny_models import CAUSAL_WORDS, save_model_folder, tiny_llama

TASKS = ("copy", "reverse")
TARGETS = ("q_proj", "v_proj")
RANK = 4
SCALE = 2.0
COMPLETION_TOKENS = 2
ROWS = 10
LETTERS = [w for w in CAUSAL_WORDS if len(w) == 1 and w.isalpha()]


def _factors(model, seed: int) -> dict[str, LoraModule]:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in TARGETS:
            d_out, d_in = module.weight.shape
            modules[name] = LoraModule(
                torch.randn(RANK, d_in, generator=generator) * 0.5,
                torch.randn(d_out, RANK, generator=generator) * 0.5,
                SCALE,
            )
    return modules


def _greedy(model, tokenizer, prompt: str) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=COMPLETION_TOKENS, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1]:].tolist()


def _with_update(model, modules: dict[str, LoraModule]):
    """A copy of the model with ΔW = scale·B·A added to each target weight (plain torch)."""
    import copy

    changed = copy.deepcopy(model)
    named = dict(changed.named_modules())
    with torch.no_grad():
        for name, module in modules.items():
            named[name].weight += module.scale * module.B @ module.A
    return changed


def _prompts(task: str, count: int = 60) -> list[str]:
    generator = torch.Generator().manual_seed(len(task))
    prompts = []
    for _ in range(count):
        picks = torch.randint(len(LETTERS), (3,), generator=generator).tolist()
        prompts.append(f"{task} : {' '.join(LETTERS[i] for i in picks)} =")
    return prompts


def build_causal_workspace(root: Path) -> dict:
    """Write root/model (tiny Llama), root/workspace/adapters/{copy,reverse}-lora and
    root/evals/{copy,reverse}.jsonl; return their paths."""
    model, tokenizer = tiny_llama(seed=0)
    model_dir = save_model_folder(model, tokenizer, root / "model")
    special = set(tokenizer.all_special_ids)
    adapters, evals = {}, {}
    for seed, task in enumerate(TASKS, start=1):
        modules = _factors(model, seed)
        adapted = _with_update(model, modules)
        rows = []
        for prompt in _prompts(task):
            wanted = _greedy(adapted, tokenizer, prompt)
            if any(t in special for t in wanted) or wanted == _greedy(model, tokenizer, prompt):
                continue
            completion = " " + tokenizer.decode(wanted)
            if tokenizer(completion, add_special_tokens=False).input_ids != wanted:
                continue  # a completion must tokenise back to what was generated
            rows.append({"prompt": prompt, "completion": completion})
            if len(rows) == ROWS:
                break
        assert len(rows) >= 4, f"only {len(rows)} usable rows for {task}"
        evals[task] = root / "evals" / f"{task}.jsonl"
        evals[task].parent.mkdir(parents=True, exist_ok=True)
        evals[task].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        adapter = Adapter(name=f"{task}-lora", modules=modules, base_model=str(model_dir), meta={"init": "standard"})
        adapters[task] = save_adapter(adapter, root / "workspace" / "adapters" / f"{task}-lora")
    return {"model": model_dir, "workspace": root / "workspace", "adapters": adapters, "evals": evals}
