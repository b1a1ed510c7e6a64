"""The Sweep page's work: one Lab.sweep per point and initialisation, each set stored as a run.

One Lab.sweep call per point, so a Cancel keeps every point scored so far: they are stored as a run
marked cancelled (merging.stored_runs.record_sweep) and left in the caller's `partial` dict, which
the page shows. Each set is stored as a run whose recipe is its best point's (weights included), so
the run re-merges from its recipe alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from merging import catalog
from merging.lab import Lab, on_device
from merging.merge import merge_adapters
from merging.plots.sweep import lambdas as said_lambdas  # two decimals, one λ when all are equal
from merging.progress import Cancelled
from merging.recipe import Recipe
from merging.runs import RunStore
from merging.stored_runs import best_point, record_sweep


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
