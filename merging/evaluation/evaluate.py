"""Per-task accuracy from real forward passes: the base model, each single adapter, a merged model.

A classification task keeps its own head: the body is the base model plus the (merged) LoRA
updates, and task t is always scored with task t's head (the `modules_to_save` tensors of the
adapter trained on t). Updates are added to the base weights in place and the original weights
are restored exactly afterwards, so one loaded model serves every evaluation without a deep copy.
Tokenised evaluation sets and the base model's accuracies are cached.

A scorer is an object per model kind with one interface (`kind`, `metric`, `eval_sets`,
`data_key`, `tally`, `base_tally`, `baseline`, `truncated`, `add_task_file`): `Evaluator` here
scores classification (accuracy), `merging.evaluation.causal.CausalEvaluator` causal LMs (exact match,
with the completion loss beside it). Both count a `Tally` per part of a task, and tallies add up, so
`evaluate_merge` — the preview part first, the merged-score cache by the body's fingerprint, λ = 0
answered from the base model's scores — is one code path for both kinds; the Lab picks the scorer
(merging.lab.lab.make_scorer) and nothing else asks which kind it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from merging.adapters.lora import Adapter, LoraModule, adapter_version
from merging.core.intervals import accuracy_interval, bootstrap_interval, counts_of
from merging.core.progress import Progress
from merging.tasks import TaskError, read_task_file
from merging.tasks.files import _label_order
from merging.tasks.split import clean_text

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
class Tally:
    """What scoring part of a task counts; tallies of disjoint parts add up to the whole task's.

    `correct` of `scored` examples gives the primary metric (accuracy for classification, exact
    match for a causal task); `nll` over `tokens` completion tokens gives a causal task's loss.
    """

    correct: int = 0
    scored: int = 0
    nll: float = 0.0
    tokens: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.correct + other.correct, self.scored + other.scored, self.nll + other.nll, self.tokens + other.tokens)

    @property
    def primary(self) -> float | None:
        # an exact fraction of ints, so a recorded score compares equal when reproduced
        return self.correct / self.scored if self.scored else None

    @property
    def loss(self) -> float | None:
        """Mean negative log-likelihood per completion token, in nats (None: nothing was scored)."""
        return self.nll / self.tokens if self.tokens else None


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


def model_has_head(model: nn.Module) -> bool:
    return any(isinstance(getattr(model, name, None), nn.Linear) for name in ("classifier", "score"))


def updatable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a LoRA update can target: nn.Linear, and GPT-2's Conv1D (weight stored (in, out))."""
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def weight_update(layer: nn.Module, module: LoraModule, device: torch.device | str) -> torch.Tensor:
    """ΔW laid out as `layer.weight`: (d_out, d_in) for a Linear, transposed for a Conv1D.

    PEFT keeps A (r, d_in) and B (d_out, r) for both (it marks Conv1D with fan_in_fan_out and
    transposes when merging), so the update's shape is always (d_out, d_in); only the layout differs.
    """
    from transformers.pytorch_utils import Conv1D

    delta = module.delta(device)
    return delta.T if isinstance(layer, Conv1D) else delta


