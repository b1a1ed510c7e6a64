"""One headline per Tour step: at most 15 words, read from the back row.

merging/analysis/narrative.py writes each step's full sentence — intervals, the task that pays most, the
chance level — which is the speaker's notes. A headline says only the step's one finding, from the
same measured numbers and with the same rules: a change is "within noise" when the two 95 %
intervals overlap, the sign is said in words, a change that rounds to 0.0 pp is "no change" (never
"+0.0"), points carry one decimal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from merging.analysis import narrative
from merging.analysis.narrative import average, average_interval, overlap, percent, points

MAX_WORDS = 15


def words(text: str) -> int:
    return len(text.split())


def _noise(before, after) -> str:
    if before is None or after is None:
        return "no interval"
    return "within noise" if overlap(before, after) else "beyond noise"


def _change(change: float) -> str:
    """"+3.1 pp" / "−2.0 pp"; None-free: a change that rounds to zero is said by the caller."""
    return points(change)


def singles(results: Mapping) -> str:
    base, single = average(results, "base"), average(results, "single")
    if base is None or single is None:
        return "No single-adapter accuracies were measured."
    return f"Alone, each adapter lifts its task from {percent(base)} to {percent(single)} on average"


def naive(results: Mapping, label: str = "Task arithmetic") -> str:
    single, merged = average(results, "single"), average(results, "merged")
    if single is None or merged is None or not single:
        return f"{label}: no merged accuracy was measured."
    kept = average(results, "normalized")
    kept = merged / single if kept is None else kept
    merged_of = {t: v for t, v, _ in narrative._rows(results, "merged")}
    losses = [(t, v - merged_of[t]) for t, v, _ in narrative._rows(results, "single") if t in merged_of]
    worst = max(losses, key=lambda loss: loss[1]) if losses else None
    head = f"One merge keeps {100 * kept:.0f} % of single-task accuracy"
    if worst is None or round(100 * worst[1], 1) <= 0:
        return head + "; no task loses"
    return head + f"; {worst[0]} loses most"


def overlap_headline(matrix: Sequence[Sequence[float | None]], rank: int, dimension: int) -> str:
    values = [matrix[i][j] for i in range(len(matrix)) for j in range(i + 1, len(matrix)) if matrix[i][j] is not None]
    if not values:
        return "Fewer than two adapters: no overlap to measure."
    mean = sum(values) / len(values)
    chance = narrative.random_overlap(rank, dimension)
    ratio = mean / chance if chance else float("inf")
    if ratio >= 2:
        return f"Different tasks' adapters read the same input directions: {ratio:.0f}× chance"
    return f"Different tasks' adapters read mostly different input directions ({mean:.2f} overlap)"


def signs(per_layer: Mapping[str, float | None], adapters: int) -> str:
    rates = [r for r in per_layer.values() if r is not None]
    if not rates:
        return "No sign conflicts were measured."
    mean = sum(rates) / len(rates)
    return f"On {percent(mean, 0)} of changed weights, the adapters push in opposite directions"


def fix(label: str, reference: Mapping, results: Mapping) -> str:
    before, after = average(reference, "merged"), average(results, "merged")
    if before is None or after is None:
        return f"{label}: no merged accuracy was measured."
    change = after - before
    noise = _noise(average_interval(reference, "merged"), average_interval(results, "merged"))
    if round(100 * change, 1) == 0:
        return f"{label}: no change in merged accuracy"
    verb = "gains" if change > 0 else "costs"
    return f"{label} {verb} {_change(change).lstrip('+').lstrip(narrative.MINUS)} merged accuracy ({noise})"


def variant(label: str, standard: Mapping, results: Mapping) -> str:
    s_single, v_single = average(standard, "single"), average(results, "single")
    s_merged, v_merged = average(standard, "merged"), average(results, "merged")
    if None in (s_single, v_single, s_merged, v_merged):
        return f"{label}: not measured."

    merged_change, single_change = v_merged - s_merged, v_single - s_single
    merged_same, single_same = round(100 * merged_change, 1) == 0, round(100 * single_change, 1) == 0
    if merged_same and single_same:
        return f"{label}: no change, merged or alone"
    if merged_same:
        merged = "merged unchanged"
    else:
        merged = (f"merged {_change(merged_change)} "
                  f"({_noise(average_interval(standard, 'merged'), average_interval(results, 'merged'))})")
    return f"{label}: {merged}, alone {'unchanged' if single_same else _change(single_change)}"


def summary(rows: Sequence[tuple[str, Mapping]]) -> str:
    best, tied = narrative.best_and_tied(rows)
    if best is None:
        return "No merge was measured."
    head = f"Best: {best[0]}, {percent(best[1])} merged"
    if not tied:
        return head + "; clearly ahead of the rest"
    return head + f"; {len(tied)} other{'s' if len(tied) > 1 else ''} within its noise"
