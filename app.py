"""mergescope's Streamlit entry point: navigation, the sidebar and presentation mode. No logic lives here.

Presentation mode (a talk): the sidebar is hidden and navigation moves to the top, charts take the
window's height (pages/_viewport reports it) with text ≥ 18 px, and the mode is kept in the URL
(`?present=1`), so a reload or a shared link opens the same way. The server's warm-up
(pages/_warm.py) starts with the first session; its readiness is shown until it is done.
"""

from __future__ import annotations

import streamlit as st
import torch

from pages import _ui, _warm
from pages._ui import DEFAULT_WORKSPACE, zoo

st.set_page_config(page_title="mergescope", page_icon=":material/merge_type:", layout="wide")

# Presentation mode lives in the URL as well as in the session: a reload or a link keeps it.
if "presentation" not in st.session_state:
    st.session_state["presentation"] = st.query_params.get("present") == "1"
presenting = bool(st.session_state["presentation"])


def _sync_presentation_link() -> None:
    if st.session_state.get("presentation"):
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)


pages = [
    st.Page("pages/merge.py", title="Merge", icon=":material/merge_type:", default=True),
    st.Page("pages/interference.py", title="Interference", icon=":material/grid_on:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("pages/adapters.py", title="Adapters", icon=":material/extension:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/tour.py", title="Tour", icon=":material/slideshow:"),
]
navigation = st.navigation(pages, position="top" if presenting else "sidebar")
_ui.track_viewport()
readiness = _warm.start(st.session_state.get("device", "auto"))

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
        st.toggle("Presentation mode", key="presentation", on_change=_sync_presentation_link,
                  help="Hide the sidebar and controls and size charts to the window for a talk (kept in the link).")

if presenting:
    # No sidebar on stage (nor its toggle); the exit switch sits at the top of the page instead.
    st.markdown(
        "<style>[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'],"
        " [data-testid='stExpandSidebarButton'] {display: none !important;}</style>",
        unsafe_allow_html=True,
    )
    left, right = st.columns([5, 1])
    with right:
        st.toggle("Presentation mode", key="presentation", on_change=_sync_presentation_link,
                  help="Off: show the sidebar and every control again.")
    if not readiness.done:
        left.caption("Warming up: " + readiness.line())

if not readiness.done:
    _ui.poll_until(lambda: readiness.done)

navigation.run()
