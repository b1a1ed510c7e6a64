"""The talk tour: its steps as data over the shipped zoo (every fix compared with the naive merge,
every recipe a valid share link), and the Tour page walked step by step in AppTest, forward and back."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from streamlit.testing.v1 import AppTest

from merging.analysis import tour as story
from merging.recipe.codec import Recipe
from merging.training.zoo import REPO_ZOO, Zoo, ZooAdapter, load_zoo
from tests.browser_support import HANG_GUARD_S
from tests.conftest import _run_app_py_on_every_rerun, assert_page_ok, new_app_test

EVAL_LIMIT = 8  # examples per task in the AppTest walk: the full walk would take minutes on 2 cores


@pytest.fixture(scope="module")
def shipped() -> Zoo:
    return load_zoo(REPO_ZOO)


def test_the_tour_tells_the_story_in_order(shipped):
    tour = story.tour_steps(shipped)
    keys = [s.key for s in tour.steps]
    study = ["why"] if (shipped.folder / "seed_study.json").is_file() else []
    assert keys[:4 + len(study)] == ["singles", "naive", "overlap", "signs", *study]
    fixes = keys[4 + len(study):]
    assert fixes[:4] == ["ties", "dare_ties", "decouple", "orthogonalize"]
    variants = [i for i in shipped.inits if i.startswith("osrm")]
    assert fixes[4:4 + len(variants)] == variants  # one step per OSRM variant the zoo holds
    assert fixes[4 + len(variants):] == ["posthoc", *(["seeds", "mechanism"] if study else []), "summary"]
    assert [s.title.split(" · ")[0] for s in tour.steps] == [str(n) for n in range(1, len(keys) + 1)]


def test_every_fix_is_measured_against_the_naive_merge_on_the_same_tasks(shipped):
    tour = story.tour_steps(shipped)
    naive = tour.measurements[story.NAIVE].recipe
    tasks = [shipped.adapter(a.name).task for a in naive.adapters]
    assert naive.method == "task_arithmetic" and naive.weights == [1.0] * len(tasks)
    compared = [s for s in tour.steps if s.takeaway in ("fix", "variant")]
    assert len(compared) == len([s for s in tour.steps if s.key not in (
        "singles", "naive", "overlap", "signs", "summary", *story.STUDY_STEPS)])  # fmt: skip
    for step in compared:
        assert step.reference == story.NAIVE and step.needs[1] == story.NAIVE
        own = tour.measurements[step.needs[0]].recipe
        assert [shipped.adapter(a.name).task for a in own.adapters] == tasks
    fixes = {s.key: tour.measurements[s.needs[0]].recipe for s in tour.steps}
    assert fixes["ties"].method == "ties" and fixes["ties"].parameters["density"] == 0.5
    assert fixes["decouple"].do_merging.decouple and not fixes["decouple"].do_merging.orthogonalize
    assert fixes["orthogonalize"].do_merging.orthogonalize and not fixes["orthogonalize"].do_merging.decouple
    assert fixes["posthoc"].osrm == "posthoc"
    for init in [i for i in shipped.inits if i.startswith("osrm")]:
        assert {shipped.adapter(a.name).init for a in fixes[init].adapters} == {init}
    summary = tour.steps[-1]
    assert set(summary.needs) == {k for k, m in tour.measurements.items() if m.kind == "merge"}


def test_every_steps_recipe_is_a_share_link_that_reads_back(shipped):
    for step in story.tour_steps(shipped).steps:
        assert Recipe.from_url(step.recipe.to_url()) == step.recipe


def _adapter(name: str, task: str, init: str) -> ZooAdapter:
    return ZooAdapter(name, task, init, Path("/nowhere") / name, None, None)


def test_a_variant_missing_a_task_gets_no_step_and_one_adapter_is_no_tour():
    zoo = Zoo(Path("/nowhere"), "base", [], [
        _adapter("a-standard", "a", "standard"), _adapter("b-standard", "b", "standard"),
        _adapter("a-osrm", "a", "osrm"), _adapter("a-osrm-cov", "a", "osrm-cov"), _adapter("b-osrm-cov", "b", "osrm-cov"),
        _adapter("a-shared-seed", "a", "shared-seed"), _adapter("b-shared-seed", "b", "shared-seed"),
    ])
    keys = [s.key for s in story.tour_steps(zoo).steps]
    assert "osrm-cov" in keys and "osrm" not in keys
    assert "shared-seed" not in keys  # the labelled shared-seed pair is not a fix
    with pytest.raises(ValueError, match="fewer than two standard adapters"):
        story.tour_steps(Zoo(Path("/nowhere"), "base", [], [_adapter("a-standard", "a", "standard")]))


def test_variant_labels_name_the_osrm_variant():
    assert story.variant_label("osrm") == "OSRM"
    assert story.variant_label("osrm-frozen") == "OSRM (A frozen)"
    assert story.variant_label("osrm-new-rows") == "OSRM (new rows)"


# ----------------------------------------------------------------------------------------------
# The page, walked


def _wait(at: AppTest, timeout: float = HANG_GUARD_S) -> AppTest:  # a hang guard; the wait ends on the job
    deadline = time.monotonic() + timeout
    while "job:tour" in at.session_state and not at.session_state["job:tour"].finished:
        assert time.monotonic() < deadline, "the tour's background job did not finish"
        time.sleep(0.2)
    return at.run()


def _shown(at: AppTest) -> tuple[str | None, str | None]:
    """(the "Step n of N · title" line, the takeaway sentence)."""
    where = [m.value for m in at.markdown if m.value.startswith("**Step ")]
    takeaways = [m.value for m in at.markdown if m.value.startswith("#### ")]
    return (where[0] if where else None), (takeaways[0][5:] if takeaways else None)


def _headline(at: AppTest) -> str | None:
    """The step's headline (pages/_stage.headline: a <p class='ms-headline'>), unescaped."""
    import html
    import re

    found = [re.sub(r"<[^>]+>", "", m.value) for m in at.markdown if "ms-headline" in m.value]
    return html.unescape(found[0]) if found else None


