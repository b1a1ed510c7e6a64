"""The demo's claims over training seeds: one study per seed zoo (the shipped zoo and zoo/seeds/N,
same tasks and data split, other training seeds), summarised as paired differences with 95 %
intervals over seeds, and the measures that could explain each task's loss in a merge.

Per seed zoo and adapter kind (standard LoRA, the OSRM authors' gaussian baseline, OSRM):
- single-task accuracy and merged accuracy of all five adapters under the headline methods
  (task arithmetic λ = 1 and 0.5, TIES), per task, from forward passes (merging.lab.lab.Lab);
- per task t, candidate explanations of t's drop (single − merged, task arithmetic λ = 1):
  **feature shift** ‖(Σ_{s≠t} ΔW_s)·X_tᵀ‖_F / ‖ΔW_t·X_tᵀ‖_F, how far the other adapters' summed
  update moves task t's inputs relative to t's own update (data-parameter interference, OSRM's
  premise; X_t = t's per-sample mean inputs at the module); the mean **input-subspace overlap** of
  t's A with the others'; and the mean absolute **task-vector cosine** with the others' ΔW;
- per pair of tasks: the pair's **magnitude variance** (DO-Merging's claim (c); our reading: the
  coefficient of variation across the two adapters of each module's ‖ΔW‖_F, averaged over modules)
  against the pair's merged normalised accuracy (task arithmetic λ = 1).

:func:`summarise` turns the per-seed studies into the headline (paired differences OSRM − baseline,
same seed, same data, Student t interval over seeds; a difference *survives* when its interval
excludes 0) and the correlations (Pearson r with a Fisher-z interval). Everything is measured;
:func:`load_study` refuses a study whose zoos changed since it was written (manifest hashes).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from merging.adapters.lora import Adapter, LoraModule
from merging.analysis.metrics import orthonormal_basis, subspace_overlap
from merging.core.intervals import correlation_interval, mean_interval, paired_difference
from merging.recipe.codec import recipe_from_dict
from merging.training.zoo import load_zoo_adapters

STUDY_FILE = "seed_study.json"
STUDY_KINDS = ("standard", "gaussian", "osrm")
BASELINES = ("standard", "gaussian")
# (key, label, method, parameters, weight of every adapter)
HEADLINE = (
    ("ta_1", "task arithmetic λ = 1", "task_arithmetic", {}, 1.0),
    ("ta_05", "task arithmetic λ = 0.5", "task_arithmetic", {}, 0.5),
    ("ties", "TIES (density 0.5)", "ties", {"density": 0.5}, 1.0),
)
DROP_METHOD = "ta_1"  # the merge whose per-task drops the "why" measures must explain


# ----------------------------------------------------------------------------------------------
# Measures over tensors


def _dense(module: LoraModule) -> torch.Tensor:
    return (module.scale * module.B.double() @ module.A.double())


def feature_shift(own: LoraModule, others: Sequence[LoraModule], inputs: torch.Tensor) -> float:
    """‖(Σ others' ΔW)·Xᵀ‖_F / ‖ΔW_own·Xᵀ‖_F for X the task's inputs (n × d_in); inf when own is 0."""
    X = inputs.reshape(-1, inputs.shape[-1]).double()
    own_response = float((_dense(own) @ X.T).norm())
    if not others:
        return 0.0
    summed = sum(_dense(m) for m in others)
    other_response = float((summed @ X.T).norm())
    return other_response / own_response if own_response > 0 else math.inf


def _row_basis(A: torch.Tensor) -> torch.Tensor:

    return orthonormal_basis(A.detach().float().T)


def task_predictors(adapters: Mapping[str, Adapter], inputs: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
    """Per task: mean over modules of feature shift, input-subspace overlap and |task-vector cosine|
    with the other adapters. `inputs[task][module]` is that task's (n × d_in) inputs."""

    tasks = list(adapters)
    result = {}
    for task in tasks:
        others = [t for t in tasks if t != task]
        shifts, overlaps, cosines = [], [], []
        for name, own in adapters[task].modules.items():
            other_modules = [adapters[t].modules[name] for t in others if name in adapters[t].modules]
            if name not in inputs[task]:
                continue
            shifts.append(feature_shift(own, other_modules, inputs[task][name]))
            own_basis, own_dense = _row_basis(own.A), _dense(own)
            for other in other_modules:
                overlaps.append(subspace_overlap(own_basis, _row_basis(other.A)))
                other_dense = _dense(other)
                denominator = float(own_dense.norm() * other_dense.norm())
                cosines.append(abs(float((own_dense * other_dense).sum())) / denominator if denominator > 0 else 0.0)
        result[task] = {
            "feature_shift": sum(shifts) / len(shifts) if shifts else math.nan,
            "input_overlap": sum(overlaps) / len(overlaps) if overlaps else math.nan,
            "abs_cosine": sum(cosines) / len(cosines) if cosines else math.nan,
        }
    return result


def magnitude_cv(norms: Sequence[float]) -> float:
    """std / mean of update magnitudes (population std; 0 for equal magnitudes or all zero)."""
    n = len(norms)
    mean = sum(norms) / n if n else 0.0
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((v - mean) ** 2 for v in norms) / n) / mean


