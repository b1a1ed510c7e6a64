"""Search: find per-adapter λ (and optionally the method's searchable parameters) with Optuna, in-process or on Ray, scored on
dev splits carved from the tasks' training data; the best recipe is then scored on the evaluation
split beside uniform λ = 1 and the best shared λ."""

from __future__ import annotations

import math
import time

import pandas as pd
import streamlit as st

from merging import plots
from merging.lab import catalog, chance_badges
from merging.methods import REGISTRY, MethodError
from merging.recipe.codec import RecipeError
from merging.search.study import (
    DEFAULT_DEV_SIZE,
    INSTALL_HINT,
    OBJECTIVE_MEANINGS,
    OBJECTIVES,
    SearchError,
    better,
    merge_link,
    missing_packages,
    run_search,
)
from pages import _recipe_ui as codec
from pages import _ui

JOB = "search"
PREFIX = "search"
KEEP = "session"  # widget values survive a trip to another page
BACKENDS = {"inprocess": "In-process", "local": "Local Ray runtime (all cores)", "cluster": "Existing Ray cluster"}
OBJECTIVE_HELP = OBJECTIVE_MEANINGS  # merging.search.study says what each objective means, and which way is better

ui_settings = _ui.settings()
st.title("Search")
missing = missing_packages()
if "optuna" in missing:
    st.warning(f"The λ search needs Optuna (and Ray for several workers), which are not installed. Run:\n\n`{INSTALL_HINT}`")
    st.stop()

entries = _ui.catalog(ui_settings.workspace)
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()
names_all = [e.name for e in entries]
standard_names = [e.name for e in entries if e.init == "standard"] or names_all

hidden = ui_settings.presentation
if not hidden:
    st.caption(
        "Which λ per adapter? Each trial merges with the λs Optuna proposes and scores every task on a dev "
        "set: the task's dev file, else a seeded sample of its evaluation file (the final report scores the "
        "other rows), else a sample of a demo task's training data. The final report never scores a dev example."
    )
controls = st.container() if not hidden else st.expander("Search settings", expanded=False)
with controls:
    names = st.multiselect("Adapters", names_all, default=standard_names[:3], key="search_adapters", persist_state=KEEP,
                           format_func=chance_badges.option_label(entries))  # "⚠ at chance" beside one that did not learn
    searched_entries = chance_badges.merged_entries(entries, names, st.session_state.get(f"{PREFIX}_osrm", "off"))
    if note := chance_badges.flag_note(searched_entries, "searched here"):
        st.warning(note, icon=chance_badges.ICON)
    left, middle, right = st.columns(3)
    with left:
        method = st.selectbox(
            "Method", list(REGISTRY), format_func=lambda m: REGISTRY[m].label, key="search_method", persist_state=KEEP
        )
        spec = REGISTRY[method]
        st.caption(spec.description)
        codec.method_controls(PREFIX, method)  # the method's own controls, from its schema
        codec.osrm_control(PREFIX)
    with middle:
        # the completion loss exists for causal tasks only: offered when the sidebar's model is a causal LM
        offered = [o for o in OBJECTIVES if o != "loss" or _ui.base_model_status(ui_settings.base_model)[0] == "causal"]
        objective = st.radio(
            "Objective", offered, key="search_objective", persist_state=KEEP,
            captions=[OBJECTIVE_HELP[o] for o in offered],
        )
        # what the registry marks searchable for this method (density, gamma, epsilon, fraction, …)
        searchable = [p.name for p in spec.searchable]
        searched = st.multiselect(
            "Search these parameters too", searchable, default=[], key=f"search_params_{method}",
            persist_state=KEEP, disabled=not searchable,
            format_func=lambda name: f"{spec.param(name).display_label} ({spec.param(name).search[0]:g}–"
                                     f"{spec.param(name).search[1]:g})",
            help="Each starts from the value set on the left and stays within the bounds shown "
                 "(the method's search bounds in the registry; `mergescope methods`).",
        )
        bounds = st.slider("λ range", 0.0, 3.0, (0.0, 1.5), 0.05, key="search_bounds", persist_state=KEEP)
    with right:
        trials = st.number_input("Trials (budget)", 1, 500, 20, key="search_trials", persist_state=KEEP,
                                 help="Each trial is one merge and one dev evaluation per task.")
        dev_size = st.number_input("Dev examples per task", 4, 1000, DEFAULT_DEV_SIZE, key="search_dev_size",
                                   persist_state=KEEP, help="Carved from each task's training data, or — a task "
                                   "with an evaluation file and no dev file — at most half of that file's rows.")
        sampler = st.selectbox("Sampler", ["tpe", "cmaes"], key="search_sampler", persist_state=KEEP,
                               format_func={"tpe": "TPE", "cmaes": "CMA-ES"}.get)
        seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="search_seed", persist_state=KEEP)
    backend = st.radio("Backend", list(BACKENDS), format_func=BACKENDS.get, horizontal=True, key="search_backend",
                       persist_state=KEEP)
    address = None
    workers = None
    if backend != "inprocess":
        if "ray" in missing:
            st.warning(f"Ray is not installed: run `{INSTALL_HINT}`, or use the in-process backend.")
        b1, b2 = st.columns(2)
        if backend == "cluster":
            address = b1.text_input("Ray address", "127.0.0.1:6379", key="search_address", persist_state=KEEP,
                                    help="The head node's address, as `ray start --head` prints it.")
        workers = int(b2.number_input("Workers", 1, 256, 2, key="search_workers", persist_state=KEEP,
                                      help="Ray actors; each loads the base model once."))


