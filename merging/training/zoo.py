"""The built-in demo zoo: one LoRA adapter per demo task and kind, with a manifest.

`python -m merging zoo build` trains every task × kind on the packaged MiniLM, writes the adapters
and `manifest.json`, and records each adapter's single-task accuracy measured on the adapter *as
saved* (reloaded from disk), so `python -m merging evaluate` reproduces it exactly.

Kinds (an adapter's ``init`` in the manifest, what the pages group by): ``standard`` LoRA; the OSRM
variants of merging.training.osrm (``osrm`` = the authors' reading, ``osrm-samples``, ``osrm-cov``), with A
trained; ``osrm-frozen`` (the authors' rows, A kept fixed); and ``shared-seed``: standard LoRA on
a few tasks that all start from *one* seed, the shared-initialisation effect shown on purpose.
Every other adapter trains from its own seed, merging.training.trainer.adapter_seed(task, kind,
replicate). Each manifest entry records the variant, the rows OSRM used, whether A was frozen and
the seed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from merging.adapters.lora import Adapter, load_adapter
from merging.core.progress import Progress, step_of
from merging.core.staging import staged_folder
from merging.evaluation.evaluate import EvalSet, Evaluator, head_of
from merging.models.base import DEMO_BASE_MODEL, base_model_dir, load_base_model
from merging.tasks import carve_dev, load_demo_task
from merging.training.osrm import osrm_A_for_task, rows_used
from merging.training.pipeline import TrainSettings, task_input_features, train_and_score
from merging.training.trainer import adapter_seed, chance_verdict

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 * 1024**2


_CHECKOUT_ZOO = Path(__file__).resolve().parents[2] / "zoo"


def shipped_zoo(checkout: Path = _CHECKOUT_ZOO) -> Path:
    """The zoo beside the package in a checkout; inside the installed `mergescope_app` package
    (setup.py ships it there) after a plain `pip install .`; else the checkout's path, which then
    fails to load with a message saying how to build one."""
    if (checkout / MANIFEST).is_file():
        return checkout
    import importlib.util

    spec = importlib.util.find_spec("mergescope_app")
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "zoo" / MANIFEST).is_file():
            return Path(location) / "zoo"
    return checkout


REPO_ZOO = shipped_zoo()


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
    variant: str = "standard"  # "standard" or the OSRM variant that set A
    freeze_A: bool = False
    seed: int | None = None  # the training seed


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
    training: dict = field(default_factory=dict)  # the manifest's training settings (rank, lr, ...)
    not_shipped: list = field(default_factory=list)  # adapters the build refused: did not learn with any seed

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


def _field(entry, key: str, where: str, kinds: tuple[type, ...], what: str, required: bool = True):
    """entry[key], checked: a ZooError naming the field when it is missing or of the wrong type."""
    if not isinstance(entry, dict):
        raise ZooError(f"{where}: expected an object, got {type(entry).__name__}")
    if key not in entry or entry[key] is None:
        if required:
            raise ZooError(f"{where}: missing field '{key}'")
        return None
    value = entry[key]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise ZooError(f"{where}.{key}: expected {what}, got {type(value).__name__}")
    return value


def load_zoo(folder: str | os.PathLike = REPO_ZOO) -> Zoo:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ZooError(f"{path}: no zoo manifest; build one with `python -m merging zoo build --out {folder}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooError(f"{path}: malformed manifest ({err})") from err
    if not isinstance(data, dict):
        raise ZooError(f"{path}: expected a JSON object, got {type(data).__name__}")
    base_model = _field(data, "base_model", f"{path}", (str,), "a string")
    number = (int, float)
    tasks, adapters = [], []
    for i, t in enumerate(_field(data, "tasks", f"{path}", (list,), "a list")):
        where = f"{path}: tasks[{i}]"
        labels = _field(t, "labels", where, (list,), "a list of label names")
        tasks.append(
            ZooTask(
                _field(t, "name", where, (str,), "a string"),
                tuple(str(label) for label in labels),
                _field(t, "description", where, (str,), "a string", required=False) or "",
                _field(t, "majority_baseline", where, number, "a number", required=False),
            )
        )
    for i, a in enumerate(_field(data, "adapters", f"{path}", (list,), "a list")):
        where = f"{path}: adapters[{i}]"
        init = _field(a, "init", where, (str,), "a string")
        seed = _field(a, "seed", where, (int,), "an integer", required=False)
        adapters.append(
            ZooAdapter(
                name=_field(a, "name", where, (str,), "a string"),
                task=_field(a, "task", where, (str,), "a string"),
                init=init,
                path=(folder / _field(a, "path", where, (str,), "a string")).resolve(),
                single_task_accuracy=_field(a, "single_task_accuracy", where, number, "a number", required=False),
                train_seconds=_field(a, "train_seconds", where, number, "a number", required=False),
                variant=_field(a, "variant", where, (str,), "a string", required=False) or init,
                freeze_A=bool(_field(a, "freeze_A", where, (bool,), "true or false", required=False)),
                seed=seed,
            )
        )
    extra = _field(data, "data", f"{path}", (dict,), "an object", required=False) or {}
    training = _field(data, "training", f"{path}", (dict,), "an object", required=False) or {}
    not_shipped = _field(data, "not_shipped", f"{path}", (list,), "a list", required=False) or []
    return Zoo(folder, base_model, tasks, adapters, extra, training, not_shipped)


def zoo_eval_sets(zoo: Zoo) -> list[EvalSet]:
    """The demo tasks' evaluation sets, split exactly as when the zoo was built."""

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


