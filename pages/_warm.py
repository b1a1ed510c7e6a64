"""The server's warm-up: the base model, every zoo adapter alone, the Merge page's first merge and
the Interference page's cross-task matrix, computed once per server in a background thread.

Why: a speaker opens the dashboard minutes before the talk; without this, the first merge and the
cross-task matrix cost ~47 s in every new session. `mergescope dashboard` starts it with the server
(pages/_server.py calls `start` once Streamlit's Runtime runs, and prints each step's end in the
terminal); under a plain `streamlit run app.py` the first browser session starts it (Streamlit runs
no script before one connects). Either way it runs once: `_started` is an `st.cache_resource`, whose
values belong to the process, so every session's `start` returns the same Readiness, which says
what is done, for the sidebar (or the top of a page in presentation mode).

The first merge is the Merge page's defaults (the zoo's first five standard adapters, λ = 1, the
registry's first method): its scores land in the Lab's merged-accuracy cache, so the page's first Run
costs the merge alone and says "cached". The matrix lands in `cross_task_results()`, keyed as the
Interference page keys its own cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from merging.adapters.lora import adapter_version, load_adapter
from merging.core import jobs
from merging.evaluation.evaluate import cross_task_matrix
from merging.lab.catalog import Entry, twin_of, zoo_entries
from merging.methods import REGISTRY
from merging.recipe.codec import AdapterRef, Recipe
from merging.store.measure_cache import MeasureCache
from pages import _ui

# "single adapters" are the ones the first merge and the matrix use (the standard five and their OSRM
# twins); a zoo with more variants scores the rest last, so the first merge does not wait for them.
# "tour" measures every step of the Tour (merging.analysis.tour.measure_tour), last: the Merge and Interference pages'
# first results come first. What the tour and the matrix measure is also kept on disk in the workspace
# (merging.store.measure_cache), so a restarted server reads it back instead of measuring again.
STEPS = ("base model", "single adapters", "first merge", "cross-task matrix", "other adapters", "tour")


@dataclass
class Readiness:
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STEPS, "waiting"))
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None
    detail: dict[str, str] = field(default_factory=dict)  # a running step's count, e.g. tour "3/12"

    @property
    def done(self) -> bool:
        return all(value in ("ready", "off") or value.startswith("failed") for value in self.state.values())

    def line(self) -> str:
        if all(value == "off" for value in self.state.values()):
            return "server warm-up off (MERGESCOPE_WARM_UP=0)"
        marks = {"ready": "✓", "waiting": "…", "running": "→", "off": "–"}  # no emoji: some fonts on stage machines lack them

        def told(step: str, value: str) -> str:
            if value == "running" and self.detail.get(step):
                return f"→ {step} ({self.detail[step]})"
            return f"{marks.get(value, '✗')} {step}" + ("" if value in marks else f" ({value})")

        return " · ".join(told(k, v) for k, v in self.state.items())


def version_of(entry: Entry) -> tuple[str, str]:
    """(path, merging.adapters.lora.adapter_version): the key the Interference page uses for a set of adapters
    (the path first, so the page can load the adapters back from the key)."""
    return str(entry.path), adapter_version(entry.path)


def default_recipe(entries: list[Entry], device: str) -> Recipe | None:
    """The Merge page's defaults: up to five standard adapters at λ = 1 with the first method."""
    standard = [e for e in entries if e.init == "standard"][:5]
    if not standard:
        return None
    adapters = tuple(AdapterRef(path=str(e.path), weight=1.0, name=e.name) for e in standard)
    return Recipe(adapters=adapters, method=next(iter(REGISTRY)), device=device)


@st.cache_resource(show_spinner=False)
def cross_task_results() -> dict:
    """(base model, versions) → cross_task_matrix: shared by every session of this server."""
    return {}


CROSS_KIND = "cross_task"  # the cross-task matrices' folder in the workspace's measure cache


def disk_cache(workspace: str | os.PathLike | None = None) -> MeasureCache:
    """The measure cache of a workspace (the default workspace's for the server's warm-up)."""
    return MeasureCache.in_workspace(workspace if workspace is not None else _ui.DEFAULT_WORKSPACE)


def cross_task_key(base_model: str, versions: tuple) -> str:
    return MeasureCache.key(CROSS_KIND, base_model, versions=[list(v) for v in versions])


def stored_cross_task(cache: MeasureCache, base_model: str, versions: tuple) -> dict | None:
    """A cross-task matrix kept on disk (None when absent, or stale: an adapter changed since)."""
    return cache.get(CROSS_KIND, cross_task_key(base_model, versions))


def store_cross_task(cache: MeasureCache, base_model: str, versions: tuple, matrix: dict) -> None:
    cache.put(CROSS_KIND, cross_task_key(base_model, versions), matrix)


def tour_eval_limit() -> int | None:
    """MERGESCOPE_TOUR_EVAL_LIMIT (the Tour page's quick walk); the warm-up measures full tours only."""
    value = os.environ.get("MERGESCOPE_TOUR_EVAL_LIMIT", "0")
    return int(value) if value.isdigit() and int(value) > 0 else None


