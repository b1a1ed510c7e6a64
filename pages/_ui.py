"""What every page shares: settings from the sidebar, the cached lab and zoo, the adapter catalogue
(from merging.lab.catalog), background jobs with progress and Cancel, and figure/table display with
downloads. The Recipe ↔ widgets codec of the Merge and Sweep pages is in pages/_recipe_ui.py.

Pages arrange widgets and call into `merging/`; this module is the glue, with no maths in it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from merging.adapters.lora import Adapter, AdapterError, adapter_version, load_adapter
from merging.core import jobs
from merging.lab.catalog import (  # noqa: F401 - used by the other pages
    Entry,
    adapters_folder,
    base_model_choices,
    entry_by_name,
    for_base_model,
    twin_of,
    usable,
)
from merging.lab.catalog import catalog as adapter_catalog
from merging.lab.catalog import default_base_model as zoo_base_model
from merging.lab.lab import Lab
from merging.store.measure_cache import MeasureCache
from merging.store.runs import RunStore
from merging.store.workspace import clean_workspace
from merging.training.zoo import REPO_ZOO, Zoo, ZooError, load_zoo
from pages import _stage


def app_navigation_only() -> None:
    """Make app.py's st.navigation the only navigation, from the server's first request on.

    Why: a folder named pages/ beside the main script makes Streamlit (1.67) treat the app as a
    version-1 multipage app until some script calls st.navigation: a deep link (/tour?present=1) as
    the first request of a fresh server then runs pages/tour.py *without* app.py — no sidebar
    settings, no presentation mode — and lists every file of pages/ as a page, helpers (_ui, _warm)
    included. The flag Streamlit keeps for this is process-wide; `mergescope dashboard`
    (pages/_server.py) clears it before the server starts, and importing this module clears it
    under a plain `streamlit run app.py`. There the server's very first run is still the old kind,
    as the flag was read before any of our code ran: `settings()` then reruns it through app.py
    (`_rerun_through_app`).
    """
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False


app_navigation_only()


def _rerun_through_app() -> None:
    """A page that Streamlit's old multipage mode ran on its own (see app_navigation_only) starts the
    run again, which now goes through app.py: its navigation, sidebar and presentation mode, the same
    page and the same link (a rerun keeps the page and the query string).

    The old mode is recognised by its list of pages, every file of pages/: only it lists our helper
    modules (_ui.py, _warm.py, ...) as pages; app.py's st.navigation never does."""
    ctx = get_script_run_ctx()
    if ctx is None:
        return
    listed = [str(page.get("script_path") or "") for page in ctx.pages_manager.get_pages().values()]
    if any(Path(path).name.startswith("_") for path in listed):
        st.rerun()

# The workspace a new session starts with; MERGESCOPE_WORKSPACE sets another (tests, demos).
DEFAULT_WORKSPACE = Path(os.environ.get("MERGESCOPE_WORKSPACE", "workspace"))
# The base model a new session starts with: MERGESCOPE_BASE_MODEL (a folder or a cached Hub id),
# else the built-in zoo's (the demo MiniLM).
BASE_MODEL_ENV = "MERGESCOPE_BASE_MODEL"
OTHER_BASE_MODEL = "Another folder or cached Hub id…"


# ----------------------------------------------------------------------------------------------
# Settings chosen in the sidebar (app.py)


@dataclass(frozen=True)
class Settings:
    workspace: Path
    device: str
    presentation: bool
    base_model: str = ""  # the model the pages work on: adapters are listed and scored on it

    @property
    def on_zoo_base(self) -> bool:
        """Whether the chosen base model is the built-in zoo's (its demo tasks and training apply)."""
        from merging.lab.catalog import same_base_model

        return same_base_model(self.base_model, zoo_base_model(zoo()))


def session_workspace() -> Path:
    """The session's workspace folder (the sidebar's, else the default one)."""
    return Path(st.session_state.get("workspace", str(DEFAULT_WORKSPACE))).expanduser()


def settings() -> Settings:
    _rerun_through_app()  # the settings are app.py's sidebar: a page never runs without it
    state = st.session_state
    workspace = session_workspace()
    _clean_workspace_once(str(workspace))
    return Settings(
        workspace=workspace,
        device=state.get("device", "auto"),
        presentation=bool(state.get("presentation", False)),
        base_model=chosen_base_model(),
    )


