"""The Interference page for a room: per section, a one-line takeaway from the measured numbers, a
line saying which way is good, and what the quantities mean.

Takeaways are pure functions of `metrics.adapter_metrics(...)` output (and of the data-parameter
and cross-task matrices); nothing is typed by hand about a particular zoo. When the standard and the
OSRM set are shown side by side, each takeaway names both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# What the symbols mean, said once on the page (the charts' axis titles use them).
EXPLAIN = {
    "magnitude": (
        "‖ΔW‖_F is the Frobenius norm of an adapter's update ΔW = B·A — its overall size, the square root of "
        "the sum of its squared entries. The CV of column norms is the standard deviation ÷ the mean of the "
        "norms of ΔW's columns (one per input feature): 0 when the update touches every input feature "
        "equally, high when a few features take most of it."
    ),
}

GOOD = {
    "magnitude": "Lower is better for merging: an even spread (CV near 0) and equal sizes (variance near 0) "
                 "mean no adapter or feature dominates the sum.",
    "overlap": "Lower off the diagonal is better: 0 = orthogonal subspaces, the adapters cannot interfere "
               "through them; the diagonal (each adapter with itself) is 1. Overlap counts shared input "
               "directions, not harm: directions that none of the other tasks' inputs reach (OSRM's aim) "
               "can be shared at no cost — section 5 measures what the inputs actually see.",
    "mechanism": "Lower is better for OSRM's aim: an A that reads little of the other tasks' input energy "
                 "(left) cannot be moved by their inputs; the dotted line is a random subspace.",
    "magnitude_claims": "DO-Merging predicts LoRA bars above full fine-tuning's (left) and points falling to "
                        "the right (right): the more unequal two updates' sizes, the less their merge keeps — lower variance "
                        "is better if the claim holds.",
    "cosine": "Closer to 0 off the diagonal is better: orthogonal task vectors add without disturbing each "
              "other; negative values cancel in a sum.",
    "signs": "Lower is better: below the dashed line the adapters disagree less often than random updates "
             "would, and a plain sum cancels less.",
    "dpi": "Lower off the diagonal is better: adapter j barely answers task i's inputs (1 on the diagonal "
           "by definition).",
    "cross": "A bright diagonal and a dark rest is good: each adapter helps its own task and leaves the "
             "others to their own adapters.",
}


def _off_diagonal(matrix: Sequence[Sequence[float | None]]) -> list[float]:
    values = []
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if i != j and value is not None and math.isfinite(float(value)):
                values.append(float(value))
    return values


def _both(parts: Sequence[tuple[str, str]]) -> str:
    """"standard: …; OSRM: …" for two sets, the plain phrase for one."""
    if len(parts) == 1:
        return parts[0][1]
    return "; ".join(f"{label}: {phrase}" for label, phrase in parts)


def magnitude(views: Sequence[tuple[str, Mapping]]) -> str:
    """Per set (label, adapter_metrics): the CV range and the layer whose sizes differ most."""
    parts = []
    for label, metrics in views:
        layers = metrics.get("layers") or {}
        cvs = [float(v) for layer in layers.values() for v in (layer.get("column_norm_cv") or []) if v is not None]
        spread = {k: layer.get("norm_variance_across") for k, layer in layers.items()
                  if layer.get("norm_variance_across") is not None}
        if not cvs or not spread:
            parts.append((label, "nothing measured"))
            continue
        top = max(spread, key=spread.get)
        parts.append((label, f"CV {min(cvs):.2f}–{max(cvs):.2f}, sizes differ most in layer {top}"))
    return "Magnitudes — " + _both(parts)


def _pairs_said(views: Sequence[tuple[str, Sequence[Sequence[float | None]]]], said) -> str:
    """Each set's off-diagonal values (the pairs of different adapters) in words, or "no pair"."""
    parts = []
    for label, matrix in views:
        values = _off_diagonal(matrix)
        parts.append((label, said(values) if values else "no pair"))
    return _both(parts)


