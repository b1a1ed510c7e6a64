"""One way to record a run (merging.store.stored_runs.record_run) and one way to read it back (StoredRun):
a round trip, a store written in the format on disk before this module (by hand, from the columns),
a corrupt store named in one message, and the background jobs around a shared Lab (merging.core.jobs)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field

import pytest
import torch

from merging.adapters.lora import LoraModule
from merging.core import jobs
from merging.evaluation.evaluate import modules_fingerprint
from merging.recipe.codec import AdapterRef, Recipe
from merging.store.runs import RunStore
from merging.store.stored_runs import best_point, read_run, read_runs, record_run, record_sweep

EVALUATION = {
    "tasks": {"sst2": {"merged": 0.75, "single": 0.9, "base": 0.5}},
    "average": {"merged": 0.75, "single": 0.9, "normalized": 0.8333},
}


@dataclass
class _Inputs:  # the part of merging.lab.catalog.MergeInputs a record reads
    names: list[str]
    twins: dict = field(default_factory=dict)
    posthoc: list = field(default_factory=list)


def _recipe(*weights: float, osrm: str = "off") -> Recipe:
    adapters = tuple(AdapterRef(f"zoo/{name}", w, name) for name, w in zip(("sst2", "spam"), weights, strict=False))
    return Recipe(adapters=adapters, method="ties", parameters={"density": 0.5}, osrm=osrm)


def _body() -> dict:
    return {"layer.0.q": LoraModule(torch.ones(2, 3), torch.full((4, 2), 0.5), 2.0)}


def test_a_recorded_merge_reads_back_with_its_recipe_and_results(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    recipe = _recipe(1.0, 0.6, osrm="twins")
    body = _body()
    recorded = record_run(store, "merge", recipe, EVALUATION, summary={"method": "ties"}, device="cpu", seconds=2.5,
                          inputs=_Inputs(["sst2", "spam"], twins={"spam": "spam-osrm"}), body=body)
    assert recorded.id is not None
    (run,) = read_runs(store).runs
    assert run == read_run(store, recorded.id)
    assert run.id == recorded.id and run.kind == "merge" and run.recipe == recipe and run.recipe_problem is None
    assert run.results == {**EVALUATION, "osrm": {"mode": "twins", "twins": {"spam": "spam-osrm"}, "posthoc": []},
                           "fingerprint": modules_fingerprint(body)}
    assert (run.device, run.seconds, run.summary) == ("cpu", 2.5, {"method": "ties"})
    assert run.adapter_names == ["sst2", "spam"] and run.weights == [1.0, 0.6] and run.method == "ties"
    assert run.average["merged"] == 0.75 and run.rank is None and run.do_merging_switches == []
    # what the caller got back is what a reader gets
    assert (recorded.recipe, recorded.results, recorded.summary) == (run.recipe, run.results, run.summary)


def test_a_run_without_a_store_is_returned_unstored_and_an_unknown_kind_is_refused(tmp_path):
    assert record_run(None, "merge", _recipe(1.0), EVALUATION).id is None
    store = RunStore(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="kind: 'merg' is not a run kind"):
        record_run(store, "merg", _recipe(1.0), EVALUATION)
    assert read_runs(store).runs == []


def test_a_sweep_is_stored_as_its_best_point_with_the_points_beside_it(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    points = [
        {"weights": [0.5, 0.5], "results": {"tasks": {}, "average": {"merged": 0.6}}},
        {"weights": [1.0, 1.0], "results": {"tasks": {}, "average": {"merged": 0.8}}},
        {"weights": [1.5, 1.5], "results": {"tasks": {}, "average": {"merged": None}}},
    ]
    assert best_point(points)["weights"] == [1.0, 1.0]
    recipe = _recipe(1.0, 1.0)
    stored = record_sweep(store, recipe, _Inputs(["sst2", "spam"]), points, _body(), init="standard",
                          mode="curves", axes=[[0.5, 1.0, 1.5]], planned=5, cancelled=True, device="cpu", seconds=3.0)
    run = read_run(store, stored.id)
    assert run.kind == "sweep" and run.init == "standard" and run.weights == [1.0, 1.0]
    assert run.average == {"merged": 0.8} and run.sweep["points"] == points and run.sweep["axes"] == [[0.5, 1.0, 1.5]]
    assert run.summary["cancelled"] == "after 3 of 5 points" and run.summary["points"] == 3


def _old_store(path) -> None:
    """A run store as the code before merging.store.stored_runs wrote it: the table, then rows as JSON text."""
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, kind TEXT NOT NULL, "
            "recipe TEXT NOT NULL, results TEXT NOT NULL, summary TEXT NOT NULL, device TEXT NOT NULL, "
            "seconds REAL NOT NULL)"
        )
        rows = [
            # a merge from before the `osrm` field: the switch sat in the results, the twins in the adapter list
            (1000.0, "merge",
             '{"adapters": [{"path": "zoo/sst2-osrm", "weight": 0.7, "name": "sst2-osrm"}, '
             '{"path": "zoo/spam-osrm", "weight": 1.3}], "method": "task_arithmetic", "rank": 4, "seed": 0}',
             '{"tasks": {"sst2": {"merged": 0.7}}, "average": {"merged": 0.7, "normalized": 0.9}, '
             '"osrm": {"switch": true, "posthoc": []}}',
             '{"method": "task_arithmetic"}', "cpu", 1.5),
            # a sweep: its recipe is its best point's, the λ shown is `best_weights`
            (1001.0, "sweep",
             '{"adapters": [{"path": "zoo/sst2", "weight": 1.2, "name": "sst2"}], "method": "ties", '
             '"parameters": {"density": 0.4}, "osrm_posthoc": true, '
             '"do_merging": {"decouple": true, "orthogonalize": false}}',
             '{"tasks": {}, "average": {"merged": 0.65}, "best_weights": [1.2], '
             '"sweep": {"init": "osrm", "mode": "curves", "axes": [[1.2]], "points": []}}',
             '{"init": "osrm"}', "cuda", 4.0),
            # a recipe no Recipe reads (an unknown method): still listed, by what was stored
            (1002.0, "merge", '{"adapters": [{"path": "x/gone"}], "method": "no_such_method"}',
             '{"average": {"merged": 0.1}}', "{}", "cpu", 0.5),
        ]
        connection.executemany(
            "INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )


def test_runs_stored_in_the_earlier_format_still_load(tmp_path):
    path = tmp_path / "runs.sqlite"
    _old_store(path)
    unknown, sweep, merge = read_runs(RunStore(path)).runs  # newest first
    assert merge.recipe.osrm == "twins" and merge.recipe.rank == 4  # the results' switch, mapped
    assert merge.adapter_names == ["sst2-osrm", "spam-osrm"] and merge.weights == [0.7, 1.3]
    assert merge.average == {"merged": 0.7, "normalized": 0.9} and merge.created == 1000.0
    assert sweep.recipe.osrm == "posthoc" and sweep.recipe.parameters["density"] == 0.4
    assert sweep.weights == [1.2] and sweep.init == "osrm" and sweep.device == "cuda"
    assert sweep.do_merging_switches == ["decouple"]
    assert unknown.recipe is None and "no_such_method" in unknown.recipe_problem
    assert unknown.method == "no_such_method" and unknown.adapter_names == ["gone"] and unknown.weights == [1.0]
    # a new run goes into the old file beside them
    record_run(RunStore(path), "merge", _recipe(1.0), EVALUATION)
    assert len(read_runs(RunStore(path)).runs) == 4


def test_a_corrupt_store_is_named_in_one_message_and_reads_as_empty(tmp_path):
    path = tmp_path / "runs.sqlite"
    path.write_bytes(b"this is not an SQLite database " * 64)
    store = RunStore(path)
    assert store.problem == f"the run store {path} cannot be used (the file is damaged or is not an SQLite database); " \
                            "runs are not stored"
    listing = read_runs(store)
    assert listing.runs == [] and listing.skipped == []
    assert record_run(store, "merge", _recipe(1.0), EVALUATION).id is None
    assert path.read_bytes() == b"this is not an SQLite database " * 64  # left as it was


def test_a_malformed_row_is_skipped_with_its_id_and_column(tmp_path):
    path = tmp_path / "runs.sqlite"
    _old_store(path)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE runs SET summary = ? WHERE id = 2", ("[1, 2",))
    listing = read_runs(RunStore(path))
    assert [run.id for run in listing.runs] == [3, 1]
    assert [(row.id, row.reason) for row in listing.skipped] == [(2, "column 'summary' is not valid JSON (JSONDecodeError)")]
    assert read_run(RunStore(path), 2) is None


def test_the_stored_row_is_the_recipes_json(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    recipe = _recipe(0.5, 2.0)
    run_id = record_run(store, "search-trial", recipe, extra={"search": {"id": "abc"}}).id
    with sqlite3.connect(store.path) as connection:
        stored, results = connection.execute("SELECT recipe, results FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert json.loads(stored) == recipe.to_dict()
    assert json.loads(results) == {"search": {"id": "abc"}}


# ----------------------------------------------------------------------------------------------
# merging.core.jobs


def _wait(job: jobs.Job) -> jobs.Job:
    deadline = threading.Event()
    for _ in range(500):
        if job.finished:
            return job
        deadline.wait(0.01)
    raise AssertionError("the job did not finish")


def test_a_job_returns_its_result_or_its_error_and_stops_on_cancel():
    done = _wait(jobs.start_job("test-ok", jobs.Job("ok"), lambda progress: 41 + 1))
    assert (done.result, done.error, done.finished) == (42, None, True)

    def fails(progress):
        raise ValueError("field 'x': bad")

    failed = _wait(jobs.start_job("test-fail", jobs.Job("fail"), fails))
    assert failed.error == "ValueError: field 'x': bad" and "Traceback" in failed.error_detail

    release = threading.Event()

    def waits(progress):
        progress(0, 2, "first")
        release.wait(5)
        progress(1, 2, "second")  # raises Cancelled once cancelled
        return "not reached"

    job = jobs.start_job("test-cancel", jobs.Job("cancel"), waits)
    job.cancel()
    release.set()
    assert _wait(job).error == "Cancelled." and job.result is None


def test_a_labs_warm_up_starts_once_whoever_asks():
    class FakeLab:
        def __init__(self):
            self.warmed: list = []
            self.done = threading.Event()

        def warm_up(self, adapters):
            self.warmed.append(list(adapters))
            self.done.set()

    lab, other = FakeLab(), FakeLab()
    loads: list[str] = []

    def adapters():
        loads.append("loaded")
        return ["a", "b"]

    assert jobs.warm_up_in_background(lab, adapters) is True
    assert jobs.warm_up_in_background(lab, adapters) is False  # the second asker finds it started
    assert jobs.claim_warm_up(lab) is False
    assert lab.done.wait(5) and lab.warmed == [["a", "b"]] and loads == ["loaded"]
    assert jobs.claim_warm_up(other) is True  # another Lab is its own
    assert jobs.warm_up_in_background(other, adapters) is False and other.warmed == []


# ----------------------------------------------------------------------------------------------
# merging.lab.run_jobs: the Sweep page's work, without Streamlit


class _Scores:
    def __init__(self, merged: float):
        self.merged = merged

    def to_dict(self) -> dict:
        return {"tasks": {"t": {"merged": self.merged}}, "average": {"merged": self.merged}}


class _SweepLab:
    """A Lab whose sweep scores a point by a fixed table (λ → average merged), on the CPU."""

    device = torch.device("cpu")

    def __init__(self, scores: dict[float, float]):
        self.scores = scores

    def sweep(self, adapters, recipe, grid):
        return [(list(weights), _Scores(self.scores[weights[0]])) for weights in grid]


def _sweep_set(three_adapters):
    from merging.lab.catalog import MergeInputs
    from merging.lab.run_jobs import SweepSet

    recipe = Recipe(adapters=tuple(AdapterRef(f"zoo/{a.name}", 1.0, a.name) for a in three_adapters),
                    method="task_arithmetic", device="cpu")
    return SweepSet("standard", recipe, MergeInputs(list(three_adapters), None))


def test_the_sweep_job_stores_its_best_point_with_that_points_own_body(tmp_path, three_adapters):
    from merging.engine.merge import merge_adapters
    from merging.lab.run_jobs import lambda_grid, sweep_work

    assert lambda_grid(0.1, 1.5, 8) == [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
    store = RunStore(tmp_path / "runs.sqlite")
    item = _sweep_set(three_adapters)
    grid = [[lam] * 3 for lam in (0.5, 1.0, 1.5)]
    partial: dict = {}
    output = sweep_work([item], _SweepLab({0.5: 0.6, 1.0: 0.9, 1.5: 0.7}), "curves", grid, [[0.5, 1.0, 1.5]],
                        store, partial)(lambda done, total, what: None)
    assert output is partial and output["cancelled"] is False
    run = read_run(store, output["run_ids"]["standard"])
    assert run.recipe == item.recipe.with_weights([1.0, 1.0, 1.0]) and run.weights == [1.0, 1.0, 1.0]
    assert run.average == {"merged": 0.9} and [p["weights"] for p in run.sweep["points"]] == grid
    expected = merge_adapters(three_adapters, item.recipe.with_weights([1.0, 1.0, 1.0])).adapter.modules
    assert run.results["fingerprint"] == modules_fingerprint(expected)
    assert run.osrm == {"mode": "off", "twins": {}, "posthoc": []} and "cancelled" not in run.summary


def test_a_cancelled_sweep_job_stores_the_points_scored_so_far_then_stops(tmp_path, three_adapters):
    from merging.core.progress import Cancelled
    from merging.lab.run_jobs import sweep_work

    store = RunStore(tmp_path / "runs.sqlite")
    calls = []

    def progress(done, total, what):
        calls.append(what)
        if len(calls) == 3:  # Cancel pressed while the third point waits
            raise Cancelled()

    partial: dict = {}
    work = sweep_work([_sweep_set(three_adapters)], _SweepLab({0.5: 0.6, 1.0: 0.5, 1.5: 0.7}), "curves",
                      [[0.5] * 3, [1.0] * 3, [1.5] * 3], [[0.5, 1.0, 1.5]], store, partial)
    with pytest.raises(Cancelled):
        work(progress)
    assert partial["cancelled"] is True and len(partial["sets"]["standard"]["points"]) == 2
    (run,) = read_runs(store).runs
    assert run.summary["cancelled"] == "after 2 of 3 points" and run.weights == [0.5, 0.5, 0.5]


def test_a_sweeps_table_and_heatmap_are_read_from_its_points():
    import math

    from merging.lab.run_jobs import heatmap_grid, sweep_rows

    points = [
        {"weights": [0.5, 1.0], "results": {"tasks": {"t": {"merged": 0.61234, "loss": {"merged": 1.0}}},
                                            "average": {"merged": 0.61234, "normalized": 0.7}}},
        {"weights": [1.0, 1.0], "results": {"tasks": {"t": {"merged": None}}, "average": {"merged": None}}},
    ]
    assert heatmap_grid(points, [0.5, 1.0], [0.5, 1.0]) == [[None, 0.61234], [None, None]]
    first, second = sweep_rows({"osrm": {"points": points}}, "heatmap")
    assert first == {"init": "osrm", "λ₁": 0.5, "λ₂": 1.0, "t": 0.6123, "t loss": 1.0,
                     "t perplexity": round(math.e, 3), "average merged": 0.6123, "average normalised": 0.7}
    assert second == {"init": "osrm", "λ₁": 1.0, "λ₂": 1.0, "t": None, "average merged": None, "average normalised": None}
    (curve,) = sweep_rows({"standard": {"points": points[:1]}}, "curves")
    assert curve["λ"] == 0.5 and "λ₁" not in curve
