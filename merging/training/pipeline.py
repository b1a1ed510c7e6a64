"""Train one LoRA adapter on one task, save it, load it back and score it: the one pipeline behind
the demo zoo (`python -m merging zoo build`), the Adapters page and `python -m merging train`.

:func:`train_and_score` is the shared core: train → save → reload → score. The accuracy it returns
is measured on the adapter *as written to disk* (reloaded through :func:`merging.adapters.lora.load_adapter`),
never on the in-memory result, so `python -m merging evaluate` on the saved folder reproduces it
exactly. Callers decide where the folder is staged and when it moves into place: the zoo stages a
whole zoo at once, the workspace one adapter folder at a time. :func:`task_input_features` is the
other shared step: the base model's inputs over each task's texts, from which OSRM sets A.

:func:`train_task_adapter` wraps it for one task given by name or file (:func:`resolve_task`): it
loads the base model, collects OSRM's input features when asked, records the split and the
accuracy in mergescope.json and moves the folder into the workspace only when it is complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from merging.adapters.lora import META_FILE, Adapter, load_adapter
from merging.core.progress import Progress, weighted_phases
from merging.core.staging import StagingError, move_into_place, staging_dir
from merging.evaluation.evaluate import EvalSet, Evaluator, head_of
from merging.models.base import DEMO_BASE_MODEL, base_model_dir, load_base_model
from merging.models.devices import resolve_device
from merging.store.workspace import WorkspaceError, check_adapter_name, task_display_name
from merging.tasks import (
    DEFAULT_DEMO_TASKS,
    SUPPORTED_SUFFIXES,
    TaskData,
    TaskError,
    carve_dev,
    list_demo_tasks,
    load_demo_task,
    load_task_file,
)
from merging.training.osrm import collect_input_features, osrm_A_for_task, rows_used
from merging.training.trainer import INITS, TrainResult, adapter_seed, save_trained, train_lora

# ----------------------------------------------------------------------------------------------
# The shared core: train → save → reload → score


@dataclass(frozen=True)
class TrainSettings:
    """The LoRA, optimiser and OSRM settings of one training run: the one place they are held
    (the zoo's BuildSettings carries one of these; the Adapters page and `train` fill one in)."""

    rank: int = 8
    alpha: float = 16
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 48
    target_modules: tuple[str, ...] = ("query", "value")
    seed: int = 0  # the training seed (LoRA A, head, batch order); see merging.training.trainer.adapter_seed
    freeze_A: bool = False  # OSRM inits: keep A fixed, train only B and the head
    osrm_samples: int = 100  # training texts per task whose inputs OSRM reads
    warmup_ratio: float = 0.06  # linear warm-up over this share of the steps (the authors' and HF's)
    max_grad_norm: float | None = 1.0  # gradient clipping (HF Trainer's default); None: off
    dev_size: int = 0  # training examples held out to pick the best epoch (tasks.carve_dev); 0: last epoch

    def to_dict(self) -> dict:
        return {
            "rank": self.rank, "alpha": self.alpha, "epochs": self.epochs, "lr": self.lr,
            "batch_size": self.batch_size, "max_length": self.max_length,
            "target_modules": list(self.target_modules), "seed": self.seed, "freeze_A": self.freeze_A,
            "osrm_samples": self.osrm_samples, "warmup_ratio": self.warmup_ratio,
            "max_grad_norm": self.max_grad_norm, "dev_size": self.dev_size,
        }  # fmt: skip


@dataclass(frozen=True)
class ScoredAdapter:
    """An adapter as saved and loaded back, with its accuracy on its task's evaluation split."""

    adapter: Adapter
    folder: Path
    accuracy: float
    training: TrainResult


def train_and_score(
    model: torch.nn.Module,
    tokenizer,
    data: TaskData,
    folder: str | os.PathLike,
    evaluator: Evaluator,
    settings: TrainSettings,
    *,
    init: str = "standard",
    osrm_A: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping | None = None,
    device: torch.device | str | None = None,
    base_model: str | None = None,
    progress: Progress | None = None,
    scoring: Progress | None = None,
) -> ScoredAdapter:
    """Train an adapter on `data`, save it to `folder` (named after it), reload it and score it.

    `evaluator` must hold `data`'s evaluation set under ``data.name``; the score uses the reloaded
    adapter's own head. `meta` goes into mergescope.json beside the task, labels and init.
    `progress` follows training; `scoring` hears once that training is over and scoring begins.
    The base model is left as it was (training works on a copy, scoring restores the weights).
    """

    folder = Path(folder)
    train, dev_texts, dev_labels = carve_dev(data, settings.dev_size, seed=0)
    result = train_lora(
        model,
        tokenizer,
        train.train_texts,
        train.train_labels,
        rank=settings.rank,
        alpha=settings.alpha,
        target_modules=settings.target_modules,
        init=init,
        osrm_A=osrm_A,
        freeze_A=settings.freeze_A,
        epochs=settings.epochs,
        lr=settings.lr,
        warmup_ratio=settings.warmup_ratio,
        max_grad_norm=settings.max_grad_norm,
        dev_texts=dev_texts if dev_texts else None,
        dev_labels=dev_labels if dev_texts else None,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        seed=settings.seed,
        num_labels=data.num_labels,
        device=device,
        base_model=base_model,
        progress=progress,
    )
    if scoring:
        scoring(0, 1, "scoring the saved adapter")
    saved_folder = save_trained(result, folder, data.name, data.labels, init, meta)
    saved = load_adapter(saved_folder, name=folder.name)  # score what was written, not what is in memory
    accuracy = evaluator.accuracy(data.name, head_of(saved, evaluator.head_name), saved.modules)
    return ScoredAdapter(saved, saved_folder, accuracy, result)


def task_input_features(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[TaskData],
    settings: TrainSettings,
    *,
    samples: int | None = None,
    covariance: bool = False,
    device: torch.device | str | None = None,
    progress: Progress | None = None,
) -> dict[str, dict]:
    """The base model's inputs at the target modules over each task's first `samples` training texts
    (default ``settings.osrm_samples``): what OSRM's initialisation (merging.training.osrm.osrm_A_for_task)
    reads, by task name."""

    samples = settings.osrm_samples if samples is None else samples
    features = {}
    for index, task in enumerate(tasks):
        if progress:
            progress(index, len(tasks), f"input features of {task.name}")
        features[task.name] = collect_input_features(
            model,
            tokenizer,
            task.train_texts[:samples],
            target_modules=settings.target_modules,
            max_length=settings.max_length,
            device=device,
            covariance=covariance,
        )
    return features


# ----------------------------------------------------------------------------------------------
# Which task: a demo task's name or a user's task file


def is_task_file(spec: str | os.PathLike) -> bool:

    path = Path(spec)
    return path.suffix.lower() in SUPPORTED_SUFFIXES or path.is_file()


def resolve_task(
    spec: str | os.PathLike,
    train_size: int | None = 1000,
    eval_size: int = 200,
    seed: int = 0,
    name: str | None = None,
):
    """(TaskData, task file path or None) for a demo task name or a CSV/JSONL file."""

    if is_task_file(spec):
        path = Path(spec).expanduser().resolve()
        task_name = name or task_display_name(path)
        known = {t.name for t in _demo_tasks()}
        if task_name in known:
            raise TaskError(
                f"{path.name}: the task name {task_name!r} is a built-in demo task's; rename the file "
                "(or give the task another name) so the two are never mixed up"
            )
        return load_task_file(path, train_size=train_size, eval_size=eval_size, seed=seed, name=task_name), str(path)
    return load_demo_task(str(spec), train_size=train_size, eval_size=eval_size, seed=seed), None


def _demo_tasks():

    return list_demo_tasks()


def default_other_tasks(task: str, candidates: Sequence[str] | None = None) -> list[str]:
    """The tasks OSRM keeps a new adapter away from by default: the other (available) demo tasks."""

    available = {t.name for t in _demo_tasks() if t.available}
    pool = list(candidates) if candidates is not None else list(DEFAULT_DEMO_TASKS)
    return [t for t in pool if t != task and (t in available or is_task_file(t))]


# ----------------------------------------------------------------------------------------------
# Train one adapter on one task into a folder (the Adapters page and `python -m merging train`)


@dataclass(frozen=True)
class TrainedAdapter:
    folder: Path
    task: str
    init: str
    single_task_accuracy: float
    majority_baseline: float
    final_loss: float | None
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": str(self.folder),
            "task": self.task,
            "init": self.init,
            "single_task_accuracy": self.single_task_accuracy,
            "majority_baseline": self.majority_baseline,
            "seconds": round(self.seconds, 2),
            "final_loss": self.final_loss,
        }


