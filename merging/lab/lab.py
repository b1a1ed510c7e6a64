"""A lab: one loaded base model and its evaluation sets, and the operations the dashboard and the
CLI run on them — merge + evaluate, λ sweeps, OSRM post-hoc projection.

One Lab is shared by every browser tab (Streamlit's cache_resource). Evaluation edits the model's
weights in place, so a lock serialises the work that touches the model: two tabs merging at the
same time wait for each other instead of mixing their updates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from merging.adapters.lora import Adapter
from merging.core.progress import Progress
from merging.core.progress import phase_share as _phase
from merging.engine.merge import MergedAdapter, merge_adapters
from merging.evaluation.causal import CausalEvaluator
from merging.evaluation.evaluate import EvalSet, EvaluationError, EvaluationResult, Evaluator, Tally, evaluate_merge
from merging.models.base import load_base_model, model_kind, resolve_model_source
from merging.models.devices import resolve_device
from merging.recipe.codec import Recipe
from merging.store.measure_cache import DiskMemo, MeasureCache, model_version
from merging.tasks import TaskError, load_demo_task, load_task_file
from merging.tasks.completions import file_format
from merging.training.osrm import collect_input_features, osrm_A_for_task, posthoc_adapter


def task_data_for(adapter: Adapter):
    """The data of the task an adapter was trained on, split exactly as when it was trained."""

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


def make_scorer(kind: str, model, tokenizer, device, max_length: int | None):
    """The scorer of a model kind: the one place that knows which class scores which kind."""

    scorers = {
        "classification": lambda: Evaluator(model, tokenizer, [], device=device, max_length=max_length or 48),
        "causal": lambda: CausalEvaluator(model, tokenizer, [], device=device, max_length=max_length),
    }
    if kind not in scorers:
        raise ValueError(f"no scorer for models of kind {kind!r} (known: {', '.join(scorers)})")
    return scorers[kind]()


def tasked(adapters: Sequence[Adapter], recipe: Recipe | None) -> list[Adapter]:
    """The adapters, each named with the task the recipe scores it on (`adapters[i].eval`/`task`);
    an adapter the recipe gives no evaluation file keeps its own task (mergescope.json)."""
    if recipe is None:
        return list(adapters)
    result = []
    for adapter, ref in zip(adapters, recipe.adapters):
        if ref.eval is None or adapter.task == ref.task_name:
            result.append(adapter)
        else:  # a shallow copy: the same tensors, another task name
            result.append(replace(adapter, meta={**adapter.meta, "task": ref.task_name}))
    return result


class Lab:
    def __init__(
        self, base_model: str, device: str = "auto", max_length: int | None = None, dtype: str = "float32",
        measures: MeasureCache | None = None,
    ):
        """`measures`: a workspace's measure cache, where every score the lab counts is also kept
        (see `keep_scores_in`); None keeps them in memory only."""

        device = resolve_device(device)
        # a folder, the demo's name or a Hub id in the local cache (merging.models.base.resolve_model_source)
        model, tokenizer = load_base_model(base_model, num_labels=2, device=device, dtype=dtype)
        self._setup(base_model, model, tokenizer, model_kind(model.config), device, max_length)
        if measures is not None:
            self.keep_scores_in(measures)

    @classmethod
    def with_model(cls, model, tokenizer, kind: str, device: str = "cpu", max_length: int | None = None, name: str = "") -> Lab:
        """A lab around a model already in memory (tests, benchmarks): its scores stay in memory."""
        lab = cls.__new__(cls)
        lab._setup(name or getattr(model, "name_or_path", ""), model, tokenizer, kind, resolve_device(device), max_length)
        return lab

    def _setup(self, base_model, model, tokenizer, kind: str, device, max_length: int | None) -> None:
        self.base_model = base_model
        self.device = device
        self.model, self.tokenizer = model, tokenizer
        self.kind = kind  # "classification" or "causal"
        # the scorer of this kind: Evaluator (accuracy) or CausalEvaluator (exact match + loss)
        self.evaluator = make_scorer(kind, model, tokenizer, device, max_length)
        self.max_length = self.evaluator.max_length
        self.single_cache: MutableMapping = {}
        self.merged_cache: MutableMapping = {}  # merged tallies by (body fingerprint, task, head key, task data)
        self._task_files: dict[str, tuple[str, int]] = {}  # task -> (file, mtime) it was read from
        self.lock = threading.RLock()

    def keep_scores_in(self, measures: MeasureCache) -> None:
        """Keep every tally this lab counts — base model, single adapters, merged bodies — in
        `measures` too, so a restarted server (or the next CLI run) reads a score counted before
        instead of scoring again. A tally is keyed by what it was counted from: the body (an
        adapter's version, a merged body's fingerprint), the task's data, the base model's version,
        the device, the dtype and the maximum length, and the measuring code's version."""

        try:  # a Hub id's snapshot folder names its commit: the version of what was loaded
            source = str(resolve_model_source(self.base_model))
        except (OSError, ValueError):  # ModelLoadError is a ValueError
            return  # no identity to key scores by (a model only in memory): keep them in memory only
        dtype = next((str(p.dtype) for p in self.model.parameters()), "")
        context = {"model": model_version(source), "device": self.device.type, "dtype": dtype,
                   "max_length": self.max_length, "scorer": self.kind}

        def memo(kind: str) -> DiskMemo:
            return DiskMemo(measures, kind, context, encode=_tally_json, decode=_tally_from_json)

        self.single_cache, self.merged_cache = memo("single_tally"), memo("merged_tally")
        self.evaluator.base_tallies = memo("base_tally")

    def _add_task_file(self, path: str, task: str, owner: Adapter) -> None:
        """Read a user's evaluation file as `task` (again if the file changed since)."""

        file = Path(path)
        try:
            version = (str(file.resolve()), file.stat().st_mtime_ns)
        except OSError as err:
            raise TaskError(f"cannot read the evaluation file {path}: {err.strerror or err}") from None
        if self._task_files.get(task) == version and task in self.evaluator.eval_sets:
            return
        self.evaluator.add_eval_set(self.read_task_set(str(file), task, owner))
        self._task_files[task] = version

    def read_task_set(self, path: str, task: str, owner: Adapter | None = None):
        """Every row of a user's task file as `task`'s set for this lab's scorer (not added to it);
        a file of the other model kind is refused."""

        file = Path(path)
        found = file_format(file)
        wanted = ("classification",) if self.kind == "classification" else ("completion", "chat")
        if found not in wanted:
            raise TaskError(
                f"{file.name}: a {found} file, but the base model {self.base_model} is a {self.kind} model "
                f"(it takes {' or '.join(wanted)} files)"
            )
        return self.evaluator.eval_set_from_file(str(file), task, owner)

    def prepare(self, adapters: Sequence[Adapter], recipe: Recipe | None = None) -> list[Adapter]:
        """Load and tokenise the evaluation sets of the adapters' tasks (once per task and file
        version); returns the adapters named with the tasks they are scored on (see `tasked`)."""

        named = tasked(adapters, recipe)
        files: dict[str, str] = {}
        for index, adapter in enumerate(named):
            ref = recipe.adapters[index] if recipe is not None else None
            if ref is not None and ref.eval is not None:
                task = ref.task_name
                if files.setdefault(task, ref.eval) != ref.eval:
                    raise EvaluationError(
                        f"field 'adapters[{index}].eval': task {task!r} is already read from {files[task]}; "
                        "give this adapter another 'task' name"
                    )
                self._add_task_file(ref.eval, task, adapter)
            elif adapter.task and adapter.task not in self.evaluator.eval_sets:
                if self.kind == "classification":
                    self.evaluator.add_eval_set(eval_set_for(adapter))
                elif adapter.meta.get("task_file"):
                    self._add_task_file(adapter.meta["task_file"], adapter.task, adapter)
                else:
                    raise EvaluationError(
                        f"adapter {adapter.name}: no evaluation file for task {adapter.task!r}; "
                        "give one in the recipe: {\"path\": ..., \"eval\": \"data/task.jsonl\"}"
                    )
        return named

    def warm_up(self, adapters: Sequence[Adapter], recipe: Recipe | None = None) -> None:
        """Load the tasks' evaluation sets and score each single adapter and the base model once,
        so the first merge a user runs costs only the merge and its own evaluation."""
        with self.lock:
            named = self.prepare(adapters, recipe)
        for adapter in named:
            with self.lock:  # one adapter at a time: a user's merge can slip in between
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
            adapters = self.prepare(adapters, recipe)
            recipe = on_device(recipe, self.device)
            merged = merge_adapters(adapters, recipe, progress=_phase(progress, 0, 2))
            evaluation = self._evaluate(adapters, merged, _phase(progress, 1, 2), on_preview)
        return MergeRun(recipe, merged, evaluation, time.perf_counter() - start)

    def _evaluate(self, adapters, merged: MergedAdapter, progress=None, on_preview=None) -> EvaluationResult:
        if len(self.merged_cache) > 20_000:  # a long session's cache stays small
            self.merged_cache.clear()
        # whole tensors the merged body carries (a causal LM's merged embed_tokens / lm_head); a
        # classification body carries none: each task is scored with its own head
        carried = dict(merged.adapter.saved_modules) if self.kind != "classification" else {}
        return evaluate_merge(
            self.evaluator, adapters, merged.adapter.modules, self.single_cache, progress, on_preview,
            self.merged_cache, carried or None,
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
            adapters = self.prepare(adapters, recipe)
            for index, weights in enumerate(weight_grid):
                if progress:
                    progress(index, len(weight_grid), f"λ = {', '.join(f'{w:g}' for w in weights)}")
                point = on_device(recipe.with_weights(list(weights)), self.device)
                merged = merge_adapters(adapters, point)
                results.append((list(weights), self._evaluate(adapters, merged)))
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

        with self.lock:
            return collect_input_features(
                self.model, self.tokenizer, texts, target_modules, self.max_length,
                device=self.device, covariance=covariance, progress=progress,
            )

    def posthoc_osrm(
        self, adapters: Sequence[Adapter], samples: int = 100, texts: Sequence[Sequence[str] | None] | None = None
    ) -> list[Adapter]:
        """OSRM after the fact: project each trained update onto the OSRM rows of its task.

        The rows come from the *base* model's input features of the other adapters' tasks
        (their training texts), as OSRM's initialisation would have chosen them. `texts[i]`, when
        given, are adapter i's task inputs instead (a causal task's prompts, merging.lab.catalog).
        """

        if len(adapters) < 2:
            return list(adapters)
        with self.lock:
            features = {}
            targets = sorted({m.rsplit(".", 1)[-1] for a in adapters for m in a.modules})
            for index, adapter in enumerate(adapters):
                given = texts[index] if texts is not None else None
                inputs = list(given) if given is not None else task_data_for(adapter).train_texts
                features[adapter.name] = self.input_features(inputs[:samples], targets)
            result = []
            for adapter in adapters:
                rank = max(m.rank for m in adapter.modules.values())
                rows = osrm_A_for_task(features, adapter.name, rank)
                result.append(posthoc_adapter(adapter, rows, name=f"{adapter.name}-posthoc"))
            return result


def _tally_json(tally: Tally) -> list:
    return [tally.correct, tally.scored, tally.nll, tally.tokens]


def _tally_from_json(stored: list) -> Tally:
    correct, scored, nll, tokens = stored
    return Tally(int(correct), int(scored), float(nll), int(tokens))


def on_device(recipe: Recipe, device: torch.device) -> Recipe:
    """The lab's device wins over the recipe's `auto`: the model and the merge share one device
    (and the stored recipe says which it was)."""
    from dataclasses import replace

    return replace(recipe, device=device.type) if recipe.device == "auto" else recipe
