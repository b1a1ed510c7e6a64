"""The look every mergescope figure shares, and the line under each chart that says how to read it.

Colours come from the Okabe–Ito palette, which stays distinguishable under the common colour-vision
deficiencies: base = grey, single adapter = blue, merged = orange, majority-class baseline = black.
Standard LoRA vs OSRM initialisation: solid vs dashed lines (and circle vs square markers), so the two
can be told apart without colour. ``presentation=True`` enlarges fonts, markers and lines for a talk
(one helper, ``_style``, applied last) and moves what 20 px text would run into: a horizontal legend
goes to the figure's foot, long axis titles onto two lines.

Each public figure function is decorated with :func:`explained`, which keeps its how-to-read line
right above it and collects it into :data:`HOW_TO_READ` (figure name → line), the map the dashboard
looks up to caption a chart.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

# Okabe & Ito (2008), "Color Universal Design": safe for protan/deutan/tritan viewers.
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#999999",
}

ROLE_COLOURS: dict[str, str] = {
    "base": OKABE_ITO["grey"],
    "single": OKABE_ITO["blue"],
    "merged": OKABE_ITO["orange"],
    "majority": OKABE_ITO["black"],
    "average": OKABE_ITO["black"],
    "gain": OKABE_ITO["bluish_green"],
    "loss": OKABE_ITO["vermillion"],
}

# Dash + marker symbol carry the init on their own; the colour is used where init is the only series.
INIT_STYLES: dict[str, dict[str, str]] = {
    "standard": {"color": OKABE_ITO["blue"], "dash": "solid", "symbol": "circle"},
    "osrm": {"color": OKABE_ITO["vermillion"], "dash": "dash", "symbol": "square"},
    "osrm-cov": {"color": OKABE_ITO["reddish_purple"], "dash": "dot", "symbol": "diamond"},
    "gaussian": {"color": OKABE_ITO["sky_blue"], "dash": "dot", "symbol": "triangle-up"},
    "osrm-random": {"color": OKABE_ITO["orange"], "dash": "dashdot", "symbol": "diamond"},
    "osrm-frozen": {"color": OKABE_ITO["bluish_green"], "dash": "longdash", "symbol": "x"},
    "standard-scaled": {"color": OKABE_ITO["reddish_purple"], "dash": "longdashdot", "symbol": "star"},
}
_OTHER_INIT_DASHES = ["dashdot", "longdash", "longdashdot"]

# Series colours (adapters, tasks, runs) in a fixed order; grey and black are kept for roles.
PALETTE: list[str] = [
    OKABE_ITO["blue"],
    OKABE_ITO["orange"],
    OKABE_ITO["bluish_green"],
    OKABE_ITO["vermillion"],
    OKABE_ITO["reddish_purple"],
    OKABE_ITO["sky_blue"],
    OKABE_ITO["yellow"],
]

# A second cue besides colour for series that are told apart only by colour (bars, markers).
_PATTERNS = ["", "/", ".", "x", "\\", "+", "-", "|"]
_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "triangle-down"]

# Sequential scale for [0, 1] quantities: perceptually uniform and colour-blind safe.
SEQUENTIAL = "Viridis"
# Diverging scale (ColorBrewer RdBu, colour-blind safe) for signed quantities.
DIVERGING = "RdBu"

FONT_SIZE = {False: 13, True: 20}
# On stage no text may shrink below this (Plotly shrinks bar labels to fit a bar unless told not to).
MIN_PRESENTATION_TEXT = 18
_TITLE_EXTRA = 5
# A title wraps at a word after this many characters in presentation mode, so a chart at half the
# window's width (two heatmaps side by side at 1280 px) shows its whole title.
_TITLE_WRAP = 34
# Axis titles wrap at a word on stage: a y title runs along a plot ~240 px tall (a 720 px window less
# the header and the figure's margins), an x title along a chart half the window wide.
_Y_TITLE_WRAP = 24
_X_TITLE_WRAP = 40
# On stage a horizontal legend sits at the figure's foot, in the figure's own (container) coordinates:
# Plotly grows the bottom margin to hold it however many rows it wraps to. In plot (paper)
# coordinates it would land on the tick labels below the plot or on the title above it.
LEGEND_AT_FOOT = {"orientation": "h", "yref": "container", "y": 0.0, "yanchor": "bottom", "x": 0.0, "xanchor": "left"}
# A heatmap's row name up to this long stays on one line on stage ("product_sentiment" is 17).
_ONE_LINE_ROW_NAME = 20
_STAGE_COLORBAR = 16  # px; Plotly's default is 30
_MARKER_SCALE = 1.7
_LINE_SCALE = 1.8


def _style(
    fig: go.Figure,
    title: str,
    presentation: bool,
    x_title: str | None = None,
    y_title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Title, axis titles, template and font sizes in one place, so every chart looks alike.

    ``presentation`` scales fonts, markers and lines up (a projector at the back of a room); it is
    applied last, after the traces exist, so each chart only states its normal sizes.
    """
    size = FONT_SIZE[bool(presentation)]
    if presentation:
        title = wrap_title(title, _TITLE_WRAP)
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "font": {"size": size + _TITLE_EXTRA}, "x": 0.0, "xanchor": "left",
               "subtitle": {"font": {"size": size}}},
        font={"size": size},
        hoverlabel={"font": {"size": size}},
        legend={"font": {"size": size}},
        margin={"t": 60 + 3 * size + (size + _TITLE_EXTRA) * title.count("<br>")},
    )
    if presentation:
        # "show": bar labels keep their size (they may overflow) instead of shrinking to ~7 px
        fig.update_layout(uniformtext={"minsize": MIN_PRESENTATION_TEXT, "mode": "show"},
                          margin={"t": 40 + 2 * size + (size + _TITLE_EXTRA) * title.count("<br>")})
        _wrap_category_ticks(fig)
    if height is not None:
        fig.update_layout(height=int(height * (1.3 if presentation else 1.0)))
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    if presentation:
        fig.for_each_xaxis(lambda axis: axis.update(title_text=wrap_title(axis.title.text, _X_TITLE_WRAP))
                           if axis.title.text else None)
        fig.for_each_yaxis(lambda axis: axis.update(title_text=wrap_title(axis.title.text, _Y_TITLE_WRAP))
                           if axis.title.text else None)
        if fig.layout.legend.orientation == "h":
            fig.update_layout(legend=LEGEND_AT_FOOT)
    # Subplot titles are annotations with their own font.
    for annotation in fig.layout.annotations or ():
        annotation.font = {"size": size}
    if presentation:
        for trace in fig.data:
            _enlarge(trace)
    return fig


