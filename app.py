"""mergescope's Streamlit entry point: navigation and the sidebar. No logic lives here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from pages._ui import (
    DEFAULT_WORKSPACE,
    OTHER_BASE_MODEL,
    base_model_options,
    base_model_status,
    chosen_base_model,
    default_base_model,
    zoo,
)

st.set_page_config(page_title="mergescope", page_icon=":material/merge_type:", layout="wide")

pages = [
    st.Page("pages/merge.py", title="Merge", icon=":material/merge_type:", default=True),
    st.Page("pages/interference.py", title="Interference", icon=":material/grid_on:"),
    st.Page("pages/sweep.py", title="Sweep", icon=":material/show_chart:"),
    st.Page("pages/adapters.py", title="Adapters", icon=":material/extension:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/history:"),
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
    st.toggle("Presentation mode", key="presentation", help="Hide controls and enlarge charts for a talk.")

navigation.run()
