"""A figure as a file to download: one self-contained HTML page (plotly.js inlined, works offline)."""

from __future__ import annotations

import plotly.graph_objects as go


def figure_to_html(fig: go.Figure) -> str:
    """A standalone HTML page with plotly.js inlined (about 5 MB), so it opens offline.

    ``include_plotlyjs="cdn"`` would fetch the library from the network when the file is opened,
    which fails on an air-gapped laptop in a lecture hall.
    """
    return fig.to_html(include_plotlyjs=True, include_mathjax=False, full_html=True,
                       config={"displaylogo": False})