@contextlib.contextmanager
def updates_applied(
    model: nn.Module,
    modules: Mapping[str, LoraModule] | None,
    carried: Mapping[str, torch.Tensor] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> Iterator[None]:
    """Add each ΔW to its base weight in place and copy `carried` tensors (state-dict names) over
    the model's own; restore the exact originals on exit, so one loaded model serves every body.

    The sum is taken in float32 and cast once, so a bfloat16 base gets W + ΔW rounded once rather
    than ΔW rounded first. At any time one module's ΔW is dense; the originals of the updated
    weights are kept in host memory (on the CPU they are a second copy of those weights). A tied embedding (embed_tokens ≡ lm_head) is one tensor: a carried copy
    written through either name changes both, as tying means.
    """
    layers = updatable_modules(model) if layers is None else layers
    device = next(model.parameters()).device
    saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # by tensor identity: tied ones once

    def keep(tensor: torch.Tensor) -> None:
        # On a GPU the originals wait in host memory: the GPU holds one copy of the base (a 7B
        # model with every projection adapted would otherwise need its weights twice there).
        if id(tensor) not in saved:
            saved[id(tensor)] = (tensor, tensor.detach().to("cpu", copy=True))

    try:
        with torch.no_grad():
            for name, module in (modules or {}).items():
                layer = layers.get(name)
                if layer is None:
                    raise EvaluationError(f"the base model has no linear module named {name}")
                update = weight_update(layer, module, device)
                if tuple(layer.weight.shape) != tuple(update.shape):
                    raise EvaluationError(
                        f"module {name}: update of shape {module.shape} does not fit the base weight "
                        f"{tuple(layer.weight.shape)}; adapter of another base model?"
                    )
                keep(layer.weight)
                layer.weight.copy_((layer.weight.float() + update).to(layer.weight.dtype))
            if carried:
                parameters = dict(model.named_parameters(remove_duplicate=False))
                for key, tensor in carried.items():
                    target = parameters.get(key)
                    if target is None or tuple(target.shape) != tuple(tensor.shape):
                        shown = "absent" if target is None else f"of shape {tuple(target.shape)}"
                        raise EvaluationError(
                            f"carried tensor {key} {tuple(tensor.shape)} does not fit the base model ({shown})"
                        )
                    keep(target)
                    target.copy_(tensor.to(device=target.device, dtype=target.dtype))
        yield
    finally:
        with torch.no_grad():
            for tensor, original in saved.values():
                tensor.copy_(original)


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
        # a causal LM has no classification head: its scorer reads the LM head's logits instead
        self.head_name = head_module_name(model) if model_has_head(model) else None
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_sets: dict[str, EvalSet] = {}
        # per task and part (preview / rest): (indices into the eval set, padded batch)
        self._batches: dict[str, dict[str, list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]] = {}
        self._targets: dict[str, torch.Tensor] = {}
        for eval_set in eval_sets:
            self.add_eval_set(eval_set)
        self._linear = updatable_modules(model)
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
    def updates_applied(
        self, modules: Mapping[str, LoraModule] | None, carried: Mapping[str, torch.Tensor] | None = None
    ) -> Iterator[None]:
        """Add each module's ΔW to the base weight in place (transposed for a Conv1D), and copy the
        `carried` whole tensors (modules_to_save, e.g. embed_tokens.weight) over the base ones;
        restore the exact originals on exit."""
        with updates_applied(self.model, modules, carried, self._linear):
            yield

    @contextlib.contextmanager
    def head_applied(self, head: Mapping[str, torch.Tensor]) -> Iterator[None]:
        if self.head_name is None:
            raise EvaluationError(
                f"{type(self.model).__name__}: expected a linear classification head named 'classifier' or 'score'"
            )
        original = getattr(self.model, self.head_name)
        weight = head["weight"].to(self.device, torch.float32)
        # in the body's dtype (a bfloat16 base gets a bfloat16 head), from the float32 copy
        replacement = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in head).to(
            self.device, original.weight.dtype
        )
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


    # -- the scorer interface evaluate_merge uses (merging.evaluation.causal.CausalEvaluator has it too) ---

    kind = "classification"
    metric = "accuracy"

    def data_key(self, task: str) -> str:
        """Identifies the task's scored examples: caches keyed by it never mix two versions of a file."""
        keys = self.__dict__.setdefault("_data_keys", {})
        eval_set = self.eval_sets[task]
        if task not in keys or keys[task][0] is not eval_set:
            digest = hashlib.blake2b(repr((eval_set.labels, eval_set.texts, eval_set.targets)).encode(), digest_size=8)
            keys[task] = (eval_set, f"{task}@{digest.hexdigest()}")
        return keys[task][1]

    def baseline(self, task: str) -> float:
        """Always answering the most frequent class."""
        return self.eval_sets[task].majority_baseline

    def truncated(self, task: str) -> None:  # texts are cut to max_length by design (see add_eval_set)
        return None

    def tally(
        self,
        task: str,
        owner: Adapter | None,
        modules: Mapping[str, LoraModule] | None,
        carried: Mapping[str, torch.Tensor] | None = None,
        parts: Sequence[str] = PARTS,
    ) -> Tally:
        """Correct answers on `parts` of `task` for the base + `modules`, with the head of `owner`
        (the adapter trained on the task). The head is the task's own, so `carried` is not used."""
        if owner is None:
            raise EvaluationError(f"task {task}: a classification task is scored with its adapter's head")
        correct, scored = self.correct(task, head_of(owner, self.head_name), modules, parts)
        return Tally(correct, scored)

    def base_tally(self, task: str, owner: Adapter, head_key: str | None) -> Tally:
        """The base body with `owner`'s head; cached under `head_key` (None: not cached)."""
        if head_key is None:
            return self.tally(task, owner, None)
        cache = self.__dict__.setdefault("base_tallies", {})  # a lab may give a disk-backed mapping
        key = (task, self.data_key(task), head_key)
        if key not in cache:
            cache[key] = self.tally(task, owner, None)
        return cache[key]

    def add_task_file(self, path: str, name: str, owner: Adapter | None = None) -> EvalSet:
        """Every row of a user's text,label file as the task's evaluation set (see eval_set_from_file)."""
        eval_set = self.eval_set_from_file(path, name, owner)
        self.add_eval_set(eval_set)
        return eval_set

    def eval_set_from_file(self, path: str, name: str, owner: Adapter | None = None) -> EvalSet:
        """Every row of a user's text,label file, in file order, as an evaluation set (not added).
        Label indices follow the adapter's own label order (its head's outputs) when it records one."""

        rows = read_task_file(path)
        labels = list(owner.labels) if owner is not None and owner.labels else _label_order(label for _, label in rows)
        unknown = sorted({label for _, label in rows} - set(labels))
        if unknown:
            raise TaskError(
                f"{Path(path).name}: label {unknown[0]!r} is not one the adapter {owner.name if owner else ''} "
                f"was trained on ({', '.join(labels)})"
            )
        return EvalSet(name, labels, [clean_text(text) for text, _ in rows], [labels.index(label) for _, label in rows])


