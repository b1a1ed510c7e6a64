"""The work of the Merge and Sweep pages' background jobs (run by merging.core.jobs): merge or sweep
around the shared Lab, then record the run (merging.store.stored_runs), so a page only starts the job and
shows its result.

Merge: Lab.merge_and_evaluate of what the recipe's OSRM mode resolved to, then record_merge.

Sweep: one Lab.sweep call per point, so a Cancel keeps every point scored so far: they are stored as a run
marked cancelled (merging.store.stored_runs.record_sweep) and left in the caller's `partial` dict, which
the page shows. Each set is stored as a run whose recipe is its best point's (weights included), so
the run re-merges from its recipe alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from merging.core.progress import Cancelled
from merging.engine.merge import merge_adapters
from merging.evaluation.examples import perplexity
from merging.lab import catalog
from merging.lab.lab import Lab, on_device
from merging.recipe.codec import Recipe
from merging.store.run_labels import lambdas as said_lambdas  # two decimals, one λ when all are equal
from merging.store.runs import RunStore
from merging.store.stored_runs import best_point, record_merge, record_sweep


def merge_work(
    inputs: catalog.MergeInputs, recipe: Recipe, lab: Lab, store: RunStore | None,
    on_preview: Callable[[Any], None] | None = None,
) -> Callable[[Callable[[int, int, str], None]], dict]:
    """Merge and score `inputs` (post-hoc projections first), record the run; the job's result is
    {"run": StoredRun, "merged": MergedAdapter, "adapters", "base_model"}. `on_preview` gets the
    first look at the scores (merging.evaluation.evaluate.PREVIEW_EVERY)."""

    def work(progress) -> dict[str, Any]:
        if inputs.pending_posthoc:
            progress(0, 1, "projecting onto OSRM's subspace")
        merged_inputs = catalog.project_posthoc(inputs, lab)
        run = lab.merge_and_evaluate(merged_inputs.adapters, recipe, progress, on_preview=on_preview)
        stored = record_merge(store, run, merged_inputs, str(lab.device))
        return {"run": stored, "merged": run.merged, "adapters": merged_inputs.adapters, "base_model": inputs.base_model}

    return work


@dataclass
class SweepSet:
    """One initialisation to sweep: its name (standard / osrm), its recipe and what that recipe merges."""

    init: str
    recipe: Recipe
    inputs: catalog.MergeInputs


def lambda_grid(first: float, last: float, count: int) -> list[float]:
    """`count` evenly spaced coefficients from `first` to `last`, rounded to four decimals."""
    if count < 2:
        return [round(first, 4)]
    return [round(first + i * (last - first) / (count - 1), 4) for i in range(count)]


def sweep_work(
    sets: list[SweepSet], lab: Lab, mode: str, grid: list, axes: list, store: RunStore | None, partial: dict
) -> Callable[[Callable[[int, int, str], None]], dict]:
    """The background job's work: sweeps every set over `grid`, stores each as a run, returns (and
    fills `partial` as it goes) {"mode", "axes", "sets", "run_ids", "device", "seconds", "cancelled"}."""

    def work(progress) -> dict[str, Any]:
        if any(item.inputs.pending_posthoc for item in sets):
            progress(0, 1, "projecting onto OSRM's subspace")
        per_set = len(grid)
        total = per_set * len(sets)
        output = partial
        output.update({"mode": mode, "axes": axes, "sets": {}, "run_ids": {}, "device": str(lab.device),
                       "seconds": 0.0, "cancelled": False})
        for phase, item in enumerate(sets):
            inputs = catalog.project_posthoc(item.inputs, lab)
            started = time.perf_counter()
            points: list[dict] = []
            output["sets"][item.init] = {"names": inputs.names, "points": points, "posthoc": inputs.posthoc}
            try:
                for index, weights in enumerate(grid):
                    progress(phase * per_set + index, total, f"{item.init}: λ = {said_lambdas(weights)}")
                    (swept,) = lab.sweep(inputs.adapters, item.recipe, [weights])
                    points.append({"weights": list(swept[0]), "results": swept[1].to_dict()})
            except Cancelled:
                output["cancelled"] = True
                if not points:
                    output["sets"].pop(item.init)
                    raise
            best_recipe = on_device(item.recipe.with_weights(best_point(points)["weights"]), lab.device)
            body = merge_adapters(inputs.adapters, best_recipe).adapter.modules  # the stored run's own body
            seconds = time.perf_counter() - started
            run = record_sweep(store, best_recipe, inputs, points, body, init=item.init, mode=mode, axes=axes,
                               planned=per_set, cancelled=output["cancelled"], device=str(lab.device),
                               seconds=seconds)
            output["run_ids"][item.init] = run.id
            output["seconds"] += seconds
            if output["cancelled"]:
                raise Cancelled()
        return output

    return work


def heatmap_grid(points: list[dict], axis1: list[float], axis2: list[float]) -> list[list[float | None]]:
    """A two-adapter sweep's average merged score at each (λ₁, λ₂) of the axes (None: not scored)."""
    values = {tuple(p["weights"]): p["results"]["average"].get("merged") for p in points}
    return [[values.get((a, b)) for b in axis2] for a in axis1]


def sweep_rows(sets: dict[str, dict], mode: str) -> list[dict]:
    """One table row per initialisation and point: λ, each task's merged score (and, for causal
    tasks, its loss and perplexity), the averages; rounded as the Sweep page shows them."""
    rows = []
    for init, data in sets.items():
        for point in data["points"]:
            scores = point["results"]
            if mode == "heatmap":
                row = {"init": init, "λ₁": point["weights"][0], "λ₂": point["weights"][1]}
            else:
                row = {"init": init, "λ": point["weights"][0]}
            for task, task_scores in scores["tasks"].items():
                row[task] = None if task_scores["merged"] is None else round(task_scores["merged"], 4)
                loss = (task_scores.get("loss") or {}).get("merged")
                if loss is not None:
                    row[f"{task} loss"] = round(loss, 4)
                    ppl = perplexity(loss)  # exp(loss), beside it
                    row[f"{task} perplexity"] = None if ppl is None else round(ppl, 3)
            average = scores["average"]
            row["average merged"] = None if average.get("merged") is None else round(average["merged"], 4)
            row["average normalised"] = None if average.get("normalized") is None else round(average["normalized"], 4)
            rows.append(row)
    return rows