def default_base_model() -> str:
    return os.environ.get(BASE_MODEL_ENV, "").strip() or zoo_base_model(zoo())


def base_model_options(workspace: Path) -> list[str]:
    """The sidebar's choices: the default, each base model the adapters name, then "another"."""
    return base_model_choices(adapter_catalog(workspace, zoo()), default_base_model()) + [OTHER_BASE_MODEL]


@st.cache_data(show_spinner=False, ttl=30)
def base_model_status(base_model: str) -> tuple[str | None, str]:
    """(kind, where it was found) or (None, why it cannot be used): the sidebar's line under the chooser."""
    from merging.lab.catalog import base_model_summary

    try:
        kind, folder = base_model_summary(base_model)
    except (ValueError, OSError) as err:
        return None, str(err)
    return kind, str(folder)


def recipe_for_run(recipe, entries: list[Entry]):
    """The recipe as the dashboard runs and stores it: the sidebar's base model (when not the
    default) and each adapter's attached evaluation file written in (merging.lab.catalog), so the
    stored recipe scores the same way from the CLI."""
    from merging.lab.catalog import with_base_model, with_eval_files

    return with_eval_files(with_base_model(recipe, chosen_base_model(), zoo_base_model(zoo())), entries)


def choose_base_model_of(recipe) -> bool:
    """Make the sidebar show the base model a recipe runs on (Reopen in Merge of a run made on
    another model, a share link): the recipe's `base_model`, else the one its adapters name.
    True when the sidebar must change: it does on the next run (st.rerun() to make it now)."""
    from merging.lab.catalog import entry_for, same_base_model

    wanted = recipe.base_model
    if not wanted:
        every = adapter_catalog(settings().workspace, zoo())
        found = [entry_for(every, ref.name, ref.path) for ref in recipe.adapters]
        wanted = next((e.base_model for e in found if e is not None and e.base_model), None)
    if not wanted or same_base_model(wanted, chosen_base_model()):
        return False
    options = base_model_options(settings().workspace)
    listed = next((o for o in options if o != OTHER_BASE_MODEL and same_base_model(o, wanted)), None)
    # the sidebar's widgets are drawn already in this run: app.py applies the choice on the next one
    st.session_state["_base_model_pending"] = (listed or OTHER_BASE_MODEL, None if listed else wanted)
    return True


def apply_pending_base_model() -> None:
    """Before the sidebar draws its chooser: take a choice made by choose_base_model_of."""
    pending = st.session_state.pop("_base_model_pending", None)
    if pending:
        st.session_state["base_model"] = pending[0]
        if pending[1] is not None:
            st.session_state["base_model_other"] = pending[1]


def chosen_base_model() -> str:
    """The sidebar's base model: a listed one, or the folder / Hub id typed in under "another"."""
    state = st.session_state
    choice = state.get("base_model") or default_base_model()
    if choice == OTHER_BASE_MODEL:
        return (state.get("base_model_other") or "").strip() or default_base_model()
    return choice


@st.cache_resource(show_spinner=False)
def _clean_workspace_once(workspace: str) -> list[str]:
    """Once per server and workspace: remove what writes killed mid-way left (merging.store.workspace)."""
    return clean_workspace(workspace)


def run_store(workspace: Path) -> RunStore:
    """The workspace's run store; a store that cannot be used says so on the page (runs not stored)."""
    store = RunStore(workspace / "runs.sqlite")
    if store.problem and get_script_run_ctx() is not None:  # not from a background job's thread
        st.warning(store.problem[0].upper() + store.problem[1:] + ".", icon=":material/warning:")
    return store


# ----------------------------------------------------------------------------------------------
# Cached resources: loaded once per server, shared by every tab


def lab_for(base_model: str, device: str, workspace: str | os.PathLike | None = None) -> Lab:
    """The lab of a base model and device, shared by every tab on the same workspace, whose scores
    are kept in that workspace's measure cache (merging.store.measure_cache): a recipe merged before,
    by this server or an earlier one, is not scored again. `workspace`: the session's unless given
    (the server's warm-up names the default one)."""
    folder = (session_workspace() if workspace is None else Path(workspace).expanduser()).resolve()
    return _lab(base_model, device, str(folder))