# ----------------------------------------------------------------------------------------------
# A merge's scores


@dataclass
class TaskScores:
    """One task's scores: the primary metric (`metric`: accuracy or exact_match) of the base model,
    the task's own adapter and the merge; a causal task adds its completion loss for each."""

    base: float
    single: float
    merged: float | None
    majority: float | None
    metric: str = "accuracy"
    loss: dict[str, float | None] | None = None  # {"base", "single", "merged"}: causal tasks only
    truncated: int | None = None  # prompts cut from the left to fit max_length (causal tasks)
    examples: int = 0  # evaluation-set size: scores are exact fractions of it (0: unknown, no interval)

    def intervals(self) -> dict[str, list[float] | None]:
        """95 % bootstrap interval over the evaluation set of each accuracy (merging.core.intervals)."""

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

    def to_dict(self, interval: bool = True) -> dict:
        data = {
            "base": self.base,
            "single": self.single,
            "merged": self.merged,
            "normalized": self.normalized,
            "majority": self.majority,
            "metric": self.metric,
            "interval": self.intervals() if interval else None,
        }
        if self.loss is not None:
            data["loss"] = dict(self.loss)
        if self.truncated is not None:
            data["truncated"] = self.truncated
        return data


@dataclass
class EvaluationResult:
    tasks: dict[str, TaskScores]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    preview: bool = False  # merged scores from the preview part only (a first look, not the result)
    cached: bool = False  # every merged score came from the cache: this body was scored before

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

        def interval(role: str) -> list[float] | None:
            values = {t: (getattr(s, role), s.examples) for t, s in self.tasks.items()}
            if not values or any(v is None or n <= 0 for v, n in values.values()):
                return None
            return list(bootstrap_interval({t: (counts_of(v, n), n) for t, (v, n) in values.items()}))

        return {role: interval(role) for role in ("base", "single", "merged")}

    def to_dict(self) -> dict:
        return {
            # the preview's merged score counts a third of the examples: no interval for it
            "tasks": {name: s.to_dict(interval=not self.preview) for name, s in self.tasks.items()},
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
                f"adapter {adapter.name} does not say which task it was trained on (no 'task' in mergescope.json); "
                "give its evaluation file in the recipe: {\"path\": ..., \"eval\": \"data/task.jsonl\"}"
            )
        result.setdefault(adapter.task, adapter)
    return result


