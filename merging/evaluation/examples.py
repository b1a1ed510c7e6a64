"""Examples side by side: what the base model, the task's own adapter and the merge *say* on a few
prompts of each causal task, beside the reference and each body's loss on it.

A score says how much a merge lost; the outputs say what it lost. For the first `count` rows of
each task (file order, as the scorer reads them: merging.evaluation.causal), each body — base, single
(the task's own adapter, with its carried whole tensors) and merged (with the merge's) — is applied
to the loaded model in turn (merging.evaluation.evaluate.updates_applied, restored exactly afterwards) and:

* generates greedily with transformers' own ``generate(do_sample=False)`` from the prompt's ids,
  as many new tokens as the reference has (the exact-match rule's length; it may stop earlier at
  the end-of-sequence token), decoded with special tokens dropped;
* scores the reference: the mean negative log-likelihood of its tokens (nats per token, teacher
  forcing) and its perplexity, exp(loss).

Rows are plain dicts (one per example, `pandas.DataFrame(rows)` shows them): task, line, prompt,
reference, then `output <role>`, `loss <role>`, `perplexity <role>` for each role. The pages and the
CLI only display them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from merging.adapters.lora import Adapter, LoraModule
from merging.evaluation.evaluate import EvaluationError, adapters_by_task, updates_applied

ROLES = ("base", "single", "merged")


def perplexity(loss: float | None) -> float | None:
    """exp(mean token loss in nats): the number of equally likely tokens the loss is worth."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(loss) if loss < 700 else math.inf


def _greedy_and_loss(model, tokenizer, prompt: Sequence[int], reference: Sequence[int], pad_id: int, device) -> tuple[str, list[int], float]:
    ids = torch.tensor([list(prompt)], device=device)
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(reference), do_sample=False,
        pad_token_id=pad_id, num_beams=1,
    )
    generated = out[0, ids.shape[1]:].tolist()
    whole = torch.tensor([list(prompt) + list(reference)], device=device)
    logits = model(input_ids=whole).logits[0, len(prompt) - 1 : -1].float()
    nll = -torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(list(reference), device=device)[:, None])
    return tokenizer.decode(generated, skip_special_tokens=True), generated, float(nll.mean())


def side_by_side(
    lab,
    adapters: Sequence[Adapter],
    recipe,
    count: int,
    merged_modules: Mapping[str, LoraModule] | None = None,
    merged_carried: Mapping[str, torch.Tensor] | None = None,
) -> list[dict]:
    """`count` examples per causal task of `recipe`: the reference, the base / single / merged
    greedy outputs and per-example loss and perplexity (merged only when `merged_modules` is given).

    `lab` is a merging.lab.lab.Lab holding a causal LM; `adapters` the recipe's adapters (as merged).
    """
    if count < 1:
        raise EvaluationError(f"--examples: expected a positive number of examples per task, got {count}")
    if lab.kind != "causal":
        raise EvaluationError("examples side by side are for causal-LM tasks (a classification task has no outputs to show)")
    evaluator = lab.evaluator
    roles = ROLES if merged_modules is not None else ROLES[:2]
    rows: list[dict] = []
    with lab.lock, torch.inference_mode():
        named = lab.prepare(adapters, recipe)
        tasks = adapters_by_task(named)
        bodies = {
            "base": lambda a: (None, None),
            "single": lambda a: (a.modules, dict(a.saved_modules) or None),
            "merged": lambda a: (merged_modules, dict(merged_carried) if merged_carried else None),
        }
        chosen = {task: evaluator.encoded(task)[:count] for task in tasks}
        sets = {task: evaluator.eval_sets[task].examples[:count] for task in tasks}
        outputs: dict[tuple[str, int, str], tuple[str, float]] = {}
        for role in roles:
            for task, adapter in tasks.items():
                modules, carried = bodies[role](adapter)
                with updates_applied(lab.model, modules, carried):
                    for index, example in enumerate(chosen[task]):
                        text, _, loss = _greedy_and_loss(
                            lab.model, lab.tokenizer, example.prompt, example.completion, evaluator.pad_id, lab.device
                        )
                        outputs[(task, index, role)] = (text, loss)
        for task in tasks:
            for index, (example, source) in enumerate(zip(chosen[task], sets[task])):
                row = {"task": task, "line": example.line, "prompt": source.prompt, "reference": source.completion}
                for role in roles:
                    text, loss = outputs[(task, index, role)]
                    row[f"output {role}"] = text
                    row[f"loss {role}"] = loss
                    row[f"perplexity {role}"] = perplexity(loss)
                rows.append(row)
    return rows
