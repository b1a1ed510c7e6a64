"""Interference: where and how much the chosen adapters' updates collide, and whether OSRM helps.

Cheap views come straight from the LoRA factors (``metrics.adapter_metrics``, cached per adapter
version): magnitude variance, subspace overlap, task-vector cosine, TIES sign conflicts. Two views
need forward passes and run as background jobs, cached for the session: OSRM's data-parameter
interference (the base model's inputs to each adapted module, per task) and the cross-task accuracy
matrix. A toggle puts each standard adapter's OSRM twin in a second column.

The base model is the sidebar's; an adapter's task is the evaluation file attached to it on the
Adapters page when it has one (a causal LM's prompts are then its inputs), else its own task.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import streamlit as st
import torch

from merging import plots
from merging.adapters.lora import Adapter
from merging.analysis import interference_story as telling
from merging.analysis import metrics, narrative, study_story
from merging.analysis.seed_study import best_predictor
from merging.evaluation.evaluate import cross_task_matrix
from merging.lab import catalog, chance_badges
from merging.store.measure_cache import MeasureCache
from pages import _ui, _warm

FEATURES_JOB = "interference_features"
CROSS_JOB = "interference_cross"
DEFAULT_SAMPLES = 100
ui_settings = _ui.settings()
presentation = ui_settings.presentation
entries = _ui.catalog(ui_settings.workspace)
state = st.session_state

if not presentation:  # on stage the top navigation names the page, and each screen is one section
    st.title("Interference")
    st.caption(
        "Where the chosen adapters' updates ΔW = B·A collide. Everything but the last two sections is "
        "computed from the LoRA factors alone; those two run the base model over each task's texts."
    )
if not entries:
    st.error("No adapters: build the zoo (`python -m merging zoo build`) or import adapters on the Adapters page.")
    st.stop()

# ----------------------------------------------------------------------------------------------
# Controls

def _linked_setup(params, known: list[str]) -> dict | None:
    """Widget values from the link ({} when it has none; None when it is not understood)."""
    import json

    found: dict = {}
    if "adapters" in params:
        try:
            names = json.loads(params["adapters"])
        except ValueError:
            return None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > 200:
            return None
        found["interference_adapters"] = [n for n in names if n in known]
    if "osrm" in params:
        if params["osrm"] not in ("0", "1"):
            return None
        found["interference_side_by_side"] = params["osrm"] == "1"
    if "layer" in params:
        if len(params["layer"]) > 20:
            return None
        found["interference_layer"] = params["layer"]  # checked against the layers below
    return found


def _link_setup() -> None:
    """Keep the setup in the link (adapters as JSON, the OSRM toggle, the layer)."""
    import json

    st.query_params["adapters"] = json.dumps(list(state.get("interference_adapters") or []))
    st.query_params["osrm"] = "1" if state.get("interference_side_by_side") else "0"
    if state.get("interference_layer") is not None:
        st.query_params["layer"] = str(state["interference_layer"])


WIDGETS = ("interference_adapters", "interference_side_by_side", "interference_layer", "interference_overlap_side",
           "interference_density",
           "interference_samples", "interference_cosine_scope", "interference_dpi_scope", "interference_dpi_inputs",
           "interference_split")
# Streamlit forgets a widget's value while its page is not shown; a shadow copy brings it back.
for name in WIDGETS:
    if name not in state and f"_keep:{name}" in state:
        state[name] = state[f"_keep:{name}"]

all_names = [e.name for e in entries]
standard = [e.name for e in entries if e.init == "standard"]
# The setup is in the link too (adapters, the OSRM toggle, the layer): a reload keeps it.
if "interference_adapters" not in state and "_keep:interference_adapters" not in state:
    linked = _linked_setup(st.query_params, all_names)
    if linked is None:
        st.warning("The link's Interference setup (adapters=, osrm=, layer=) was not understood; "
                   "the defaults are shown.")
    else:
        state.update(linked)
if "interference_adapters" not in state:
    default = state.get("merge_adapters") or standard[:5] or all_names[:2]
    state["interference_adapters"] = [n for n in default if n in all_names]
else:  # a stored choice may name adapters that have since gone
    state["interference_adapters"] = [n for n in state["interference_adapters"] if n in all_names]

# On stage the adapters' list (folded) and the OSRM toggle share one row: every line above a section's
# chart is a line less for the chart in a 720-px window.
if presentation:
    _controls_row = st.columns([3, 2], vertical_alignment="center")
    controls = _controls_row[0].expander("Adapters", expanded=False)
else:
    controls = st.container()
with controls:
    names = st.multiselect(
        "Adapters",
        all_names,
        format_func=chance_badges.option_label(entries),  # "⚠ at chance" beside an adapter that did not learn
        key="interference_adapters",
        help="Two or more adapters of one base model; usually one standard-LoRA adapter per task.",
    )
side_by_side = (_controls_row[1] if presentation else st).toggle(
    "Side by side: standard LoRA vs OSRM",
    key="interference_side_by_side",
    help="A second column shows the same charts for each adapter's OSRM-initialised twin "
    "(trained on the same task, from the same source).",
)
density, samples, split = 1.0, DEFAULT_SAMPLES, "eval"
SPLITS = {"eval": "held-out evaluation texts", "train": "training texts (those OSRM was fitted on)"}
if not presentation:
    left, middle, right = st.columns(3)
    state.setdefault("interference_density", 1.0)  # defaults via state: the shadow copy may set them too
    state.setdefault("interference_samples", DEFAULT_SAMPLES)
    density = left.slider(
        "TIES density for sign conflicts (fraction of entries kept)", 0.05, 1.0, step=0.05,
        key="interference_density",
        help="Each adapter keeps its largest entries by |x| before signs are compared, as TIES trims. "
        "The chart's 50% reference line holds for density 1.",
    )
    samples = int(middle.number_input(
        "Texts per task for data-parameter interference", 10, 1000, step=10,
        key="interference_samples",
        help="Each task's texts run through the base model to collect the inputs of every adapted module.",
    ))
    split = right.selectbox(
        "Texts from", list(SPLITS), format_func=SPLITS.get, key="interference_split",
        help="Held-out texts show how OSRM generalises; OSRM's initialisation was fitted on the first "
        "training texts, so those show its best case.",
    )


def _remember() -> None:
    for name in WIDGETS:
        if name in state:
            state[f"_keep:{name}"] = state[name]
    _link_setup()


_remember()
if len(names) < 2:
    st.warning("Choose at least two adapters: interference is between adapters.")
    st.stop()

# ----------------------------------------------------------------------------------------------
# On stage, one section per screen: Back / Next (and a clicker's keys, pages/_stage.py) move between
# them; the others are drawn but hidden, so their widgets keep their values. The section is in the link.

SECTIONS = ("Magnitude variance", "Subspace overlap", "Task-vector cosine", "TIES sign conflicts",
            "Data-parameter interference", "Cross-task accuracy", "Where OSRM's effect comes from",
            "Magnitude variance vs full fine-tuning")
_open_section: list = []


def _go_section(number: int) -> None:
    state["interference_section"] = min(max(number, 1), len(SECTIONS))


def _subheader(text: str) -> None:
    """A section's heading; on stage the Back / Next row above names the section instead."""
    if not presentation:
        st.subheader(text)