def _search_work(recipe, base_model: str, job: _ui.Job, options: dict):
    """`options`: run_search's keyword arguments chosen on the page (captured now, not read later)."""
    lab = _ui.lab_for(base_model, ui_settings.device)  # cached; loads the model on first use
    store = _ui.run_store(ui_settings.workspace)
    trials_done: list[dict] = []

    def publish(outcome) -> None:
        trials_done.append(outcome.to_dict())
        job.partial = {"trials": list(trials_done), "objective": options["objective"], "total": options["trials"]}

    def work(progress):
        return run_search(recipe, lab=lab, store=store, progress=progress, on_trial=publish, **options).to_dict()

    return work


def _live(partial: dict) -> None:
    """While the search runs: trials done, best so far, ETA, and the history so far."""
    done = len(partial["trials"])
    total = partial["total"]
    job = _ui.current_job(JOB)
    elapsed = time.perf_counter() - job.started if job else 0.0
    best = better(partial["objective"])((t["dev_objective"] for t in partial["trials"]), default=None)
    c1, c2, c3 = st.columns(3)
    c1.metric("Trials done", f"{done} / {total}")
    c2.metric("Best so far (dev)", "–" if best is None else f"{best:.4f}")
    c3.metric("ETA", f"{elapsed / done * (total - done):.0f} s" if done else "–",
              help="From the mean time per finished trial; the final report on the evaluation split comes after.")
    _ui.show_figure(plots.optimization_history(partial["trials"], partial["objective"]), "search_history",
                    "search_history_live", how_to_read=plots.HOW_TO_READ["optimization_history"])


problem = None
running = _ui.job_running(JOB)
if not names:
    problem = "Choose at least one adapter."
elif backend != "inprocess" and "ray" in missing:
    problem = "Install Ray for this backend, or choose In-process."
elif backend == "cluster" and not (address or "").strip():
    problem = "Give the Ray cluster's address."
if problem and not running:
    st.info(problem)
run_clicked = st.button("Run search", type="primary", disabled=running or problem is not None, key="search_run")
if run_clicked:
    try:
        recipe = codec.recipe_from_widgets(PREFIX, entries, ui_settings.device, with_weights=False,
                                           with_merge_settings=False)
        recipe = _ui.recipe_for_run(recipe, entries)  # the sidebar's base model, the attached evaluation files
        loaded = [_ui.load_adapter_cached(catalog.entry_by_name(entries, n).path) for n in names]
        base_model = catalog.resolve_base_model(recipe, loaded, catalog.default_base_model(_ui.zoo()))
        options = {
            "trials": int(trials),
            "objective": objective,
            "params": ("weights", *(name for name in searched if name in searchable)),
            "weight_bounds": tuple(bounds),
            "sampler": sampler,
            "seed": int(seed),
            "dev_size": int(dev_size),
            "ray": backend != "inprocess",
            "ray_address": address.strip() if backend == "cluster" and address else None,
            "workers": workers,
        }
        job = _ui.Job("Searching λ")
        _ui.start_job(JOB, "Searching λ", _search_work(recipe, base_model, job, options), job=job)
        st.session_state.pop("search_error", None)
        running = True
    except (RecipeError, MethodError, SearchError, ValueError, OSError) as err:
        st.error(_ui.friendly_error(err))

_ui.show_job_progress(JOB, show_partial=_live)
finished = _ui.take_job_result(JOB)
if finished is not None:
    if finished.error:
        st.session_state["search_error"] = finished.error
    else:
        st.session_state["search_result"] = {**finished.result, "wall_seconds": finished.seconds}
        st.session_state.pop("search_error", None)
