"""mergescope's Streamlit entry point: navigation and the sidebar. No logic lives here."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="mergescope", page_icon="🔀", layout="wide")

pages = [
    st.Page("pages/home.py", title="Overview", icon="🏠", default=True),
]
st.navigation(pages).run()
