"""A lab: one loaded base model and its evaluation sets, and the operations the dashboard and the
CLI run on them — merge + evaluate, λ sweeps, OSRM post-hoc projection.

One Lab is shared by every browser tab (Streamlit's cache_resource). Evaluation edits the model's
weights in place, so a lock serialises the work that touches the model: two tabs merging at the
same time wait for each other instead of mixing their updates.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from merging.evaluation import EvalSet, EvaluationResult, Evaluator, evaluate_merge
from merging.lora import Adapter
from merging.merge import MergedAdapter, merge_adapters, resolve_device
from merging.progress import Progress
from merging.progress import phase_share as _phase
from merging.recipe import Recipe


def task_data_for(adapter: Adapter):
    """The data of the task an adapter was trained on, split exactly as when it was trained."""
    from merging.tasks import load_demo_task, load_task_file

    meta = adapter.meta
    task = meta.get("task")
    if not task:
        raise ValueError(f"adapter {adapter.name} does not say which task it was trained on (mergescope.json)")
    split = meta.get("data", {})
    sizes = {k: split[k] for k in ("train_size", "eval_size", "seed") if k in split}
    if meta.get("task_file"):
        return load_task_file(meta["task_file"], name=task, **sizes)
    return load_demo_task(task, **sizes)


def eval_set_for(adapter: Adapter) -> EvalSet:
    data = task_data_for(adapter)
    return EvalSet(adapter.task, list(data.labels), list(data.eval_texts), list(data.eval_labels))


@dataclass
class MergeRun:
    recipe: Recipe
    merged: MergedAdapter
    evaluation: EvaluationResult
    seconds: float

    def results(self) -> dict:
        """JSON-ready: what the run store keeps and the pages show."""
        return {
            **self.evaluation.to_dict(),
            "merge": self.merged.summary(),
            "orthogonalize": {
                name: {
                    "loss": report.orthogonalize.loss,
                    "cosine_before": report.orthogonalize.cosine_before,
                    "cosine_after": report.orthogonalize.cosine_after,
                }
                for name, report in self.merged.reports.items()
                if report.orthogonalize is not None
            },
        }


class Lab:
    def __init__(self, base_model: str, device: str = "auto", max_length: int = 48):
        from merging.models import load_base_model
        from merging.zoo import base_model_dir

        self.base_model = base_model
        self.device = resolve_device(device)
        self.model, self.tokenizer = load_base_model(base_model_dir(base_model), num_labels=2, device=self.device)
        self.max_length = max_length
        self.evaluator = Evaluator(self.model, self.tokenizer, [], device=self.device, max_length=max_length)
        self.single_cache: dict = {}
        self.merged_cache: dict = {}  # merged accuracy by (updates' fingerprint, task, head key)
        self.lock = threading.RLock()

    def prepare(self, adapters: Sequence[Adapter]) -> None:
        """Load and tokenise the evaluation sets of the adapters' tasks (once per task)."""
        for adapter in adapters:
            if adapter.task and adapter.task not in self.evaluator.eval_sets:
                self.evaluator.add_eval_set(eval_set_for(adapter))

    def warm_up(self, adapters: Sequence[Adapter]) -> None:
        """Load the tasks' evaluation sets and score each single adapter and the base model once,
        so the first merge a user runs costs only the merge and its own evaluation."""
        for adapter in adapters:
            with self.lock:  # one adapter at a time: a user's merge can slip in between
                self.prepare([adapter])
                evaluate_merge(self.evaluator, [adapter], None, self.single_cache)

    def merge_and_evaluate(
        self,
        adapters: Sequence[Adapter],
        recipe: Recipe,
        progress: Progress | None = None,
        on_preview: Callable[[EvaluationResult], None] | None = None,
    ) -> MergeRun:
        """Merge, then score every task; `on_preview` gets a first look (see evaluate_merge)."""
        with self.lock:
            start = time.perf_counter()  # after the lock: waiting for the warm-up is not this merge's time
            self.prepare(adapters)
            recipe = on_device(recipe, self.device)
            merged = merge_adapters(adapters, recipe, progress=_phase(progress, 0, 2))
            evaluation = self._evaluate(adapters, merged.adapter.modules, _phase(progress, 1, 2), on_preview)
        return MergeRun(recipe, merged, evaluation, time.perf_counter() - start)

    def _evaluate(self, adapters, modules, progress=None, on_preview=None) -> EvaluationResult:
        if len(self.merged_cache) > 20_000:  # a long session's cache stays small
            self.merged_cache.clear()
        return evaluate_merge(
            self.evaluator, adapters, modules, self.single_cache, progress, on_preview, self.merged_cache
        )

    def sweep(
        self,
        adapters: Sequence[Adapter],
        recipe: Recipe,
        weight_grid: Sequence[Sequence[float]],
        progress: Progress | None = None,
    ) -> list[tuple[list[float], EvaluationResult]]:
        """Merge and evaluate once per weight vector of the grid (e.g. λ·[1, …, 1] for λ in a range)."""
        results = []
        with self.lock:
            self.prepare(adapters)
            for index, weights in enumerate(weight_grid):
                if progress:
                    progress(index, len(weight_grid), f"λ = {', '.join(f'{w:g}' for w in weights)}")
                point = on_device(recipe.with_weights(list(weights)), self.device)
                merged = merge_adapters(adapters, point)
                results.append((list(weights), self._evaluate(adapters, merged.adapter.modules)))
            if progress:
                progress(len(weight_grid), len(weight_grid), "done")
        return results

    def input_features(
        self,
        texts: Sequence[str],
        target_modules: Sequence[str],
        covariance: bool = False,
        progress: Progress | None = None,
    ) -> dict:
        """The base model's inputs at the target modules over `texts` (osrm.ModuleFeatures per module)."""
        from merging.osrm import collect_input_features

        with self.lock:
            return collect_input_features(
                self.model, self.tokenizer, texts, target_modules, self.max_length,
                device=self.device, covariance=covariance, progress=progress,
            )

    def posthoc_osrm(self, adapters: Sequence[Adapter], samples: int = 100) -> list[Adapter]:
        """OSRM after the fact: project each trained update onto the OSRM rows of its task.

        The rows come from the *base* model's input features of the other adapters' tasks
        (their training texts), as OSRM's initialisation would have chosen them.
        """
        from merging.osrm import osrm_A_for_task, posthoc_adapter

        if len(adapters) < 2:
            return list(adapters)
        with self.lock:
            features = {}
            targets = sorted({m.rsplit(".", 1)[-1] for a in adapters for m in a.modules})
            for adapter in adapters:
                features[adapter.name] = self.input_features(task_data_for(adapter).train_texts[:samples], targets)
            result = []
            for adapter in adapters:
                rank = max(m.rank for m in adapter.modules.values())
                rows = osrm_A_for_task(features, adapter.name, rank)
                result.append(posthoc_adapter(adapter, rows, name=f"{adapter.name}-posthoc"))
            return result


def on_device(recipe: Recipe, device: torch.device) -> Recipe:
    """The lab's device wins over the recipe's `auto`: the model and the merge share one device
    (and the stored recipe says which it was)."""
    from dataclasses import replace

    return replace(recipe, device=device.type) if recipe.device == "auto" else recipe