@st.cache_resource(show_spinner="Loading the base model…")
def _lab(base_model: str, device: str, workspace: str) -> Lab:
    return Lab(base_model, device=device, measures=MeasureCache.in_workspace(workspace))


def forget_labs() -> None:
    """Drop the loaded labs (and the scores they hold in memory): after adapters were added or removed."""
    _lab.clear()


def warm_up_in_background(lab: Lab, paths: list[Path]) -> None:
    """Once per Lab: score the given adapters alone in a daemon thread (merging.core.jobs, Lab.warm_up)."""
    jobs.warm_up_in_background(lab, lambda: [load_adapter_cached(path) for path in paths])


@st.cache_resource(show_spinner=False)
def _zoo(folder: str) -> Zoo:
    return load_zoo(folder)


def zoo_folder() -> Path:
    """The built-in zoo, or another one named by MERGESCOPE_ZOO (tests use a small one)."""
    return Path(os.environ.get("MERGESCOPE_ZOO", str(REPO_ZOO)))


def zoo() -> Zoo | None:
    try:
        return _zoo(str(zoo_folder()))
    except ZooError:
        return None


def zoo_study() -> dict | str:
    """The built-in zoo's seed study (merging.analysis.seed_study), or a sentence saying why there is none."""
    from merging.analysis.seed_study import StudyError, load_study

    try:
        return load_study(zoo_folder())
    except StudyError as err:
        return str(err)
    except OSError as err:
        return f"The seed study could not be read: {err}"


@st.cache_resource(show_spinner=False, max_entries=64)
def _adapter(path: str, version: str) -> Adapter:
    return load_adapter(path, name=Path(path).name)


def load_adapter_cached(path: Path) -> Adapter:
    """Load once per folder version (the weights file's mtime is part of the key)."""
    return _adapter(str(path), adapter_version(path))


def load_adapter_as(path: Path, _name: str) -> Adapter:
    """catalog.resolve_inputs' loader: the cached adapter (named after its folder, as in the catalogue)."""
    return load_adapter_cached(path)


# ----------------------------------------------------------------------------------------------
# The adapter catalogue: the built-in zoo plus the workspace's adapters (merging.lab.catalog)


def catalog(workspace: Path, include_broken: bool = False, every_base_model: bool = False) -> list[Entry]:
    """The zoo's and the workspace's adapters on the sidebar's base model (or on any, when asked);
    broken ones (with their error) only when asked."""
    entries = adapter_catalog(workspace, zoo())
    if not every_base_model:
        entries = for_base_model(entries, chosen_base_model())
    return entries if include_broken else usable(entries)


def warn_broken(entries: list[Entry]) -> None:
    """One warning naming the adapters that cannot be used, and why."""
    broken = [e for e in entries if not e.usable]
    if broken:
        st.warning(
            "Cannot be used (remove or fix on the Adapters page): "
            + "; ".join(f"{e.name} — {e.error}" for e in broken)
        )


# ----------------------------------------------------------------------------------------------
# Background jobs: heavy work runs in a thread, the page polls it, Cancel stops it


Job = jobs.Job  # the pages' name for it


def start_job(
    key: str, label: str, work: Callable[[Callable[[int, int, str], None]], Any], job: Job | None = None
) -> Job:
    """Run `work(progress)` in a thread (merging.core.jobs); its result or error lands on the Job in session state.

    The work itself must not call Streamlit. Pass `job` when the work publishes a `partial` result on it.
    """
    job = job or Job(label)
    st.session_state[f"job:{key}"] = job
    return jobs.start_job(key, job, work)


def current_job(key: str) -> Job | None:
    return st.session_state.get(f"job:{key}")


def job_running(key: str) -> bool:
    job = current_job(key)
    return job is not None and not job.finished


def show_job_progress(key: str, show_partial: Callable[[Any], None] | None = None) -> None:
    """While a job runs: a progress bar and a Cancel button, refreshed a few times a second, and
    `show_partial(job.partial)` once the work has published a first look."""
    job = current_job(key)
    if job is None or job.finished:
        return

    @st.fragment(run_every=0.4)
    def poll() -> None:
        if job.finished:
            st.rerun(scope="app")
        st.progress(job.fraction, text=f"{job.label}: {job.what}")
        if st.button("Cancel", key=f"cancel:{key}"):
            job.cancel()
        if show_partial is not None and job.partial is not None:
            show_partial(job.partial)

    poll()


