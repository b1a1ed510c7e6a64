"""Measurements kept on disk (merging/store/measure_cache.py): a restarted server reads them back, a changed
adapter or measuring code gets new ones, a broken file is measured again; and the Tour and the
server's warm-up use them."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from merging.analysis import tour as story
from merging.store import measure_cache
from merging.store.measure_cache import MeasureCache


def test_a_value_survives_a_new_cache_object_and_the_write_leaves_no_temporary(tmp_path):
    cache = MeasureCache.in_workspace(tmp_path / "ws")
    key = MeasureCache.key("tour", "", recipe="abc")
    assert cache.get("tour", key) is None
    assert cache.put("tour", key, {"tasks": {"a": {"merged": 0.5}}, "nan": float("nan")})
    again = MeasureCache.in_workspace(tmp_path / "ws")  # a restarted server
    value = again.get("tour", key)
    assert value["tasks"] == {"a": {"merged": 0.5}}
    assert value["nan"] != value["nan"]  # NaN kept as NaN
    files = [p.name for p in (tmp_path / "ws" / "cache" / "measures" / "tour").iterdir()]
    assert files == [f"{key}.json"]


def test_keys_change_with_what_is_measured_the_model_and_the_code(tmp_path, monkeypatch):
    base = MeasureCache.key("tour", "", recipe="abc")
    assert MeasureCache.key("tour", "", recipe="abc") == base
    assert MeasureCache.key("tour", "", recipe="abd") != base
    assert MeasureCache.key("cross_task", "", recipe="abc") != base
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with_model = MeasureCache.key("tour", str(model), recipe="abc")
    os.utime(model / "config.json", ns=(1, 1))  # the model's files changed
    assert MeasureCache.key("tour", str(model), recipe="abc") != with_model
    monkeypatch.setattr(measure_cache, "code_version", lambda: "edited")
    assert MeasureCache.key("tour", "", recipe="abc") != base


def test_a_broken_or_misplaced_file_is_treated_as_missing(tmp_path):
    cache = MeasureCache(tmp_path)
    key, other = MeasureCache.key("tour", "", n=1), MeasureCache.key("tour", "", n=2)
    cache.put("tour", key, {"v": 1})
    (tmp_path / "tour" / f"{key}.json").write_text('{"kind": "tour", "key": "')  # cut off mid-write
    assert cache.get("tour", key) is None
    cache.put("tour", other, {"v": 2})
    shutil.copy(tmp_path / "tour" / f"{other}.json", tmp_path / "tour" / f"{key}.json")  # copied by hand
    assert cache.get("tour", key) is None
    with pytest.raises(ValueError):
        cache.get("tour", "../../etc")


def test_an_unwritable_folder_is_not_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    cache = MeasureCache(tmp_path / "file" / "below")
    assert cache.put("tour", MeasureCache.key("tour", "", n=1), {"v": 1}) is False


# ----------------------------------------------------------------------------------------------
# The tour on the tiny zoo: measured once, read back after a restart, re-measured when an adapter changes


@pytest.fixture
def zoo_copy(tiny_zoo, tmp_path):
    from merging.training.zoo import load_zoo

    folder = tmp_path / "zoo"
    shutil.copytree(tiny_zoo, folder)
    return load_zoo(folder)


def _lab(zoo):
    from merging.lab.lab import Lab

    return Lab(zoo.base_model, device="cpu")


def test_a_new_lab_reads_the_tour_from_disk_and_a_changed_adapter_is_measured_again(zoo_copy, tmp_path, monkeypatch,
                                                                                     one_thread):
    tour = story.tour_steps(zoo_copy)
    cache = MeasureCache.in_workspace(tmp_path / "ws")
    first = story.measure_tour(tour, _lab(zoo_copy), cache)
    assert set(first) == set(tour.measurements)
    assert len(cache.entries(story.DISK_KIND)) == len(tour.measurements)

    calls = []
    original = story.measure

    def counted(measurement, *args, **kwargs):
        calls.append(measurement.key)
        return original(measurement, *args, **kwargs)

    monkeypatch.setattr(story, "measure", counted)
    again = story.measure_tour(tour, _lab(zoo_copy), MeasureCache.in_workspace(tmp_path / "ws"))  # a restart
    assert calls == []
    assert again == first

    # retrain (here: rewrite) one OSRM adapter in place: only the merge that uses it is measured again
    osrm = next(a for a in zoo_copy.adapters if a.init == "osrm")
    weights = Path(osrm.path) / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    story.measure_tour(tour, _lab(zoo_copy), cache)
    assert calls == ["merge:osrm"]
    # and a standard adapter is in every other measurement
    standard = next(a for a in zoo_copy.adapters if a.init == "standard")
    weights = Path(standard.path) / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    calls.clear()
    story.measure_tour(tour, _lab(zoo_copy), cache)
    assert sorted(calls) == sorted(k for k in tour.measurements if k != "merge:osrm")


def test_a_restarted_tour_page_shows_the_step_at_once_from_disk(zoo_copy, tmp_path, monkeypatch, one_thread):
    from pages import _ui, _warm
    from tests.conftest import _run_app_py_on_every_rerun, assert_page_ok, new_app_test

    monkeypatch.setenv("MERGESCOPE_ZOO", str(zoo_copy.folder))
    monkeypatch.delenv("MERGESCOPE_TOUR_EVAL_LIMIT", raising=False)
    monkeypatch.setattr(_warm, "start", lambda device: _warm.Readiness(state=dict.fromkeys(_warm.STEPS, "ready")))
    _run_app_py_on_every_rerun(monkeypatch)
    _ui._zoo.clear()
    try:
        tour = story.tour_steps(zoo_copy)
        workspace = tmp_path / "ws"
        story.measure_tour(tour, _lab(zoo_copy), MeasureCache.in_workspace(workspace))  # an earlier server

        def refused(*args, **kwargs):
            raise AssertionError("measured again although it is on disk")

        monkeypatch.setattr(story, "measure", refused)
        at = new_app_test(workspace)
        at.query_params["step"] = str(len(tour.steps))  # the finale needs every merge
        at.switch_page("pages/tour.py").run()
        assert_page_ok(at)
        assert "job:tour" not in at.session_state  # nothing to measure
        assert len(at.get("plotly_chart")) == 1
        shown = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert shown["data"], "the finale's chart has no data"
    finally:
        _ui._zoo.clear()


def test_the_server_warm_up_measures_the_tour_and_keeps_it_on_disk(zoo_copy, tmp_path, monkeypatch, one_thread):
    import time

    from pages import _ui, _warm

    monkeypatch.setenv("MERGESCOPE_ZOO", str(zoo_copy.folder))
    monkeypatch.setenv("MERGESCOPE_WARM_UP", "1")
    monkeypatch.delenv("MERGESCOPE_TOUR_EVAL_LIMIT", raising=False)
    monkeypatch.setattr(_ui, "DEFAULT_WORKSPACE", tmp_path / "ws")
    _ui._zoo.clear()
    _warm._started.clear()
    _warm.cross_task_results.clear()
    try:
        readiness = _warm.start("cpu")
        deadline = time.monotonic() + 240
        while not readiness.done:
            assert time.monotonic() < deadline, readiness.line()
            time.sleep(0.2)
        assert set(readiness.state.values()) == {"ready"}, readiness.line()
        cache = MeasureCache.in_workspace(tmp_path / "ws")
        tour = story.tour_steps(zoo_copy)
        for measurement in tour.measurements.values():
            assert story.stored(measurement, cache, None) is not None, measurement.key
        assert cache.entries(_warm.CROSS_KIND)  # the cross-task matrices too
    finally:
        _warm._started.clear()
        _warm.cross_task_results.clear()
        _ui._zoo.clear()


# ----------------------------------------------------------------------------------------------
# Every score the lab counts is kept on disk: a restarted server does not score a recipe again


def test_a_disk_memo_reads_back_in_a_new_object_and_clear_forgets_memory_only(tmp_path):
    from merging.store.measure_cache import DiskMemo

    cache = MeasureCache.in_workspace(tmp_path / "ws")

    def memo(context):
        return DiskMemo(cache, "merged_tally", context, encode=list, decode=tuple)

    first = memo({"model": "m", "device": "cpu"})
    key = ("fingerprint", "task", "adapter@1", "task@digest")
    assert key not in first
    first[key] = (3, 4)
    assert len(first) == 1 and first[key] == (3, 4)
    first.clear()
    assert len(first) == 0 and first[key] == (3, 4)  # from disk
    assert memo({"model": "m", "device": "cpu"})[key] == (3, 4)  # a restarted server
    assert key not in memo({"model": "m", "device": "cuda"})  # another device: another key
    assert ("fingerprint", "task", "adapter@2", "task@digest") not in first  # another version of the adapter


def test_a_disk_memo_treats_a_value_it_cannot_decode_as_missing(tmp_path):
    from merging.store.measure_cache import DiskMemo

    cache = MeasureCache.in_workspace(tmp_path / "ws")
    writer = DiskMemo(cache, "single_tally", {}, encode=lambda v: {"old": v}, decode=lambda v: v)
    writer[("a",)] = 1
    reader = DiskMemo(cache, "single_tally", {}, encode=list, decode=lambda stored: tuple(stored["new"]))
    assert ("a",) not in reader


def _standard_recipe(zoo, **fields):
    from merging.recipe.codec import Recipe

    standard = [a for a in zoo.adapters if a.init == "standard"]
    return Recipe.from_dict({"adapters": [{"path": str(a.path), "name": a.name} for a in standard],
                             "method": "ties", "density": 0.5, "device": "cpu", **fields})


def test_a_restarted_lab_shows_a_merge_scored_before_without_a_forward_pass(zoo_copy, tmp_path, monkeypatch, one_thread):
    from merging.evaluation.evaluate import Evaluator
    from merging.lab.catalog import resolve_inputs
    from merging.lab.lab import Lab

    recipe = _standard_recipe(zoo_copy)
    adapters = resolve_inputs(recipe).adapters
    measures = MeasureCache.in_workspace(tmp_path / "ws")
    first = Lab(zoo_copy.base_model, device="cpu", measures=measures).merge_and_evaluate(adapters, recipe)
    assert not first.evaluation.cached
    for kind in ("base_tally", "single_tally", "merged_tally"):
        assert measures.entries(kind), kind

    def refused(*args, **kwargs):
        raise AssertionError("scored again although the tally is on disk")

    monkeypatch.setattr(Evaluator, "tally", refused)
    again = Lab(zoo_copy.base_model, device="cpu", measures=MeasureCache.in_workspace(tmp_path / "ws"))
    second = again.merge_and_evaluate(adapters, recipe)
    assert second.evaluation.cached
    assert second.evaluation.to_dict()["tasks"] == first.evaluation.to_dict()["tasks"]

    # another recipe is another body: scored (and refused here, which proves it is not taken from disk)
    with pytest.raises(AssertionError, match="scored again"):
        again.merge_and_evaluate(adapters, _standard_recipe(zoo_copy, density=0.3))
    # a lab with another maximum length scores again too: its tallies are other numbers
    other = Lab(zoo_copy.base_model, device="cpu", max_length=16, measures=measures)
    with pytest.raises(AssertionError, match="scored again"):
        other.merge_and_evaluate(adapters, recipe)


def test_an_adapter_retrained_in_place_is_scored_again(zoo_copy, tmp_path, monkeypatch, one_thread):
    from merging.evaluation.evaluate import Evaluator
    from merging.lab.catalog import resolve_inputs
    from merging.lab.lab import Lab

    recipe = _standard_recipe(zoo_copy)
    measures = MeasureCache.in_workspace(tmp_path / "ws")
    Lab(zoo_copy.base_model, device="cpu", measures=measures).merge_and_evaluate(resolve_inputs(recipe).adapters, recipe)
    weights = Path(recipe.adapters[0].path) / "adapter_model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    scored = []
    original = Evaluator.tally

    def counted(self, task, *args, **kwargs):
        scored.append(task)
        return original(self, task, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "tally", counted)
    run = Lab(zoo_copy.base_model, device="cpu", measures=measures).merge_and_evaluate(
        resolve_inputs(recipe).adapters, recipe)
    assert not run.evaluation.cached
    changed_task = zoo_copy.adapters[[a.name for a in zoo_copy.adapters].index(recipe.adapters[0].name)].task
    assert changed_task in scored  # its single score and every merged one are counted anew


def test_a_restarted_server_shows_the_merge_pages_scores_at_once(app_test, tmp_path, monkeypatch):
    from merging.evaluation.evaluate import Evaluator
    from pages import _ui
    from tests.conftest import assert_page_ok, new_app_test, wait_for_job
    from tests.test_page_merge import _click_run

    at = wait_for_job(_click_run(app_test.run()), "merge")
    assert_page_ok(at)
    shown = {m.label: m.value for m in at.metric}
    _ui.forget_labs()  # a restarted server: no lab, nothing in memory

    def refused(*args, **kwargs):
        raise AssertionError("scored again although the scores are on disk")

    monkeypatch.setattr(Evaluator, "tally", refused)
    fresh = wait_for_job(_click_run(new_app_test(tmp_path / "workspace").run()), "merge")
    assert_page_ok(fresh)
    again = {m.label: m.value for m in fresh.metric}
    assert again["Merge + evaluation time"] == "cached"
    assert {k: v for k, v in again.items() if k != "Merge + evaluation time"} == {
        k: v for k, v in shown.items() if k != "Merge + evaluation time"}
