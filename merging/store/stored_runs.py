"""One way to record a run and one way to read it back.

Merge, Sweep, Search (its trials and its best recipe) and the CLI's search store through
:func:`record_run`; everything that reads the run store reads :class:`StoredRun`, whose recipe is a
:class:`~merging.recipe.codec.Recipe` (old stored forms mapped by ``recipe_of_run``) and whose results are
the one JSON shape every kind shares:

- the evaluation (``tasks``, ``average``, …) of the run's recipe, when it was scored;
- ``osrm``: ``{"mode", "twins", "posthoc"}``, what the recipe's OSRM mode resolved to;
- ``fingerprint``: the digest of the merged body (merging.evaluation.evaluate.modules_fingerprint);
- one block per kind: ``best_weights`` and ``sweep`` (a sweep), ``search`` (a search or a trial).

:mod:`merging.store.runs` keeps the SQLite file (columns, concurrency, a store that cannot be used); this
module decides what goes into a row and what a row means. The format on disk is unchanged, so runs
stored before this module still load.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merging.evaluation.evaluate import modules_fingerprint
from merging.methods import MethodError
from merging.recipe.codec import Recipe, RecipeError, recipe_of_run
from merging.store.runs import RunRecord, RunStore, SkippedRow

KINDS = ("merge", "sweep", "search", "search-trial")


@dataclass(frozen=True)
class StoredRun:
    """A run as stored: its Recipe and its results. `id` is None for a run that was not stored (no
    store, or one that cannot be written: the store's `problem` says why)."""

    id: int | None
    kind: str
    recipe: Recipe | None  # None: the stored recipe cannot be read back (`recipe_problem` says why)
    results: dict
    summary: dict = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0
    created: float | None = None
    recipe_problem: str | None = None
    # the recipe as stored, kept only so that a run whose recipe cannot be read still shows its method and adapters
    stored_recipe: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, record: RunRecord) -> StoredRun:
        """A row of the run store as a StoredRun (its recipe read through `recipe_of_run`)."""
        try:
            recipe, problem = recipe_of_run(record.recipe, record.results), None
        except (RecipeError, MethodError, ValueError, TypeError) as err:
            recipe, problem = None, str(err)
        return cls(record.id, record.kind, recipe, record.results, record.summary, record.device, record.seconds,
                   record.created, problem, record.recipe)

    # ------------------------------------------------------------------------------------------
    # What the pages show

    @property
    def method(self) -> str:
        return self.recipe.method if self.recipe is not None else str(self.stored_recipe.get("method", "?"))

    @property
    def adapter_names(self) -> list[str]:
        """Each adapter's name, or its folder's when it has none."""
        if self.recipe is not None:
            return [ref.name or Path(ref.path).name for ref in self.recipe.adapters]
        refs = self.stored_recipe.get("adapters")
        return [_stored_name(ref) for ref in refs if isinstance(ref, Mapping)] if isinstance(refs, list) else []

    @property
    def weights(self) -> list[float]:
        """The merge coefficients: a sweep's are its best point's."""
        if self.kind == "sweep":
            return list(self.results.get("best_weights") or [])
        if self.recipe is not None:
            return [ref.weight for ref in self.recipe.adapters]
        refs = self.stored_recipe.get("adapters")
        return [ref.get("weight", 1.0) for ref in refs if isinstance(ref, Mapping)] if isinstance(refs, list) else []

    @property
    def rank(self) -> Any:
        """The output rank (None: exact)."""
        return self.recipe.rank if self.recipe is not None else self.stored_recipe.get("rank")

    @property
    def do_merging_switches(self) -> list[str]:
        """DO-Merging's switches that are on (decouple, orthogonalize)."""
        if self.recipe is not None:
            return [k for k in ("decouple", "orthogonalize") if getattr(self.recipe.do_merging, k)]
        stored = self.stored_recipe.get("do_merging")
        return [k for k in ("decouple", "orthogonalize") if isinstance(stored, Mapping) and stored.get(k)]

    @property
    def average(self) -> dict:
        value = self.results.get("average")
        return value if isinstance(value, dict) else {}

    @property
    def tasks(self) -> dict:
        value = self.results.get("tasks")
        return value if isinstance(value, dict) else {}

    @property
    def sweep(self) -> dict:
        """A sweep's points, axes and mode ({} for other kinds)."""
        value = self.results.get("sweep")
        return value if isinstance(value, dict) else {}

    @property
    def init(self) -> str | None:
        """A sweep's initialisation (standard / osrm), None for other kinds."""
        return self.sweep.get("init") or self.summary.get("init")

    @property
    def osrm(self) -> dict:
        """What the recipe's OSRM mode resolved to: {"mode", "twins", "posthoc"} ({} when not kept)."""
        value = self.results.get("osrm")
        return value if isinstance(value, dict) else {}