def _section(number: int) -> None:
    """Everything drawn from here to the next call is section `number` (a container keyed by it)."""
    _end_sections()
    container = st.container(key=f"interference_section_{number}")
    container.__enter__()
    _open_section.append(container)


def _end_sections() -> None:
    _flush_deferred()
    while _open_section:
        _open_section.pop().__exit__(None, None, None)


if presentation:
    if "interference_section" not in state:
        linked = st.query_params.get("section", "1")
        state["interference_section"] = int(linked) if linked.isdigit() and len(linked) <= 2 else 1
    _go_section(int(state["interference_section"]))
    current = int(state["interference_section"])
    st.query_params["section"] = str(current)
    back, where, forward = st.columns([1, 3, 1])
    back.button("← Back", key="interference_back", on_click=_go_section, args=(current - 1,), disabled=current == 1,
                width="stretch")
    forward.button("Next →", key="interference_next", on_click=_go_section, args=(current + 1,),
                   disabled=current == len(SECTIONS), type="primary", width="stretch")
    where.markdown(f"**Section {current} of {len(SECTIONS)}** · {SECTIONS[current - 1]}", text_alignment="center")
    # the keyed container and the wrapper Streamlit puts around it: a hidden wrapper would keep its gap
    hidden = ", ".join(f".st-key-interference_section_{k}, div:has(> .st-key-interference_section_{k})"
                       for k in range(1, len(SECTIONS) + 1) if k != current)  # fmt: skip
    st.markdown(f"<style>{hidden} {{display: none !important;}}</style>", unsafe_allow_html=True)

# ----------------------------------------------------------------------------------------------
# The sets of adapters to show: the chosen ones, and with the toggle their OSRM twins


