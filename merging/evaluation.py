"""Per-task accuracy from real forward passes: the base model, each single adapter, a merged model.

A classification task keeps its own head: the body is the base model plus the (merged) LoRA
updates, and task t is always scored with task t's head (the `modules_to_save` tensors of the
adapter trained on t). Updates are added to the base weights in place and the original weights
are restored exactly afterwards, so one loaded model serves every evaluation without a deep copy.
Tokenised evaluation sets and the base model's accuracies are cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from merging.lora import Adapter, LoraModule
from merging.progress import Progress

# A merge's first, quick look scores every PREVIEW_EVERY-th example of each class; the rest follow
# and the two parts add up to the full evaluation, so the preview costs no extra forward passes.
PREVIEW_EVERY = 3
PARTS = ("preview", "rest")


def preview_indices(targets: Sequence[int], every: int = PREVIEW_EVERY) -> list[int]:
    """A fixed, class-stratified subset: every `every`-th example of each class, in dataset order."""
    seen: dict[int, int] = {}
    chosen = []
    for index, target in enumerate(targets):
        if seen.get(target, 0) % every == 0:
            chosen.append(index)
        seen[target] = seen.get(target, 0) + 1
    return chosen


@dataclass(frozen=True)
class EvalSet:
    """A task's evaluation texts and integer labels, with its label names."""

    name: str
    labels: list[str]
    texts: list[str]
    targets: list[int]

    @property
    def majority_baseline(self) -> float:
        """Accuracy of always answering the most frequent class."""
        if not self.targets:
            return 0.0
        counts = torch.bincount(torch.tensor(self.targets), minlength=len(self.labels))
        return float(counts.max()) / len(self.targets)


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked, with a message fit for the user."""


def head_module_name(model: nn.Module) -> str:
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), nn.Linear):
            return name
    raise EvaluationError(
        f"{type(model).__name__}: expected a linear classification head named 'classifier' or 'score'"
    )


def head_of(adapter: Adapter, head_name: str) -> dict[str, torch.Tensor]:
    """The task head an adapter saved (`classifier.weight`, `classifier.bias`)."""
    head = {
        key.rsplit(".", 1)[-1]: tensor
        for key, tensor in adapter.saved_modules.items()
        if key.startswith(f"{head_name}.")
    }
    if "weight" not in head:
        raise EvaluationError(
            f"adapter {adapter.name} carries no '{head_name}' head; train it with modules_to_save=['{head_name}']"
        )
    return head


class Evaluator:
    """Holds one base model and the tokenised evaluation sets; scores bodies with task heads."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        eval_sets: Sequence[EvalSet],
        device: torch.device | str = "cpu",
        max_length: int = 48,
        batch_size: int = 32,
    ):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.head_name = head_module_name(model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_sets: dict[str, EvalSet] = {}
        # per task and part (preview / rest): (indices into the eval set, padded batch)
        self._batches: dict[str, dict[str, list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]] = {}
        self._targets: dict[str, torch.Tensor] = {}
        for eval_set in eval_sets:
            self.add_eval_set(eval_set)
        self._linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._base_cache: dict[tuple[str, str], float] = {}

    def add_eval_set(self, eval_set: EvalSet) -> None:
        """Tokenise once, into batches of texts of similar length padded only to their own longest.

        Sorting by length before batching cuts the padded tokens the model reads (most texts are far
        shorter than max_length); the attention mask hides padding either way. The preview part and
        the rest are also batched separately, so either can be scored alone.
        """
        encoded = self.tokenizer(list(eval_set.texts), truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        preview = set(preview_indices(eval_set.targets))
        # "all" batches the whole set together: tighter padding when no preview is wanted
        parts = {"preview": [i for i in range(len(lengths)) if i in preview],
                 "rest": [i for i in range(len(lengths)) if i not in preview],
                 "all": list(range(len(lengths)))}
        batches: dict[str, list] = {}
        for part, members in parts.items():
            order = sorted(members, key=lambda i: (lengths[i], i))
            batches[part] = []
            for start in range(0, len(order), self.batch_size):
                indices = order[start : start + self.batch_size]
                features = [{key: encoded[key][i] for key in encoded} for i in indices]
                batches[part].append((torch.tensor(indices), dict(self.tokenizer.pad(features, return_tensors="pt"))))
        self.eval_sets[eval_set.name] = eval_set
        self._batches[eval_set.name] = batches
        self._targets[eval_set.name] = torch.tensor(eval_set.targets)

    # -- the body -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def updates_applied(self, modules: Mapping[str, LoraModule] | None) -> Iterator[None]:
        """Add each module's ΔW to the base weight in place; restore the exact originals on exit."""
        saved: dict[str, torch.Tensor] = {}
        try:
            with torch.no_grad():
                for name, module in (modules or {}).items():
                    layer = self._linear.get(name)
                    if layer is None:
                        raise EvaluationError(f"the base model has no linear module named {name}")
                    if tuple(layer.weight.shape) != module.shape:
                        raise EvaluationError(
                            f"module {name}: update of shape {module.shape} does not fit the base weight "
                            f"{tuple(layer.weight.shape)}; adapter of another base model?"
                        )
                    saved[name] = layer.weight.detach().clone()
                    layer.weight.add_(module.delta(self.device).to(layer.weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    self._linear[name].weight.copy_(original)

    @contextlib.contextmanager
    def head_applied(self, head: Mapping[str, torch.Tensor]) -> Iterator[None]:
        original = getattr(self.model, self.head_name)
        weight = head["weight"].to(self.device, torch.float32)
        replacement = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in head).to(self.device)
        with torch.no_grad():
            replacement.weight.copy_(weight)
            if "bias" in head:
                replacement.bias.copy_(head["bias"].to(self.device, torch.float32))
        setattr(self.model, self.head_name, replacement)
        try:
            yield
        finally:
            setattr(self.model, self.head_name, original)

    @torch.inference_mode()
    def _correct(self, task: str, parts: Sequence[str]) -> tuple[int, int]:
        """(correct, scored) over the given parts of the task's evaluation set, as the model is now."""
        self.model.eval()  # training elsewhere may have left dropout on; scores must be deterministic
        if set(parts) == set(PARTS):
            parts = ("all",)
        correct = scored = 0
        for part in parts:
            for indices, batch in self._batches[task][part]:
                batch = {k: v.to(self.device) for k, v in batch.items()}
                predictions = self.model(**batch).logits.argmax(dim=-1).cpu()
                correct += int((predictions == self._targets[task][indices]).sum())
                scored += len(indices)
        return correct, scored

    def correct(
        self,
        task: str,
        head: Mapping[str, torch.Tensor],
        modules: Mapping[str, LoraModule] | None,
        parts: Sequence[str] = PARTS,
    ) -> tuple[int, int]:
        """(correct, scored) on `parts` of `task` for the base model plus `modules`, scored with `head`."""
        if task not in self.eval_sets:
            raise EvaluationError(f"no evaluation data for task '{task}'")
        with self.updates_applied(modules), self.head_applied(head):
            return self._correct(task, parts)

    def accuracy(self, task: str, head: Mapping[str, torch.Tensor], modules: Mapping[str, LoraModule] | None) -> float:
        """Accuracy on `task` of the base model plus `modules`, scored with `head`."""
        correct, scored = self.correct(task, head, modules)
        # an exact fraction of ints, so a recorded accuracy compares equal when reproduced
        return correct / scored

    def base_accuracy(self, task: str, head: Mapping[str, torch.Tensor], head_key: str) -> float:
        """The base body with `head`; cached under `head_key` (e.g. the adapter's path)."""
        key = (task, head_key)
        if key not in self._base_cache:
            self._base_cache[key] = self.accuracy(task, head, None)
        return self._base_cache[key]


# ----------------------------------------------------------------------------------------------
# A merge's scores


@dataclass
class TaskScores:
    base: float
    single: float
    merged: float | None
    majority: float
    examples: int = 0  # evaluation-set size: accuracies are exact fractions of it (0: unknown, no interval)

    def intervals(self) -> dict[str, list[float] | None]:
        """95 % bootstrap interval over the evaluation set of each accuracy (merging.intervals)."""
        from merging.intervals import accuracy_interval, counts_of

        def interval(accuracy: float | None) -> list[float] | None:
            if accuracy is None or self.examples <= 0:
                return None
            return list(accuracy_interval(counts_of(accuracy, self.examples), self.examples))

        return {"base": interval(self.base), "single": interval(self.single), "merged": interval(self.merged)}

    @property
    def normalized(self) -> float | None:
        """merged / single: 1.0 means merging lost nothing on this task."""
        if self.merged is None or self.single == 0:
            return None
        return self.merged / self.single


@dataclass
class EvaluationResult:
    tasks: dict[str, TaskScores]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    preview: bool = False  # merged accuracies from the preview part only (a first look, not the result)
    cached: bool = False  # every merged accuracy came from the cache: this body was scored before

    def average(self) -> dict[str, float | None]:
        def mean(values):
            values = [v for v in values if v is not None]
            return sum(values) / len(values) if values else None

        scores = list(self.tasks.values())
        return {
            "base": mean(s.base for s in scores),
            "single": mean(s.single for s in scores),
            "merged": mean(s.merged for s in scores),
            "normalized": mean(s.normalized for s in scores),
            "majority": mean(s.majority for s in scores),
        }

    def average_interval(self) -> dict[str, list[float] | None]:
        """95 % bootstrap interval of each average over tasks, each task's examples resampled on their own."""
        from merging.intervals import bootstrap_interval, counts_of

        def interval(role: str) -> list[float] | None:
            values = {t: (getattr(s, role), s.examples) for t, s in self.tasks.items()}
            if not values or any(v is None or n <= 0 for v, n in values.values()):
                return None
            return list(bootstrap_interval({t: (counts_of(v, n), n) for t, (v, n) in values.items()}))

        return {role: interval(role) for role in ("base", "single", "merged")}

    def to_dict(self) -> dict:
        return {
            "tasks": {
                name: {
                    "base": s.base,
                    "single": s.single,
                    "merged": s.merged,
                    "normalized": s.normalized,
                    "majority": s.majority,
                    # the preview's merged accuracy counts a third of the examples: no interval for it
                    "interval": s.intervals() if not self.preview else None,
                }
                for name, s in self.tasks.items()
            },
            "average": self.average(),
            "average_interval": self.average_interval() if not self.preview else None,
            "seconds": round(self.seconds, 3),
            "notes": self.notes,
            "preview": self.preview,
            "cached": self.cached,
        }


def adapters_by_task(adapters: Sequence[Adapter]) -> dict[str, Adapter]:
    """The adapter that scores each task (its head); the first one listed wins a tie."""
    result: dict[str, Adapter] = {}
    for adapter in adapters:
        if not adapter.task:
            raise EvaluationError(
                f"adapter {adapter.name} does not say which task it was trained on (no 'task' in mergescope.json)"
            )
        result.setdefault(adapter.task, adapter)
    return result


def _adapter_key(adapter: Adapter) -> str | None:
    """Identifies an adapter's weights for the caches: its path and the weights file's mtime.

    None for an adapter that lives only in memory (e.g. a post-hoc projection): never cached.
    """
    if adapter.path is None:
        return None
    weights = adapter.path / "adapter_model.safetensors"
    modified = weights.stat().st_mtime_ns if weights.exists() else 0
    return f"{adapter.path}@{modified}"


def modules_fingerprint(modules: Mapping[str, LoraModule]) -> str:
    """A digest of a set of LoRA updates (names, factors, scales): equal digests, equal bodies."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(modules):
        module = modules[name]
        digest.update(name.encode())
        digest.update(repr(float(module.scale)).encode())
        for factor in (module.A, module.B):
            tensor = factor.detach().to("cpu").contiguous()
            digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _is_zero(modules: Mapping[str, LoraModule]) -> bool:
    """True when every update is exactly zero (e.g. all λ = 0): the body is the base model."""
    return all(not bool(m.B.any()) or not bool(m.A.any()) or m.scale == 0 for m in modules.values())


def evaluate_merge(
    evaluator: Evaluator,
    adapters: Sequence[Adapter],
    merged_modules: Mapping[str, LoraModule] | None,
    single_cache: dict | None = None,
    progress: Progress | None = None,
    on_preview: Callable[[EvaluationResult], None] | None = None,
    merged_cache: dict | None = None,
) -> EvaluationResult:
    """Base, single-adapter and merged accuracy for every task the adapters were trained on.

    `single_cache` (keyed by adapter path or name and task) lets a sweep score each single adapter once.
    `on_preview`, if given, receives a first result whose merged accuracies come from the preview
    part of each task (1 in PREVIEW_EVERY examples per class) before the rest is scored; the final
    accuracies count both parts, so the preview costs nothing extra. `merged_cache` keeps merged
    accuracies by the updates' fingerprint, so an identical body is never scored twice; an all-zero
    update is the base model and reuses its cached scores.
    """
    start = time.perf_counter()
    by_task = adapters_by_task(adapters)
    missing = [t for t in by_task if t not in evaluator.eval_sets]
    if missing:
        raise EvaluationError(f"no evaluation data for task(s) {', '.join(missing)}")
    steps = len(by_task) * (1 + (2 if merged_modules is not None else 0))
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, steps, what)

    heads = {task: head_of(adapter, evaluator.head_name) for task, adapter in by_task.items()}
    keys = {task: _adapter_key(adapter) for task, adapter in by_task.items()}
    base, single = {}, {}
    for task, adapter in by_task.items():
        head, adapter_key = heads[task], keys[task]
        cacheable = single_cache is not None and adapter_key is not None
        if cacheable and (adapter_key, task) in single_cache:
            single[task] = single_cache[(adapter_key, task)]
        else:
            single[task] = evaluator.accuracy(task, head, adapter.modules)
            if cacheable:
                single_cache[(adapter_key, task)] = single[task]
        base[task] = (
            evaluator.base_accuracy(task, head, adapter_key) if adapter_key is not None else evaluator.accuracy(task, head, None)
        )
        step(f"single {task}")

    def result(merged: dict[str, float | None], preview: bool = False, cached: bool = False) -> EvaluationResult:
        scores = {
            task: TaskScores(base[task], single[task], merged[task], evaluator.eval_sets[task].majority_baseline,
                             len(evaluator.eval_sets[task].targets))
            for task in by_task
        }
        notes = [f"preview: merged accuracy on 1 in {PREVIEW_EVERY} examples of each class"] if preview else []
        return EvaluationResult(scores, seconds=time.perf_counter() - start, notes=notes, preview=preview, cached=cached)

    if merged_modules is None:
        return result(dict.fromkeys(by_task))
    if _is_zero(merged_modules):
        if progress:
            progress(steps, steps, "merged body = base model (every update is zero)")
        return result(dict(base))

    fingerprint = modules_fingerprint(merged_modules) if merged_cache is not None else None
    merged: dict[str, float | None] = {}
    pending = []
    for task in by_task:
        cache_key = (fingerprint, task, keys[task])
        if fingerprint is not None and keys[task] is not None and cache_key in merged_cache:
            merged[task] = merged_cache[cache_key]
            step(f"merged {task} (cached)")
            step(f"merged {task} (cached)")
        else:
            pending.append(task)
    counts: dict[str, tuple[int, int]] = {}
    for task in pending:
        counts[task] = evaluator.correct(task, heads[task], merged_modules, ("preview",))
        step(f"merged {task}, preview")
    if pending and on_preview is not None:
        on_preview(result({**merged, **{t: c / n if n else None for t, (c, n) in counts.items()}}, preview=True))
    for task in pending:
        correct, scored = evaluator.correct(task, heads[task], merged_modules, ("rest",))
        merged[task] = (counts[task][0] + correct) / (counts[task][1] + scored)
        if fingerprint is not None and keys[task] is not None:
            merged_cache[(fingerprint, task, keys[task])] = merged[task]
        step(f"merged {task}")
    return result(merged, cached=not pending)


def cross_task_matrix(evaluator: Evaluator, adapters: Sequence[Adapter]) -> dict:
    """Accuracy of adapter i's body on task j (scored with task j's head): interference at a glance."""
    by_task = adapters_by_task(adapters)
    tasks = list(by_task)
    matrix = []
    for adapter in adapters:
        row = []
        for task in tasks:
            row.append(evaluator.accuracy(task, head_of(by_task[task], evaluator.head_name), adapter.modules))
        matrix.append(row)
    return {"adapters": [a.name for a in adapters], "tasks": tasks, "accuracy": matrix}