def take_job_result(key: str) -> Job | None:
    """The finished job (once): its result or error; None while it runs or when there is none."""
    job = current_job(key)
    if job is None or not job.finished:
        return None
    del st.session_state[f"job:{key}"]
    return job


# ----------------------------------------------------------------------------------------------
# Figures and tables: every one with a line on how to read it and a download


_VIEWPORT = None  # the window-size component, declared once (pages/_viewport/index.html)


def track_viewport() -> None:
    """Ask the browser for its window size (app.py, every run); kept in session state as "viewport"."""
    global _VIEWPORT
    import streamlit.components.v1 as components

    if _VIEWPORT is None:
        _VIEWPORT = components.declare_component("viewport", path=str(Path(__file__).parent / "_viewport"))
    size = _VIEWPORT(key="viewport_component", default=None)
    if isinstance(size, dict) and size.get("height"):
        st.session_state["viewport"] = {"width": int(size["width"]), "height": int(size["height"])}


def presentation_height(reserved: int = 300, least: int = 360) -> int | None:
    """A chart's height on stage: the window's height less what must stay in view above it (a
    header, the metrics); None when the window's size is not known yet (Plotly's default then)."""
    size = st.session_state.get("viewport")
    if not size:
        return None
    return max(least, int(size["height"]) - reserved)


def scroll_into_view(anchor: str) -> None:
    """Scroll the browser so the element with this id (e.g. a result's header) is at the top."""
    st.iframe(
        "<html><body><script>const target = window.parent.document.getElementById(" + repr(anchor) + ");"
        "if (target) { target.scrollIntoView({block: 'start'}); }</script></body></html>",
        height=1,
    )


def poll_until(ready: Callable[[], bool], every: float = 2.0) -> None:
    """Rerun a tiny fragment until `ready()` holds, then the whole app once (e.g. the warm-up's line)."""

    @st.fragment(run_every=every)
    def poll() -> None:
        if ready():
            st.rerun(scope="app")

    poll()


def show_figure(figure, name: str, key: str, how_to_read: str | None = None, reserved: int | None = None,
                least: int = 360) -> None:
    from merging.plots import HOW_TO_READ, figure_to_html

    presenting = settings().presentation
    if presenting:
        # `reserved`: what stays in view above the chart; a heatmap has no metrics above it to keep in view
        if reserved is None:
            reserved = 170 if "heatmap" in name else 300
        height = presentation_height(reserved=reserved, least=least)
        if height is not None:
            figure.update_layout(height=height)
    # a dark theme (--theme.base=dark, or the viewer's setting) gets a dark chart, not a white box
    from merging.plots.theme import for_theme

    figure = for_theme(figure, _stage.theme_type())
    st.plotly_chart(
        figure,
        key=f"chart:{key}",
        # On stage the figure's own fonts (≥ 18 px) must win over Streamlit's theme, which sets 12 px ticks.
        theme=None if presenting else "streamlit",
        config={"toImageButtonOptions": {"format": "png", "filename": key, "scale": 2}, "displaylogo": False},
    )
    caption = how_to_read or HOW_TO_READ.get(name)
    if caption:
        st.caption(caption)
    if not settings().presentation:
        st.download_button(
            "Download chart (HTML)",
            lambda: figure_to_html(figure),  # built on click: a self-contained page is ~5 MB
            file_name=f"{key}.html",
            mime="text/html",
            key=f"html:{key}",
            type="tertiary",
        )


def show_table(frame: pd.DataFrame, key: str, caption: str | None = None) -> None:
    """A table with a line on how to read it; off stage an interactive st.dataframe and a CSV download,
    on stage its first rows in HTML at ≥ 18 px (pages/_stage.table: a dataframe's canvas is ~13 px)."""
    if settings().presentation:
        _stage.table(frame)
    else:
        st.dataframe(frame, hide_index=True, width="stretch")
    if caption:
        st.caption(caption)
    if not settings().presentation:
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        st.download_button(
            "Download table (CSV)", buffer.getvalue(), file_name=f"{key}.csv", mime="text/csv", key=f"csv:{key}",
            type="tertiary",
        )


def friendly_error(err: Exception) -> str:
    if isinstance(err, (AdapterError, ZooError, ValueError)):
        return str(err)
    return f"{type(err).__name__}: {err}"