def _version(entry: _ui.Entry) -> tuple[str, str]:
    """(path, adapter version): the same key the server's warm-up uses."""
    return _warm.version_of(entry)


chosen = [_ui.entry_by_name(entries, n) for n in names]
chosen = [e for e in chosen if e is not None]
all_standard = all(e.init == "standard" for e in chosen)
sets: list[tuple[str, str, list[_ui.Entry]]] = [
    ("chosen", "Standard LoRA" if all_standard else "Chosen adapters", chosen),
]
if side_by_side:
    twins, lacking = [], []
    for entry in chosen:
        twin = entry if entry.init == "osrm" else _ui.twin_of(entries, entry, "osrm")
        if twin:
            twins.append(twin)
        else:
            lacking.append(entry.name)
    twins = list(dict.fromkeys(twins))  # two chosen adapters of one task share a twin
    if lacking:
        st.warning(f"No OSRM twin for: {', '.join(lacking)}. The OSRM column leaves them out.")
    if len(twins) >= 2:
        sets.append(("osrm", "OSRM initialisation", twins))
    else:
        st.warning("Fewer than two of the chosen adapters have an OSRM twin: there is no OSRM column to show.")


@st.cache_data(show_spinner="Computing interference metrics from the LoRA factors…", max_entries=32)
def _factor_metrics(versions: tuple[tuple[str, str], ...], density: float) -> dict:
    """All factor-based metrics of one set of adapters; keyed by folder paths, mtimes and density."""
    adapters = [_ui.load_adapter_cached(Path(path)) for path, _ in versions]
    return metrics.adapter_metrics(adapters, device="cpu", density=density)  # small r × r work: CPU is fastest


def _load(set_entries: Sequence[_ui.Entry]) -> list[Adapter]:
    """The adapters, each carrying the task it is scored on (an attached evaluation file's)."""
    return [catalog.as_scored(_ui.load_adapter_cached(e.path), e) for e in set_entries]


views: list[dict] = []  # one per column: key, label, entries, adapters, metrics (None when it failed)
for key, label, set_entries in sets:
    view = {"key": key, "label": label, "entries": set_entries, "names": [e.name for e in set_entries],
            "versions": tuple(_version(e) for e in set_entries), "adapters": None, "metrics": None,
            "labels": chance_badges.with_badges(plots.shared_suffix_dropped([e.name for e in set_entries]),
                                                set_entries)}  # heatmap ticks, "⚠" on an adapter at chance
    try:
        view["adapters"] = _load(set_entries)
        view["metrics"] = _factor_metrics(view["versions"], float(density))
    except Exception as err:  # AdapterError, a broken folder, ...: say so, keep the page usable
        st.error(f"{label}: {_ui.friendly_error(err)}")
    views.append(view)
good = [v for v in views if v["metrics"] is not None]
if not good:
    st.stop()
if note := chance_badges.flag_note([e for v in good for e in v["entries"]], "shown here"):
    st.warning(note, icon=chance_badges.ICON)

for view in good:
    missing = view["metrics"].get("missing") or {}
    if missing:
        st.caption(f"{view['label']}: {len(missing)} module(s) are absent from some adapters and count as "
                   "zero updates there.")

layer_options: list[str] = []
for view in good:
    for layer in view["metrics"]["layers"]:
        if layer not in layer_options:
            layer_options.append(layer)
if state.get("interference_layer") not in layer_options:
    state["interference_layer"] = layer_options[0]


# On stage a section's chart fits the first screen: its height is the window's less what sits above it
# (the top navigation and the mode switch, the adapters / OSRM row, Back / Next, the takeaway line and
# the set's name) and a margin under it. Five adapters' rows of one-line names at 20 px need STAGE_LEAST.
STAGE_RESERVED = 340
STAGE_LEAST = 330


def _columns() -> list:
    """One column per shown set (a single full-width container without the toggle)."""
    return list(st.columns(len(good))) if len(good) > 1 else [st.container()]


def _heading(view: dict) -> None:
    """The set's name over its column; on stage it leads the chart's title instead (_titled): a line less."""
    if len(good) > 1 and not presentation:
        st.markdown(f"**{view['label']}**")


def _titled(view: dict, title: str) -> str:
    return f"{view['label']}: {title[0].lower()}{title[1:]}" if len(good) > 1 and presentation else title


def _short(view: dict, title: str) -> str:
    """On stage side by side, the set's name alone: a chart with a tall y title has no room for a
    two-line one (the Back / Next row names the section)."""
    return view["label"] if len(good) > 1 and presentation else title