def magnitude_variance_across(adapters: Sequence[Adapter]) -> float:
    """Mean over the shared modules of :func:`magnitude_cv` of the adapters' ‖ΔW‖_F there."""
    shared = set.intersection(*(set(a.modules) for a in adapters)) if adapters else set()
    values = []
    for name in sorted(shared):
        norms = [float(_dense(a.modules[name]).norm()) for a in adapters]
        values.append(magnitude_cv(norms))
    return sum(values) / len(values) if values else math.nan


# ----------------------------------------------------------------------------------------------
# One seed zoo


def headline_recipe(names: Sequence[str], method: str, parameters: Mapping, weight: float, base_model: str):

    return recipe_from_dict({
        "adapters": [{"path": n, "name": n, "weight": weight} for n in names],
        "method": method, "parameters": dict(parameters), "base_model": base_model,
    })  # fmt: skip


def manifest_hash(folder: str | os.PathLike) -> str:
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


def study_zoo(lab, zoo, inputs: Mapping[str, Mapping[str, torch.Tensor]], kinds: Sequence[str] = STUDY_KINDS,
              progress=None, pairs: bool = True) -> dict:  # fmt: skip
    """Measure one seed zoo: per kind, singles and headline merges per task, the per-task predictors
    and (with `pairs`) every pair's magnitude variance and merged normalised accuracy. JSON-ready."""

    out: dict = {"folder": str(zoo.folder), "manifest_sha256": manifest_hash(zoo.folder), "kinds": {}}
    for kind in kinds:
        entries = [a for a in zoo.adapters if a.init == kind]
        if len(entries) < 2:
            continue
        names = [a.name for a in entries]
        adapters = load_zoo_adapters(zoo, names)
        by_task = {a.task: a for a in adapters}
        record: dict = {"adapters": names, "seeds": [a.seed for a in entries], "merged": {}}
        for key, _label, method, parameters, weight in HEADLINE:
            run = lab.merge_and_evaluate(adapters, headline_recipe(names, method, parameters, weight, zoo.base_model))
            tasks = run.evaluation.tasks
            record["single"] = {t: s.single for t, s in tasks.items()}
            record["majority"] = {t: s.majority for t, s in tasks.items()}
            record["merged"][key] = {t: s.merged for t, s in tasks.items()}
            if progress:
                progress(f"{Path(zoo.folder).name}: {kind} {key}")
        record["predictors"] = task_predictors(by_task, inputs)
        pair_records = []
        for first, second in itertools.combinations(entries, 2) if pairs else ():
            pair = [by_task[first.task], by_task[second.task]]
            recipe = headline_recipe([first.name, second.name], "task_arithmetic", {}, 1.0, zoo.base_model)
            tasks = lab.merge_and_evaluate(pair, recipe).evaluation.tasks
            normalised = [tasks[t].merged / tasks[t].single for t in (first.task, second.task) if tasks[t].single > 0]
            pair_records.append({
                "tasks": [first.task, second.task],
                "magnitude_variance": magnitude_variance_across(pair),
                "normalised_accuracy": sum(normalised) / len(normalised) if normalised else math.nan,
            })  # fmt: skip
        if progress and pairs:
            progress(f"{Path(zoo.folder).name}: {kind} pairs")
        record["pairs"] = pair_records
        out["kinds"][kind] = record
    return out


# ----------------------------------------------------------------------------------------------
# Over seeds


def _average(values: Mapping[str, float]) -> float:
    return sum(values.values()) / len(values)