if st.session_state.get("search_error"):
    st.error(st.session_state["search_error"])

# ----------------------------------------------------------------------------------------------
# Results


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _comparison(result: dict) -> pd.DataFrame:
    rows = []
    baselines = result.get("baselines") or {}
    best = result["best"]
    candidates = [("best found", best.get("recipe", {}) and [a["weight"] for a in best["recipe"]["adapters"]],
                   best.get("evaluation"), best.get("interval_95"))]
    for key, label in (("uniform", "uniform λ = 1"), ("shared", "best shared λ")):
        if key in baselines:
            data = baselines[key]
            candidates.append((label, data["weights"], data["evaluation"], data["interval_95"]))
    for label, weights, evaluation, interval in candidates:
        if not evaluation:
            continue
        low, high = (interval or {}).get("average_merged", (None, None))
        row = {"recipe": label, "λ": ", ".join(f"{w:.3g}" for w in weights or [])}
        for task, scores in evaluation["tasks"].items():
            row[task] = None if scores["merged"] is None else round(scores["merged"], 4)
        row["average merged"] = evaluation["average"]["merged"]
        losses = [s["loss"]["merged"] for s in evaluation["tasks"].values() if s.get("loss")]
        if losses and None not in losses:  # causal tasks: the completion loss and its perplexity beside the score
            mean_loss = sum(losses) / len(losses)
            row["mean loss"] = round(mean_loss, 4)
            row["perplexity"] = round(math.exp(mean_loss), 3)
        row["95% interval"] = f"{_percent(low)} – {_percent(high)}"
        rows.append(row)
    return pd.DataFrame(rows)


result = st.session_state.get("search_result")
if result and not running:
    best = result["best"]
    trials_list = result["trials"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Trials", f"{len(trials_list)}", help=f"backend: {result['backend']}; failed: {result['failed_trials']}")
    c2.metric(f"Best {result['objective']} (dev)", "–" if best["dev_objective"] is None else f"{best['dev_objective']:.4f}",
              help=result.get("objective_meaning"))
    evaluation = best.get("evaluation")
    c3.metric("Best on evaluation", _percent(evaluation["average"]["merged"]) if evaluation else "–",
              help="The best trial's average merged score on the evaluation split (never seen by the search).")
    c4.metric("Trials per minute", f"{result['trials_per_minute'] or 0:.1f}")
    if best.get("recipe"):
        from merging.recipe.codec import recipe_from_dict as _from_dict

        st.link_button("Open best in Merge", "./" + merge_link(_from_dict(best["recipe"])), type="secondary")
    split_lines = [s["statement"] for s in result.get("split") or []]
    if split_lines:
        st.markdown("**Where λ was chosen and where it is reported**\n" + "".join(f"\n- {line}" for line in split_lines))
    if result.get("worker_deaths"):
        st.info(f"{len(result['worker_deaths'])} worker(s) died; their trials were retried: {result['worker_deaths']}")
    frame = _comparison(result)
    if not frame.empty:
        _ui.show_table(frame, "search_comparison", caption="On the evaluation split; the interval is a 95 % bootstrap "
                       "interval of the average merged score (accuracy, or exact match) — examples resampled within each task.")
    # on stage one chart per row: side by side, the parallel coordinates' axis names overprint
    left, right = st.columns(2) if not ui_settings.presentation else (st.container(), st.container())
    with left:
        _ui.show_figure(plots.optimization_history(trials_list, result["objective"], ui_settings.presentation),
                        "search_history", "search_history", how_to_read=plots.HOW_TO_READ["optimization_history"])
    with right:
        if ui_settings.presentation:  # the parallel coordinates' axis names overprint their numbers at 18 px
            _ui.show_figure(plots.best_parameters(trials_list, result["objective"], True),
                            "search_best", "search_best", how_to_read=plots.HOW_TO_READ["best_parameters"])
        else:
            _ui.show_figure(plots.parallel_coordinates(trials_list, result["objective"]),
                            "search_parallel", "search_parallel", how_to_read=plots.HOW_TO_READ["parallel_coordinates"])
    trial_rows = [{"trial": t["number"], **{k: round(v, 4) for k, v in t["params"].items()},
                   "dev objective": t["dev_objective"], "worker": t["worker"], "seconds": t["seconds"]}
                  for t in trials_list]
    with st.expander("Trials"):
        _ui.show_table(pd.DataFrame(trial_rows), "search_trials")
elif not running and not problem:
    st.info("Choose adapters, an objective and a budget, then press Run search.")
