"""Merge: pick adapters, set λ, choose a method and the OSRM / DO-Merging switches, run, read the scores.

The controls build one Recipe and are set from one (pages/_recipe_ui.py); the Recipe alone says
what is merged — merging.lab.catalog resolves its OSRM mode — so a run re-merges from its stored recipe."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path

import pandas as pd
import streamlit as st

from merging import plots
from merging.analysis import narrative
from merging.engine.merge import save_merged
from merging.engine.output_rank import bounded
from merging.evaluation.evaluate import PREVIEW_EVERY
from merging.lab import catalog, chance_badges
from merging.lab.run_jobs import merge_work
from merging.methods import REGISTRY, MethodError
from merging.methods.do_merging import FIELDS as DO
from merging.methods.do_merging import SCHEMA as DO_SCHEMA
from merging.recipe.codec import RecipeError
from merging.store.run_labels import describe_run, method_label, recipe_data, run_label
from merging.store.stored_runs import read_run
from pages import _recipe_ui as codec
from pages import _ui

JOB = "merge"
EXPORT_JOB = "merge-export"
PREFIX = "merge"
ui_settings = _ui.settings()
all_entries = _ui.catalog(ui_settings.workspace, include_broken=True)
entries = catalog.usable(all_entries)
st.title("Merge")
# Opened here, in the page's thread, so a store that cannot be used says so before anything runs.
store = _ui.run_store(ui_settings.workspace)
_ui.warn_broken(all_entries)
# The recipe in the URL: a link (or "Reopen in Merge" on the Runs page) sets every control below; one on
# another base model switches the sidebar to it first (and reruns), so it comes before "No adapters".
codec.read_link(PREFIX, entries)
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()

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
    **{codec.do_key(p.name): p.default for p in DO_SCHEMA},  # DO-Merging's options, from their schema
}.items():
    st.session_state.setdefault(widget_key, default)

hidden = ui_settings.presentation
controls = st.container() if not hidden else st.expander("Merge settings", expanded=False)
with controls:
    names = st.multiselect(
        "Adapters",
        [e.name for e in entries],
        format_func=chance_badges.option_label(entries),  # "⚠ at chance" beside an adapter that did not learn
        key=codec.adapters_key(PREFIX), persist_state="session",
        help="One adapter per task; each task is scored with the merged body"
        + (" on its evaluation file (exact match and completion loss)." if _ui.base_model_status(ui_settings.base_model)[0]
           == "causal" else " and its own head."),
    )
    osrm_mode = codec.osrm_control(PREFIX)
    at_chance_note = chance_badges.flag_note(chance_badges.merged_entries(entries, names, osrm_mode), "merged here")
    if at_chance_note:
        st.warning(at_chance_note, icon=chance_badges.ICON)
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
        decouple = st.toggle(DO["decouple"].display_label, key=codec.do_key("decouple"), persist_state="session",
                             help=DO["decouple"].help)
        st.selectbox(DO["magnitude"].display_label, DO["magnitude"].choices, key=codec.do_key("magnitude"),
                     persist_state="session", disabled=not decouple, help=DO["magnitude"].help)
    with do_right:
        orthogonalize = st.toggle(DO["orthogonalize"].display_label, key=codec.do_key("orthogonalize"),
                                  persist_state="session", help=DO["orthogonalize"].help)
        for column, name in zip(st.columns(3), ("steps", "lr", "mu"), strict=True):
            column.number_input(DO[name].display_label, *codec.DO_RANGES[name], key=codec.do_key(name),
                                persist_state="session", disabled=not orthogonalize, help=DO[name].help,
                                **({"format": "%.4f"} if name == "lr" else {}))
    carried = (st.session_state.get(codec.carry_key(PREFIX)) or codec.Carry()).describe()
    if carried:
        st.caption(f"This recipe also sets {carried} (no control here; kept as the link gave them).")

# ----------------------------------------------------------------------------------------------
# Run: the Recipe alone says what is merged (catalog.resolve_inputs applies its `osrm` mode);
# merging.lab.run_jobs.merge_work merges, scores and records the run in a background job


def _show_examples(last: dict) -> None:
    """Causal tasks: a few prompts per task with the reference and the base / single / merged greedy
    outputs, each with its loss and perplexity (merging.evaluation.examples computes them; this only shows)."""
    from merging.evaluation.examples import side_by_side

    with st.expander("Examples side by side", expanded=False):
        st.caption("The first prompts of each task's evaluation file: what the base model, the task's own adapter and "
                   "the merge answer greedily (as many tokens as the reference), with each one's loss on the reference "
                   "(nats per token) and its perplexity, exp(loss).")
        left, right = st.columns([1, 3])
        count = int(left.number_input("Prompts per task", 1, 50, 3, key="merge_examples_count"))
        key = ("merge_examples", last["run"].id, count)
        if right.button("Show examples", key="merge_examples_run"):
            merged = last["merged"]
            try:
                with st.spinner("Generating…"):
                    lab = _ui.lab_for(last["base_model"], ui_settings.device)
                    rows = side_by_side(lab, last["adapters"], last["run"].recipe, count,
                                        merged.adapter.modules, dict(merged.adapter.saved_modules) or None)
                st.session_state["merge_examples"] = (key, rows)
            except (ValueError, OSError) as err:
                st.error(_ui.friendly_error(err))
        shown = st.session_state.get("merge_examples")
        if shown and shown[0] == key:
            _ui.show_table(pd.DataFrame(shown[1]), "merge_examples")


def _export_work(merged, base_dir, out: str, overwrite: bool):
    def work(progress):
        from merging.engine.export import export_merged

        if not out:
            raise ValueError("give the folder to write the full model to")
        return export_merged(merged, base_dir, out, overwrite=overwrite, progress=progress).to_dict()

    return work


def _zip_of(merged) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_merged(merged, Path(tmp) / "merged")
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"merged/{file.name}")
    return buffer.getvalue()


# The last result and the pinned baseline live in the URL too (run=ID, baseline=ID): a reload or a
# shared link shows them again, read back from the run store.
def _stored_run(run_id_text: str | None) -> dict | None:
    # a run id from the URL: digits only, and short enough for SQLite's 64-bit integers
    if not run_id_text or not str(run_id_text).isdigit() or len(str(run_id_text)) > 18:
        if run_id_text:
            st.warning(f"The link's run id {str(run_id_text)[:40]!r} is not a run number; ignored.")
        return None
    run = read_run(store, int(run_id_text))
    if run is None or run.kind != "merge":
        st.warning(f"Run {run_id_text} from the link is not in this workspace's run store.")
        return None
    return {"run": run, "merged": None}


if "merge_last" not in st.session_state:
    st.session_state["merge_last"] = _stored_run(st.query_params.get("run"))
def _baseline_name(typed: str | None, run_id: int) -> str | None:
    """The name a pinned baseline is shown with: what was typed, or none (shown as "run N") when the
    field was left empty or at its own default."""
    name = (typed or "").strip()
    return None if name in ("", f"run {run_id}") else name


if "merge_baseline" not in st.session_state:
    pinned = _stored_run(st.query_params.get("baseline"))
    if pinned:
        pinned["name"] = _baseline_name(st.query_params.get("baseline_name"), pinned["run"].id)
    st.session_state["merge_baseline"] = pinned

built_in = _ui.zoo()
if built_in and ui_settings.on_zoo_base and not st.session_state.get("merge_last"):
    # Load the model now and score the zoo's single adapters in the background, so the first Run
    # only pays for its own merge: the standard ones and their OSRM twins (what the page offers
    # first), not every variant — those are scored when a merge uses them, and 27 adapters scored
    # up front took the CPU from the pages a speaker opens next.
    usual = [a for a in built_in.adapters if a.init in ("standard", "osrm")]
    ordered = sorted(usual, key=lambda a: a.init != "standard")
    _ui.warm_up_in_background(_ui.lab_for(built_in.base_model, ui_settings.device), [a.path for a in ordered])

running = _ui.job_running(JOB)
run_clicked = st.button("Run merge", type="primary", disabled=running or len(names) < 1, key="merge_run")
if run_clicked:
    try:
        recipe = codec.recipe_from_widgets(PREFIX, entries, ui_settings.device)  # validated before anything starts
        st.query_params["recipe"] = recipe.to_url()
        recipe = _ui.recipe_for_run(recipe, entries)  # the sidebar's base model, the attached evaluation files
        inputs = catalog.resolve_inputs(recipe, _ui.load_adapter_as, ui_settings.base_model)
        lab = _ui.lab_for(inputs.base_model, ui_settings.device)  # cached; loads in the page's thread
        job = _ui.Job("Merging and evaluating")

        def publish_preview(evaluation, job=job) -> None:  # the first look, shown while the rest runs
            job.partial = evaluation.to_dict()

        _ui.start_job(JOB, job.label, merge_work(inputs, recipe, lab, store, publish_preview), job=job)
    except (RecipeError, MethodError, ValueError, OSError) as err:
        st.error(_ui.friendly_error(err))

def _show_preview(preview: dict) -> None:
    """The first look while the rest of the evaluation runs, labelled as such."""
    tasks = preview["tasks"]
    average = preview["average"]["merged"]
    per_class = "" if plots.has_loss(preview) else " of each class"
    st.metric(
        f"Preview: average merged {plots.metric_name(preview)}",
        f"{100 * average:.1f}%",
        help=f"Scored on 1 in {PREVIEW_EVERY} examples{per_class}; the full evaluation is still running "
        "and will replace this.",
    )
    st.caption(
        f"Preview on 1 in {PREVIEW_EVERY} evaluation examples{per_class}: "
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
        st.session_state["merge_scroll"] = True  # bring the new result into view under Run
        if finished.result["run"].id is not None:
            st.query_params["run"] = str(finished.result["run"].id)
        st.session_state.pop("merge_error", None)

if st.session_state.get("merge_error"):
    st.error(st.session_state["merge_error"])

# ----------------------------------------------------------------------------------------------
# Results

last = st.session_state.get("merge_last")
baseline = st.session_state.get("merge_baseline")
if last:
    shown_run = last["run"]
    results = shown_run.results
    average = results["average"]
    recipe_text = describe_run(shown_run)
    st.subheader(
        f"{run_label(shown_run.id).capitalize()}: {method_label(results['merge']['method'])} of "
        f"{len(results['merge']['adapters'])} adapters",
        anchor="merge-result",
    )
    st.caption("Recipe: " + recipe_text)
    if shown_run.id is None:
        st.warning("This run was not stored (see the run store's warning above): it is shown, not kept.")
    # The change is measured against the pinned baseline when there is one, else the previous run.
    if baseline and baseline["run"].id != shown_run.id:
        compared, compared_name = baseline["run"], f"baseline {run_label(baseline['run'].id, baseline['name'])}"
    else:
        previous = st.session_state.get("merge_previous")
        compared = previous["run"] if previous and previous["run"].id != shown_run.id else None
        compared_name = f"the previous run ({run_label(compared.id)})" if compared else ""
    compared_average = compared.results["average"] if compared else None
    metric_columns = st.columns(4)

    def delta(key):
        if not compared_average or compared_average.get(key) is None or average.get(key) is None:
            return None
        return f"{100 * (average[key] - compared_average[key]):+.1f} pp"

    interval = (results.get("average_interval") or {}).get("merged")
    metric = plots.metric_name(results)  # accuracy, or exact match for causal-LM tasks
    metric_columns[0].metric(
        f"Average merged {metric}", f"{100 * average['merged']:.1f}%", delta("merged"),
        help=(f"95% interval {100 * interval[0]:.1f}–{100 * interval[1]:.1f}% (bootstrap over the evaluation sets)"
              if interval else None) if not compared_name else f"change vs {compared_name}",
    )
    metric_columns[1].metric("Normalised (merged / single)", f"{100 * average['normalized']:.1f}%", delta("normalized"))
    metric_columns[2].metric(f"Average single-adapter {metric}", f"{100 * average['single']:.1f}%")
    if results.get("cached"):
        # Scored before (e.g. by the server's warm-up): the seconds would only time a cache look-up.
        metric_columns[3].metric("Merge + evaluation time", "cached",
                                 help=f"this merged body was scored before; merge took {shown_run.seconds:.2f} s "
                                 f"on {results['merge']['device']}")
    else:
        metric_columns[3].metric("Merge + evaluation time", f"{shown_run.seconds:.2f} s",
                                 help=f"device: {results['merge']['device']}; waiting for the warm-up not counted")
    if plots.has_loss(results):
        how_scored = (
            "Each task is its evaluation file's prompts: exact match = the greedy continuation equals the completion "
            "(whitespace aside); loss = mean negative log-likelihood of the completion tokens, in nats (lower is "
            "better). Whiskers: 95% bootstrap intervals over the evaluation set."
        )
    else:
        how_scored = (
            "Each task is scored with the merged body and that task's own classification head. "
            "\"Base\" = the base body with each adapter's own head, so it moves when the adapters (or OSRM's twins) "
            "change. Whiskers: 95% bootstrap intervals over the evaluation set; the black dash is the majority class."
        )
    if not ui_settings.presentation:  # on stage it goes under the chart, which must fit the window
        st.caption(how_scored)
    osrm = shown_run.osrm
    run_merged = chance_badges.run_entries(all_entries, results["merge"]["adapters"], osrm.get("twins"))
    run_note = chance_badges.flag_note(run_merged, "in this run")
    if run_note:
        st.warning(run_note, icon=chance_badges.ICON)
    if osrm.get("twins"):
        st.info("OSRM: merged the OSRM-initialised twins " + ", ".join(osrm["twins"].values())
                + (" — the base bars are the base model alone." if plots.has_loss(results) else
                   " — their heads score the tasks, so the base bars use those heads too."))
    if osrm.get("posthoc"):
        st.info("Projected post-hoc onto OSRM's subspace: " + ", ".join(osrm["posthoc"]) + ".")
    if plots.has_loss(results):  # causal tasks: the metric and, beside it, the completion loss
        metric_chart, loss_chart = st.columns(2)
        with metric_chart:
            _ui.show_figure(plots.accuracy_bars(results, presentation=ui_settings.presentation), "accuracy_bars",
                            "merge_accuracy", how_to_read="Per task, grey = base model, blue = each task's own adapter, "
                            "orange = the merge (label: merged ÷ single); whiskers: 95% bootstrap intervals.")
        with loss_chart:
            _ui.show_figure(plots.accuracy_bars(results, presentation=ui_settings.presentation, score="loss"),
                            "accuracy_bars", "merge_loss", how_to_read="Completion loss per task, nats per token: "
                            "lower is better; the merge between base and single shows how much each task kept.")
    else:
        _ui.show_figure(plots.accuracy_bars(results, presentation=ui_settings.presentation,
                                            flagged=chance_badges.task_flags(run_merged)), "accuracy_bars",
                        "merge_accuracy")
    if ui_settings.presentation:
        st.caption(how_scored)
    if compared:
        _ui.show_figure(
            plots.accuracy_delta(results, compared.results, title=f"Change in merged {metric} vs {compared_name}",
                                 presentation=ui_settings.presentation),
            "accuracy_delta",
            "merge_delta",
        )
        st.caption(f"Compared with {compared_name}: " + describe_run(compared))
        st.markdown(narrative.takeaway_fix("This run", compared_name, compared.results, results))  # measured, with its noise

    # Pin a run as the named baseline every later run is compared with (kept in the link).
    pin_left, pin_middle, pin_right = st.columns([2, 1, 1])
    if shown_run.id is not None and (not baseline or baseline["run"].id != shown_run.id):
        # The field is the name of *this* run: a widget keeps its value across runs, so a new run
        # resets it to its own default (else pinning run 3 named it after run 1's field).
        if st.session_state.get("merge_baseline_name_run") != shown_run.id:
            st.session_state["merge_baseline_name"] = f"run {shown_run.id}"
            st.session_state["merge_baseline_name_run"] = shown_run.id
        name = pin_left.text_input("Baseline name", key="merge_baseline_name", label_visibility="collapsed")
        if pin_middle.button("Pin as baseline", key="merge_pin", icon=":material/push_pin:"):
            named = _baseline_name(name, shown_run.id)
            st.session_state["merge_baseline"] = {**last, "name": named}
            st.query_params["baseline"] = str(shown_run.id)
            if named:
                st.query_params["baseline_name"] = named
            else:
                st.query_params.pop("baseline_name", None)
            st.rerun()
    if baseline:
        pin_left.caption(f"Baseline: {run_label(baseline['run'].id, baseline['name'])} — "
                         + describe_run(baseline["run"]))
        if pin_right.button("Unpin baseline", key="merge_unpin"):
            st.session_state["merge_baseline"] = None
            st.query_params.pop("baseline", None)
            st.query_params.pop("baseline_name", None)
            st.rerun()

    frame = pd.DataFrame(plots.results_rows(results))
    if ui_settings.presentation:
        with st.expander("Numbers"):
            _ui.show_table(frame, "merge_results")
    else:
        _ui.show_table(frame, "merge_results")
    summary = results["merge"]
    if plots.rank_truncated(summary):  # within float rounding of 1 everywhere: nothing was truncated
        _ui.show_figure(plots.energy_kept(summary, presentation=ui_settings.presentation), "energy_kept", "merge_energy")
    if results.get("orthogonalize"):
        curves = {name: report["loss"] for name, report in results["orthogonalize"].items()}
        _ui.show_figure(
            plots.orthogonalize_loss(curves, presentation=ui_settings.presentation), "orthogonalize_loss", "merge_do_loss"
        )
        cosines = plots.orthogonalize_rows(results["orthogonalize"])
        if cosines:
            with st.expander("DO-Merging: cosines between the adapters' directions, before and after", expanded=False):
                st.caption("Per module, the mean and largest |cosine| between two adapters' update directions before "
                           "and after the orthogonalisation (0 = orthogonal: no interference between them); the first "
                           "row is over every module.")
                _ui.show_table(pd.DataFrame(cosines), "merge_do_cosines")
    if plots.has_loss(results) and last.get("merged") is not None and last.get("adapters") and not ui_settings.presentation:
        _show_examples(last)
    if summary.get("notes"):
        for note in summary["notes"]:
            st.caption(f"Note: {note}")

    if not ui_settings.presentation:
        st.markdown("**Export**")
        e1, e2, e3 = st.columns(3)
        merged_adapter = last["merged"]
        stem = f"run{shown_run.id}" if shown_run.id is not None else "unstored-run"
        if merged_adapter is not None:
            if "bounded" not in last:  # the PEFT output's rank bound (merging.engine.output_rank), computed once
                last["bounded"] = bounded(merged_adapter)
            peft_output = last["bounded"]  # the full-model export below folds in the exact merge
            e1.download_button("Merged adapter (PEFT zip)", lambda: _zip_of(peft_output), f"merged-{stem}.zip",
                               "application/zip", key="export_zip")
            rank_bound = peft_output.rank_bound or {}
            if rank_bound.get("warning"):
                st.warning(f"PEFT zip: {rank_bound['warning']} (below, 'Write full model').", icon="⚠️")
        else:
            e1.caption("Reopened from the run store: press Run merge to rebuild the adapter for export.")
        e2.download_button("Recipe (JSON)", json.dumps(recipe_data(shown_run), indent=2),
                           f"recipe-{stem}.json", "application/json", key="export_recipe")
        e3.download_button("Results (CSV)", frame.to_csv(index=False), f"results-{stem}.csv",
                           "text/csv", key="export_csv")
        with st.expander("Full model: the base with the merge folded in"):
            st.caption("A Hugging Face model folder (config, safetensors shards, tokenizer) that "
                       "`AutoModelForCausalLM.from_pretrained` (or the classification class) loads; written beside "
                       "the target and swapped in when complete, shard by shard.")
            out_left, out_right = st.columns([3, 1])
            out_left.text_input("Folder", key="export_full_dir", placeholder="/path/to/merged-model")
            out_right.checkbox("Replace an earlier export there", key="export_full_overwrite")
            if st.button("Write full model", key="export_full", disabled=merged_adapter is None or _ui.job_running(EXPORT_JOB)):
                try:
                    base_name = merged_adapter.recipe.base_model or ui_settings.base_model
                    _ui.start_job(EXPORT_JOB, "Writing the full model", _export_work(
                        merged_adapter, catalog.base_model_summary(base_name)[1],
                        (st.session_state.get("export_full_dir") or "").strip(),
                        bool(st.session_state.get("export_full_overwrite"))))
                except (ValueError, OSError) as err:
                    st.error(_ui.friendly_error(err))
            _ui.show_job_progress(EXPORT_JOB)
            exported = _ui.take_job_result(EXPORT_JOB)
            if exported is not None:
                if exported.error:
                    st.error(exported.error)
                else:
                    report = exported.result
                    st.success(f"Wrote the full model to `{report['out']}`: {report['shards']} shard(s), "
                               f"{report['bytes'] / 1024**2:.1f} MiB, {report['updated_modules']} module(s) updated.")
    if st.session_state.pop("merge_scroll", False):
        _ui.scroll_into_view("merge-result")
