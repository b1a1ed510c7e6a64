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
import threading
import time
from dataclasses import dataclass, field

import streamlit as st

from merging.catalog import Entry, twin_of, zoo_entries
from merging.evaluation import cross_task_matrix
from merging.lora import adapter_version
from merging.methods import REGISTRY
from merging.recipe import AdapterRef, Recipe
from pages import _ui

# "single adapters" are the ones the first merge and the matrix use (the standard five and their OSRM
# twins); a zoo with more variants scores the rest last, so the first merge does not wait for them.
STEPS = ("base model", "single adapters", "first merge", "cross-task matrix", "other adapters")


@dataclass
class Readiness:
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(STEPS, "waiting"))
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None

    @property
    def done(self) -> bool:
        return all(value in ("ready", "off") or value.startswith("failed") for value in self.state.values())

    def line(self) -> str:
        if all(value == "off" for value in self.state.values()):
            return "server warm-up off (MERGESCOPE_WARM_UP=0)"
        marks = {"ready": "✓", "waiting": "…", "running": "→"}  # no emoji: some fonts on stage machines lack them
        return " · ".join(f"{marks.get(v, '✗')} {k}" + ("" if v in marks else f" ({v})") for k, v in self.state.items())


def version_of(entry: Entry) -> tuple[str, str]:
    """(path, merging.lora.adapter_version): the key the Interference page uses for a set of adapters
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
        lab = _ui.lab_for(built_in.base_model, device)
        entries = [e for e in zoo_entries(built_in) if e.usable]
        adapters = {e.name: _ui.load_adapter_cached(e.path) for e in entries}
    except Exception as err:  # a broken zoo: say so in the readiness line, the pages still work
        readiness.state = {k: f"failed: {type(err).__name__}: {err}" for k in STEPS}
        return readiness
    readiness.state["base model"] = "ready"
    cross_task_results()  # created here, in the script thread
    lab._warm_up_started = True  # the Merge page's own warm-up would repeat the singles
    threading.Thread(target=_warm, args=(readiness, lab, built_in.base_model, entries, adapters, device),
                     name="mergescope-server-warm-up", daemon=True).start()
    return readiness


def _warm(readiness: Readiness, lab, base_model: str, entries: list[Entry], adapters: dict, device: str) -> None:
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
            with lab.lock:
                lab.prepare([adapters[e.name] for e in chosen])
                matrix = cross_task_matrix(lab.evaluator, [adapters[e.name] for e in chosen])
            cross_task_results()[(base_model, tuple(version_of(e) for e in chosen))] = matrix
        readiness.state[step] = "ready"
        step = "other adapters"
        readiness.state[step] = "running"
        others = [adapters[e.name] for e in entries if e not in first]
        if others:
            lab.warm_up(others)
        readiness.state[step] = "ready"
    except Exception as err:  # shown as "failed" in the readiness line; the pages still work without it
        readiness.state[step] = f"failed: {type(err).__name__}: {err}"
        for later in STEPS[STEPS.index(step) + 1:]:
            readiness.state[later] = "failed: skipped"
    finally:
        readiness.seconds = time.perf_counter() - readiness.started


def enabled() -> bool:
    """MERGESCOPE_WARM_UP=0 turns the server's warm-up off (tests that want pages as a cold start)."""
    return os.environ.get("MERGESCOPE_WARM_UP", "1") != "0"


def start(device: str) -> Readiness:
    """Start the warm-up once per server (and device); the readiness of the one running."""
    if not enabled():
        return Readiness(state=dict.fromkeys(STEPS, "off"), seconds=0.0)
    return _started(str(_ui.zoo_folder()), device)
