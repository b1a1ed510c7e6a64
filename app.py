"""mergescope's Streamlit entry point: navigation, the sidebar and presentation mode. No logic lives here.

Presentation mode (a talk): the sidebar is hidden and navigation moves to the top, charts take the
window's height (pages/_viewport reports it) with text ≥ 18 px, and the mode is kept in the URL
(`?present=1`), so a reload or a shared link opens the same way. The server's warm-up
(pages/_warm.py) starts with the server under `mergescope dashboard` (pages/_server.py), with the
first session under a plain `streamlit run app.py`; its readiness is shown until it is done.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from pages import _stage, _ui, _warm
from pages._ui import (
    DEFAULT_WORKSPACE,
    OTHER_BASE_MODEL,
    apply_pending_base_model,
    base_model_options,
    base_model_status,
    chosen_base_model,
    default_base_model,
    zoo,
)

st.set_page_config(page_title="mergescope", page_icon=":material/merge_type:", layout="wide")

# Presentation mode lives in the URL as well as in the session: a reload or a link keeps it. A
# shadow copy brings the toggle's value back if Streamlit forgets it (the toggle moves between the
# sidebar and the page).
if "presentation" not in st.session_state:
    st.session_state["presentation"] = st.session_state.get(
        "_keep:presentation", st.query_params.get("present") == "1"
    )
presenting = bool(st.session_state["presentation"])
st.session_state["_keep:presentation"] = presenting
if presenting:
    st.query_params["present"] = "1"
else:
    st.query_params.pop("present", None)


def _sync_presentation_link() -> None:
    st.session_state["_keep:presentation"] = bool(st.session_state.get("presentation"))
    if st.session_state["_keep:presentation"]:
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)


pages = [
    st.Page("pages/merge.py", title="Merge", icon=":material/merge_type:", default=True),
    st.Page("pages/interference.py", title="Interference", icon=":material/grid_on:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("pages/search.py", title="Search", icon=":material/travel_explore:"),
    st.Page("pages/adapters.py", title="Adapters", icon=":material/extension:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/tour.py", title="Tour", icon=":material/slideshow:"),
]
navigation = st.navigation(pages, position="top" if presenting else "sidebar")
_ui.track_viewport()
readiness = _warm.start(st.session_state.get("device", "auto"))

if presenting:
    # No sidebar on stage (nor its toggle); the exit switch sits at the top of the page instead. The
    # style comes before the sidebar's widgets so that no moment of a run shows them (a reload on a
    # loaded machine drew the sidebar before this sheet once).
    st.markdown(
        "<style>[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'],"
        " [data-testid='stExpandSidebarButton'] {display: none !important;}"
        # the window-size reporter and this style sheet take no room on stage
        " .st-key-viewport_component, [data-testid='stElementContainer']:has(> [data-testid='stMarkdown'] style)"
        " {display: none !important;}"
        " [data-testid='stMainBlockContainer'] {padding-top: 3.5rem !important;}</style>",
        unsafe_allow_html=True,
    )
    st.markdown(_stage.stage_css(), unsafe_allow_html=True)  # no text under 18 px on stage

# The sidebar's widgets are drawn in presentation mode too (hidden): a widget that is not drawn
# loses its value, and the workspace and device must survive a talk.
with st.sidebar:
    st.markdown("### mergescope")
    st.text_input(
        "Workspace folder",
        value=st.session_state.get("workspace", str(DEFAULT_WORKSPACE)),
        key="workspace",
        help="Holds imported and trained adapters and the run store (runs.sqlite).",
    )
    apply_pending_base_model()  # Reopen in Merge of a run on another base model
    options = base_model_options(Path(st.session_state.get("workspace", str(DEFAULT_WORKSPACE))).expanduser())
    if st.session_state.get("base_model") not in options:  # a new workspace lists other models
        st.session_state["base_model"] = default_base_model()
    st.selectbox(
        "Base model",
        options,
        key="base_model",
        help="The model the adapters were trained on. Pages list the adapters made for it and score on it. "
        "A local folder or a Hub id already in the Hugging Face cache; nothing is downloaded.",
    )
    if st.session_state["base_model"] == OTHER_BASE_MODEL:
        st.text_input("Folder or Hub id", key="base_model_other", placeholder="/models/qwen2-0.5b or Qwen/Qwen2-0.5B")
    kind, where = base_model_status(chosen_base_model())
    if kind is None:
        st.error(where)
    else:
        st.caption(f"{'Causal LM' if kind == 'causal' else 'Sequence classification'} · `{where}`")
    devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    st.selectbox("Device", devices, key="device", help="auto = CUDA when present, else the CPU.")
    if torch.cuda.is_available():
        st.caption(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        st.caption("No CUDA GPU found: merges and evaluation run on the CPU.")
    built_in = zoo()
    if built_in:
        st.caption(
            f"Built-in zoo: {len(built_in.adapters)} adapters on {len(built_in.tasks)} tasks "
            f"({', '.join(built_in.inits)}), base model {built_in.base_model}."
        )
    else:
        st.warning("No built-in zoo found: build it with `python -m merging zoo build`.")
    st.caption(("Ready: " if readiness.done else "Warming up: ") + readiness.line())
    if not presenting:
        st.toggle("Presentation mode", key="presentation", on_change=_sync_presentation_link, persist_state="session",
                  help="Hide the sidebar and controls and size charts to the window for a talk (kept in the link).")

if presenting:
    _stage.keyboard(presenting)  # a clicker's keys on every page
    left, right = st.columns([4, 1])  # the toggle's label at 18 px needs a fifth of the width
    with right:
        st.toggle("Presentation mode", key="presentation", on_change=_sync_presentation_link, persist_state="session",
                  help="Off: show the sidebar and every control again.")
    if not readiness.done:
        left.caption("Warming up: " + readiness.line())

if not readiness.done:
    _ui.poll_until(lambda: readiness.done)

navigation.run()