def wrap_title(title: str, width: int) -> str:
    """Break a plain title into lines of at most ~width characters at spaces (Plotly never wraps)."""
    if "<br>" in title or len(title) <= width:
        return title
    head, bracket, tail = title.partition(" (")
    if bracket and len(head) <= width and len(tail) + 1 <= width:  # "Opposite signs<br>(% of touched entries)"
        return f"{head}<br>({tail}"
    lines, line = [], ""
    for word in title.split(" "):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "<br>".join(lines)


def _wrapped_label(label: str) -> str:
    """"product_sentiment" → "product<br>sentiment": long names stacked, not tilted into the legend."""
    if len(label) <= 8:
        return label
    return label.replace("_", "<br>").replace("-", "<br>").replace(" (", "<br>(")


def _wrap_category_ticks(fig: go.Figure) -> None:
    """On stage, categorical tick labels (task and adapter names) break at _ and - and stay level."""
    for axis_letter in ("x", "y"):
        labels: dict[str, list[str]] = {}
        for trace in fig.data:
            if trace.type not in ("bar", "heatmap"):
                continue
            values = getattr(trace, axis_letter)
            if values is None or not all(isinstance(v, str) for v in values):
                continue
            anchor = getattr(trace, f"{axis_letter}axis", None) or axis_letter
            axis = f"{axis_letter}axis" + anchor[1:]
            labels.setdefault(axis, [])
            labels[axis] += [v for v in values if v not in labels[axis]]
        heatmap = any(trace.type == "heatmap" for trace in fig.data)
        # a horizontal bar chart's rows are stacked like a heatmap's: a two-line name doubles each row
        rows_of_bars = any(trace.type == "bar" and trace.orientation == "h" for trace in fig.data)
        for axis, values in labels.items():
            # a heatmap's columns are narrower than "sentiment" at 20 px: its column names stand upright
            angle = -90 if heatmap and axis.startswith("x") else 0
            # its row names stay on one line while short: a two-line name doubles every row's height, and
            # five such rows leave a 720-px window no room for the rest of the chart
            one_line = (heatmap or rows_of_bars) and axis.startswith("y")
            text = [v if one_line and len(v) <= _ONE_LINE_ROW_NAME else _wrapped_label(v) for v in values]
            fig.layout[axis].update(tickmode="array", tickvals=values, ticktext=text, tickangle=angle, automargin=True)
            if heatmap and axis.startswith("x"):  # upright two-line names at the smallest stage size fit a column
                fig.layout[axis].tickfont.size = MIN_PRESENTATION_TEXT


