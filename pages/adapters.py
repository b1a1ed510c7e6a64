"""Adapters: what is available on the sidebar's base model, look inside one, attach the evaluation
file it is scored on, import one (folder or zip), train a new one (on the demo base model)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from merging import plots
from merging.lab import chance_badges
from merging.models.base import DEMO_BASE_MODEL
from merging.store.workspace import (
    MAX_UNZIPPED_BYTES,
    MAX_ZIP_BYTES,
    WorkspaceError,
    attach_eval_file,
    check_adapter_name,
    describe_adapter_folder,
    detach_eval_file,
    import_adapter_folder,
    import_adapter_zip,
    list_task_files,
    remove_adapter,
    store_task_file,
    task_display_name,
    unique_name,
)
from merging.tasks import list_demo_tasks
from merging.training.pipeline import default_other_tasks, is_task_file, resolve_task, train_task_adapter
from merging.training.trainer import INITS
from pages import _ui

JOB = "adapters-train"
ui_settings = _ui.settings()
workspace = ui_settings.workspace
built_in = _ui.zoo()
zoo_names = [a.name for a in built_in.adapters] if built_in else []
base_model = built_in.base_model if built_in else DEMO_BASE_MODEL

INIT_HELP = {
    "standard": "PEFT's default: random A, B = 0.",
    "osrm": "OSRM: A's rows are the directions the other tasks' inputs use least (per-sample means), "
    "so this adapter barely responds to them; what that changes in a merge is measured on the Tour page.",
    "osrm-cov": "OSRM with the other tasks' token covariance instead of per-sample means.",
}

st.title("Adapters")

# A training that finished since the last run: note the result, select the new adapter below.
finished = _ui.take_job_result(JOB)
if finished is not None:
    if finished.error:
        st.session_state["adapters_train_msg"] = ("error", finished.error)
    else:
        trained = finished.result
        st.session_state["adapters_train_msg"] = (
            "success",
            f"Trained **{trained.folder.name}** ({trained.task}, {trained.init}) in {trained.seconds:.1f} s: "
            f"single-task accuracy {100 * trained.single_task_accuracy:.1f}% "
            f"(majority class {100 * trained.majority_baseline:.1f}%).",
        )
        st.session_state["adapters_inspect"] = trained.folder.name
        if st.session_state.pop("adapters_train_replaced", False):
            _ui.forget_labs()  # the lab caches scores by adapter path

entries = _ui.catalog(workspace)
other_bases = len(_ui.catalog(workspace, every_base_model=True)) - len(entries)


def _show_flash(key: str) -> None:
    """A message left by a callback or a finished job, shown once."""
    message = st.session_state.pop(key, None)
    if message:
        kind, text = message
        (st.success if kind == "success" else st.error)(text)


# ----------------------------------------------------------------------------------------------
# The table


def _percent(value) -> float | None:
    try:
        return None if value is None else round(100 * float(value), 1)
    except (TypeError, ValueError):  # a broken mergescope.json; the adapter is listed under "Needs attention"
        return None


def _remove(name: str) -> None:
    """Delete a workspace adapter (a button's callback): the folder goes, the caches forget it."""
    try:
        remove_adapter(_ui.settings().workspace, name)
    except Exception as err:
        st.session_state["adapters_remove_msg"] = ("error", _ui.friendly_error(err))
        return
    _ui.forget_labs()  # the lab caches scores by adapter path
    _ui._adapter.clear()
    if st.session_state.get("adapters_inspect") == name:
        st.session_state.pop("adapters_inspect", None)
    st.session_state["adapters_remove_msg"] = ("success", f"Removed **{name}** from the workspace.")


causal = _ui.base_model_status(ui_settings.base_model)[0] == "causal"  # the sidebar's model: a causal LM?


def _single_score(entry) -> dict | None:
    """A causal adapter's exact match and loss alone on its attached file (merging.evaluation.single_task);
    None without a file. An error is shown once and the table goes on."""
    if not entry.eval_file:
        return None
    from merging.evaluation.single_task import single_task_score

    try:
        lab = _ui.lab_for(ui_settings.base_model, ui_settings.device)
        adapter = _ui.load_adapter_cached(entry.path)
        return single_task_score(lab, adapter, str(entry.eval_file), task_display_name(entry.eval_file), str(entry.path))
    except (ValueError, OSError) as err:
        st.error(f"{entry.name}: cannot score it on {task_display_name(entry.eval_file)}: {_ui.friendly_error(err)}")
        return None


def _task_of(entry) -> str:
    """The task an adapter is scored on: its attached file's, else the one it records."""
    if entry.eval_file:
        return task_display_name(entry.eval_file)
    return str(entry.task) if entry.task else "—"


rows = []
for entry in entries:
    info = describe_adapter_folder(entry.path)
    row = {
        "Adapter": entry.name,
        "Source": entry.source,
        "Task": _task_of(entry),
        "Init": str(entry.init),
        "Rank": info.get("rank"),
        "Target modules": info.get("target_modules"),
    }
    if causal:  # scored on completions of the attached file: exact match, and the loss beside it
        score = _single_score(entry)
        row["Single-task exact match (%)"] = _percent(score["single"]) if score else None
        row["Single-task loss"] = round(score["loss"], 4) if score and score["loss"] is not None else None
        row["Perplexity"] = round(score["perplexity"], 3) if score and score["perplexity"] is not None else None
    else:
        row["Single-task accuracy (%)"] = _percent(entry.single_task_accuracy)
    row["Learned its task"] = chance_badges.learned_text(entry)
    row["Base model"] = entry.base_model or info.get("base_model")
    row["Evaluation file"] = task_display_name(entry.eval_file) if entry.eval_file else "—"
    rows.append(row)
if rows:
    _ui.show_table(
        pd.DataFrame(rows),
        key="adapters",
        caption="Zoo adapters ship with mergescope; workspace adapters live in "
        f"`{_ui.adapters_folder(workspace)}`. "
        + ("Causal-LM adapters: the single-task exact match and completion loss (nats per token; perplexity = "
           "exp(loss)) are each adapter alone on its attached evaluation file; attach one below to score it."
           if causal else
           "Single-task accuracy is each adapter alone on its own task's evaluation split, scored with its own head.")
        + (f" {other_bases} adapter(s) made for other base models are hidden: choose their base model in the "
           "sidebar to see them." if other_bases else "")
        + f" Learned its task: {chance_badges.RULE}",
    )
    if note := chance_badges.flag_note(entries, "listed here"):
        st.warning(note, icon=chance_badges.ICON)
else:
    st.info(
        f"No adapters for `{ui_settings.base_model}` yet: import one below"
        + (", build the zoo (`python -m merging zoo build`) or train one." if ui_settings.on_zoo_base else ".")
        + (f" {other_bases} adapter(s) made for other base models are hidden (see the sidebar's base model)."
           if other_bases else "")
    )

# Broken workspace adapters (the catalogue's entries with an error): say what is wrong with each, and
# let the user remove it. A broken adapter names no base model, so it is listed whatever the sidebar's.
broken = [e for e in _ui.catalog(workspace, include_broken=True) if not e.usable and e.source == "workspace"]
if broken:
    st.subheader("Needs attention")
    st.caption("These workspace adapters cannot be used as they are. Fix the file named, or remove the adapter.")
    for item in broken:
        left, right = st.columns([5, 1])
        left.error(f"**{item.name}**: {item.error}")
        right.button("Remove", key=f"adapters_remove:{item.name}", on_click=_remove, args=(item.name,))
_show_flash("adapters_remove_msg")

# ----------------------------------------------------------------------------------------------
# Inspect one adapter

st.subheader("Inspect an adapter")
names = [e.name for e in entries]
if names:
    if st.session_state.get("adapters_inspect") not in names:
        st.session_state.pop("adapters_inspect", None)
    chosen = st.selectbox("Adapter", names, key="adapters_inspect")
    entry = _ui.entry_by_name(entries, chosen)
    try:
        adapter = _ui.load_adapter_cached(entry.path)
        summary = adapter.summary()
        columns = st.columns(4)
        columns[0].metric("Task", _task_of(entry) if (entry.eval_file or entry.task) else
                          ("attach a file" if causal else "unknown"),
                          help="The task named after its attached evaluation file." if entry.eval_file else None)
        columns[1].metric("Initialisation", entry.init)
        columns[2].metric("LoRA modules", summary["num_modules"])
        columns[3].metric("Rank", ", ".join(map(str, summary["ranks"])))
        figure = plots.layer_norms(summary, presentation=ui_settings.presentation)
        _ui.show_figure(figure, "layer_norms", key=f"layer-norms-{chosen}")
        details = [f"Folder: `{entry.path}`", f"base model: `{summary['base_model'] or 'not recorded'}`"]
        if summary["labels"]:
            details.append(f"labels: {', '.join(summary['labels'])}")
        if causal:  # a causal LM has no task head: whole tensors it trained (lm_head, embed_tokens) are carried
            if summary["saved_modules"]:
                details.append(f"carries whole trained tensors ({', '.join(summary['saved_modules'])}), merged by the "
                               "recipe's modules_to_save rule")
            details.append("a causal-LM adapter: scored on prompt/completion or chat rows (exact match and loss)"
                           + (f" of {task_display_name(entry.eval_file)}" if entry.eval_file else
                              "; attach an evaluation file below to score it"))
        elif summary["saved_modules"]:
            details.append(f"carries its own head ({', '.join(summary['saved_modules'])})")
        else:
            details.append("no classification head saved: it cannot be scored on a task")
        st.caption(" · ".join(details))
    except Exception as err:  # a folder changed or broken since it was listed: say so, keep the page
        st.error(f"{chosen}: {_ui.friendly_error(err)}")
        if entry.source == "workspace" and not ui_settings.presentation:
            st.button(f"Remove {chosen} from the workspace", key="adapters_remove_inspected",
                      on_click=_remove, args=(chosen,))
else:
    st.caption("Nothing to inspect yet.")

# ----------------------------------------------------------------------------------------------
# The evaluation file each workspace adapter is scored on


def _attach_eval(name: str) -> None:
    """Attach the uploaded file, or the one at the typed path, to adapter `name` (a button's callback)."""
    state = st.session_state
    upload, path = state.get("adapters_eval_upload"), (state.get("adapters_eval_path") or "").strip()
    try:
        if upload is not None:
            stored = attach_eval_file(_ui.settings().workspace, name, upload, file_name=upload.name)
        elif path:
            stored = attach_eval_file(_ui.settings().workspace, name, path)
        else:
            raise WorkspaceError("choose a file to upload or type the path of one")
    except Exception as err:
        state["adapters_eval_msg"] = ("error", _ui.friendly_error(err))
        return
    state["adapters_eval_msg"] = (
        "success", f"**{name}** is now scored on **{task_display_name(stored)}** (kept as `{stored}`).",
    )


def _detach_eval(name: str) -> None:
    detach_eval_file(_ui.settings().workspace, name)
    st.session_state["adapters_eval_msg"] = ("success", f"**{name}** has no evaluation file any more.")


workspace_entries = [e for e in entries if e.source == "workspace"]
if workspace_entries and not ui_settings.presentation:
    st.subheader("Evaluation files")
    st.caption(
        "The file a workspace adapter is scored on, one task per adapter (the task is named after the file). "
        "Causal LMs: JSONL with `prompt` and `completion`, or chat `messages` (the last assistant turn is the "
        "completion); scored by exact match and completion loss. Classification: CSV/JSONL with `text` and "
        "`label`. Merge, Sweep and Interference use these files."
    )
    eval_names = [e.name for e in workspace_entries]
    if st.session_state.get("adapters_eval_adapter") not in eval_names:
        st.session_state.pop("adapters_eval_adapter", None)
    eval_for = st.selectbox("Adapter", eval_names, key="adapters_eval_adapter")
    attached = _ui.entry_by_name(workspace_entries, eval_for).eval_file
    st.caption(f"Now scored on: `{attached}`" if attached else "No evaluation file attached yet.")
    upload_tab, path_tab = st.tabs(["Upload a file", "File on this machine"])
    with upload_tab:
        st.file_uploader("Evaluation file", type=["jsonl", "csv"], key="adapters_eval_upload")
    with path_tab:
        st.text_input("Path of the file", key="adapters_eval_path", placeholder="/path/to/eval.jsonl")
    left, right = st.columns([1, 1])
    left.button("Attach", key="adapters_eval_attach", on_click=_attach_eval, args=(eval_for,), type="primary")
    if attached:
        right.button("Detach", key="adapters_eval_detach", on_click=_detach_eval, args=(eval_for,))
    _show_flash("adapters_eval_msg")

# ----------------------------------------------------------------------------------------------
# Import


def _import_folder() -> None:
    state = st.session_state
    try:
        folder = import_adapter_folder(
            state.get("adapters_import_path", ""),
            _ui.settings().workspace,
            name=(state.get("adapters_import_name") or "").strip() or None,
            overwrite=bool(state.get("adapters_import_overwrite")),
            reserved=zoo_names,
        )
    except Exception as err:
        state["adapters_import_msg"] = ("error", _ui.friendly_error(err))
        return
    _imported(folder, bool(state.get("adapters_import_overwrite")))


def _import_zip() -> None:
    state = st.session_state
    upload = state.get("adapters_zip")
    if upload is None:
        state["adapters_import_msg"] = ("error", "Choose a zip file first.")
        return
    try:
        folder = import_adapter_zip(
            upload,
            _ui.settings().workspace,
            name=(state.get("adapters_zip_name") or "").strip() or None,
            overwrite=bool(state.get("adapters_zip_overwrite")),
            reserved=zoo_names,
            file_name=upload.name,
        )
    except Exception as err:
        state["adapters_import_msg"] = ("error", _ui.friendly_error(err))
        return
    _imported(folder, bool(state.get("adapters_zip_overwrite")))


def _imported(folder, replaced: bool) -> None:
    if replaced:
        _ui.forget_labs()  # the lab caches scores by adapter path
    st.session_state["adapters_inspect"] = folder.name
    st.session_state["adapters_import_msg"] = ("success", f"Imported **{folder.name}** into `{folder}`.")


if not ui_settings.presentation:
    st.subheader("Import an adapter")
    st.caption(
        "A PEFT LoRA folder: `adapter_config.json` + `adapter_model.safetensors` (pickled `.bin` weights are "
        "loaded safely and converted). It is checked, then copied into the workspace."
    )
    from_folder, from_zip = st.tabs(["Folder on this machine", "Upload a zip"])
    with from_folder:
        st.text_input("Adapter folder", key="adapters_import_path", placeholder="/path/to/my-adapter")
        left, right = st.columns([2, 1])
        left.text_input("Name in the workspace (optional)", key="adapters_import_name",
                        help="Default: the folder's name.")
        right.checkbox("Replace an adapter of that name", key="adapters_import_overwrite")
        st.button("Import folder", key="adapters_import_folder", on_click=_import_folder)
    with from_zip:
        st.file_uploader(
            "Adapter zip",
            type=["zip"],
            key="adapters_zip",
            help=f"One adapter folder, zipped; at most {MAX_ZIP_BYTES // 1024**2} MiB, "
            f"{MAX_UNZIPPED_BYTES // 1024**2} MiB unpacked. Links and paths outside the folder are refused.",
        )
        left, right = st.columns([2, 1])
        left.text_input("Name in the workspace (optional)", key="adapters_zip_name",
                        help="Default: the zipped folder's name.")
        right.checkbox("Replace an adapter of that name", key="adapters_zip_overwrite")
        st.button("Import zip", key="adapters_import_zip", on_click=_import_zip)
    _show_flash("adapters_import_msg")

# ----------------------------------------------------------------------------------------------
# Train


def _train_work(spec: dict):
    def work(progress):
        return train_task_adapter(progress=progress, **spec)

    return work


running = _ui.job_running(JOB)
if not ui_settings.presentation and not ui_settings.on_zoo_base:
    st.subheader("Train a new adapter")
    st.caption(
        f"Training here fine-tunes classification adapters on the demo base model `{base_model}`; choose it in the "
        f"sidebar to train. Adapters for `{ui_settings.base_model}` are trained elsewhere and imported above."
    )
elif not ui_settings.presentation:
    st.subheader("Train a new adapter")
    st.caption(
        f"Fine-tunes a LoRA adapter and its classification head on `{base_model}` (the zoo's base model), "
        "then scores it on the task's evaluation split. Runs in the background; Cancel keeps nothing."
    )
    demo_tasks = list_demo_tasks()
    available = [t.name for t in demo_tasks if t.available]
    stored_files = [str(p) for p in list_task_files(workspace)]
    sources = ["Demo task", "Upload CSV/JSONL"] + (["Task file in the workspace"] if stored_files else [])
    source = st.radio("Training data", sources, horizontal=True, key="adapters_train_source")

    task_spec: str | None = None
    preview = None
    if source == "Demo task":
        if not available:
            st.error("No demo task data is installed: run `scripts/install_data.sh`.")
        else:
            task_spec = st.selectbox("Task", available, key="adapters_train_task")
            described = next(t for t in demo_tasks if t.name == task_spec)
            st.caption(f"{described.description} Labels: {', '.join(described.labels)}.")
    elif source == "Upload CSV/JSONL":
        upload = st.file_uploader(
            "Task file", type=["csv", "jsonl"], key="adapters_train_file",
            help="A `text` column and a `label` column (CSV with a header line, or one JSON object per line).",
        )
        if upload is not None:
            try:
                task_spec = str(store_task_file(upload, upload.name, workspace))
            except Exception as err:
                st.error(_ui.friendly_error(err))
        preview = st.container()
    else:
        task_spec = st.selectbox(
            "Task file", stored_files, key="adapters_train_stored", format_func=lambda p: task_display_name(p)
        )
        preview = st.container()
    task_label = task_display_name(task_spec) if task_spec and is_task_file(task_spec) else task_spec

    init = st.radio(
        "Initialisation", INITS, horizontal=True, key="adapters_train_init",
        help=" ".join(f"{k}: {v}" for k, v in INIT_HELP.items()),
    )
    st.caption(INIT_HELP[init])
    other_tasks: list[str] = []
    if init != "standard":
        candidates = available + [f for f in stored_files if f != task_spec]
        if built_in:
            default = [t.name for t in built_in.tasks if t.name != task_label and t.name in candidates]
        else:
            default = default_other_tasks(task_label or "", available)
        other_tasks = st.multiselect(
            "Tasks this adapter must not disturb",
            candidates,
            default=default,
            key=f"adapters_train_others:{task_label}",
            format_func=lambda s: f"{task_display_name(s)} (file)" if is_task_file(s) else s,
            help="OSRM picks A from the base model's inputs on these tasks: the adapters you plan to merge "
            "this one with. Default: the zoo's other tasks.",
        )

    zoo_data = built_in.data if built_in else {}
    with st.expander("Training settings"):
        c1, c2, c3, c4 = st.columns(4)
        rank = c1.number_input("Rank", 1, 256, 8, key="adapters_train_rank")
        alpha = c2.number_input("Alpha", 1.0, 1024.0, 16.0, key="adapters_train_alpha")
        epochs = c3.number_input("Epochs", 1, 50, 2, key="adapters_train_epochs")
        lr = c4.number_input("Learning rate", 1e-5, 1.0, 1e-3, format="%.5f", key="adapters_train_lr")
        c1, c2, c3, c4 = st.columns(4)
        train_size = c1.number_input("Training examples", 10, 100_000, int(zoo_data.get("train_size", 1000)),
                                     key="adapters_train_size")
        eval_size = c2.number_input("Evaluation examples", 4, 10_000, int(zoo_data.get("eval_size", 200)),
                                    key="adapters_eval_size")
        seed = c3.number_input("Seed", 0, 2**31 - 1, int(zoo_data.get("seed", 0)), key="adapters_train_seed")
        osrm_samples = c4.number_input("OSRM samples per task", 2, 10_000, 100, key="adapters_osrm_samples",
                                       disabled=init == "standard")
        freeze_A = st.checkbox("Keep OSRM's A fixed (train B and the head only)", key="adapters_freeze_a",
                               disabled=init == "standard")
        if built_in:
            st.caption(
                f"The zoo was built with evaluation examples {zoo_data.get('eval_size', 200)} and seed "
                f"{zoo_data.get('seed', 0)}: keep them so this adapter's scores compare with the zoo's."
            )

    if preview is not None and task_spec:
        with preview:
            try:
                data, _ = resolve_task(task_spec, train_size=int(train_size), eval_size=int(eval_size), seed=int(seed))
                counts = data.class_counts("train")
                st.caption(
                    f"Task **{data.name}**: {len(data.train_texts)} training and {len(data.eval_texts)} evaluation "
                    f"examples; labels {', '.join(f'{k} ({v})' for k, v in counts.items())}."
                )
            except Exception as err:
                st.error(_ui.friendly_error(err))
                task_spec = None

    suggested = unique_name(workspace, f"{task_label or 'adapter'}-{init}", reserved=zoo_names)
    previous = st.session_state.get("_adapters_name_suggested")
    if previous != suggested:
        if st.session_state.get("adapters_train_name") in (None, "", previous):
            st.session_state["adapters_train_name"] = suggested
        st.session_state["_adapters_name_suggested"] = suggested
    left, right = st.columns([2, 1])
    name = left.text_input("Name", key="adapters_train_name")
    overwrite = right.checkbox("Replace an adapter of that name", key="adapters_train_overwrite")

    if st.button("Train", type="primary", key="adapters_train", disabled=running or not task_spec):
        try:
            name = check_adapter_name(name)
            out = _ui.adapters_folder(workspace) / name
            if name in zoo_names:
                raise WorkspaceError(f"the name {name!r} is taken by a built-in zoo adapter; choose another name")
            if out.exists() and not overwrite:
                raise WorkspaceError(f"an adapter named {name!r} already exists; choose another name or replace it")
            if init != "standard" and not other_tasks:
                raise WorkspaceError(f"{init} needs at least one task this adapter must not disturb")
            spec = {
                "task": task_spec,
                "out": out,
                "init": init,
                "other_tasks": other_tasks if init != "standard" else None,
                "base_model": base_model,
                "rank": int(rank),
                "alpha": float(alpha),
                "epochs": int(epochs),
                "lr": float(lr),
                "train_size": int(train_size),
                "eval_size": int(eval_size),
                "seed": int(seed),
                "osrm_samples": int(osrm_samples),
                "freeze_A": bool(freeze_A) and init != "standard",
                "device": ui_settings.device,
                "overwrite": bool(overwrite),
            }
            st.session_state["adapters_train_replaced"] = out.exists()
            _ui.start_job(JOB, f"Training {name}", _train_work(spec))
            running = True
        except Exception as err:
            st.error(_ui.friendly_error(err))

_ui.show_job_progress(JOB)
_show_flash("adapters_train_msg")
