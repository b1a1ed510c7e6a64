"""Tour: the story of merging LoRA adapters for a talk, one click per step, told by the zoo's numbers.

The steps, their measurements, charts and sentences are merging/analysis/tour.py; this page only walks them:
Back / Next, step n of N, the step's chart and takeaway, and its recipe as a link that opens it in
Merge. A step's measurements come from the workspace's measure cache (merging.store.measure_cache), filled
by the server's warm-up (pages/_warm.py) or by this page: a step not measured yet runs as a background
job with progress and is kept on disk and for the server (keyed by recipe, adapter versions, base model
and measuring code), so going Back is instant, a tour prepared in one tab is ready in another and a
restarted server shows it at once. While a step is shown, the next one is prepared. One headline per
step (merging/analysis/headlines.py); the full sentence is the speaker notes, behind a toggle (or N).
"""

from __future__ import annotations

import os
from urllib.parse import quote

import streamlit as st

from merging.analysis import tour as story
from merging.lab import catalog, chance_badges
from merging.lab.lab import Lab
from merging.store.measure_cache import MeasureCache
from pages import _stage, _ui

JOB = "tour"
# On stage the chart is sized to the window less what is above it (top navigation, Back/Next row).
# (the navigation, the presentation toggle, Back / Next and a headline of up to two lines at 32 px): the
# chart itself stays in the window; its caption and the notes toggle may need a scroll.
ABOVE_CHART_PX = 290
# A quick walk (tests, a rehearsal): score each task on its first N evaluation examples only.
EVAL_LIMIT = int(os.environ.get("MERGESCOPE_TOUR_EVAL_LIMIT", "0")) or None
ui_settings = _ui.settings()
state = st.session_state

if not ui_settings.presentation:
    st.title("Tour")
built_in = _ui.zoo()
if built_in is None:
    st.error("No built-in zoo: build it with `python -m merging zoo build` to take the tour.")
    st.stop()
try:
    tour = story.tour_steps(built_in)
except ValueError as err:
    st.error(str(err))
    st.stop()


@st.cache_resource(show_spinner=False)
def _measured() -> dict:
    """Measurements by cache key, shared by every tab of this server."""
    return {}


@st.cache_resource(show_spinner="Loading the base model…")
def _limited_lab(base_model: str, device: str, eval_limit: int) -> Lab:
    """A lab of the tour's own for a quick walk, so the shared lab keeps its full evaluation sets."""
    return Lab(base_model, device=device)


def _lab() -> Lab:
    if EVAL_LIMIT:
        return _limited_lab(built_in.base_model, ui_settings.device, EVAL_LIMIT)
    return _ui.lab_for(built_in.base_model, ui_settings.device)


measured_store = _measured()
# What was measured is kept on disk in the workspace too (merging.store.measure_cache): a restarted server,
# or one whose warm-up measured the tour (pages/_warm.py), shows every step at once.
disk = MeasureCache.in_workspace(ui_settings.workspace)


def _known(measurement: story.Measurement) -> bool:
    key = story.cache_key(measurement, EVAL_LIMIT)
    if key not in measured_store:
        value = story.stored(measurement, disk, EVAL_LIMIT)
        if value is not None:
            measured_store[key] = value
    return key in measured_store


def _missing(index: int) -> list[story.Measurement]:
    return [m for m in tour.needs(index) if not _known(m)]


def _start(index: int, label: str) -> None:
    todo = _missing(index)
    lab = _lab()  # loaded in the page's thread (cached)

    def work(progress):
        for number, measurement in enumerate(todo):
            def report(done, total, what, number=number, measurement=measurement):
                share = (number + (done / total if total else 1.0)) / len(todo)
                progress(int(1000 * share), 1000, f"{measurement.label}: {what}")

            # the server's warm-up may have measured it meanwhile: read it back rather than measure twice
            value = story.stored(measurement, disk, EVAL_LIMIT)
            if value is None:
                value = story.measure_and_store(measurement, lab, disk, _ui.load_adapter_as, report, EVAL_LIMIT)
            measured_store[story.cache_key(measurement, EVAL_LIMIT)] = value
        return index

    state["tour_job_step"] = index
    _ui.start_job(JOB, label, work)


