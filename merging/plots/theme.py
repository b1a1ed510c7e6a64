"""Charts that follow the app's theme: on a dark theme (Streamlit's `--theme.base=dark`, or the
viewer's dark setting) a chart must not be a white box with black ink.

`for_theme(fig, "dark")` gives the figure the dark Plotly template, a transparent background (the
page's own colour shows through), light text, grid and axis lines, and turns the black ink the
charts use for reference lines, whiskers and marker outlines light. Colours that carry meaning
(Okabe–Ito roles, colour scales) are kept: they were chosen to read on dark and light alike.
`for_theme(fig, "light")` (or None) returns the figure unchanged.
"""

from __future__ import annotations

import plotly.graph_objects as go

INK = {"dark": "#FAFAFA"}
GRID = {"dark": "rgba(250, 250, 250, 0.18)"}
_BLACKS = {"#000000", "#000", "black", "rgb(0,0,0)", "rgb(0, 0, 0)"}


def _light(value):
    return INK["dark"] if isinstance(value, str) and value.strip().lower() in _BLACKS else value


def _recolour(node) -> None:
    """Every `color` under a Plotly object that is black becomes the dark theme's ink."""
    if node is None:
        return
    try:
        properties = list(node)
    except TypeError:
        return
    for name in properties:
        try:
            value = node[name]
        except (KeyError, ValueError, TypeError):
            continue
        if name.endswith("color") and isinstance(value, str):
            if _light(value) != value:
                node[name] = _light(value)
        elif hasattr(value, "to_plotly_json") and not isinstance(value, (str, bytes)):
            _recolour(value)
        elif isinstance(value, tuple) and value and hasattr(value[0], "to_plotly_json"):
            for item in value:
                _recolour(item)


def for_theme(fig: go.Figure, theme: str | None) -> go.Figure:
    """The figure restyled for the app's theme type ("dark" / "light" / None), in place."""
    if theme != "dark":
        return fig
    ink, grid = INK["dark"], GRID["dark"]
    fig.update_layout(
        template="plotly_dark",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"color": ink},
        legend={"bgcolor": "rgba(0,0,0,0)"},
    )
    fig.update_xaxes(gridcolor=grid, zerolinecolor=grid, linecolor=grid, tickcolor=grid)
    fig.update_yaxes(gridcolor=grid, zerolinecolor=grid, linecolor=grid, tickcolor=grid)
    for trace in fig.data:
        _recolour(trace)
    for shape in fig.layout.shapes or ():
        _recolour(shape)
    for annotation in fig.layout.annotations or ():
        _recolour(annotation)
        if annotation.bgcolor and str(annotation.bgcolor).lower() in ("white", "#ffffff", "#fff", "rgba(255,255,255,0.8)"):
            annotation.bgcolor = "rgba(14,17,23,0.8)"
    return fig
