"""Plain-text tables for the terminal: an evaluation's per-task scores and examples side by side.

`evaluate` prints these by default (`--json` prints the JSON the tests and scripts parse). Numbers
are the evaluation's own (merging.evaluation.evaluate.EvaluationResult.to_dict); a causal task shows its
completion loss with the perplexity exp(loss) beside it.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence

ROLES = ("base", "single", "merged")
METRIC_NAMES = {"accuracy": "accuracy", "exact_match": "exact match"}


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _perplexity(loss) -> str:
    if loss is None:
        return "–"
    return _number(math.exp(loss) if loss < 700 else math.inf, 3)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def evaluation_text(results: Mapping) -> str:
    """The per-task table of an evaluation's JSON: base, single, merged, merged / single, and for a
    causal task the loss (and perplexity) of each body."""
    tasks = results.get("tasks") or {}
    causal = any(scores.get("loss") for scores in tasks.values())
    header = ["task", "metric", "base", "single", "merged", "merged/single"]
    if causal:
        header += ["loss base", "loss single", "loss merged", "ppl base", "ppl single", "ppl merged"]
    else:
        header += ["majority"]
    rows = []
    for name, scores in tasks.items():
        row = [name, METRIC_NAMES.get(scores.get("metric"), scores.get("metric", "")),
               *(_percent(scores.get(role)) for role in ROLES), _number(scores.get("normalized"), 3)]
        if causal:
            loss = scores.get("loss") or {}
            row += [_number(loss.get(role)) for role in ROLES] + [_perplexity(loss.get(role)) for role in ROLES]
        else:
            row.append(_percent(scores.get("majority")))
        rows.append(row)
    average = results.get("average") or {}
    if len(tasks) > 1:
        row = ["average", "", *(_percent(average.get(role)) for role in ROLES), _number(average.get("normalized"), 3)]
        row += [""] * (len(header) - len(row))
        rows.append(row)
    parts = [table(header, rows)]
    interval = (results.get("average_interval") or {}).get("merged")
    if interval:
        parts.append(f"95% interval of the average merged score: {_percent(interval[0])} – {_percent(interval[1])}")
    facts = [f"{key}: {results[key]}" for key in ("device", "dtype", "merge_seconds") if key in results]
    if facts:
        parts.append(", ".join(facts))
    parts += [f"note: {note}" for note in results.get("notes") or []]
    return "\n".join(parts)


def examples_text(rows: Sequence[Mapping], width: int = 48) -> str:
    """Examples side by side (merging.evaluation.examples.side_by_side), one block per example."""
    blocks = []
    for row in rows:
        roles = [role for role in ROLES if f"output {role}" in row]
        lines = [f"[{row['task']}, line {row['line']}] prompt: {_short(row['prompt'], 200)}"]
        shown = {role: repr(_short(row[f"output {role}"], width)) for role in roles}
        pad = max(len(text) for text in shown.values())
        lines.append(f"  {'reference':<9} {_short(row['reference'], width)!r}")
        for role in roles:
            lines.append(
                f"  {role:<9} {shown[role]:<{pad}}  loss {_number(row[f'loss {role}'])}"
                f"  perplexity {_number(row[f'perplexity {role}'], 3)}"
            )
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split()) if "\n" in str(text) else str(text)
    return textwrap.shorten(text, width, placeholder="…") if len(text) > width and text.strip() else text