def _as_rows(matrix) -> list:
    return matrix.tolist() if hasattr(matrix, "tolist") else list(matrix)


_deferred: list[str] = []  # on stage, the captions that follow the section's chart instead of preceding it


def _section_lines(kind: str | None, takeaway: str | None = None) -> None:
    """A section's one-line takeaway (from the numbers, merging/analysis/interference_story.py) and which way is good.
    On stage the which-way-is-good line waits under the chart, so the chart starts in the first screen."""
    if takeaway:
        st.markdown(f"**{takeaway}**")
    if kind:
        _caption(telling.GOOD[kind])


def _caption(text: str) -> None:
    if presentation:
        _deferred.append(text)
    else:
        st.caption(text)


def _flush_deferred() -> None:
    while _deferred:
        st.caption(_deferred.pop(0))


# ----------------------------------------------------------------------------------------------
# 1. Magnitude variance

_section(1)
_subheader("Magnitude variance per layer")
_section_lines("magnitude", telling.magnitude([(v["label"], v["metrics"]) for v in good]))
_caption(telling.EXPLAIN["magnitude"])
magnitude_figures = [plots.magnitude_variance_by_layer(v["metrics"], v["labels"], presentation=presentation)
                     for v in good]
telling.share_y(magnitude_figures)  # standard and OSRM on one scale: equal heights, equal values
# Two panels each: on stage, half the window is too narrow for them at 20 px, so the sets are stacked.
for column, view, figure in zip([st.container() for _ in good] if presentation else _columns(), good,
                                magnitude_figures):
    with column:
        if len(good) > 1:
            st.markdown(f"**{view['label']}**")
        # above it on stage: the navigation, the set's controls, Back / Next, the heading and one takeaway line
        _ui.show_figure(figure, "magnitude_variance_by_layer", f"interference_magnitude_{view['key']}", reserved=380)

# ----------------------------------------------------------------------------------------------
# 2. Subspace overlap, one layer at a time

_section(2)
_subheader("Subspace overlap")
SIDES = {"input": "Input subspaces (rows of A)", "output": "Output subspaces (columns of B)"}
# On stage the chart comes first and its controls (layer, side) under it, so that the chart starts high
# enough to fit the first screen; the controls are read before the chart is drawn into its place above.
overlap_charts = st.container() if presentation else None
controls_row = st.columns(2) if presentation else [st.container(), st.container()]
if len(layer_options) > 1:
    layer = controls_row[0].select_slider(
        "Layer (transformer block)", layer_options, key="interference_layer",
        help="Overlaps are averaged over the block's adapted modules (e.g. query and value).",
    )
else:
    layer = layer_options[0]
    controls_row[0].caption(f"One layer: {layer}.")
# Standard and OSRM side by side on stage leave room for one pair of heatmaps: one side at a time.
shown_sides = list(SIDES)
if presentation and len(good) > 1:
    state.setdefault("interference_overlap_side", "input")
    shown_sides = [controls_row[1].radio("Subspaces", list(SIDES), format_func=SIDES.get, horizontal=True,
                                         key="interference_overlap_side")]

if overlap_charts is None:  # off stage the controls stay above the charts
    overlap_charts = st.container()


def _layer_data(view: dict) -> dict | None:
    return view["metrics"]["layers"].get(layer)


def _chance_overlap(view: dict) -> float | None:
    """φ of independent random subspaces of the adapters' rank and input size (r / d)."""
    try:
        first = next(iter(view["adapters"][0].modules.values()))
        return narrative.random_overlap(int(first.A.shape[0]), int(first.A.shape[1]))
    except (StopIteration, IndexError, TypeError, AttributeError):
        return None


with overlap_charts:
    told_side = shown_sides[0]  # the takeaway reads the input side unless only the output side is shown
    _section_lines("overlap", telling.overlap(
        [(v["label"], _layer_data(v)[f"{told_side}_overlap"]) for v in good if _layer_data(v) is not None],
        _chance_overlap(good[0])) + f" ({told_side} subspaces, layer {layer})")

    for column, view in zip(_columns(), good):
        with column:
            _heading(view)
            data = _layer_data(view)
            if data is None:
                st.info(f"These adapters adapt nothing in layer {layer}.")
                continue
            # Short titles: the heatmaps share a row; the caption says what rows of A / columns of B mean.
            # Without the toggle, input and output side by side; with it, stacked in each column (one on stage).
            inner = st.columns(2) if len(good) == 1 else [st.container() for _ in shown_sides]
            for place, side in zip(inner, shown_sides):
                with place:
                    _ui.show_figure(
                        plots.overlap_heatmap(data[f"{side}_overlap"], view["labels"],
                                              title=_titled(view, f"{SIDES[side].split(' (')[0]}, layer {layer}"
                                                           if presentation else f"{SIDES[side]}, layer {layer}"),
                                              presentation=presentation),
                        "overlap_heatmap", f"interference_overlap_{side}_{view['key']}",
                        reserved=STAGE_RESERVED, least=STAGE_LEAST,
                    )