@st.cache_resource(show_spinner=False)
def _started(zoo_folder: str, device: str) -> Readiness:
    """Load the model and the adapters in the caller's thread (a session's script, or the server
    entry's thread at start: the resource caches are the process's either way), then score in a
    daemon thread while the pages render."""
    readiness = Readiness()
    built_in = _ui.zoo()
    if built_in is None:
        readiness.state = {k: "failed: no zoo" for k in STEPS}
        return readiness
    try:
        lab = _ui.lab_for(built_in.base_model, device, _ui.DEFAULT_WORKSPACE)
        entries = [e for e in zoo_entries(built_in) if e.usable]
        adapters = {e.name: _ui.load_adapter_cached(e.path) for e in entries}
    except Exception as err:  # a broken zoo: say so in the readiness line, the pages still work
        readiness.state = {k: f"failed: {type(err).__name__}: {err}" for k in STEPS}
        return readiness
    readiness.state["base model"] = "ready"
    cross_task_results()  # created here, in the script thread
    jobs.claim_warm_up(lab)  # the Merge page's own warm-up would repeat the singles
    jobs.start_thread("server-warm-up", _warm, readiness, lab, built_in, entries, adapters, device, disk_cache())
    return readiness


def _warm(readiness: Readiness, lab, built_in, entries: list[Entry], adapters: dict, device: str,
          cache: MeasureCache) -> None:
    base_model = built_in.base_model
    step = "single adapters"
    try:
        standard = [e for e in entries if e.init == "standard"][:5]
        twins = [t for t in (twin_of(entries, e, "osrm") for e in standard) if t is not None]
        first = standard + twins
        readiness.state[step] = "running"
        lab.warm_up([adapters[e.name] for e in first])
        readiness.state[step] = "ready"
        step = "first merge"
        readiness.state[step] = "running"
        recipe = default_recipe(entries, device)
        if recipe is not None:
            lab.merge_and_evaluate([adapters[a.name] for a in recipe.adapters], recipe)
        readiness.state[step] = "ready"
        step = "cross-task matrix"
        readiness.state[step] = "running"
        sets = [standard]
        if len(twins) >= 2:
            sets.append(twins)
        for chosen in sets:
            versions = tuple(version_of(e) for e in chosen)
            matrix = stored_cross_task(cache, base_model, versions)
            if matrix is None:
                with lab.lock:
                    lab.prepare([adapters[e.name] for e in chosen])
                    matrix = cross_task_matrix(lab.evaluator, [adapters[e.name] for e in chosen])
                store_cross_task(cache, base_model, versions, matrix)
            cross_task_results()[(base_model, versions)] = matrix
        readiness.state[step] = "ready"
        step = "other adapters"
        readiness.state[step] = "running"
        others = [adapters[e.name] for e in entries if e not in first]
        if others:
            lab.warm_up(others)
        readiness.state[step] = "ready"
        step = "tour"
        if tour_eval_limit() is not None:
            readiness.state[step] = "off"  # a quick walk measures on a lab of its own (pages/tour.py)
        else:
            readiness.state[step] = "running"
            _warm_tour(readiness, lab, built_in, entries, adapters, cache)
            readiness.state[step] = "ready"
    except Exception as err:  # shown as "failed" in the readiness line; the pages still work without it
        readiness.state[step] = f"failed: {type(err).__name__}: {err}"
        for later in STEPS[STEPS.index(step) + 1:]:
            readiness.state[later] = "failed: skipped"
    finally:
        readiness.seconds = time.perf_counter() - readiness.started


def _warm_tour(readiness: Readiness, lab, built_in, entries: list[Entry], adapters: dict, cache: MeasureCache) -> None:
    """Every Tour step's measurements, from disk where they are kept, else measured and kept there;
    the readiness line counts the measurements."""
    from merging.analysis import tour as story

    try:
        tour = story.tour_steps(built_in)
    except ValueError:  # fewer than two standard adapters: there is no tour to prepare
        return
    by_path = {str(Path(e.path).resolve()): adapters[e.name] for e in entries if e.name in adapters}

    def load(path, name):
        return by_path.get(str(Path(path).resolve())) or load_adapter(path, name=name)

    total = len(tour.measurements)

    def progress(done, whole, what):
        readiness.state["tour"] = "running"
        readiness.detail["tour"] = f"{min(total, int(done * total / whole))}/{total}"

    story.measure_tour(tour, lab, cache, load, progress)


def enabled() -> bool:
    """MERGESCOPE_WARM_UP=0 turns the server's warm-up off (tests that want pages as a cold start)."""
    return os.environ.get("MERGESCOPE_WARM_UP", "1") != "0"


def start(device: str) -> Readiness:
    """Start the warm-up once per server (and device); the readiness of the one running."""
    if not enabled():
        return Readiness(state=dict.fromkeys(STEPS, "off"), seconds=0.0)
    return _started(str(_ui.zoo_folder()), device)
