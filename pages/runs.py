"""Runs: every merge and sweep stored in the workspace's SQLite run store; compare runs side by side,
reopen a merge in the Merge page, delete runs."""

from __future__ import annotations

import json
import sqlite3
import time

import pandas as pd
import streamlit as st

from merging import plots
from merging.lab import chance_badges
from merging.lab.run_jobs import heatmap_grid
from merging.store.run_labels import recipe_data
from merging.store.stored_runs import StoredRun, percent, read_runs
from pages import _stage, _ui

ui_settings = _ui.settings()
hidden = ui_settings.presentation
st.title("Runs")

try:
    store = _ui.run_store(ui_settings.workspace)
    listing = read_runs(store)
    records = listing.runs
except (OSError, sqlite3.Error) as err:
    st.error(f"The run store in {ui_settings.workspace} could not be opened: {err}")
    st.stop()
if listing.skipped:
    st.warning(
        f"{len(listing.skipped)} stored row(s) could not be read back and are not listed: "
        + "; ".join(f"row {row.id}: {row.reason}" for row in listing.skipped[:10])
        + (" …" if len(listing.skipped) > 10 else "")
    )

flash = st.session_state.pop("runs_flash", None)
if flash:
    st.success(flash)

if not records:
    st.info(
        f"No runs stored in {ui_settings.workspace / 'runs.sqlite'} yet: every merge on the Merge page and every "
        "sweep on the Sweep page is written here."
    )
    st.stop()

if not hidden:
    st.caption(
        f"{len(records)} run{'s' if len(records) != 1 else ''} in {ui_settings.workspace / 'runs.sqlite'}. "
        "For a sweep, the accuracies are those of its best point (the λ column says which)."
    )


# ----------------------------------------------------------------------------------------------
# The table


def _parameters_text(record: StoredRun) -> str:
    recipe = record.recipe
    if recipe is None:
        return "?"
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in recipe.parameters.items()) or "—"


def _row(record) -> dict:
    average = record.average
    weights = record.weights
    init = record.init
    return {
        "id": record.id,
        "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)),
        "kind": record.kind if not init else f"{record.kind} ({init})",
        "method": record.method,
        "adapters": ", ".join(record.adapter_names),
        "λ": ", ".join(f"{w:g}" for w in weights) if weights else "",
        "metric": _metric(record),
        "average merged %": percent(average.get("merged")),
        "normalised %": percent(average.get("normalized")),
        "device": record.device,
        "seconds": round(record.seconds, 2),
    }


def _metric(record) -> str:
    """The run's primary metric in words (accuracy; exact match for causal-LM tasks)."""
    try:
        return plots.metric_name(record.results)
    except (ValueError, TypeError, AttributeError):  # an unreadable row: the table still lists it
        return "?"


def _label(record) -> str:
    return f"run {record.id} · {_row(record)['kind']} · {record.method}"


by_id = {r.id: r for r in records}
kinds = sorted({r.kind for r in records})
shown = records
if len(kinds) > 1 and not hidden:
    chosen_kinds = st.pills("Show", kinds, selection_mode="multi", default=kinds, key="runs_kinds")
    shown = [r for r in records if r.kind in (chosen_kinds or kinds)]
_ui.show_table(pd.DataFrame([_row(r) for r in shown]), "runs")

# ----------------------------------------------------------------------------------------------
# Compare


def _keep_existing(key: str) -> None:
    """Drop deleted runs from a selection before its widget is drawn."""
    if key in st.session_state:
        st.session_state[key] = [i for i in st.session_state[key] if i in by_id]


st.subheader("Compare")
_keep_existing("runs_compare")
if "runs_compare" not in st.session_state:
    st.session_state["runs_compare"] = [r.id for r in records[:2]] if len(records) >= 2 else []