def summarise(seeds: Sequence[Mapping]) -> dict:
    """The headline over seeds (per kind: mean and interval of singles and each merge; paired
    differences OSRM − each baseline) and the correlations of the "why" measures and of magnitude
    variance. Only seeds where every compared kind exists are paired."""
    summary: dict = {"seeds": len(seeds), "kinds": {}, "differences": {}, "why": {}, "magnitude_variance": {}}
    columns = ["single"] + [key for key, *_ in HEADLINE]

    def value(seed: Mapping, kind: str, column: str) -> float | None:
        record = seed["kinds"].get(kind)
        if record is None:
            return None
        return _average(record["single"] if column == "single" else record["merged"][column])

    for kind in STUDY_KINDS:
        summary["kinds"][kind] = {}
        for column in columns:
            values = [v for v in (value(s, kind, column) for s in seeds) if v is not None]
            if values:
                mean, low, high = mean_interval(values)
                summary["kinds"][kind][column] = {"mean": mean, "low": low, "high": high, "values": values}
    for baseline in BASELINES:
        for column in columns:
            pairs = [(value(s, "osrm", column), value(s, baseline, column)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                summary["differences"][f"osrm-{baseline}:{column}"] = paired_difference(
                    [a for a, _ in pairs], [b for _, b in pairs]
                )
    # why: per (seed, kind, task) point, each predictor against the drop under DROP_METHOD
    points = []
    for index, seed in enumerate(seeds):
        for kind, record in seed["kinds"].items():
            for task, predictors in record["predictors"].items():
                drop = record["single"][task] - record["merged"][DROP_METHOD][task]
                points.append({"seed": index, "kind": kind, "task": task, "drop": drop, **predictors})
    summary["why"]["points"] = points
    for measure in ("feature_shift", "input_overlap", "abs_cosine"):
        usable = [p for p in points if math.isfinite(p[measure])]
        if len(usable) >= 4:
            summary["why"][measure] = correlation_interval([p[measure] for p in usable], [p["drop"] for p in usable])
    pair_points = [
        {"seed": index, "kind": kind, **pair}
        for index, seed in enumerate(seeds)
        for kind, record in seed["kinds"].items()
        for pair in record["pairs"]
        if math.isfinite(pair["normalised_accuracy"]) and math.isfinite(pair["magnitude_variance"])
    ]
    summary["magnitude_variance"]["points"] = pair_points
    if len(pair_points) >= 4:
        summary["magnitude_variance"]["correlation"] = correlation_interval(
            [p["magnitude_variance"] for p in pair_points], [p["normalised_accuracy"] for p in pair_points]
        )
    return summary


def best_predictor(summary: Mapping) -> tuple[str, dict] | None:
    """The "why" measure whose correlation with the drop is largest and whose interval excludes 0
    (positive: more of it, more loss), or None when no measure predicts the loss."""
    candidates = [(m, c) for m, c in summary.get("why", {}).items() if m != "points" and c.get("survives") and c["r"] > 0]
    return max(candidates, key=lambda item: item[1]["r"]) if candidates else None


# ----------------------------------------------------------------------------------------------
# Stored beside the zoo


class StudyError(ValueError):
    """A seed study that cannot be used (missing, malformed or stale), with the reason."""


def seed_zoo_folders(zoo_folder: str | os.PathLike) -> list[Path]:
    """The shipped zoo and its extra training seeds (zoo/seeds/N, in N's order)."""
    folder = Path(zoo_folder)
    seeds = folder / "seeds"
    extra = sorted((p for p in seeds.iterdir() if (p / "manifest.json").is_file()), key=lambda p: (len(p.name), p.name)) \
        if seeds.is_dir() else []  # fmt: skip
    return [folder, *extra]


def load_study(zoo_folder: str | os.PathLike) -> dict:
    """The stored study of this zoo and its seeds, checked against their manifests (stale → StudyError)."""
    path = Path(zoo_folder) / STUDY_FILE
    if not path.is_file():
        raise StudyError(f"{path}: no seed study; run `python scripts/seed_study.py`")
    if path.stat().st_size > 64 * 1024**2:
        raise StudyError(f"{path}: larger than 64 MiB; not read")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{path}: malformed ({err})") from err
    recorded = [s.get("manifest_sha256") for s in study.get("per_seed", [])]
    current = [manifest_hash(f) for f in seed_zoo_folders(zoo_folder)]
    if recorded != current:
        raise StudyError(f"{path}: stale — the zoo's manifests changed since it was measured; run scripts/seed_study.py again")
    return study