# ----------------------------------------------------------------------------------------------
# 3. Task-vector cosine

_section(3)
_subheader("Task-vector cosine")
scope = "Whole adapter"
if not presentation:
    scope = st.radio("Cosine over", ["Whole adapter", "The chosen layer"], horizontal=True,
                     key="interference_cosine_scope",
                     help="Whole adapter: every module's update concatenated into one vector.")
_cosines = [(v["label"], v["metrics"]["adapter_cosine"] if scope == "Whole adapter"
             else (_layer_data(v) or {}).get("cosine")) for v in good]
_section_lines("cosine", telling.cosine([(label, m) for label, m in _cosines if m is not None]))
for column, view in zip(_columns(), good):
    with column:
        _heading(view)
        if scope == "Whole adapter":
            matrix, title = view["metrics"]["adapter_cosine"], "Task-vector cosine — whole adapter"
        else:
            data = _layer_data(view)
            if data is None:
                st.info(f"These adapters adapt nothing in layer {layer}.")
                continue
            matrix, title = data["cosine"], f"Task-vector cosine — layer {layer}"
        _ui.show_figure(plots.cosine_heatmap(matrix, view["labels"], title=_titled(view, title), presentation=presentation),
                        "cosine_heatmap", f"interference_cosine_{view['key']}", reserved=STAGE_RESERVED,
                        least=STAGE_LEAST)

# ----------------------------------------------------------------------------------------------
# 4. TIES sign conflicts

_section(4)
_subheader("TIES sign conflicts per layer")
_section_lines("signs", telling.signs([
    (v["label"], {k: x["sign_conflict_rate"] for k, x in v["metrics"]["layers"].items()},
     metrics.chance_sign_conflict_rate(len(v["names"]), float(density))) for v in good]))
for column, view in zip(_columns(), good):
    with column:
        _heading(view)
        rates = {k: v["sign_conflict_rate"] for k, v in view["metrics"]["layers"].items()}
        title = "Sign conflicts per layer" + (f" (density {density:g})" if density < 1.0 else "")
        count = len(view["names"])
        chance = metrics.chance_sign_conflict_rate(count, float(density))  # for this many adapters, this trim
        _ui.show_figure(plots.sign_conflicts_by_layer(rates, chance=chance, adapters=count, title=_short(view, title),
                                                      presentation=presentation),
                        "sign_conflicts_by_layer", f"interference_signs_{view['key']}", reserved=STAGE_RESERVED,
                        least=STAGE_LEAST)

# ----------------------------------------------------------------------------------------------
# Shared by the two sections that need the base model


def _untasked(adapters: Sequence[Adapter]) -> list[str]:
    return [a.name for a in adapters if not a.task]


def _row_labels(adapters: Sequence[Adapter]) -> list[str]:
    """Task names for the rows; an adapter's name is added where two adapters share a task."""
    tasks = [a.task for a in adapters]
    return [t if tasks.count(t) == 1 else f"{t} ({a.name})" for t, a in zip(tasks, adapters)]


shown_adapters = [a for v in good for a in v["adapters"]]
entry_of = {e.name: e for v in good for e in v["entries"]}  # an adapter's entry: its evaluation file
base_model = ui_settings.base_model  # the sidebar's: every adapter listed here was made for it
base_problem = _ui.base_model_status(base_model)[1] if _ui.base_model_status(base_model)[0] is None else None
untasked = _untasked(shown_adapters)

# ----------------------------------------------------------------------------------------------
# 5. OSRM's data-parameter interference (task × adapter)