def _adapter_key(adapter: Adapter) -> str | None:
    """Identifies an adapter's weights for the caches (merging.adapters.lora.adapter_version).

    None for an adapter that lives only in memory (e.g. a post-hoc projection): never cached.
    """
    return None if adapter.path is None else adapter_version(adapter.path)


def _digest_tensor(digest, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
    digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())


def modules_fingerprint(modules: Mapping[str, LoraModule], carried: Mapping[str, torch.Tensor] | None = None) -> str:
    """A digest of a body: LoRA updates (names, factors, scales) and any carried whole tensors
    (e.g. a merged lm_head). Equal digests, equal bodies."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(modules):
        module = modules[name]
        digest.update(name.encode())
        digest.update(repr(float(module.scale)).encode())
        for factor in (module.A, module.B):
            _digest_tensor(digest, factor)
    for name in sorted(carried or {}):
        digest.update(b"carried:" + name.encode())
        _digest_tensor(digest, carried[name])
    return digest.hexdigest()


def _is_zero(modules: Mapping[str, LoraModule]) -> bool:
    """True when every update is exactly zero (e.g. all λ = 0): the body is the base model."""
    return all(not bool(m.B.any()) or not bool(m.A.any()) or m.scale == 0 for m in modules.values())


def _carried_of(adapter: Adapter, evaluator) -> dict[str, torch.Tensor] | None:
    """The whole tensors an adapter's body carries (modules_to_save) for scorers that apply them:
    a causal LM's trained embed_tokens / lm_head. A classification head is the task's own, applied
    by the scorer from the task's adapter, so a classification body carries nothing."""
    if evaluator.kind == "classification":
        return None
    return dict(adapter.saved_modules) or None


