"""Sentences about measured numbers, written by functions of those numbers — never by hand.

The tour (merging/analysis/tour.py) and the pages say things like "TIES raises the average merged accuracy
from 65.9 % to 71.1 %". A sentence typed into a page goes stale the moment the zoo is rebuilt, and a
sentence that claims a difference of two points on ~200 examples per task claims noise. So every
sentence here is a pure function of result dicts, and every difference it states carries its
evidence:

- an accuracy measured on n examples gets a 95 % bootstrap interval over its evaluation set, and an
  average over tasks resamples each task's set on its own (merging/core/intervals.py, seeded: the same
  numbers always give the same sentence);
- a difference between two results is called "within noise" when their 95 % intervals overlap, and
  said with its size and both intervals otherwise. (Overlap is the conservative reading: two
  intervals can overlap while a paired test would still find a difference; the sentence never
  claims more than the intervals show.)
- the sign is said in words: a "fix" that lowers accuracy *costs*, whatever it is called.

Inputs are ``EvaluationResult.to_dict()`` results. Their stored intervals (``interval`` per task,
``average_interval``) are used when present; otherwise a task row's ``n`` (how many evaluation
examples it was measured on; merging.analysis.tour adds it) gives them. A result with neither is never said
to differ from another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from merging.analysis.metrics import chance_sign_conflict_rate
from merging.core import intervals

MINUS = "\u2212"

Interval = tuple[float, float]


# ----------------------------------------------------------------------------------------------
# Intervals (merging.core.intervals) of the accuracies a result holds


def accuracy_interval(accuracy: float, n: int) -> Interval:
    """95 % bootstrap interval of an accuracy measured on `n` examples (an exact fraction of n)."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    return intervals.accuracy_interval(intervals.counts_of(accuracy, n), n)


def mean_accuracy_interval(measured: Sequence[tuple[float, int]]) -> Interval:
    """95 % bootstrap interval of the mean of per-task accuracies [(accuracy, n), ...]."""
    if not measured:
        raise ValueError("no accuracies to average")
    counts = {str(i): (intervals.counts_of(a, n), n) for i, (a, n) in enumerate(measured)}
    return intervals.bootstrap_interval(counts)


def overlap(a: Interval | None, b: Interval | None) -> bool:
    """True when the intervals overlap, or when either is unknown (no difference can be claimed)."""
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def _rows(results: Mapping, key: str) -> list[tuple[str, float, int | None]]:
    """(task, value, n) for each task with a value of `key`; n is None when the row does not say."""
    rows = []
    for task, scores in (results.get("tasks") or {}).items():
        value = scores.get(key)
        if value is not None:
            rows.append((task, float(value), int(scores["n"]) if scores.get("n") else None))
    return rows


def average(results: Mapping, key: str) -> float | None:
    rows = _rows(results, key)
    return sum(v for _, v, _ in rows) / len(rows) if rows else None


def _stored(interval) -> Interval | None:
    return (float(interval[0]), float(interval[1])) if isinstance(interval, (list, tuple)) and len(interval) == 2 else None


def average_interval(results: Mapping, key: str) -> Interval | None:
    """Interval of the average over tasks of `key` ("single", "merged", "base"): the one the result
    stores (evaluation JSON's `average_interval`), else computed from each task's n; None when
    neither is known (e.g. a run stored before intervals existed)."""
    stored = _stored((results.get("average_interval") or {}).get(key))
    if stored:
        return stored
    rows = _rows(results, key)
    if not rows or any(n is None for _, _, n in rows):
        return None
    return mean_accuracy_interval([(v, n) for _, v, n in rows])


def task_interval(results: Mapping, task: str, key: str) -> Interval | None:
    scores = (results.get("tasks") or {}).get(task) or {}
    stored = _stored((scores.get("interval") or {}).get(key))
    if stored or scores.get(key) is None or not scores.get("n"):
        return stored
    return accuracy_interval(float(scores[key]), int(scores["n"]))


# ----------------------------------------------------------------------------------------------
# Numbers as words


def percent(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f} %"


def points(change: float) -> str:
    """A change of accuracy (a fraction) in percentage points, with a real minus sign."""
    text = f"{100 * change:+.1f} pp"
    return text.replace("-", MINUS)


def duration(seconds: float) -> str:
    return "under 0.1 s" if seconds < 0.1 else f"{seconds:.1f} s"


def span(interval: Interval) -> str:
    return f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f} %"


def evidence(before: Interval | None, after: Interval | None) -> str:
    """Why a difference is or is not claimed, in a few words."""
    if before is None or after is None:
        return "no interval known, so not a claimed difference"
    if overlap(before, after):
        return f"within noise: 95 % intervals {span(before)} and {span(after)} overlap"
    return f"beyond noise: 95 % intervals {span(before)} and {span(after)} do not overlap"


def change_clause(before: float, after: float, before_interval: Interval | None, after_interval: Interval | None) -> str:
    """"from 65.9 % to 71.1 % (+5.2 pp, beyond noise: …)" — the sign is in the number."""
    return f"from {percent(before)} to {percent(after)} ({points(after - before)}, {evidence(before_interval, after_interval)})"