# The zoo's training regime, chosen by measurement (docs/ZOO.md, "Training regime"): closer to the OSRM
# authors' (lr 4e-4, 10 epochs, batch 64, 6 % warm-up, clipping 1.0, best epoch) than the first zoo's
# (lr 5e-3, 4 epochs, batch 16, no clipping, last epoch), under which one adapter never learned.
ZOO_TRAINING = TrainSettings(rank=8, alpha=16, epochs=5, lr=2e-3, batch_size=32, max_length=32,
                             target_modules=("query", "value"), osrm_samples=100, warmup_ratio=0.06,
                             max_grad_norm=1.0, dev_size=100)  # fmt: skip
EVAL_MAX_LENGTH = 48  # tokens per evaluation text: merging.lab.lab.Lab's default, so the app reproduces the manifest
OSRM_KINDS = ("osrm", "osrm-samples", "osrm-cov", "osrm-frozen", "osrm-random")
# Baselines and controls: PEFT's default (Kaiming) A, the OSRM authors' baseline (PEFT's
# "gaussian", std 1/r) and the scale control (Kaiming rescaled to OSRM's ‖A‖_F).
BASELINE_KINDS = ("standard", "gaussian", "standard-scaled")
KINDS = (*BASELINE_KINDS, *OSRM_KINDS, "shared-seed")
SHARED_SEED_REPLICATE = 1000  # the shared-seed pair's seed is adapter_seed("shared-seed", "standard", this)
MAX_ATTEMPTS = 4  # seeds tried per adapter before the build refuses to ship it (see chance_verdict)