_section(5)
_subheader("Data-parameter interference (OSRM)")
_section_lines("dpi")
_caption(  # on stage under the chart, as the other sentences
    "How strongly adapter j's update answers task i's inputs, ‖ΔWⱼXᵢᵀ‖ ÷ ‖ΔWᵢXᵢᵀ‖, with Xᵢ the base model's "
    f"inputs to each adapted module over up to {samples} {SPLITS[split]} of task i (one row per text by default), "
    "averaged over the modules shown."
    + (" Tasks with an evaluation file (Adapters page) read its prompts; the split does not apply to them."
       if any(e.eval_file is not None for e in entry_of.values()) else "")
)
# (base, task, split, samples, targets, with second moments) → {module: ModuleFeatures}
features_cache: dict = state.setdefault("interference_features_cache", {})
cross_disk = _warm.disk_cache(ui_settings.workspace)  # the workspace's measure cache (merging.store.measure_cache)
DPI_KIND = "interference_dpi"


def _dpi_disk_key(key: tuple) -> str:
    base, split_, samples_, targets_, inputs_, versions = key
    return MeasureCache.key(DPI_KIND, base, split=split_, samples=samples_, targets=list(targets_), inputs=inputs_,
                            versions=[list(v) for v in versions])


dpi_cache: dict = state.setdefault("interference_dpi_cache", {})  # (base, split, ..., versions) → {layer: matrix}
targets = tuple(sorted({m.rsplit(".", 1)[-1] for a in shown_adapters for m in a.modules}))
layer_choice, inputs = "all", "means"
if not presentation:
    left, right = st.columns(2)
    layer_choice = left.radio(
        "Modules averaged", ["All layers", "The chosen layer"], horizontal=True, key="interference_dpi_scope",
    )
    layer_choice = "all" if layer_choice == "All layers" else layer
    inputs = right.radio(
        "Task inputs Xᵢ", ["means", "tokens"], horizontal=True, key="interference_dpi_inputs",
        format_func={"means": "one row per text (its token mean)", "tokens": "every token"}.get,
        help="One row per text is what OSRM's initialisation keeps each A away from; every token is what its "
        "covariance variant (osrm-cov) minimises, and needs a d_in × d_in second moment per module and task.",
    )


def _cached_features(task: str) -> dict | None:
    """A task's features fit for the chosen inputs: ones with second moments also serve per-text means."""
    key = (base_model, task, split, samples, targets)
    return features_cache.get((*key, True)) or (features_cache.get((*key, False)) if inputs == "means" else None)


def _feature_work(lab, by_task: dict[str, Adapter], split: str, samples: int, targets: tuple[str, ...], moments: bool):
    """Collect the base model's module inputs for each task's texts (the forward passes)."""
    tasks = list(by_task)

    def work(progress):
        collected = {}
        for index, (task, adapter) in enumerate(by_task.items()):
            progress(index, len(tasks), f"{task}: loading texts")
            texts = catalog.task_texts(adapter, entry_of[adapter.name], split, lab.tokenizer)[:samples]

            def report(done, total, what, index=index, task=task):
                progress(index * total + done, len(tasks) * total, f"{task}: {what}")

            collected[task] = lab.input_features(texts, targets, covariance=moments, progress=report)
        return collected

    return work


finished = _ui.take_job_result(FEATURES_JOB)
if finished is not None:
    if finished.error:
        state["interference_features_error"] = finished.error
    else:
        state.pop("interference_features_error", None)
        job_base, job_split, job_samples, job_targets, job_moments = state.pop("interference_features_for", (None,) * 5)
        for task, features in finished.result.items():
            features_cache[(job_base, task, job_split, job_samples, job_targets, job_moments)] = features
        st.toast(f"Collected input features in {finished.seconds:.1f} s.")

if base_problem:
    st.error(f"Cannot run the base model: {base_problem}")
elif untasked:
    st.error("These adapters do not say which task they were trained on, so they have no inputs: "
             f"{', '.join(untasked)}. Attach an evaluation file to each on the Adapters page.")