def _verb(change: float, up: str = "raises", down: str = "lowers") -> str:
    if round(100 * change, 1) == 0:
        return "leaves unchanged"
    return up if change > 0 else down


# ----------------------------------------------------------------------------------------------
# The tour's sentences


def takeaway_singles(results: Mapping) -> str:
    """What each adapter does alone: base body + the task's own head vs the adapter."""
    base, single = average(results, "base"), average(results, "single")
    base_of = {task: value for task, value, _ in _rows(results, "base")}
    gains = [(task, value - base_of[task]) for task, value, _ in _rows(results, "single") if task in base_of]
    if base is None or single is None or not gains:
        return "No single-adapter accuracies were measured."
    least = min(gains, key=lambda g: g[1])
    most = max(gains, key=lambda g: g[1])
    sentence = (
        f"Alone, each adapter takes its task from {percent(base)} (the base body with the task's own head) "
        f"to {percent(single)} on average ({points(single - base)}, {evidence(average_interval(results, 'base'), average_interval(results, 'single'))}); "
        f"{most[0]} gains most ({points(most[1])}), {least[0]} least ({points(least[1])})."
    )
    least_base, least_single = task_interval(results, least[0], "base"), task_interval(results, least[0], "single")
    if least_base and least_single and overlap(least_base, least_single):
        sentence += f" On {least[0]} the adapter's gain is within noise."
    return sentence


def takeaway_naive_merge(results: Mapping, label: str = "Task arithmetic") -> str:
    """How much a plain merge keeps, and which task loses most (with its noise)."""
    single, merged = average(results, "single"), average(results, "merged")
    if single is None or merged is None or single == 0:
        return f"{label}: no merged accuracy was measured."
    merged_of = {task: value for task, value, _ in _rows(results, "merged")}
    losses = [(task, value - merged_of[task]) for task, value, _ in _rows(results, "single") if task in merged_of]
    worst = max(losses, key=lambda loss: loss[1])
    # The mean of merged ÷ single per task: the Merge page's "normalised" number
    kept = average(results, "normalized")
    kept = merged / single if kept is None else kept
    sentence = (
        f"{label} keeps {100 * kept:.0f} % of single-task accuracy on average "
        f"({percent(single)} alone → {percent(merged)} merged, {evidence(average_interval(results, 'single'), average_interval(results, 'merged'))}); "
    )
    if worst[1] <= 0:
        return sentence + "no task loses accuracy."
    noisy = overlap(task_interval(results, worst[0], "single"), task_interval(results, worst[0], "merged"))
    return sentence + f"{worst[0]} loses most ({points(-worst[1])}{', within noise' if noisy else ''})."


def random_overlap(rank: int, dimension: int) -> float:
    """Expected subspace overlap φ of two independent random rank-r subspaces of R^d: r/d."""
    return min(rank / dimension, 1.0)


def takeaway_overlap(matrix: Sequence[Sequence[float | None]], names: Sequence[str], where: str, rank: int, dimension: int) -> str:
    """Mean overlap between different adapters (off the diagonal) against independent subspaces."""
    pairs = [
        (matrix[i][j], names[i], names[j])
        for i in range(len(names)) for j in range(i + 1, len(names))
        if matrix[i][j] is not None
    ]
    if not pairs:
        return "Fewer than two adapters: there is no overlap to measure."
    mean = sum(p[0] for p in pairs) / len(pairs)
    top = max(pairs)
    chance = random_overlap(rank, dimension)
    ratio = mean / chance if chance else math.inf
    judgement = (
        f"{ratio:.0f}× what independent rank-{rank} subspaces of {dimension} dimensions give (≈ {chance:.2f})"
        if ratio >= 2 else
        f"about what independent rank-{rank} subspaces of {dimension} dimensions give (≈ {chance:.2f})"
    )
    return (
        f"{where}, the input subspaces of different tasks' adapters overlap {mean:.2f} on average — {judgement}; "
        f"most: {top[1]} and {top[2]} ({top[0]:.2f})."
    )


def takeaway_sign_conflicts(per_layer: Mapping[str, float | None], adapters: int, density: float = 1.0) -> str:
    """The measured share of disputed entries against what as many random updates would give
    (metrics.chance_sign_conflict_rate, at the same density)."""
    rates = [(layer, rate) for layer, rate in per_layer.items() if rate is not None]
    if not rates:
        return "No sign conflicts were measured."
    mean = sum(r for _, r in rates) / len(rates)
    top = max(rates, key=lambda r: r[1])
    chance = chance_sign_conflict_rate(adapters, density)
    comparison = "fewer than" if mean < chance - 0.01 else ("more than" if mean > chance + 0.01 else "as many as")
    return (
        f"On {percent(mean, 0)} of the weight entries the {adapters} adapters change, they push in opposite directions "
        f"(layer {top[0]} most: {percent(top[1], 0)}) — {comparison} {adapters} independent random updates would "
        f"({percent(chance, 0)}); a plain sum cancels there, which is what TIES' sign election settles."
    )