def train_task_adapter(
    task: str | os.PathLike,
    out: str | os.PathLike,
    *,
    init: str = "standard",
    other_tasks: Sequence[str] | None = None,
    task_name: str | None = None,
    base_model: str | None = None,
    rank: int = 8,
    alpha: float = 16,
    epochs: int = 2,
    lr: float = 1e-3,
    batch_size: int = 16,
    max_length: int = 48,
    target_modules: Sequence[str] = ("query", "value"),
    train_size: int | None = 1000,
    eval_size: int = 200,
    seed: int = 0,
    osrm_samples: int = 100,
    freeze_A: bool = False,
    train_seed: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainedAdapter:
    """Train one LoRA adapter on `task` (a demo task name or a CSV/JSONL file) and save it to `out`.

    ``init`` one of merging.training.osrm.VARIANTS (``osrm``: the authors' reading) sets A from the base
    model's input features of `other_tasks` (demo task names or task files; None = the other
    available demo tasks) so the adapter stays away from those tasks' inputs. `seed` sets the data
    split; the training seed is `train_seed`, by default merging.training.trainer.adapter_seed(task, init,
    seed) so that adapters of different tasks never share an initialisation by accident. The saved adapter is loaded back and scored on the task's evaluation
    split; mergescope.json records the task, labels, init, base model, the split (``data``), the task
    file (``task_file``, for user tasks) and ``single_task_accuracy``. The folder appears only when
    complete: a failure or a cancel (an exception from `progress`) leaves nothing behind.
    """

    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    out = Path(out).expanduser()
    check_adapter_name(out.name)
    if out.exists() and not overwrite:
        raise WorkspaceError(f"{out} already exists; choose another name or allow overwriting")
    base_model = base_model or DEMO_BASE_MODEL
    device = resolve_device(device)
    split = {"train_size": train_size, "eval_size": eval_size, "seed": seed}
    phase = weighted_phases(progress, {"load": 1, "features": 2 if init != "standard" else 0, "train": 10, "score": 1})

    phase("load")(0, 1, "loading the task and the base model")
    data, task_file = resolve_task(task, name=task_name, **split)
    others: list[tuple] = []
    if init != "standard":
        specs = default_other_tasks(data.name) if other_tasks is None else list(other_tasks)
        for spec in dict.fromkeys(str(s) for s in specs):
            other, other_file = resolve_task(spec, **split)
            if other.name != data.name:
                others.append((other, other_file or other.name))
        if not others:
            raise WorkspaceError(
                f"init {init} needs at least one other task: the tasks this adapter must not disturb"
            )
    model, tokenizer = load_base_model(base_model_dir(base_model), num_labels=data.num_labels, device=device)
    settings = TrainSettings(
        rank=rank, alpha=alpha, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length,
        target_modules=tuple(target_modules), freeze_A=freeze_A, osrm_samples=osrm_samples,
        seed=adapter_seed(data.name, init, seed) if train_seed is None else int(train_seed),
    )  # fmt: skip

    osrm_A = None
    rows = None
    if others:
        features = task_input_features(
            model, tokenizer, [data] + [other for other, _ in others], settings,
            covariance=init == "osrm-cov", device=device, progress=phase("features"),
        )  # fmt: skip
        osrm_A = osrm_A_for_task(features, data.name, rank, variant=init)
        rows = rows_used(features, data.name, init)
    eval_set = EvalSet(data.name, list(data.labels), list(data.eval_texts), list(data.eval_labels))
    evaluator = Evaluator(model, tokenizer, [eval_set], device=device, max_length=max_length)
    meta = {"data": {**split, "max_length": max_length}}
    if task_file:
        meta["task_file"] = task_file
    meta["seed"] = settings.seed
    meta["freeze_A"] = freeze_A
    if others:
        meta["other_tasks"] = [label for _, label in others]
        meta["osrm_samples"] = osrm_samples
        meta["osrm_rows"] = rows
    score = phase("score")
    with staging_dir(out.parent, out.name) as staging:
        scored = train_and_score(
            model, tokenizer, data, staging / out.name, evaluator, settings,
            init=init, osrm_A=osrm_A, meta=meta, device=device, base_model=base_model,
            progress=phase("train"), scoring=score,
        )  # fmt: skip
        saved = scored.adapter
        saved.meta["single_task_accuracy"] = scored.accuracy
        saved.meta["majority_baseline"] = eval_set.majority_baseline
        saved.meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (scored.folder / META_FILE).write_text(json.dumps(saved.meta, indent=2), encoding="utf-8")
        score(1, 1, "saving")
        try:
            move_into_place(scored.folder, out, overwrite)
        except StagingError as err:
            raise WorkspaceError(str(err)) from None
    score(1, 1, "done")
    result = scored.training
    return TrainedAdapter(
        folder=out,
        task=data.name,
        init=init,
        single_task_accuracy=scored.accuracy,
        majority_baseline=eval_set.majority_baseline,
        final_loss=result.losses[-1] if result.losses else None,
        seconds=result.seconds,
        losses=list(result.losses),
    )