else:
    by_task: dict[str, Adapter] = {}
    for adapter in shown_adapters:
        by_task.setdefault(adapter.task, adapter)
    need = {t: a for t, a in by_task.items() if _cached_features(t) is None}
    # Computed before, by this session, another, or an earlier server: the matrices are on disk
    # (merging.store.measure_cache), so a reload shows them without the forward passes.
    dpi_keys = {view["key"]: (base_model, split, samples, targets, inputs, view["versions"]) for view in good}
    for dpi_key in dpi_keys.values():
        if dpi_key not in dpi_cache:
            kept = cross_disk.get(DPI_KIND, _dpi_disk_key(dpi_key))
            if kept is not None:
                dpi_cache[dpi_key] = {layer_key: torch.tensor(rows) for layer_key, rows in kept.items()}
    if all(k in dpi_cache for k in dpi_keys.values()):
        need = {}
    running = _ui.job_running(FEATURES_JOB)
    if need and not running:
        if st.button(
            f"Compute data-parameter interference ({len(need)} task(s) × up to {samples} texts through the "
            "base model)",
            type="primary", key="interference_features_run",
        ):
            try:
                lab = _ui.lab_for(base_model, ui_settings.device)  # cached; loads in the page's thread
                moments = inputs == "tokens"
                state["interference_features_for"] = (base_model, split, samples, targets, moments)
                work = _feature_work(lab, need, split, samples, targets, moments)
                _ui.start_job(FEATURES_JOB, "Collecting input features", work)
                running = True
            except Exception as err:
                st.error(_ui.friendly_error(err))
    _ui.show_job_progress(FEATURES_JOB)
    if state.get("interference_features_error"):
        st.error(state["interference_features_error"])
    if not need:
        matrices: dict[str, object] = {}
        for view in good:
            key = (base_model, split, samples, targets, inputs, view["versions"])
            try:
                if key not in dpi_cache:
                    features = {a.task: _cached_features(a.task) for a in view["adapters"]}
                    dpi_cache[key] = metrics.interference_by_layer(view["adapters"], features, inputs)
                    cross_disk.put(DPI_KIND, _dpi_disk_key(key),
                                   {layer_key: _as_rows(m) for layer_key, m in dpi_cache[key].items()})
                matrices[view["key"]] = dpi_cache[key].get(layer_choice)
            except Exception as err:
                matrices[view["key"]] = err
        _section_lines(None, telling.dpi([(v["label"], _as_rows(matrices[v["key"]])) for v in good
                                           if matrices.get(v["key"]) is not None
                                           and not isinstance(matrices[v["key"]], Exception)]))
        # One colour scale for the standard and the OSRM heatmap, so equal colours mean equal ratios.
        shared = plots.interference_decades(*[m for m in matrices.values() if m is not None
                                              and not isinstance(m, Exception)])
        for column, view in zip(_columns(), good):
            with column:
                _heading(view)
                matrix = matrices[view["key"]]
                if isinstance(matrix, Exception):
                    st.error(_ui.friendly_error(matrix))
                    continue
                if matrix is None:
                    st.info(f"These adapters adapt nothing in layer {layer_choice}.")
                    continue
                where = "mean over all layers" if layer_choice == "all" else f"layer {layer_choice}"
                figure = plots.interference_heatmap(
                    matrix, _row_labels(view["adapters"]), view["labels"],
                    title=_short(view, f"Data-parameter interference — {where}"), presentation=presentation, decades=shared,
                )
                _ui.show_figure(figure, "interference_heatmap", f"interference_dpi_{view['key']}",
                                reserved=STAGE_RESERVED, least=STAGE_LEAST)
    elif not running:
        st.info("Press the button to run each task's texts through the base model; the result is kept in "
                "the workspace (a reload or a restarted server shows it at once).")

# ----------------------------------------------------------------------------------------------
# 6. Cross-task accuracy (forward passes)

_section(6)
_subheader("Cross-task accuracy")
_section_lines("cross")
if _ui.base_model_status(base_model)[0] != "causal":  # a causal LM has no task heads: the info below says where to look
    _caption("Each adapter's body scored on every task with that task's own head: a bright diagonal and dark "
             "off-diagonal mean each adapter helps only its own task.")
cross_cache: dict = state.setdefault("interference_cross_cache", {})  # (base, versions) → cross_task_matrix
# The server's warm-up scored the default sets already (pages/_warm.py): every session starts with them.
for warm_key, warm_matrix in list(_warm.cross_task_results().items() if _warm.enabled() else ()):
    cross_cache.setdefault(warm_key, warm_matrix)
# ... and what was scored before, by this server or an earlier one, is on disk (merging.store.measure_cache).
for view in good:
    if (base_model, view["versions"]) not in cross_cache:
        kept = _warm.stored_cross_task(cross_disk, base_model, view["versions"])
        if kept is not None:
            cross_cache[(base_model, view["versions"])] = kept


def _cross_work(lab, jobs: list[tuple[tuple, list[Adapter]]]):
    def work(progress):
        results = {}
        for index, (key, adapters) in enumerate(jobs):
            progress(index, len(jobs), f"scoring {len(adapters)} adapters on their tasks")
            with lab.lock:
                lab.prepare(adapters)
                results[key] = cross_task_matrix(lab.evaluator, adapters)
        progress(len(jobs), len(jobs), "done")
        return results

    return work


