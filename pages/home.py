"""Overview: what mergescope is and which merge methods the library offers."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from merging.methods import METHODS

st.title("mergescope")
st.write(
    "Explore how LoRA adapters interfere when they are merged, and what fixes it: "
    "OSRM before fine-tuning, DO-Merging at merge time."
)
st.subheader("Merge methods")
st.dataframe(
    pd.DataFrame(
        [{"method": spec.name, "name": spec.label, "what it does": spec.description} for spec in METHODS.values()]
    ),
    hide_index=True,
    use_container_width=True,
)