def overlap(views: Sequence[tuple[str, Sequence[Sequence[float | None]]]], chance: float | None = None) -> str:
    """Per set (label, overlap matrix of one layer): the mean overlap between different adapters."""
    def said(values: list[float]) -> str:
        mean = sum(values) / len(values)
        ratio = f" ({mean / chance:.0f}× chance)" if chance and mean / chance >= 2 else ""
        return f"mean overlap {mean:.2f}{ratio}"

    return "Subspaces — " + _pairs_said(views, said)


def cosine(views: Sequence[tuple[str, Sequence[Sequence[float | None]]]]) -> str:
    def said(values: list[float]) -> str:
        mean = sum(abs(v) for v in values) / len(values)
        word = "nearly orthogonal" if mean < 0.1 else "partly aligned" if mean < 0.4 else "strongly aligned"
        return f"{word} (mean |cos| {mean:.2f})"

    return "Task vectors — " + _pairs_said(views, said)


def signs(views: Sequence[tuple[str, Mapping[str, float | None], float | None]]) -> str:
    """Per set (label, {layer: rate}, chance rate)."""
    parts = []
    for label, rates, chance in views:
        values = [float(r) for r in rates.values() if r is not None]
        if not values:
            parts.append((label, "nothing measured"))
            continue
        mean = sum(values) / len(values)
        against = ""
        if chance is not None:
            against = (" — below chance" if mean < chance - 0.01 else " — above chance" if mean > chance + 0.01
                       else " — at chance")
            against += f" ({100 * chance:.0f} %)"
        parts.append((label, f"{100 * mean:.0f} % of entries disagree{against}"))
    return "Signs — " + _both(parts)


def dpi(views: Sequence[tuple[str, Sequence[Sequence[float | None]]]]) -> str:
    def said(values: list[float]) -> str:
        return f"other adapters answer at {sum(values) / len(values):.2f}× the task's own"

    return "Data-parameter interference — " + _pairs_said(views, said)


def cross(views: Sequence[tuple[str, Mapping]]) -> str:
    """Per set (label, cross_task_matrix result): diagonal vs off-diagonal accuracy."""
    parts = []
    for label, result in views:
        matrix = result.get("accuracy") or []
        adapters, tasks = result.get("adapters") or [], result.get("tasks") or []
        if not matrix or not tasks:
            parts.append((label, "not scored"))
            continue
        if len(adapters) != len(tasks):  # two adapters of one task: no diagonal to read
            parts.append((label, "not one adapter per task"))
            continue
        # one adapter per task: row i's own task is column i (cross_task_matrix orders tasks by adapter)
        own = [matrix[i][i] for i in range(min(len(adapters), len(tasks))) if matrix[i][i] is not None]
        other = _off_diagonal([row[:len(tasks)] for row in matrix[:len(tasks)]])
        if not own or not other:
            parts.append((label, "not scored"))
            continue
        parts.append((label, f"own task {100 * sum(own) / len(own):.1f} %, others {100 * sum(other) / len(other):.1f} %"))
    return "Cross-task accuracy — " + _both(parts)


def share_y(figures) -> None:
    """Give panels that are compared one y scale: for each y axis (yaxis, yaxis2, …) the largest
    finite value any of the figures draws on it, from 0 (every chart here starts at 0)."""
    tops: dict[str, float] = {}
    for figure in figures:
        for trace in figure.data:
            axis = "yaxis" + (str(trace.yaxis)[1:] if trace.yaxis and trace.yaxis != "y" else "")
            for value in trace.y if trace.y is not None else ():
                if value is not None and math.isfinite(float(value)):
                    tops[axis] = max(tops.get(axis, 0.0), float(value))
    for figure in figures:
        for axis, top in tops.items():
            if top > 0 and axis in figure.layout:
                figure.layout[axis].update(range=[0, top * 1.08], autorange=False)