def _enlarge(trace: Any) -> None:
    """Presentation mode for one trace: bigger markers, thicker lines, bigger in-cell text."""
    kind = trace.type
    if kind == "scatter":
        mode = trace.mode or "lines+markers"
        if "markers" in mode:
            # A "line-ew" dash is sized to span a bar group; widen its stroke, not its length.
            if not str(trace.marker.symbol or "").startswith("line"):
                size = trace.marker.size if isinstance(trace.marker.size, (int, float)) else 6
                trace.marker.size = size * _MARKER_SCALE
            if trace.marker.line is not None and trace.marker.line.width:
                trace.marker.line.width = trace.marker.line.width * _LINE_SCALE
        if "lines" in mode and (trace.line.width is None or trace.line.width > 0):
            trace.line.width = (trace.line.width or 2) * _LINE_SCALE
    if kind in ("bar", "heatmap", "scatter"):
        trace.textfont.size = FONT_SIZE[True]  # keeps a colour the chart chose
    if kind == "heatmap":  # a slimmer colour bar leaves the cells (which carry their numbers) the width
        trace.colorbar.thickness = _STAGE_COLORBAR


def _no_data(fig: go.Figure, message: str) -> go.Figure:
    """An empty chart still says why it is empty instead of showing blank axes."""
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _accuracy_axis(fig: go.Figure, **kwargs: Any) -> None:
    """Accuracies are fractions; show percent ticks on a fixed 0–100% range so runs compare."""
    fig.update_yaxes(tickformat=".0%", range=[0, 1.08], **kwargs)


def _heatmap_axes(fig: go.Figure, row: int | None = None, col: int | None = None) -> None:
    """Matrix layout: first row at the top, square-ish cells, categorical ticks."""
    fig.update_yaxes(autorange="reversed", type="category", row=row, col=col)
    fig.update_xaxes(type="category", side="bottom", row=row, col=col)


def _init_style(init: str, index: int) -> dict[str, str]:
    if init in INIT_STYLES:
        return INIT_STYLES[init]
    return {
        "color": PALETTE[index % len(PALETTE)],
        "dash": _OTHER_INIT_DASHES[index % len(_OTHER_INIT_DASHES)],
        "symbol": _SYMBOLS[(index + 3) % len(_SYMBOLS)],
    }


# ----------------------------------------------------------------------------------------------
# How to read each figure

HOW_TO_READ: dict[str, str] = {}  # figure function name → the one line the UI shows under the chart


def explained(how_to_read: str):
    """Decorator: keep a figure's how-to-read line next to its function and list it in HOW_TO_READ."""

    def register(function):
        HOW_TO_READ[function.__name__] = how_to_read
        function.how_to_read = how_to_read
        return function

    return register