finished = _ui.take_job_result(CROSS_JOB)
if finished is not None:
    if finished.error:
        state["interference_cross_error"] = finished.error
    else:
        state.pop("interference_cross_error", None)
        cross_cache.update(finished.result)
        for (model, versions), matrix in finished.result.items():
            _warm.store_cross_task(cross_disk, model, versions, matrix)

if base_problem:
    st.error(f"Cannot run the base model: {base_problem}")
elif _ui.base_model_status(base_model)[0] == "causal":
    st.info("Scored per task on the Merge page for causal LMs (exact match and completion loss of the base, each "
            "adapter and the merge); this matrix needs each classification task's own head.")
elif untasked:
    st.error(f"These adapters do not say which task they were trained on: {', '.join(untasked)}.")
else:
    pending = [((base_model, v["versions"]), v["adapters"]) for v in good
               if (base_model, v["versions"]) not in cross_cache]
    running = _ui.job_running(CROSS_JOB)
    if pending and not running:
        if st.button("Score every adapter on every task", key="interference_cross_run"):
            try:
                lab = _ui.lab_for(base_model, ui_settings.device)
                _ui.start_job(CROSS_JOB, "Scoring adapters across tasks", _cross_work(lab, pending))
                running = True
            except Exception as err:
                st.error(_ui.friendly_error(err))
    _ui.show_job_progress(CROSS_JOB)
    if state.get("interference_cross_error"):
        st.error(state["interference_cross_error"])
    if any((base_model, v["versions"]) in cross_cache for v in good):
        _section_lines(None, telling.cross([(v["label"], cross_cache[(base_model, v["versions"])]) for v in good
                                               if (base_model, v["versions"]) in cross_cache]))
        for column, view in zip(_columns(), good):
            with column:
                _heading(view)
                result = cross_cache.get((base_model, view["versions"]))
                if result is None:
                    st.info("Not scored yet.")
                    continue
                # row names without the "-standard" they share (the column's heading says it), as on the other heatmaps
                shown = {**result, "adapters": plots.shared_suffix_dropped(result.get("adapters") or [])}
                _ui.show_figure(plots.cross_task_heatmap(shown, title=_short(view, "Each adapter on every task"), presentation=presentation),
                                "cross_task_heatmap", f"interference_cross_{view['key']}", reserved=STAGE_RESERVED,
                                least=STAGE_LEAST)

# ----------------------------------------------------------------------------------------------
# 7–8. The demo zoo over its training seeds (scripts/seed_study.py): OSRM's mechanism, DO-Merging's claims

zoo_study = _ui.zoo_study()

_section(7)
_subheader("Where OSRM's effect comes from (demo zoo)")
# the chart first, sized to the window under the heading; the sentence and which way is good below it
FIRST_CHART_RESERVED = 340
if isinstance(zoo_study, str):
    st.info(zoo_study)
else:
    _ui.show_figure(plots.osrm_mechanism(zoo_study.get("ablations") or {}, presentation=presentation),
                    "osrm_mechanism", "interference_osrm_mechanism", reserved=FIRST_CHART_RESERVED, least=420)
    _section_lines("mechanism", study_story.takeaway_mechanism(zoo_study.get("ablations") or {}))
    summary = zoo_study["summary"]
    best = best_predictor(summary)
    measure = best[0] if best else "feature_shift"
    st.markdown(f"**{study_story.headline_why(summary)}**")
    _ui.show_figure(plots.why_scatter(summary["why"]["points"], measure, summary["why"].get(measure),
                                      presentation=presentation, log_x=measure == "feature_shift"),
                    "why_scatter", "interference_why", least=520)  # under the first screen: room for its two-line titles
    st.caption(study_story.takeaway_why(summary))

_section(8)
_subheader("Magnitude variance: LoRA vs full fine-tuning (demo zoo)")
if isinstance(zoo_study, str):
    st.info(zoo_study)
else:
    claims = zoo_study["summary"].get("magnitude_variance") or {}
    _ui.show_figure(plots.magnitude_variance_claims(zoo_study.get("full_finetune"), claims.get("points") or [],
                                                    claims.get("correlation"), presentation=presentation),
                    "magnitude_variance_claims", "interference_magnitude_claims", reserved=FIRST_CHART_RESERVED,
                    least=420)  # fmt: skip
    _section_lines("magnitude_claims", study_story.takeaway_magnitude(zoo_study.get("full_finetune"), claims))

_end_sections()
_remember()  # the layer and the scope radios are created below the first call