compare = st.multiselect(
    "Runs to compare",
    [r.id for r in records],
    format_func=lambda i: _label(by_id[i]),
    key="runs_compare",
    help="Merged score per task (accuracy, or exact match and loss for causal LMs), one bar series per run; "
    "a sweep contributes its best point.",
)
if compare:
    selected = [by_id[i] for i in compare]
    try:
        compared = [{"label": _label(r), "results": r.results} for r in selected]
        metrics = {_metric(r) for r in selected}
        figure = plots.runs_comparison(compared, presentation=ui_settings.presentation,
                                       metric=metrics.pop() if len(metrics) == 1 else "score")
        if any(plots.has_loss(r.results) for r in selected):  # causal tasks: the loss beside the metric
            metric_chart, loss_chart = st.columns(2)
            with metric_chart:
                _ui.show_figure(figure, "runs_comparison", "runs_comparison")
            with loss_chart:
                _ui.show_figure(plots.runs_comparison(compared, presentation=ui_settings.presentation, metric="loss"),
                                "runs_comparison", "runs_comparison_loss",
                                how_to_read="Merged completion loss per task, one bar series per run: lower is better.")
        else:
            _ui.show_figure(figure, "runs_comparison", "runs_comparison")
    except (ValueError, KeyError, TypeError) as err:
        st.error(f"These runs cannot be drawn together: {err}")
    side_by_side = pd.DataFrame(
        {
            _label(r): {
                "time": _row(r)["time"],
                "adapters": _row(r)["adapters"],
                "λ": _row(r)["λ"],
                "method": r.method,
                "parameters": _parameters_text(r),
                "OSRM": r.recipe.osrm if r.recipe else "?",
                "rank": "exact" if r.rank is None else r.rank,
                "DO-Merging": ", ".join(r.do_merging_switches) or "off",
                "metric": _metric(r),
                **{
                    f"{task} merged %": percent(scores.get("merged"))
                    for task, scores in r.tasks.items()
                },
                **{
                    f"{task} merged loss": round(scores["loss"]["merged"], 4)
                    for task, scores in r.tasks.items()
                    if isinstance(scores.get("loss"), dict) and scores["loss"].get("merged") is not None
                },
                "average merged %": _row(r)["average merged %"],
                "normalised %": _row(r)["normalised %"],
                "device": r.device,
                "seconds": _row(r)["seconds"],
            }
            for r in selected
        }
    )
    side_by_side = side_by_side.astype(str).replace({"None": "", "nan": ""})
    if hidden:
        # every row: one per field and task (bounded), not per run, and the averages come last;
        # the fields' names are the index, kept as the first column
        _stage.table(side_by_side, index=True, rows=len(side_by_side))
    else:
        st.dataframe(side_by_side, width="stretch")

# ----------------------------------------------------------------------------------------------
# One run: details, reopen, sweep chart


st.subheader("One run")
if st.session_state.get("runs_detail") not in by_id:
    st.session_state.pop("runs_detail", None)
detail_id = st.selectbox("Run", [r.id for r in records], format_func=lambda i: _label(by_id[i]), key="runs_detail")
record = by_id[detail_id]
if st.button("Reopen in Merge", key="runs_reopen", type="primary",
             help="Open the Merge page with this run's recipe (a sweep: its best point); a link to it can be shared."):
    recipe, problem = record.recipe, record.recipe_problem
    if recipe is not None:
        _ui.choose_base_model_of(recipe)  # the run's base model in the sidebar, so its adapters are listed
    known = {e.name for e in _ui.catalog(ui_settings.workspace, every_base_model=True)}
    if recipe is None:
        st.error(f"This run's recipe cannot be read: {problem}")
    elif not any(n in known for n in record.adapter_names):
        st.error("None of this run's adapters is in the adapter list any more: " + ", ".join(record.adapter_names))
    else:
        st.session_state.pop("_merge_from_url_done", None)  # the Merge page reads the URL once per session
        st.switch_page("pages/merge.py", query_params={"recipe": recipe.to_url()})
