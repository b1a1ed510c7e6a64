"""Sweep: merged accuracy per task over a range of merge coefficients λ, standard vs OSRM overlaid
(robustness curves); for two adapters, a λ₁ × λ₂ heatmap of average merged accuracy."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from merging import plots
from merging.lab import catalog, chance_badges
from merging.lab.run_jobs import SweepSet, heatmap_grid, lambda_grid, sweep_rows, sweep_work
from merging.methods import REGISTRY, MethodError
from merging.recipe.codec import RecipeError
from merging.store.run_labels import lambdas as said_lambdas  # two decimals, one λ when all are equal
from merging.store.stored_runs import best_point
from pages import _recipe_ui as codec
from pages import _ui

JOB = "sweep"
PREFIX = "sweep"
CACHE = "sweep_cache"  # {key: result}: returning to the page (or to earlier settings) shows results at once
CACHE_SIZE = 12
KEEP = "session"  # widget values survive a trip to another page
OVERLAY_HELP = (
    "Sweep an OSRM variant of the same adapters as well (dashed lines): their OSRM-initialised twins (an "
    "adapter without one is projected onto OSRM's subspace after the fact), or every adapter projected."
)

ui_settings = _ui.settings()
all_entries = _ui.catalog(ui_settings.workspace, include_broken=True)
entries = catalog.usable(all_entries)
st.title("Sweep")
store = _ui.run_store(ui_settings.workspace)  # in the page's thread: a broken store's warning shows
_ui.warn_broken(all_entries)
standard = [e for e in entries if e.init == "standard"]
standard_names = [e.name for e in standard]
# A link's recipe sets the adapters, the method, its parameters and the OSRM overlay; one on another
# base model switches the sidebar to it first (and reruns), so it comes before "No adapters".
codec.read_link(PREFIX, entries, with_weights=False, with_merge_settings=False, allowed_names=standard_names)
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()
if not standard:
    st.error("No standard-initialised adapters to sweep: the sweep starts from standard LoRA adapters.")
    st.stop()
if codec.adapters_key(PREFIX) in st.session_state:
    st.session_state[codec.adapters_key(PREFIX)] = [
        n for n in st.session_state[codec.adapters_key(PREFIX)] if n in standard_names
    ]
else:
    st.session_state[codec.adapters_key(PREFIX)] = standard_names[:3]
st.session_state.setdefault("sweep_method", next(iter(REGISTRY)))
st.session_state.setdefault("sweep_osrm", "twins")

# ----------------------------------------------------------------------------------------------
# Controls

hidden = ui_settings.presentation
if not hidden:
    st.caption(
        "Merge the chosen adapters once per coefficient and score every task: how robust is each method "
        "to λ, and does OSRM's initialisation keep the tasks apart over the whole range?"
    )
controls = st.container() if not hidden else st.expander("Sweep settings", expanded=False)
with controls:
    names = st.multiselect(
        "Adapters",
        standard_names,
        format_func=chance_badges.option_label(entries),  # "⚠ at chance" beside an adapter that did not learn
        key=codec.adapters_key(PREFIX),
        persist_state=KEEP,
        help="Standard LoRA adapters, one per task; with the overlay on, each is paired with its OSRM variant.",
    )
    left, middle, right = st.columns(3)
    with left:
        method = st.selectbox(
            "Method", list(REGISTRY), format_func=lambda m: REGISTRY[m].label, key="sweep_method", persist_state=KEEP
        )
        if not hidden:
            st.caption(REGISTRY[method].description)
    with middle:
        codec.method_controls(PREFIX, method)
    with right:
        overlay_mode = codec.osrm_control(PREFIX, OVERLAY_HELP)
        grid_mode = False
        if len(names) == 2:
            grid_mode = (
                st.radio(
                    "Sweep",
                    ["curves", "heatmap"],
                    format_func={"curves": "one λ for both (curves)", "heatmap": "λ₁ × λ₂ (heatmap)"}.get,
                    horizontal=True,
                    key="sweep_mode",
                    persist_state=KEEP,
                )
                == "heatmap"
            )
    swept = chance_badges.merged_entries(entries, names) + chance_badges.merged_entries(entries, names, overlay_mode)
    at_chance_note = chance_badges.flag_note(swept, "swept here")
    if at_chance_note:
        st.warning(at_chance_note, icon=chance_badges.ICON)
    codec.per_adapter_controls(PREFIX, method, names)
    r1, r2, r3 = st.columns(3)
    start = r1.number_input("λ from", 0.0, 5.0, 0.1, 0.05, format="%.2f", key="sweep_start", persist_state=KEEP)
    stop = r2.number_input("λ to", 0.0, 5.0, 1.5, 0.05, format="%.2f", key="sweep_stop", persist_state=KEEP)
    if grid_mode:
        count = r3.number_input(
            "Points per axis", 2, 9, 5, key="sweep_grid_points", persist_state=KEEP,
            help=f"The heatmap merges and scores points² pairs{' per initialisation' if overlay_mode != 'off' else ''}.",
        )
    else:
        count = r3.number_input(
            "Number of points", 2, 25, 8, key="sweep_points", persist_state=KEEP,
            help="Evenly spaced from 'λ from' to 'λ to'; each point is one merge and one evaluation per task.",
        )


lambdas = lambda_grid(float(start), float(stop), int(count))
weight_grid = [[a, b] for a in lambdas for b in lambdas] if grid_mode else [[lam] * len(names) for lam in lambdas]

# ----------------------------------------------------------------------------------------------
# The work (merging.lab.run_jobs): one Lab.sweep per point and initialisation, each set stored as a run
# whose recipe is its best point's.


chosen = [catalog.entry_by_name(entries, n) for n in names]
if (
    overlay_mode != "off" and len(names) == 1
    and (overlay_mode == "posthoc" or catalog.twin_path(chosen[0].path) is None)
):
    # OSRM's post-hoc projection needs the other tasks' inputs: with one adapter there is nothing to avoid.
    st.info("No OSRM twin for this adapter, and a post-hoc projection needs at least two adapters: "
            "the sweep runs without the OSRM overlay.")
    overlay_mode = "off"
recipe, problem = None, None
if names:
    try:
        widget_recipe = codec.recipe_from_widgets(
            PREFIX, entries, ui_settings.device, with_weights=False, with_merge_settings=False
        )
        recipe = _ui.recipe_for_run(widget_recipe, entries)  # the sidebar's base model, the attached eval files
    except (RecipeError, MethodError, ValueError) as err:
        problem = _ui.friendly_error(err)
sweep_mode = "heatmap" if grid_mode else "curves"
key = catalog.results_key(replace(recipe, osrm=overlay_mode), grid=weight_grid, mode=sweep_mode) if recipe else None
cache: dict = st.session_state.setdefault(CACHE, {})

running = _ui.job_running(JOB)
if len(names) < 1:
    problem = "Choose at least one adapter."
elif stop <= start:
    problem = "'λ to' must be larger than 'λ from'."
if problem and not running:
    st.info(problem)
b1, b2 = st.columns([1, 3])
run_clicked = b1.button("Run sweep", type="primary", disabled=running or problem is not None, key="sweep_run")
if key in cache and not running:
    b2.caption("These settings were swept already: the results below come from the cache (press Run to redo).")
elif not running and not problem:
    evaluations = len(weight_grid) * (2 if overlay_mode != "off" else 1)
    b2.caption(f"{evaluations} merges, each scored on {len(names)} task{'s' if len(names) != 1 else ''}.")

if run_clicked and recipe is not None:
    try:
        st.query_params["recipe"] = replace(widget_recipe, osrm=overlay_mode).to_url()
        fallback = ui_settings.base_model
        standard_recipe = replace(recipe, osrm="off")
        sets = [SweepSet("standard", standard_recipe,
                         catalog.resolve_inputs(standard_recipe, _ui.load_adapter_as, fallback))]
        if overlay_mode != "off":
            osrm_recipe = replace(recipe, osrm=overlay_mode)
            sets.append(SweepSet("osrm", osrm_recipe, catalog.resolve_inputs(osrm_recipe, _ui.load_adapter_as, fallback)))
        lab = _ui.lab_for(sets[0].inputs.base_model, ui_settings.device)  # cached; loads in the page's thread
        axes = [lambdas, lambdas] if grid_mode else [lambdas]
        st.session_state["sweep_pending_key"] = key
        partial: dict = {}  # what is scored so far: kept when the sweep is cancelled
        st.session_state["sweep_partial"] = partial
        _ui.start_job(JOB, "Sweeping λ", sweep_work(sets, lab, sweep_mode, weight_grid, axes, store, partial))
        running = True
    except (RecipeError, MethodError, ValueError, OSError) as err:
        st.error(_ui.friendly_error(err))

_ui.show_job_progress(JOB)
finished = _ui.take_job_result(JOB)
if finished is not None:
    partial = st.session_state.pop("sweep_partial", None) or {}
    partial["sets"] = {init: data for init, data in (partial.get("sets") or {}).items() if data["points"]}
    if finished.error and partial.get("cancelled") and partial["sets"]:
        # Cancelled part-way: the points scored so far are shown and were stored.
        done = sum(len(data["points"]) for data in partial["sets"].values())
        partial_key = f"partial:{st.session_state.get('sweep_pending_key')}"
        cache[partial_key] = {**partial, "wall_seconds": finished.seconds}
        st.session_state["sweep_last_key"] = partial_key
        st.session_state["sweep_notice"] = (
            f"{finished.error} The {done} point{'s' if done != 1 else ''} scored before it stopped are shown "
            "below and stored on the Runs page."
        )
        st.session_state.pop("sweep_error", None)
    elif finished.error:
        st.session_state["sweep_error"] = finished.error
        st.session_state.pop("sweep_notice", None)
    else:
        st.session_state.pop("sweep_notice", None)
        done_key = st.session_state.get("sweep_pending_key")
        cache[done_key] = {**finished.result, "wall_seconds": finished.seconds}
        while len(cache) > CACHE_SIZE:
            cache.pop(next(iter(cache)))
        st.session_state["sweep_last_key"] = done_key
        st.session_state.pop("sweep_error", None)

if st.session_state.get("sweep_error"):
    st.error(st.session_state["sweep_error"])
if st.session_state.get("sweep_notice"):
    st.warning(st.session_state["sweep_notice"])

# ----------------------------------------------------------------------------------------------
# Results


shown_key = key if key in cache else st.session_state.get("sweep_last_key")
result = cache.get(shown_key) if shown_key else None
if result and not running:
    if result.get("cancelled"):
        st.caption("A cancelled sweep: only the points scored before Cancel are shown.")
    elif shown_key != key:
        st.caption("Showing the last sweep; the settings above have changed since. Press Run sweep to update.")
    sets_done = result["sets"]
    st.subheader(
        f"{len(next(iter(sets_done.values()))['names'])} adapters, "
        f"{len(next(iter(sets_done.values()))['points'])} points"
        + (" per initialisation" if len(sets_done) > 1 else "")
    )
    first_results = next(iter(sets_done.values()))["points"][0]["results"]
    metric = plots.metric_name(first_results)  # accuracy, or exact match for causal-LM tasks
    metric_columns = st.columns(len(sets_done) + 1)
    for column, (init, data) in zip(metric_columns, sets_done.items()):
        best = best_point(data["points"])
        column.metric(
            f"Best average merged {metric} ({init})",
            f"{100 * (best['results']['average'].get('merged') or 0):.1f}%",
            help=f"at λ = {said_lambdas(best['weights'])}",
        )
        column.caption(f"at λ = {said_lambdas(best['weights'])}")
    metric_columns[-1].metric(
        "Sweep time", f"{result['seconds']:.1f} s", help=f"device: {result['device']}; runs {result['run_ids']}"
    )
    if not hidden:
        st.caption(
            ("Each task is scored on its evaluation file's prompts (exact match; the completion loss is beside it). "
             if plots.has_loss(first_results) else
             "Each task is scored with the merged body and that task's own classification head. ")
            + f"Stored as run{'s' if len(result['run_ids']) > 1 else ''} "
            + ", ".join(f"{run_id} ({init})" for init, run_id in result["run_ids"].items())
            + " on the Runs page."
        )
    osrm_set = sets_done.get("osrm")
    if osrm_set:
        projected = osrm_set.get("posthoc") or []
        if projected:
            st.info("Projected post-hoc onto OSRM's subspace (no OSRM twin): " + ", ".join(projected))
    if result["mode"] == "heatmap":
        axis1, axis2 = result["axes"]
        columns = st.columns(len(sets_done))
        for column, (init, data) in zip(columns, sets_done.items()):
            with column:
                _ui.show_figure(
                    plots.lambda_heatmap(
                        axis1, axis2, heatmap_grid(data["points"], axis1, axis2), names=data["names"],
                        title=f"Average merged {metric} over (λ₁, λ₂) — {init}",
                        presentation=ui_settings.presentation, metric=metric,
                    ),
                    "lambda_heatmap",
                    f"sweep_heatmap_{init}",
                )
    else:
        points, losses = [], []
        for init, data in sets_done.items():
            swept = [(p["weights"], p["results"]) for p in data["points"]]
            points += plots.sweep_points(swept, init=init)
            losses += plots.sweep_points(swept, init=init, score="loss")
        figure = plots.sweep_curves(points, presentation=ui_settings.presentation, metric=metric,
                                    flagged=chance_badges.sweep_flags(all_entries, sets_done))
        if losses:  # causal tasks: the completion loss beside the metric
            metric_chart, loss_chart = st.columns(2)
            with metric_chart:
                _ui.show_figure(figure, "sweep_curves", "sweep_curves")
            with loss_chart:
                _ui.show_figure(plots.sweep_curves(losses, presentation=ui_settings.presentation, metric="loss"),
                                "sweep_curves", "sweep_loss", how_to_read="Merged completion loss per task (nats per "
                                "token, lower is better) as λ grows; the thick black line is the average over tasks.")
        else:
            _ui.show_figure(figure, "sweep_curves", "sweep_curves")
    frame = pd.DataFrame(sweep_rows(result["sets"], result["mode"]))
    if hidden:
        with st.expander("Numbers"):
            _ui.show_table(frame, "sweep_results")
    else:
        _ui.show_table(frame, "sweep_results", caption=f"Merged {metric} per task and point (fractions)"
                       + ("; loss in nats per completion token, perplexity = exp(loss)." if plots.has_loss(first_results) else "."))
elif not running and not problem:
    st.info("Choose adapters and a λ range, then press Run sweep.")