def _link_recipe(at: AppTest) -> Recipe:
    buttons = [e for e in at.get("link_button")]
    assert len(buttons) == 1
    url = buttons[0].proto.url
    return Recipe.from_url(parse_qs(urlparse(url).query)["recipe"][0])


_no_errors = assert_page_ok


def test_the_tour_page_walks_every_step_forward_and_back(shipped, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("MERGESCOPE_TOUR_EVAL_LIMIT", str(EVAL_LIMIT))
    monkeypatch.delenv("MERGESCOPE_ZOO", raising=False)
    _run_app_py_on_every_rerun(monkeypatch)
    # The server's warm-up (pages/_warm.py) would score the whole shipped zoo alongside the walk;
    # it is not under test here, so it is reported ready without running.
    from pages import _warm

    monkeypatch.setattr(_warm, "start", lambda device: _warm.Readiness(state=dict.fromkeys(_warm.STEPS, "ready")))
    tour = story.tour_steps(shipped)
    at = new_app_test(tmp_path / "workspace")
    at.switch_page("pages/tour.py").run()
    seen = []
    for index, step in enumerate(tour.steps):
        at = _wait(at)
        _no_errors(at)
        where, takeaway = _shown(at)
        assert where == f"**Step {index + 1} of {len(tour.steps)}** · {step.title.split(' · ', 1)[1]}", (index, where)
        assert takeaway and "not measured" not in takeaway and "No " not in takeaway[:3]
        headline = _headline(at)
        assert headline and len(headline.split()) <= 15, headline  # one line for the back row
        assert any(ch.isdigit() for ch in headline) or "no change" in headline, headline
        assert any(ch.isdigit() for ch in takeaway)  # a sentence of measured numbers
        assert _link_recipe(at) == step.recipe
        assert len(at.get("plotly_chart")) == 1
        seen.append(takeaway)
        if index + 1 < len(tour.steps):
            next(b for b in at.button if b.key == "tour_next").click()
            at = at.run()
    assert next(b for b in at.button if b.key == "tour_next").disabled  # the last step
    assert len(set(seen)) == len(seen)  # each step says its own thing
    # Back is instant: the step was measured already, so it shows in the very next run, same words.
    next(b for b in at.button if b.key == "tour_back").click()
    at = at.run()
    _no_errors(at)
    assert _shown(at)[1] == seen[-2]
    assert _shown(at)[0].startswith(f"**Step {len(tour.steps) - 1} of")
    job = at.session_state["job:tour"] if "job:tour" in at.session_state else None
    assert job is None or job.finished
    assert any("Quick walk" in c.value for c in at.caption)  # a shortened evaluation says so


def test_a_step_that_fails_to_measure_says_why_and_can_be_tried_again(shipped, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_TOUR_EVAL_LIMIT", "3")  # its own cache keys: nothing measured yet
    monkeypatch.delenv("MERGESCOPE_ZOO", raising=False)
    _run_app_py_on_every_rerun(monkeypatch)
    from pages import _warm

    monkeypatch.setattr(_warm, "start", lambda device: _warm.Readiness(state=dict.fromkeys(_warm.STEPS, "ready")))
    calls = []

    def broken(measurement, *args, **kwargs):
        calls.append(measurement.key)
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(story, "measure", broken)
    at = new_app_test(tmp_path / "workspace")
    at.switch_page("pages/tour.py").run()
    at = _wait(at)
    assert not at.exception
    assert [e.value for e in at.error] == ["Measuring step 1 failed: RuntimeError: the disk is full"]
    assert _shown(at)[1] is None  # no sentence without its numbers
    at = at.run()
    assert calls == [story.NAIVE]  # not retried behind the user's back
    next(b for b in at.button if b.key == "tour_retry").click()
    at = _wait(at.run())
    assert calls == [story.NAIVE, story.NAIVE]
    assert at.query_params["step"] in (["1"], "1")


# ----------------------------------------------------------------------------------------------
# The tour's own figures


def _result(single: dict, merged: dict) -> dict:
    tasks = {t: {"base": 0.5, "single": single[t], "merged": merged[t], "n": 200} for t in single}
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    return {"tasks": tasks, "average": {"single": mean(single), "merged": mean(merged)}}


def test_gain_and_cost_bars_are_the_changes_in_points():
    from merging.plots import gain_and_cost

    standard = _result({"a": 0.9, "b": 0.8}, {"a": 0.6, "b": 0.6})
    variant = _result({"a": 0.8, "b": 0.8}, {"a": 0.7, "b": 0.65})
    figure = gain_and_cost(variant, standard)
    alone, merged = figure.data
    assert list(alone.x) == ["a", "b", "average"]
    assert [round(v, 6) for v in alone.y] == [-10.0, 0.0, -5.0]
    assert [round(v, 6) for v in merged.y] == [10.0, 5.0, 7.5]
    assert list(alone.text) == ["\u221210.0", "0.0", "\u22125.0"]  # one decimal; unchanged has no sign


def test_the_summary_whiskers_are_each_merges_95_percent_interval(shipped):
    from merging.analysis import narrative
    from merging.plots import merge_summary

    tour = story.tour_steps(shipped)
    summary = tour.steps[-1]
    measured = {key: _result({"a": 0.9, "b": 0.8}, {"a": 0.5 + i / 20, "b": 0.6}) for i, key in enumerate(summary.needs)}
    rows = story.summary_rows(summary, measured, tour)
    figure = merge_summary(rows)
    bars = figure.data[0]
    (whiskers,) = [t for t in figure.data if t.error_x.array is not None]  # over the bar's upper half
    assert list(whiskers.x) == list(bars.x)
    for row, x, minus, plus in zip(rows, whiskers.x, whiskers.error_x.arrayminus, whiskers.error_x.array):
        low, high = narrative.average_interval(measured[next(k for k in summary.needs if story.short_label(tour, k) == row["label"])], "merged")
        assert x - minus == pytest.approx(low) and x + plus == pytest.approx(high)
    # each merge by its short name (without the "+ task arithmetic" they share), one line each, a row apiece
    names = list(figure.layout.yaxis.ticktext)
    assert names == [story.short_label(tour, k) for k in summary.needs]
    assert len(set(names)) == len(names)
    assert list(figure.layout.yaxis.tickvals) == list(bars.y) == list(range(len(names)))