def evaluate_merge(
    evaluator,
    adapters: Sequence[Adapter],
    merged_modules: Mapping[str, LoraModule] | None,
    single_cache: dict | None = None,
    progress: Progress | None = None,
    on_preview: Callable[[EvaluationResult], None] | None = None,
    merged_cache: dict | None = None,
    merged_carried: Mapping[str, torch.Tensor] | None = None,
) -> EvaluationResult:
    """Base, single-adapter and merged scores for every task the adapters were trained on.

    `evaluator` is the scorer of the model's kind: an Evaluator (classification: accuracy, each task
    with its own head) or a merging.evaluation.causal.CausalEvaluator (exact match, and completion loss);
    both count Tallies, so everything below is the same for both.
    `single_cache` (keyed by adapter path or name, task and task data) lets a sweep score each single
    adapter once. `on_preview`, if given, receives a first result whose merged scores come from the
    preview part of each task (1 in PREVIEW_EVERY examples, per class for classification) before
    the rest is scored; the final scores count both parts, so the preview costs nothing extra.
    `merged_cache` keeps merged tallies by the body's fingerprint, so an identical body is never
    scored twice; an all-zero update (with nothing carried) is the base model and reuses its scores.
    `merged_carried`: whole tensors the merged body carries (a causal LM's merged lm_head...).
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

    keys = {task: _adapter_key(adapter) for task, adapter in by_task.items()}
    data = {task: evaluator.data_key(task) for task in by_task}
    base: dict[str, Tally] = {}
    single: dict[str, Tally] = {}
    for task, adapter in by_task.items():
        adapter_key = keys[task]
        cacheable = single_cache is not None and adapter_key is not None
        cache_key = (adapter_key, task, data[task])
        if cacheable and cache_key in single_cache:
            single[task] = single_cache[cache_key]
        else:
            single[task] = evaluator.tally(task, adapter, adapter.modules, _carried_of(adapter, evaluator))
            if cacheable:
                single_cache[cache_key] = single[task]
        base[task] = evaluator.base_tally(task, adapter, adapter_key)
        step(f"single {task}")

    def result(merged: dict[str, Tally | None], preview: bool = False, cached: bool = False) -> EvaluationResult:
        scores = {}
        for task in by_task:
            tally = merged[task]
            loss = None
            if single[task].tokens:  # a causal task: its loss beside the primary metric
                loss = {"base": base[task].loss, "single": single[task].loss, "merged": tally.loss if tally else None}
            scores[task] = TaskScores(
                base[task].primary, single[task].primary, tally.primary if tally else None,
                evaluator.baseline(task), evaluator.metric, loss, evaluator.truncated(task),
                examples=single[task].scored,
            )
        notes = []
        if preview:
            notes.append(f"preview: merged scores on 1 in {PREVIEW_EVERY} examples" +
                         (" of each class" if evaluator.kind == "classification" else ""))
        for task in by_task:
            cut = evaluator.truncated(task)
            if cut:
                notes.append(f"{task}: {cut} prompt(s) cut from the left to fit max_length {evaluator.max_length}")
        return EvaluationResult(scores, seconds=time.perf_counter() - start, notes=notes, preview=preview, cached=cached)

    if merged_modules is None:
        return result(dict.fromkeys(by_task))
    if _is_zero(merged_modules) and not merged_carried:
        if progress:
            progress(steps, steps, "merged body = base model (every update is zero)")
        return result(dict(base))

    fingerprint = modules_fingerprint(merged_modules, merged_carried) if merged_cache is not None else None
    merged: dict[str, Tally | None] = {}
    pending = []
    for task in by_task:
        cache_key = (fingerprint, task, keys[task], data[task])
        if fingerprint is not None and keys[task] is not None and cache_key in merged_cache:
            merged[task] = merged_cache[cache_key]
            step(f"merged {task} (cached)")
            step(f"merged {task} (cached)")
        else:
            pending.append(task)
    previews: dict[str, Tally] = {}
    for task in pending:
        previews[task] = evaluator.tally(task, by_task[task], merged_modules, merged_carried, ("preview",))
        step(f"merged {task}, preview")
    if pending and on_preview is not None:
        on_preview(result({**merged, **previews}, preview=True))
    for task in pending:
        merged[task] = previews[task] + evaluator.tally(task, by_task[task], merged_modules, merged_carried, ("rest",))
        if fingerprint is not None and keys[task] is not None:
            merged_cache[(fingerprint, task, keys[task], data[task])] = merged[task]
        step(f"merged {task}")
    return result(merged, cached=not pending)


def cross_task_matrix(evaluator, adapters: Sequence[Adapter]) -> dict:
    """Adapter i's body on task j (the task's primary metric; task j's head for classification):
    interference at a glance."""
    by_task = adapters_by_task(adapters)
    tasks = list(by_task)
    matrix = []
    for adapter in adapters:
        row = []
        for task in tasks:
            row.append(evaluator.tally(task, by_task[task], adapter.modules, _carried_of(adapter, evaluator)).primary)
        matrix.append(row)
    return {"adapters": [a.name for a in adapters], "tasks": tasks, "accuracy": matrix, "metric": evaluator.metric}