def _cost_by_task(reference: Mapping, results: Mapping) -> str:
    """The task whose merged accuracy fell most against the reference, with its noise."""
    before = {t: v for t, v, _ in _rows(reference, "merged")}
    drops = [(task, v - before[task]) for task, v, _ in _rows(results, "merged") if task in before]
    if not drops:
        return ""
    worst = min(drops, key=lambda d: d[1])
    if worst[1] >= 0:
        return "no task loses merged accuracy"
    noisy = overlap(task_interval(reference, worst[0], "merged"), task_interval(results, worst[0], "merged"))
    return f"{worst[0]} loses {points(worst[1]).lstrip(MINUS)}{' (within noise)' if noisy else ''}"


def takeaway_fix(label: str, reference_label: str, reference: Mapping, results: Mapping,
                 reference_seconds: float | None = None, seconds: float | None = None) -> str:
    """A merge method or switch against the reference merge: its gain (or cost) on average, the
    task that pays most, and the extra merge time when it is large."""
    before, after = average(reference, "merged"), average(results, "merged")
    if before is None or after is None:
        return f"{label}: no merged accuracy was measured."
    clause = change_clause(before, after, average_interval(reference, "merged"), average_interval(results, "merged"))
    change = after - before
    if round(100 * change, 1) == 0:
        sentence = f"{label} leaves the average merged accuracy of {reference_label} unchanged ({percent(after)})"
    elif change > 0:
        sentence = f"{label} raises the average merged accuracy {clause} over {reference_label}"
    else:
        sentence = f"{label} costs average merged accuracy against {reference_label}: {clause}"
    by_task = _cost_by_task(reference, results)
    costs = [by_task] if by_task and not by_task.startswith("no task") else []
    if seconds is not None and reference_seconds is not None and seconds > 3 * reference_seconds and seconds - reference_seconds >= 1.0:
        costs.append(f"the merge takes {duration(seconds)} instead of {duration(reference_seconds)}")
    if by_task.startswith("no task"):
        sentence += f"; {by_task}"
    if costs:
        sentence += "; its cost: " + ", and ".join(costs)
    return sentence + "."


def takeaway_variant(label: str, standard: Mapping, variant: Mapping, method_label: str = "task arithmetic") -> str:
    """An OSRM variant against the standard adapters: the gain in merged accuracy and the cost in
    single-task accuracy (the trade the variants make), each with its noise."""
    s_single, v_single = average(standard, "single"), average(variant, "single")
    s_merged, v_merged = average(standard, "merged"), average(variant, "merged")
    if None in (s_single, v_single, s_merged, v_merged):
        return f"{label}: not measured."
    merged_change = v_merged - s_merged
    merged_clause = change_clause(s_merged, v_merged, average_interval(standard, "merged"), average_interval(variant, "merged"))
    single_clause = change_clause(s_single, v_single, average_interval(standard, "single"), average_interval(variant, "single"))
    single_change = v_single - s_single
    if round(100 * merged_change, 1) == 0:
        first = f"{label} leaves merged accuracy under {method_label} unchanged ({percent(v_merged)})"
    else:
        first = f"{label} {_verb(merged_change)} merged accuracy under {method_label} {merged_clause}"
    if round(100 * single_change, 1) == 0:
        second = "and leaves single-task accuracy unchanged"
    elif single_change < 0:
        second = f"and costs single-task accuracy {single_clause}"
    else:
        second = f"and raises single-task accuracy {single_clause}"
    retention_before = average(standard, "normalized") or (s_merged / s_single if s_single else None)
    retention_after = average(variant, "normalized") or (v_merged / v_single if v_single else None)
    retention = (
        f"; it keeps {100 * retention_after:.0f} % of its own single-task accuracy (standard: {100 * retention_before:.0f} %)"
        if retention_before is not None and retention_after is not None else ""
    )
    return f"{first}, {second}{retention}."


def best_and_tied(rows: Sequence[tuple[str, Mapping]]) -> tuple[tuple | None, list[str]]:
    """The best measured merge as (label, average merged accuracy, its interval), and the labels of
    the others whose interval overlaps it; (None, []) when nothing was measured."""
    measured = [(label, average(r, "merged"), average_interval(r, "merged")) for label, r in rows]
    measured = [m for m in measured if m[1] is not None]
    if not measured:
        return None, []
    best = max(measured, key=lambda m: m[1])
    return best, [m[0] for m in measured if m is not best and overlap(m[2], best[2])]


def takeaway_summary(rows: Sequence[tuple[str, Mapping]]) -> str:
    """The best merge of the tour and the ones that are within its noise."""
    best, tied = best_and_tied(rows)
    if best is None:
        return "No merge was measured."
    known = f"95 % interval {span(best[2])}" if best[2] else "no interval known"
    sentence = f"Best here: {best[0]} at {percent(best[1])} average merged accuracy ({known})"
    if tied:
        return sentence + f"; within its noise: {', '.join(tied)}."
    return sentence + "; every other merge's 95 % interval lies below it."