def _stored_name(ref: Mapping) -> str:
    return ref.get("name") or Path(ref.get("path", "?")).name


# ----------------------------------------------------------------------------------------------
# Record


def osrm_of(recipe: Recipe, inputs: Any) -> dict:
    """The `osrm` block: the recipe's mode and what catalog.resolve_inputs made of it (`inputs` is a
    merging.lab.catalog.MergeInputs)."""
    return {"mode": recipe.osrm, "twins": inputs.twins, "posthoc": inputs.posthoc}


def record_run(
    store: RunStore | None,
    kind: str,
    recipe: Recipe,
    evaluation: Mapping | None = None,
    *,
    summary: Mapping | None = None,
    device: str = "cpu",
    seconds: float = 0.0,
    inputs: Any = None,
    body: Mapping | None = None,
    extra: Mapping | None = None,
) -> StoredRun:
    """Store one run and return it as read back would give it.

    `evaluation`: the recipe's scores (EvaluationResult.to_dict(), or MergeRun.results()); `inputs`
    (a merging.lab.catalog.MergeInputs) adds the `osrm` block; `body` (the merged LoRA modules) adds the
    `fingerprint`; `extra` is the kind's own block (e.g. {"search": …}). With `store` None, or a store
    that cannot be written, nothing is stored and the run's `id` is None.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not a run kind (allowed: {', '.join(KINDS)})")
    results: dict = dict(evaluation or {})
    if inputs is not None:
        results["osrm"] = osrm_of(recipe, inputs)
    if body is not None:
        results["fingerprint"] = modules_fingerprint(body)
    results.update(extra or {})
    summary = dict(summary or {})
    run_id = None
    if store is not None:
        run_id = store.add(recipe.to_dict(), results, summary, str(device), float(seconds), kind=kind)
    return StoredRun(run_id, kind, recipe, results, summary, str(device), float(seconds), time.time(),
                     stored_recipe=recipe.to_dict())


def record_merge(store: RunStore | None, run: Any, inputs: Any, device: str) -> StoredRun:
    """A Merge-page run (a merging.lab.lab.MergeRun of `inputs`, a merging.lab.catalog.MergeInputs)."""
    return record_run(store, "merge", run.recipe, run.results(), summary=run.merged.summary(), device=device,
                      seconds=run.seconds, inputs=inputs, body=run.merged.adapter.modules)


def best_point(points: Sequence[Mapping]) -> Mapping:
    """The sweep point with the highest average merged score (the first point when none is scored)."""
    scored = [p for p in points if p["results"]["average"].get("merged") is not None]
    return max(scored, key=lambda p: p["results"]["average"]["merged"]) if scored else points[0]


def record_sweep(
    store: RunStore | None,
    recipe: Recipe,
    inputs: Any,
    points: list[dict],
    body: Mapping,
    *,
    init: str,
    mode: str,
    axes: list,
    planned: int,
    cancelled: bool,
    device: str,
    seconds: float,
) -> StoredRun:
    """One initialisation's sweep, stored as a run whose recipe is its best point's (`recipe` already
    carries the best point's weights, `body` is its merged body), so the run re-merges from its recipe
    alone; the points ride along under `sweep`. A cancelled sweep says after how many of `planned`."""
    best = best_point(points)
    summary = {"method": recipe.method, "adapters": inputs.names, "init": init, "mode": mode,
               "points": len(points), "posthoc": inputs.posthoc}
    if cancelled:
        summary["cancelled"] = f"after {len(points)} of {planned} points"
    return record_run(
        store, "sweep", recipe, best["results"], summary=summary, device=device, seconds=seconds, inputs=inputs,
        body=body, extra={"best_weights": best["weights"],
                          "sweep": {"init": init, "mode": mode, "axes": axes, "names": inputs.names, "points": points}},
    )


# ----------------------------------------------------------------------------------------------
# Read


@dataclass(frozen=True)
class StoredRuns:
    runs: list[StoredRun]
    skipped: list[SkippedRow] = field(default_factory=list)  # rows that could not be read, and why


def read_runs(store: RunStore, kind: str | None = None, limit: int = 500) -> StoredRuns:
    """The store's runs, newest first, and the rows it could not read back (with the reason)."""
    listing = store.read(kind, limit)
    return StoredRuns([StoredRun.of(record) for record in listing.records], listing.skipped)


def read_run(store: RunStore, run_id: int) -> StoredRun | None:
    """One run by its id; None when there is none (or its row cannot be read)."""
    record = store.get(run_id)
    return None if record is None else StoredRun.of(record)


def percent(value: float | None) -> float | None:
    """A fraction as a percentage with one decimal, as the run tables show it."""
    return None if value is None else round(100 * value, 1)