if record.kind == "sweep" and record.sweep.get("points"):
    sweep = record.sweep
    points = sweep["points"]
    try:
        if sweep.get("mode") == "heatmap":
            axis1, axis2 = sweep["axes"]
            figure = plots.lambda_heatmap(
                axis1, axis2, heatmap_grid(points, axis1, axis2),
                names=sweep.get("names") or record.adapter_names, presentation=ui_settings.presentation,
                title=f"Average merged {_metric(record)} over (λ₁, λ₂)", metric=_metric(record),
            )
            _ui.show_figure(figure, "lambda_heatmap", f"runs_sweep_{record.id}")
        else:
            swept = [(p["weights"], p["results"]) for p in points]
            rows = plots.sweep_points(swept, init=sweep.get("init", "standard"))
            losses = plots.sweep_points(swept, init=sweep.get("init", "standard"), score="loss")
            flagged = chance_badges.sweep_flags(_ui.catalog(ui_settings.workspace, every_base_model=True),
                                                {sweep.get("init", "standard"): sweep})  # "⚠ at chance" curves
            curves = plots.sweep_curves(rows, presentation=ui_settings.presentation, metric=_metric(record),
                                        flagged=flagged)
            if losses:  # causal tasks: the loss curves beside the metric's
                metric_chart, loss_chart = st.columns(2)
                with metric_chart:
                    _ui.show_figure(curves, "sweep_curves", f"runs_sweep_{record.id}")
                with loss_chart:
                    _ui.show_figure(plots.sweep_curves(losses, presentation=ui_settings.presentation, metric="loss"),
                                    "sweep_curves", f"runs_sweep_loss_{record.id}",
                                    how_to_read="Merged completion loss per task as λ grows: lower is better.")
            else:
                _ui.show_figure(curves, "sweep_curves", f"runs_sweep_{record.id}")
    except (ValueError, KeyError, TypeError) as err:
        st.error(f"This sweep cannot be drawn: {err}")
if not hidden:
    with st.expander("Recipe and results (JSON)"):
        st.json({"recipe": recipe_data(record), "results": record.results, "summary": record.summary}, expanded=False)
    st.download_button(
        "Recipe (JSON)", record.recipe.to_json() if record.recipe else json.dumps(record.stored_recipe, indent=2),
        f"recipe-run{record.id}.json", "application/json",
        key="runs_recipe_download", type="tertiary",
    )

# ----------------------------------------------------------------------------------------------
# Delete

if not hidden:
    st.subheader("Delete")
    _keep_existing("runs_delete")
    doomed = st.multiselect(
        "Runs to delete", [r.id for r in records], format_func=lambda i: _label(by_id[i]), key="runs_delete"
    )
    if st.session_state.get("runs_confirm") and st.session_state["runs_confirm"] != doomed:
        st.session_state.pop("runs_confirm")  # the selection changed: ask again
    if not st.session_state.get("runs_confirm"):
        if st.button("Delete selected…", key="runs_delete_ask", disabled=not doomed):
            st.session_state["runs_confirm"] = list(doomed)
            st.rerun()
    else:
        st.warning(
            f"Delete {len(doomed)} run{'s' if len(doomed) != 1 else ''} ({', '.join(map(str, doomed))})? "
            "This cannot be undone."
        )
        yes, no = st.columns(2)
        if yes.button("Yes, delete", key="runs_delete_yes", type="primary"):
            try:
                removed = store.delete(doomed)
                st.session_state["runs_flash"] = f"Deleted {removed} run{'s' if removed != 1 else ''}."
            except sqlite3.Error as err:
                st.session_state["runs_error"] = f"Could not delete: {err}"
            st.session_state.pop("runs_confirm", None)
            st.session_state.pop("runs_delete", None)
            st.rerun()
        if no.button("Cancel", key="runs_delete_no"):
            st.session_state.pop("runs_confirm", None)
            st.rerun()
    if st.session_state.get("runs_error"):
        st.error(st.session_state.pop("runs_error"))
