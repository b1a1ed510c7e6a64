"""mergescope's Streamlit entry point: navigation and the sidebar. No logic lives here."""

from __future__ import annotations

import streamlit as st
import torch

from pages._ui import DEFAULT_WORKSPACE, zoo

st.set_page_config(page_title="mergescope", page_icon=":material/merge_type:", layout="wide")

pages = [
    st.Page("pages/merge.py", title="Merge", icon=":material/merge_type:", default=True),
    st.Page("pages/interference.py", title="Interference", icon=":material/grid_on:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("pages/adapters.py", title="Adapters", icon=":material/extension:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
    st.Page("pages/tour.py", title="Tour", icon=":material/slideshow:"),
]
navigation = st.navigation(pages)

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
    st.toggle("Presentation mode", key="presentation", help="Hide controls and enlarge charts for a talk.")

navigation.run()