count = len(tour.steps)
if "tour_step" not in state:  # the step is in the link too (?step=n): a reload stays on it
    step_in_link = st.query_params.get("step", "1")
    # digits only and short (int() refuses strings past 4,300 digits); clamped to the tour just below
    valid = step_in_link.isdigit() and len(step_in_link) <= 6
    state["tour_step"] = int(step_in_link) - 1 if valid else 0
index = min(max(int(state.get("tour_step", 0)), 0), count - 1)
state["tour_step"] = index
st.query_params["step"] = str(index + 1)


def _go(to: int) -> None:
    state["tour_step"] = min(max(to, 0), count - 1)


_stage.keyboard(ui_settings.presentation)  # a clicker: → / PageDown / Space next, ← / PageUp back
back, where, forward = st.columns([1, 3, 1])
back.button("← Back", key="tour_back", on_click=_go, args=(index - 1,), disabled=index == 0, width="stretch")
forward.button("Next →", key="tour_next", on_click=_go, args=(index + 1,), disabled=index == count - 1,
               type="primary", width="stretch")
step = tour.steps[index]
where.markdown(f"**Step {index + 1} of {count}** · {step.title.split(' · ', 1)[-1]}", text_alignment="center")
if EVAL_LIMIT:
    st.caption(f"Quick walk: each task is scored on its first {EVAL_LIMIT} evaluation examples only "
               "(MERGESCOPE_TOUR_EVAL_LIMIT); the intervals are wide accordingly.")

finished = _ui.take_job_result(JOB)
if finished is not None and finished.error:
    state["tour_failed"] = state.get("tour_job_step", index)
    state["tour_error"] = f"{finished.label} failed: {finished.error}"
if state.get("tour_failed") is not None and not _missing(state["tour_failed"]):
    state.pop("tour_failed")  # measured since (e.g. by another tab)
if state.get("tour_failed") == index:
    st.error(state.get("tour_error", "Measuring this step failed."))
failed = state.get("tour_failed")
if not _ui.job_running(JOB):
    if _missing(index) and failed != index:
        _start(index, f"Measuring step {index + 1}")
    elif not _missing(index) and index + 1 < count and _missing(index + 1) and failed != index + 1:
        _start(index + 1, f"Preparing step {index + 2}")
if state.get("tour_job_step") == index:  # preparing the next step stays out of the way of this one
    _ui.show_job_progress(JOB)
elif _ui.job_running(JOB):
    st.caption(f"Preparing step {state['tour_job_step'] + 1} in the background…")

if not _missing(index):
    measured = {m.key: measured_store[story.cache_key(m, EVAL_LIMIT)] for m in tour.needs(index)}
    # One headline (≤ 15 words, 32 px), the chart under it; the full sentence with its intervals is
    # the speaker's notes, beside the chart when the toggle shows them (on by default off stage).
    _stage.headline(story.headline(step, measured, tour))
    notes_on = bool(state.get("tour_notes", not ui_settings.presentation))
    if notes_on:
        chart, words = st.columns([2, 1], gap="medium")
    else:
        chart, words = st.container(), None
    with chart:
        figure, name = story.figure(step, measured, tour, presentation=ui_settings.presentation)
        # On stage every chart fills the window under the headline and no more (a chart that ran past
        # it hid its axis and legend from the room: the finale's nine merges, the overlap heatmap at
        # 720 px); off stage the finale keeps one comfortable line per merge.
        least = 400 if ui_settings.presentation else int(figure.layout.height or 400)
        _ui.show_figure(figure, name, f"tour_{step.key}", reserved=ABOVE_CHART_PX, least=least)
        merged = chance_badges.recipe_entries(catalog.zoo_entries(built_in), [m.recipe for m in tour.needs(index)])
        if note := chance_badges.flag_note(merged, "in this step"):  # an adapter at chance is never shown unflagged
            st.warning(note, icon=chance_badges.ICON)
    if words is not None:
        with words:
            st.markdown(f"#### {story.takeaway(step, measured, tour)}")
    toggle, open_link = st.columns([1, 2])
    toggle.toggle("Speaker notes", value=notes_on, key="tour_notes",
                  help="The step's full sentence: both 95 % intervals, the task that pays most, the chance level.")
    link = "./?recipe=" + quote(step.recipe.to_url()) + ("&present=1" if ui_settings.presentation else "")
    open_link.link_button("Open this step's recipe in Merge", link, icon=":material/open_in_new:")
elif state.get("tour_failed") == index:
    st.button("Try again", key="tour_retry", on_click=lambda: state.pop("tour_failed", None))