def kind_training(kind: str) -> tuple[str, bool]:
    """(init passed to train_lora, whether A is frozen) for one zoo kind."""
    if kind not in KINDS:
        raise ZooError(f"unknown zoo kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "osrm-frozen":
        return "osrm", True
    if kind == "shared-seed":
        return "standard", False
    return kind, False


def kind_needs_features(kind: str) -> bool:
    """Whether a kind's A is computed from the tasks' input features (the OSRM kinds)."""
    return kind in OSRM_KINDS


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of the `attempt`-th retraining of an adapter whose first seed is `seed` (0: itself)."""
    if attempt == 0:
        return int(seed)
    import zlib

    return zlib.crc32(f"{int(seed)}\x1fretry\x1f{int(attempt)}".encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class BuildSettings:
    """What a zoo build trains: tasks × kinds, on one data split, with one TrainSettings.

    `training.seed` is not used as such: each adapter's seed is adapter_seed(task, kind, replicate)
    (`replicate` numbers extra training runs of the same zoo); the ``shared-seed`` adapters, trained
    on `shared_seed_tasks`, all use one seed. `training.freeze_A` freezes A for every OSRM kind;
    ``osrm-frozen`` freezes it regardless.
    """

    tasks: tuple[str, ...]
    inits: tuple[str, ...] = ("standard", "osrm")
    train_size: int = 800
    eval_size: int = 200
    seed: int = 0  # the data split
    training: TrainSettings = ZOO_TRAINING
    replicate: int = 0
    shared_seed_tasks: tuple[str, ...] = ("sms_spam", "question_type")  # unrelated tasks: overlap from the seed alone
    train_only: tuple[str, ...] | None = None  # train only these tasks' adapters (a part of a zoo: combine_zoos)
    # a run that did not learn (merging.training.trainer.chance_verdict on the dev split) is retrained with the
    # next seed, up to MAX_ATTEMPTS, and never shipped; off: shipped with "did_not_learn" in its entry
    refuse_chance: bool = True


def _adapter_plan(settings: BuildSettings) -> list[tuple[str, str, str, bool, int]]:
    """(adapter name, task, kind, freeze_A, seed) for every adapter the build trains, in order."""

    plan = []
    for task in settings.tasks:
        for kind in settings.inits:
            init, frozen = kind_training(kind)
            if kind == "shared-seed":
                continue
            frozen = frozen or (settings.training.freeze_A and kind_needs_features(kind))
            plan.append((f"{task}-{kind}", task, kind, frozen, adapter_seed(task, kind, settings.replicate)))
    shared = adapter_seed("shared-seed", "standard", SHARED_SEED_REPLICATE + settings.replicate)
    for task in settings.shared_seed_tasks:
        if task not in settings.tasks:
            raise ZooError(f"shared-seed task {task!r} is not one of the zoo's tasks {list(settings.tasks)}")
        plan.append((f"{task}-shared-seed", task, "shared-seed", False, shared))
    if settings.train_only is not None:
        unknown = sorted(set(settings.train_only) - set(settings.tasks))
        if unknown:
            raise ZooError(f"train_only tasks {unknown} are not among the zoo's tasks {list(settings.tasks)}")
        plan = [step for step in plan if step[1] in settings.train_only]
    return plan


def build_zoo(
    out: str | os.PathLike,
    settings: BuildSettings,
    base_model: str = DEMO_BASE_MODEL,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Zoo:
    """Train every task × kind (and the shared-seed adapters), save them and the manifest into `out`
    (atomically: the folder appears, or is replaced, only when the whole zoo is written)."""
    from dataclasses import replace


    out = Path(out)
    if out.exists() and not overwrite:
        raise ZooError(f"{out} already exists; pass --overwrite to rebuild it")
    for kind in settings.inits:
        kind_training(kind)
    plan = _adapter_plan(settings)
    started = time.perf_counter()
    model, tokenizer = load_base_model(base_model_dir(base_model), num_labels=2, device=device)
    data = {name: load_demo_task(name, settings.train_size, settings.eval_size, settings.seed) for name in settings.tasks}
    training = settings.training
    features = {}
    if any(kind_needs_features(kind) for _, _, kind, _, _ in plan):
        features = task_input_features(
            model, tokenizer, list(data.values()), training,
            covariance="osrm-cov" in settings.inits, device=device,
        )  # fmt: skip
    eval_sets = [EvalSet(n, list(t.labels), list(t.eval_texts), list(t.eval_labels)) for n, t in data.items()]
    # scored as the app scores (merging.lab.lab.Lab), whatever length training truncated to
    evaluator = Evaluator(model, tokenizer, eval_sets, device=device, max_length=EVAL_MAX_LENGTH)
    split = {
        "train_size": settings.train_size,
        "eval_size": settings.eval_size,
        "seed": settings.seed,
        "max_length": EVAL_MAX_LENGTH,
    }

    entries: list[dict] = []
    not_shipped: list[dict] = []  # adapters that did not learn with any of MAX_ATTEMPTS seeds
    with staged_folder(out, overwrite=overwrite, markers=(MANIFEST,), owned=zoo_owned(out)) as staging:  # only a zoo
        for step, (adapter_name, name, kind, frozen, seed) in enumerate(plan):
            init, _ = kind_training(kind)
            osrm_A = rows = None
            if kind_needs_features(kind):
                osrm_A = osrm_A_for_task(features, name, training.rank, variant=init, seed=seed)
                rows = rows_used(features, name, init)
            refused = []
            for attempt in range(MAX_ATTEMPTS):
                run_seed = retry_seed(seed, attempt)
                if init == "osrm-random":  # its basis of the null space is drawn from the run's seed
                    osrm_A = osrm_A_for_task(features, name, training.rank, variant=init, seed=run_seed)
                record = {"init": kind, "variant": init, "freeze_A": frozen, "seed": run_seed, "osrm_rows": rows}
                if kind == "shared-seed":
                    record["shared_seed_with"] = [t for t in settings.shared_seed_tasks if t != name]
                if refused:
                    record["refused_seeds"] = list(refused)
                shutil.rmtree(staging / adapter_name, ignore_errors=True)
                scored = train_and_score(
                    model, tokenizer, data[name], staging / adapter_name, evaluator,
                    replace(training, seed=run_seed, freeze_A=frozen),
                    init=init, osrm_A=osrm_A, meta={"data": split, **record}, device=device, base_model=base_model,
                    progress=step_of(progress, step, len(plan), f"{name} ({kind})" + (f", seed {attempt + 1}" if attempt else "")),
                )  # fmt: skip
                why = _did_not_learn(scored.training, data[name], training)
                if why is None or not settings.refuse_chance:
                    break
                refused.append({"seed": run_seed, "why": why, "dev_accuracy": scored.training.dev_accuracy})
            else:
                shutil.rmtree(staging / adapter_name, ignore_errors=True)
                not_shipped.append({"name": adapter_name, "task": name, "kind": kind, "refused_seeds": refused})
                continue
            result, accuracy = scored.training, scored.accuracy
            if why is not None:  # shipped anyway (refuse_chance off): flagged for every page that offers it
                record["did_not_learn"] = why
            base_head = evaluator.accuracy(name, head_of(scored.adapter, evaluator.head_name), None)
            entries.append(
                {
                    "name": adapter_name,
                    "task": name,
                    "path": adapter_name,
                    **record,
                    "single_task_accuracy": accuracy,
                    "base_with_head_accuracy": base_head,
                    "train_seconds": round(result.seconds, 2),
                    "final_loss": result.losses[-1] if result.losses else None,
                    "epoch_losses": [round(x, 5) for x in result.epoch_losses],
                    "dev_accuracy": result.dev_accuracy,
                    "best_epoch": result.best_epoch,
                    "A_drift": _A_drift(result),
                }
            )
        manifest = {
            "base_model": base_model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.perf_counter() - started, 1),
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
            "not_shipped": not_shipped,
            "data": split,
            "training": {**training.to_dict(), "seed": "per adapter (adapters[].seed)", "replicate": settings.replicate,
                         "device": str(device)},  # fmt: skip
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if progress:
        progress(len(plan), len(plan), "done")
    return load_zoo(out)


def _did_not_learn(result, task, training: TrainSettings) -> str | None:
    """Why a training run is refused (merging.training.trainer.chance_verdict on the dev split and the
    last epoch's loss), or None. Without a dev split only the loss is read."""

    loss = result.epoch_losses[-1] if result.epoch_losses else None
    if result.dev_accuracy and result.best_epoch:
        _, _, dev_labels = carve_dev(task, training.dev_size, seed=0)
        majority = max(dev_labels.count(label) for label in set(dev_labels)) / len(dev_labels)
        accuracy = result.dev_accuracy[result.best_epoch - 1]
        why = chance_verdict(accuracy, majority, loss, task.num_labels)
        return None if why is None else f"on the dev split: {why}"
    why = chance_verdict(1.0, 0.0, loss, task.num_labels)
    return why


def _A_drift(result) -> float | None:
    """How far training moved A: ‖A − A₀‖_F / ‖A₀‖_F, averaged over modules (0 when A is frozen)."""
    drifts = []
    for name, module in result.adapter.modules.items():
        initial = result.initial_A.get(name)
        if initial is None or initial.shape != module.A.shape:
            continue
        drifts.append(float((module.A.float() - initial).norm() / initial.norm().clamp_min(1e-12)))
    return round(sum(drifts) / len(drifts), 5) if drifts else None


def zoo_owned(folder: str | os.PathLike) -> tuple[str, ...]:
    """What replacing the zoo at `folder` replaces: its manifest and the adapter folders its
    manifest lists (glob-escaped names for merging.core.staging); anything else there is kept."""
    owned = [MANIFEST]
    path = Path(folder) / MANIFEST
    try:
        if path.is_file() and path.stat().st_size <= MAX_MANIFEST_BYTES:
            data = json.loads(path.read_text(encoding="utf-8"))
            for entry in data.get("adapters", []) if isinstance(data, dict) else []:
                name = entry.get("path") if isinstance(entry, dict) else None
                if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
                    owned.append(glob.escape(name))
    except (OSError, ValueError):
        pass  # an unreadable manifest: only the manifest itself is replaced
    return tuple(owned)


def combine_zoos(parts: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> Zoo:
    """One zoo from parts built with the same settings, each training some of the tasks
    (``BuildSettings.train_only``: OSRM still read every task), e.g. in parallel processes.

    The parts must agree on the base model, tasks, data split and training settings; an adapter
    name may appear in one part only. The parts are copied, not moved; `out` appears complete.
    """
    import shutil

    zoos = [json.loads((Path(p) / MANIFEST).read_text(encoding="utf-8")) for p in parts]
    if not zoos:
        raise ZooError("combine_zoos needs at least one part")
    first = zoos[0]
    for part, manifest in zip(parts, zoos):
        for key in ("base_model", "tasks", "data"):
            if manifest.get(key) != first.get(key):
                raise ZooError(f"{part}: its '{key}' differs from {parts[0]}'s; parts must come from one build setting")
        if manifest.get("training") != first.get("training"):
            raise ZooError(f"{part}: its 'training' differs from {parts[0]}'s")
    names = [a["name"] for m in zoos for a in m["adapters"]]
    if len(set(names)) != len(names):
        raise ZooError(f"an adapter appears in two parts: {sorted({n for n in names if names.count(n) > 1})}")
    with staged_folder(Path(out), overwrite=overwrite, markers=(MANIFEST,), owned=zoo_owned(out)) as staging:
        entries = []
        for part, manifest in zip(parts, zoos):
            for entry in manifest["adapters"]:
                shutil.copytree(Path(part) / entry["path"], staging / entry["path"])
                entries.append(entry)
        order = {name: i for i, name in enumerate(t["name"] for t in first["tasks"])}
        entries.sort(key=lambda e: (e["init"] == "shared-seed", order.get(e["task"], 0)))
        combined = {
            **first,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": max(m.get("build_seconds", 0) for m in zoos),
            "build_parts": len(zoos),
            "train_seconds_total": round(sum(e.get("train_seconds") or 0 for e in entries), 1),
            "adapters": entries,
        }
        (staging / MANIFEST).write_text(json.dumps(combined, indent=2), encoding="utf-8")
    return load_zoo(out)


def rescore_zoo(folder: str | os.PathLike, device: torch.device | str = "cpu", progress: Progress | None = None) -> Zoo:
    """Measure every adapter's single-task accuracy again and rewrite the manifest's records.

    For when the evaluation code changes (batching, say) but the adapters do not: the manifest must
    hold exactly what evaluation reproduces.
    """

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
