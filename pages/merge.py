"""Merge: pick adapters, set λ, choose a method and the OSRM / DO-Merging switches, run, read the scores.

The controls build one Recipe and are set from one (pages/_recipe_ui.py); the Recipe alone says
what is merged — merging.catalog resolves its OSRM mode — so a run re-merges from its stored recipe."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from merging import catalog, plots
from merging.do_merging import MAGNITUDE_RULES
from merging.evaluation import PREVIEW_EVERY, modules_fingerprint
from merging.merge import save_merged
from merging.methods import REGISTRY, MethodError
from merging.recipe import RecipeError
from pages import _recipe_ui as codec
from pages import _ui

JOB = "merge"
PREFIX = "merge"
ui_settings = _ui.settings()
all_entries = _ui.catalog(ui_settings.workspace, include_broken=True)
entries = catalog.usable(all_entries)
st.title("Merge")
_ui.warn_broken(all_entries)
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()

# The recipe in the URL: a link (or "Reopen in Merge" on the Runs page) sets every control below.
codec.read_link(PREFIX, entries)

standard = [e.name for e in entries if e.init == "standard"]
available = {e.name for e in entries}
if codec.adapters_key(PREFIX) in st.session_state:  # drop adapters that have gone since (deleted, other workspace)
    st.session_state[codec.adapters_key(PREFIX)] = [
        n for n in st.session_state[codec.adapters_key(PREFIX)] if n in available
    ]
else:
    st.session_state[codec.adapters_key(PREFIX)] = standard[:5] or [e.name for e in entries[:2]]

# ----------------------------------------------------------------------------------------------
# Controls (defaults set once, so a link or a reopened run can set any of them first)

for widget_key, default in {
    "merge_method": next(iter(REGISTRY)), "merge_exact": True, "merge_rank": 8, "merge_seed": 0,
    "do_decouple": False, "do_orthogonalize": False, "do_magnitude": MAGNITUDE_RULES[0],
    "do_steps": 50, "do_lr": 0.01, "do_mu": 1.0,
}.items():
    st.session_state.setdefault(widget_key, default)

hidden = ui_settings.presentation
controls = st.container() if not hidden else st.expander("Merge settings", expanded=False)
with controls:
    names = st.multiselect(
        "Adapters",
        [e.name for e in entries],
        key=codec.adapters_key(PREFIX), persist_state="session",
        help="One adapter per task; each task is scored with the merged body and its own head.",
    )
    osrm_mode = codec.osrm_control(PREFIX)
    if names:
        st.markdown("**Merge coefficients λ**")
        columns = st.columns(min(len(names), 5))
        for index, name in enumerate(names):
            with columns[index % len(columns)]:
                st.session_state.setdefault(codec.weight_key(name), 1.0)
                st.slider(name, *codec.WEIGHT_RANGE, step=0.05, key=codec.weight_key(name), persist_state="session")
    left, middle, right = st.columns(3)
    with left:
        method = st.selectbox(
            "Method", list(REGISTRY), format_func=lambda m: REGISTRY[m].label, key="merge_method",
            persist_state="session",
        )
        st.caption(REGISTRY[method].description)
    with middle:
        codec.method_controls(PREFIX, method)
    with right:
        exact = st.toggle("Exact output rank", key="merge_exact", persist_state="session",
                          help="Exact: the saved adapter reproduces the merged ΔW. Off: truncated SVD.")
        st.number_input("Output rank", *codec.RANK_RANGE, key="merge_rank", persist_state="session", disabled=exact)
        st.number_input("Seed (DARE)", *codec.SEED_RANGE, key="merge_seed", persist_state="session")
    codec.per_adapter_controls(PREFIX, method, names)
    st.markdown("**DO-Merging** — our reading of the paper (no public code exists)")
    do_left, do_right = st.columns(2)
    with do_left:
        decouple = st.toggle("Decouple magnitude and direction", key="do_decouple", persist_state="session")
        st.selectbox("Merge magnitudes by", MAGNITUDE_RULES, key="do_magnitude", persist_state="session",
                     disabled=not decouple)
    with do_right:
        orthogonalize = st.toggle("Orthogonalize directions", key="do_orthogonalize", persist_state="session")
        o1, o2, o3 = st.columns(3)
        o1.number_input("Steps", *codec.DO_RANGES["steps"], key="do_steps", persist_state="session",
                        disabled=not orthogonalize)
        o2.number_input("lr", *codec.DO_RANGES["lr"], format="%.4f", key="do_lr", persist_state="session",
                        disabled=not orthogonalize)
        o3.number_input("μ", *codec.DO_RANGES["mu"], key="do_mu", persist_state="session", disabled=not orthogonalize)
    carried = (st.session_state.get(codec.carry_key(PREFIX)) or codec.Carry()).describe()
    if carried:
        st.caption(f"This recipe also sets {carried} (no control here; kept as the link gave them).")

# ----------------------------------------------------------------------------------------------
# Run: the Recipe alone says what is merged (catalog.resolve_inputs applies its `osrm` mode)


def _merge_work(inputs: catalog.MergeInputs, recipe, lab, job: _ui.Job):
    def publish_preview(evaluation) -> None:
        job.partial = evaluation.to_dict()

    def work(progress):
        if inputs.pending_posthoc:
            progress(0, 1, "projecting onto OSRM's subspace")
        merged_inputs = catalog.project_posthoc(inputs, lab)
        run = lab.merge_and_evaluate(merged_inputs.adapters, recipe, progress, on_preview=publish_preview)
        results = run.results()
        results["osrm"] = {"mode": recipe.osrm, "twins": merged_inputs.twins, "posthoc": merged_inputs.posthoc}
        results["fingerprint"] = modules_fingerprint(run.merged.adapter.modules)
        store = _ui.run_store(ui_settings.workspace)
        run_id = store.add(run.recipe.to_dict(), results, run.merged.summary(), str(lab.device), run.seconds)
        return {"run_id": run_id, "results": results, "merged": run.merged, "seconds": run.seconds}

    return work


def _zip_of(merged) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_merged(merged, Path(tmp) / "merged")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"merged/{file.name}")
    return buffer.getvalue()


built_in = _ui.zoo()
if built_in and not st.session_state.get("merge_last"):
    # Load the model now and score the zoo's single adapters in the background, so the first Run
    # only pays for its own merge.
    ordered = sorted(built_in.adapters, key=lambda a: a.init != "standard")
    _ui.warm_up_in_background(_ui.lab_for(built_in.base_model, ui_settings.device), [a.path for a in ordered])

running = _ui.job_running(JOB)
run_clicked = st.button("Run merge", type="primary", disabled=running or len(names) < 1, key="merge_run")
if run_clicked:
    try:
        recipe = codec.recipe_from_widgets(PREFIX, entries, ui_settings.device)  # validated before anything starts
        st.query_params["recipe"] = recipe.to_url()
        inputs = catalog.resolve_inputs(recipe, _ui.load_adapter_as, catalog.default_base_model(built_in))
        lab = _ui.lab_for(inputs.base_model, ui_settings.device)  # cached; loads in the page's thread
        job = _ui.Job("Merging and evaluating")
        _ui.start_job(JOB, job.label, _merge_work(inputs, recipe, lab, job), job=job)
    except (RecipeError, MethodError, ValueError, OSError) as err:
        st.error(_ui.friendly_error(err))

def _show_preview(preview: dict) -> None:
    """The first look while the rest of the evaluation runs, labelled as such."""
    tasks = preview["tasks"]
    average = preview["average"]["merged"]
    st.metric(
        "Preview: average merged accuracy",
        f"{100 * average:.1f}%",
        help=f"Scored on 1 in {PREVIEW_EVERY} examples of each class; the full evaluation is still running "
        "and will replace this.",
    )
    st.caption(
        f"Preview on 1 in {PREVIEW_EVERY} evaluation examples per class: "
        + ", ".join(f"{task} {100 * s['merged']:.0f}%" for task, s in tasks.items() if s["merged"] is not None)
        + ". A third of the data: expect a few points of difference from the full result."
    )


_ui.show_job_progress(JOB, show_partial=_show_preview)
finished = _ui.take_job_result(JOB)
if finished is not None:
    if finished.error:
        st.session_state["merge_error"] = finished.error
    else:
        st.session_state["merge_previous"] = st.session_state.get("merge_last")
        st.session_state["merge_last"] = finished.result
        st.session_state.pop("merge_error", None)

if st.session_state.get("merge_error"):
    st.error(st.session_state["merge_error"])

# ----------------------------------------------------------------------------------------------
# Results

last = st.session_state.get("merge_last")
if last:
    results = last["results"]
    average = results["average"]
    st.subheader(f"Run {last['run_id']}: {results['merge']['method']} of {len(results['merge']['adapters'])} adapters")
    metric_columns = st.columns(4)
    previous = st.session_state.get("merge_previous")
    previous_average = previous["results"]["average"] if previous else None

    def delta(key):
        if not previous_average or previous_average.get(key) is None or average.get(key) is None:
            return None
        return f"{100 * (average[key] - previous_average[key]):+.1f} pp"

    metric_columns[0].metric("Average merged accuracy", f"{100 * average['merged']:.1f}%", delta("merged"))
    metric_columns[1].metric("Normalised (merged / single)", f"{100 * average['normalized']:.1f}%", delta("normalized"))
    metric_columns[2].metric("Average single-adapter accuracy", f"{100 * average['single']:.1f}%")
    metric_columns[3].metric("Merge + evaluation time", f"{last['seconds']:.2f} s", help=f"device: {results['merge']['device']}")
    st.caption(
        "Each task is scored with the merged body and that task's own classification head; "
        "the black dash is the majority-class baseline."
    )
    osrm = results.get("osrm") or {}
    if osrm.get("twins"):
        st.info("OSRM: merged the OSRM-initialised twins " + ", ".join(osrm["twins"].values()) + ".")
    if osrm.get("posthoc"):
        st.info("Projected post-hoc onto OSRM's subspace: " + ", ".join(osrm["posthoc"]) + ".")
    _ui.show_figure(plots.accuracy_bars(results, presentation=ui_settings.presentation), "accuracy_bars", "merge_accuracy")
    if previous:
        _ui.show_figure(
            plots.accuracy_delta(results, previous["results"], presentation=ui_settings.presentation),
            "accuracy_delta",
            "merge_delta",
        )
    frame = pd.DataFrame(
        [
            {
                "task": task,
                # numbers rounded; "metric" names the score (accuracy / exact_match); a causal task's loss beside
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items() if not isinstance(v, dict)},
                **{f"loss {k}": (None if v is None else round(v, 4)) for k, v in (scores.get("loss") or {}).items()},
            }
            for task, scores in results["tasks"].items()
        ]
    )
    _ui.show_table(frame, "merge_results")
    summary = results["merge"]
    if any(m["energy_kept"] < 1.0 for m in summary["modules"].values()):
        _ui.show_figure(plots.energy_kept(summary, presentation=ui_settings.presentation), "energy_kept", "merge_energy")
    if results.get("orthogonalize"):
        curves = {name: report["loss"] for name, report in results["orthogonalize"].items()}
        _ui.show_figure(
            plots.orthogonalize_loss(curves, presentation=ui_settings.presentation), "orthogonalize_loss", "merge_do_loss"
        )
    if summary.get("notes"):
        for note in summary["notes"]:
            st.caption(f"Note: {note}")

    if not ui_settings.presentation:
        st.markdown("**Export**")
        e1, e2, e3 = st.columns(3)
        merged_adapter = last["merged"]
        e1.download_button("Merged adapter (PEFT zip)", lambda: _zip_of(merged_adapter), f"merged-run{last['run_id']}.zip",
                           "application/zip", key="export_zip")
        e2.download_button("Recipe (JSON)", last["merged"].recipe.to_json(),
                           f"recipe-run{last['run_id']}.json", "application/json", key="export_recipe")
        e3.download_button("Results (CSV)", frame.to_csv(index=False), f"results-run{last['run_id']}.csv",
                           "text/csv", key="export_csv")
