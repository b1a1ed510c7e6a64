"""Figures of the seed study (merging.analysis.seed_study) and of where OSRM's effect comes from
(merging.analysis.osrm_effect): data in (the study's JSON pieces), a figure out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from merging.plots.style import OKABE_ITO, ROLE_COLOURS, _init_style, _no_data, _style, explained

KIND_NAMES = {
    "standard": "standard LoRA (PEFT default)",
    "gaussian": "gaussian LoRA (OSRM authors' baseline)",
    "standard-scaled": "standard, rescaled to OSRM's size",
    "osrm": "OSRM",
    "osrm-random": "OSRM, random null-space basis",
    "osrm-frozen": "OSRM, A frozen",
}
SHORT_KIND_NAMES = {
    "standard": "standard",
    "gaussian": "gaussian (authors')",
    "standard-scaled": "scale control",
    "osrm": "OSRM",
    "osrm-random": "OSRM, random basis",
    "osrm-frozen": "OSRM, A frozen",
}
COLUMN_NAMES = {"single": "alone", "ta_1": "task arithmetic λ = 1", "ta_05": "task arithmetic λ = 0.5", "ties": "TIES"}
MEASURE_NAMES = {
    "feature_shift": "how far the other adapters move the task's inputs (relative)",
    "input_overlap": "input-subspace overlap with the other adapters",
    "abs_cosine": "|task-vector cosine| with the other adapters",
}


def _room_for_subtitle(fig: go.Figure) -> go.Figure:
    """A subtitle sits in the top margin, under the title: widen the margin by one line of it."""
    if fig.layout.title.subtitle.text:
        size = fig.layout.font.size or 13
        fig.update_layout(margin={"t": (fig.layout.margin.t or 80) + int(1.6 * size)})
    return fig


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind)


@explained(
    "Each point is one task in one merge of five adapters (one training seed, one kind): further right, "
    "the more the measure says the others disturb it; higher, the more accuracy it lost. A measure that "
    "explains the loss rises to the right; r and its 95 % interval say how well."
)
def why_scatter(points: Sequence[Mapping], measure: str, correlation: Mapping | None, title: str = "",
                presentation: bool = False, log_x: bool = False) -> go.Figure:  # fmt: skip
    """Per (seed, kind, task) point: `measure` against the accuracy drop in pp, one series per kind."""
    fig = go.Figure()
    usable = [p for p in points if p.get(measure) is not None and p.get("drop") is not None]
    if not usable:
        return _style(_no_data(fig, "no seed study"), title or "What predicts the loss", presentation)
    kinds = list(dict.fromkeys(p["kind"] for p in usable))
    for index, kind in enumerate(kinds):
        style = _init_style(kind, index)
        chosen = [p for p in usable if p["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[p[measure] for p in chosen], y=[100.0 * p["drop"] for p in chosen], mode="markers", name=kind_name(kind),
            marker={"color": style["color"], "symbol": style["symbol"], "size": 9, "opacity": 0.8},
            text=[f"{p['task']} (seed {p['seed']})" for p in chosen],
            hovertemplate="%{text}<br>%{x:.3f}<br>loss %{y:.1f} pp<extra>" + kind_name(kind) + "</extra>",
        ))  # fmt: skip
    fig.add_hline(y=0, line={"color": OKABE_ITO["black"], "width": 1})
    if correlation and correlation.get("r") is not None:
        subtitle = (f"r = {correlation['r']:.2f} (95 % interval {correlation['low']:.2f} to {correlation['high']:.2f}, "
                    f"n = {correlation['n']})").replace("-", "−")  # fmt: skip
        fig.update_layout(title={"subtitle": {"text": subtitle}})
    if log_x:
        fig.update_xaxes(type="log")
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    fig = _style(fig, title or "What predicts each task's loss", presentation,
                 x_title=MEASURE_NAMES.get(measure, measure), y_title="Accuracy lost in the merge (pp)")  # fmt: skip
    return _room_for_subtitle(fig)


@explained(
    "OSRM minus each baseline over the training seeds, paired (same seed, same data): the dot is the mean "
    "difference in percentage points, the whisker its 95 % interval. Right of zero = OSRM better; a whisker "
    "that crosses zero is no evidence either way."
)
def seed_differences(differences: Mapping[str, Mapping], title: str = "", presentation: bool = False) -> go.Figure:
    """Forest plot of `differences` ("osrm-BASELINE:COLUMN" → paired_difference dict)."""
    fig = go.Figure()
    if not differences:
        return _style(_no_data(fig, "no seed study"), title or "OSRM over training seeds", presentation)
    baselines = list(dict.fromkeys(key.split(":")[0].split("-", 1)[1] for key in differences))
    columns = list(dict.fromkeys(key.split(":")[1] for key in differences))
    for index, baseline in enumerate(baselines):
        style = _init_style(baseline, index)
        rows = [(c, differences.get(f"osrm-{baseline}:{c}")) for c in columns]
        rows = [(c, d) for c, d in rows if d is not None]
        means = [100.0 * d["mean"] for _, d in rows]
        low = [100.0 * (d["mean"] - d["low"]) if d["low"] is not None else 0.0 for _, d in rows]
        high = [100.0 * (d["high"] - d["mean"]) if d["high"] is not None else 0.0 for _, d in rows]
        fig.add_trace(go.Scatter(
            x=means, y=[COLUMN_NAMES.get(c, c) for c, _ in rows], mode="markers", orientation="h",
            name=f"OSRM − {kind_name(baseline)}", marker={"color": style["color"], "symbol": style["symbol"], "size": 12},
            error_x={"type": "data", "symmetric": False, "array": high, "arrayminus": low, "thickness": 2},
            text=[f"{d['n']} seeds" for _, d in rows],
            hovertemplate="%{y}: %{x:+.1f} pp (%{text})<extra>%{fullData.name}</extra>",
        ))  # fmt: skip
    fig.add_vline(x=0, line={"color": OKABE_ITO["black"], "width": 1})
    seeds = max((d.get("n") or 0) for d in differences.values())
    fig.update_layout(title={"subtitle": {"text": f"paired over {seeds} training seed{'s' if seeds != 1 else ''}; "
                                                  + ("whisker = 95 % interval" if seeds > 1 else "one seed: no interval")}})
    fig.update_layout(scattermode="group", legend={"orientation": "h", "y": -0.25})
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(ticksuffix=" pp")
    fig = _style(fig, title or "OSRM vs the baselines, over training seeds", presentation,
                 x_title="OSRM minus baseline (percentage points)")  # fmt: skip
    return _room_for_subtitle(fig)


LABEL_COLUMN = 1.45  # the value column's right edge, in multiples of the panel's largest value


@explained(
    "Left: the share of the other tasks' mean input energy that each kind's A reads (0 = blind to the "
    "other tasks, OSRM's aim; the dotted line = a random subspace). Right: how much the tasks' A "
    "subspaces overlap each other (lower = more separate). Bars after training, diamonds at initialisation; "
    "gaussian = the OSRM authors' baseline, scale control = standard rescaled to OSRM's size."
)
def osrm_mechanism(ablations: Mapping, title: str = "", presentation: bool = False) -> go.Figure:
    """Captured energy share and input-subspace overlap per kind: a bar after training (its value in a
    column at the right), a marker at initialisation (unlabelled: one label per row keeps a 720-px
    stage readable)."""
    kinds = ablations.get("kinds") or {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Other tasks' input energy A reads", "Overlap between tasks' A"),
                        horizontal_spacing=0.1)  # fmt: skip
    if not kinds:
        return _style(_no_data(go.Figure(), "no ablation measured"), title or "Where OSRM's effect comes from", presentation)
    order = [k for k in KIND_NAMES if k in kinds] + [k for k in kinds if k not in KIND_NAMES]
    kinds = {k: kinds[k] for k in order}
    names = [SHORT_KIND_NAMES.get(k, k) for k in kinds]
    for column, (init_key, trained_key) in enumerate(
        (("energy_share_init", "energy_share_trained"), ("overlap_init", "overlap_trained")), start=1
    ):
        trained = [100.0 * v[trained_key] if v.get(trained_key) is not None else None for v in kinds.values()]
        initial = [100.0 * v[init_key] if v.get(init_key) is not None else None for v in kinds.values()]
        fig.add_trace(go.Bar(
            y=names, x=trained, orientation="h", name="after training", marker={"color": OKABE_ITO["blue"]},
            showlegend=column == 1, hovertemplate="%{y}<br>after training: %{x:.2f} %<extra></extra>",
        ), row=1, col=column)  # fmt: skip
        fig.add_trace(go.Scatter(
            y=names, x=initial, mode="markers", name="at initialisation", showlegend=column == 1,
            cliponaxis=False,  # a marker at 0 % drawn whole
            marker={"color": OKABE_ITO["orange"], "symbol": "diamond", "size": 11, "line": {"width": 1, "color": "white"}},
            hovertemplate="%{y}<br>at initialisation: %{x:.2f} %<extra></extra>",
        ), row=1, col=column)  # fmt: skip
        # The trained values as a column at the panel's right edge, past every bar and marker: at a
        # bar's end a label met the row's marker whenever the two values were close.
        largest = max((v for v in trained + initial if v is not None), default=1.0)
        edge = largest * LABEL_COLUMN
        fig.add_trace(go.Scatter(
            y=names, x=[edge] * len(names), mode="text", textposition="middle left", cliponaxis=False,
            text=[f"{v:.1f} %" if v is not None else "" for v in trained], showlegend=False,
            name="after training (value)", hovertemplate="%{y}<br>after training: %{text}<extra></extra>",
        ), row=1, col=column)  # fmt: skip
        fig.update_xaxes(range=[0, edge], row=1, col=column)
    reference = ablations.get("random_reference")
    if reference:
        for column in (1, 2):
            fig.add_vline(x=100.0 * reference, line={"color": ROLE_COLOURS["majority"], "dash": "dot", "width": 2},
                          row=1, col=column)  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    # names clear of a marker drawn whole at 0 %
    fig.update_yaxes(title_text="initialisation", ticklabelstandoff=14, row=1, col=1)
    fig.update_yaxes(visible=False, row=1, col=2)  # the same rows as on the left
    fig.update_xaxes(ticksuffix=" %")
    fig.update_xaxes(title_text="share of their energy", row=1, col=1)
    fig.update_xaxes(title_text="mean pairwise overlap", row=1, col=2)
    fig.update_layout(legend={"orientation": "h", "y": -0.3})
    return _style(fig, title or "Where OSRM's effect comes from", presentation)


@explained(
    "Left: how unevenly sized the five tasks' updates are at each module (coefficient of variation of ‖ΔW‖, "
    "mean over modules), LoRA kinds against full fine-tuning. Right: each pair of adapters merged alone — "
    "its magnitude variance against its merged accuracy relative to alone; DO-Merging's claim predicts a "
    "downward slope."
)
def magnitude_variance_claims(full_finetune: Mapping | None, pair_points: Sequence[Mapping],
                              correlation: Mapping | None, title: str = "", presentation: bool = False) -> go.Figure:  # fmt: skip
    """DO-Merging's claims (b) and (c) on the zoo."""
    pairs_title = "Pairs: variance vs merged accuracy"
    if correlation and correlation.get("r") is not None:
        pairs_title = f"Pairs: r = {correlation['r']:.2f} ({correlation['low']:.2f} to {correlation['high']:.2f})".replace("-", "−")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.4, 0.6], horizontal_spacing=0.16,
                        subplot_titles=("LoRA vs full fine-tuning", pairs_title))  # fmt: skip
    if full_finetune:
        # short names: seven long ones wrapped onto two lines each and overprinted on a 720-px stage
        names = [SHORT_KIND_NAMES.get(k, k) for k in full_finetune["lora"]] + ["full fine-tuning"]
        values = list(full_finetune["lora"].values()) + [full_finetune["full_finetune"]]
        colours = [OKABE_ITO["blue"]] * len(full_finetune["lora"]) + [OKABE_ITO["grey"]]
        fig.add_trace(go.Bar(y=names, x=values, orientation="h", marker={"color": colours}, showlegend=False,
                             text=[f"{v:.2f}" for v in values], textposition="outside",
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=1, col=1)  # fmt: skip
        fig.update_yaxes(autorange="reversed", row=1, col=1)
        fig.update_xaxes(title_text="CV of ‖ΔW‖ across tasks", range=[0, max(values) * 1.35 + 1e-9], row=1, col=1)
        fig.update_yaxes(title_text="training", row=1, col=1)
    kinds = list(dict.fromkeys(p["kind"] for p in pair_points))
    for index, kind in enumerate(kinds):
        style = _init_style(kind, index)
        chosen = [p for p in pair_points if p["kind"] == kind]
        fig.add_trace(go.Scatter(
            x=[p["magnitude_variance"] for p in chosen], y=[100.0 * p["normalised_accuracy"] for p in chosen],
            mode="markers", name=SHORT_KIND_NAMES.get(kind, kind),
            marker={"color": style["color"], "symbol": style["symbol"], "size": 9},
            text=[" + ".join(p["tasks"]) for p in chosen],
            hovertemplate="%{text}<br>variance %{x:.3f}<br>%{y:.1f} % of alone<extra></extra>",
        ), row=1, col=2)  # fmt: skip
    fig.update_xaxes(title_text="magnitude variance (CV of ‖ΔW‖)", row=1, col=2)
    fig.update_yaxes(title_text="merged / alone (%)", ticksuffix=" %", row=1, col=2)
    if not full_finetune:
        fig.add_annotation(text="full fine-tuning not measured", showarrow=False, xref="x domain", yref="y domain",
                           x=0.5, y=0.5, row=1, col=1)  # fmt: skip
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    fig.update_layout(margin={"t": 140 if presentation else 110})
    return _style(fig, title or "DO-Merging's magnitude claims", presentation)
