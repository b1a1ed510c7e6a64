"""The library's JSON-ready numbers as plottable values: tensors as lists, NaN/±inf as gaps, layer
keys as labels in block order, long module names shortened for tick labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def _values(data: Any) -> Any:
    """Tensors and arrays as nested lists (duck-typed: no torch/numpy import needed here)."""
    if hasattr(data, "tolist"):
        return data.tolist()
    return data


def _finite(value: Any) -> float | None:
    """A float, or None for missing / NaN / ±inf (JSON from the library already writes those as null)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _matrix(data: Any) -> list[list[float | None]]:
    rows = _values(data)
    return [[_finite(v) for v in _values(row)] for row in rows]


def _layer_label(key: Any) -> str:
    """Layer keys arrive as ints (``layer_means``), strings (JSON) or None: one label each."""
    if key is None or key == "other":
        return "other"
    return str(int(key)) if str(key).lstrip("-").isdigit() else str(key)


def _layer_order(label: str) -> tuple[int, float | str]:
    """Blocks in numeric order, then anything else (e.g. 'other')."""
    return (0, int(label)) if label.lstrip("-").isdigit() else (1, label)


def _short_names(names: Sequence[str]) -> list[str]:
    """Drop the dotted prefix that all names share (``base_model.model.encoder.``), for tick labels."""
    if len(names) < 2:
        return [n.split(".")[-1] if n.count(".") > 3 else n for n in names]
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return [".".join(p[common:]) for p in parts]


def _results_tasks(results: Mapping) -> dict[str, Mapping]:
    tasks = results.get("tasks") if isinstance(results, Mapping) else None
    if tasks is None:
        raise ValueError("expected EvaluationResult.to_dict(): a mapping with a 'tasks' entry")
    return dict(tasks)


def _percent_text(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


# The primary metric of a task, as the charts name it (EvaluationResult.to_dict()'s "metric").
METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match"}


def metric_name(results: Mapping) -> str:
    """The primary metric the results' tasks share, in words: "accuracy" for classification,
    "exact match" for causal-LM tasks ("score" if they mix). Results from before the "metric"
    field are classification results."""
    found = {str(s.get("metric") or "accuracy") for s in _results_tasks(results).values() if isinstance(s, Mapping)}
    if len(found) > 1:
        return "score"
    metric = found.pop() if found else "accuracy"
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def has_loss(results: Mapping) -> bool:
    """Whether any task carries a completion loss (causal-LM tasks do)."""
    return any(isinstance(s, Mapping) and isinstance(s.get("loss"), Mapping) for s in _results_tasks(results).values())


def results_rows(results: Mapping, digits: int = 4) -> list[dict]:
    """One table row per task of ``EvaluationResult.to_dict()``: its metric, base / single / merged /
    normalised scores, the majority-class score of a classification task, the completion loss of a
    causal task ("loss base", ...) with its perplexity exp(loss) ("perplexity base", ...), and each
    score's 95% interval as text; numbers rounded to `digits`, missing ones None."""
    rows = []
    for task, scores in _results_tasks(results).items():
        row: dict[str, Any] = {"task": task, "metric": str(scores.get("metric") or "accuracy")}
        causal = isinstance(scores.get("loss"), Mapping)  # no classes, so no majority class
        for key in ("base", "single", "merged", "normalized") + (() if causal else ("majority",)):
            value = _finite(scores.get(key))
            row[key] = None if value is None else round(value, digits)
        for role, value in (scores.get("loss") or {}).items():
            value = _finite(value)
            row[f"loss {role}"] = None if value is None else round(value, digits)
        for role, value in (scores.get("loss") or {}).items():
            value = _finite(value)
            row[f"perplexity {role}"] = None if value is None else round(math.exp(min(value, 700.0)), digits)
        for role, bounds in (scores.get("interval") or {}).items():
            row[f"{role} 95% interval"] = None if not bounds else f"{bounds[0]:.3f}–{bounds[1]:.3f}"
        rows.append(row)
    return rows


def orthogonalize_rows(orthogonalize: Mapping, digits: int = 4) -> list[dict]:
    """DO-Merging's cosines as table rows: per module (and first over every module) the mean and the
    largest |cosine| between two adapters' update directions, before and after orthogonalisation.
    `orthogonalize` is ``{module: {"cosine_before": n×n, "cosine_after": n×n, ...}}`` (MergeRun.results)."""

    def off_diagonal(matrix) -> list[float]:
        return [abs(float(v)) for i, row in enumerate(matrix or []) for j, v in enumerate(row) if i != j]

    rows, every = [], {"before": [], "after": []}
    for module, report in orthogonalize.items():
        row: dict[str, Any] = {"module": module}
        for when in ("before", "after"):
            values = off_diagonal(report.get(f"cosine_{when}"))
            every[when] += values
            row[f"mean |cos| {when}"] = round(sum(values) / len(values), digits) if values else None
            row[f"max |cos| {when}"] = round(max(values), digits) if values else None
        rows.append(row)
    if not rows or not every["before"]:
        return []
    total: dict[str, Any] = {"module": "all modules"}
    for when in ("before", "after"):
        values = every[when]
        total[f"mean |cos| {when}"] = round(sum(values) / len(values), digits) if values else None
        total[f"max |cos| {when}"] = round(max(values), digits) if values else None
    return [total, *rows]


def shared_suffix_dropped(names: Sequence[str]) -> list[str]:
    """Tick labels without a "-suffix" every name shares ("sst2-standard", "trec-standard" → "sst2",
    "trec"): the column's heading says it once, and the heatmap's cells get the width back."""
    names = [str(n) for n in names]
    if len(names) < 2 or not all("-" in n for n in names):
        return names
    suffixes = {n.rsplit("-", 1)[1] for n in names}
    if len(suffixes) != 1:
        return names
    short = [n.rsplit("-", 1)[0] for n in names]
    return short if len(set(short)) == len(short) else names
