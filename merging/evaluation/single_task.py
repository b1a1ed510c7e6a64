"""One adapter alone on the task it is scored on: the Adapters page's single-task score.

A classification adapter records its single-task accuracy when it is trained (mergescope.json). A
causal-LM adapter is scored on the evaluation file attached to it, so its score exists only once a
file is attached: exact match, and the completion loss with its perplexity exp(loss). The Lab's
single-adapter cache keeps it, so the Merge page's first run reuses it.
"""

from __future__ import annotations

import math

from merging.adapters.lora import Adapter
from merging.evaluation.evaluate import evaluate_merge
from merging.recipe.codec import AdapterRef, Recipe


def single_task_score(lab, adapter: Adapter, eval_file: str, task: str, path: str = "") -> dict:
    """{"task", "metric", "single", "base", "loss", "perplexity"} of `adapter` alone on `eval_file`
    (scored as `task`), with `lab`'s model; loss and perplexity are None for a classification task."""
    recipe = Recipe(adapters=(AdapterRef(path=path or adapter.name, name=adapter.name, eval=str(eval_file), task=task),))
    with lab.lock:
        named = lab.prepare([adapter], recipe)
        result = evaluate_merge(lab.evaluator, named, None, lab.single_cache)
    scores = result.tasks[task]
    loss = (scores.loss or {}).get("single")
    return {
        "task": task,
        "metric": scores.metric,
        "single": scores.single,
        "base": scores.base,
        "loss": loss,
        "perplexity": math.exp(loss) if loss is not None and loss < 700 else None,
    }
