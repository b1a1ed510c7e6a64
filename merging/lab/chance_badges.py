"""What the pages show of an adapter that did not learn (merging.lab.learned): the badge beside its
name in a picker, a legend or a heatmap tick, the "Learned its task" column, and one caption that
names each adapter at chance with why (its accuracy and majority class, or its loss).

Which adapters a page must flag is decided here too, from the catalogue: those a recipe merges (an
OSRM twin swapped in by `osrm: twins` included), those a stored run or a sweep merged. Pages call
these and show the result; nothing here draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from merging.lab.catalog import Entry, entry_by_name, entry_for, scored_task, twin_of
from merging.lab.learned import BADGE, RULE

if TYPE_CHECKING:
    from merging.recipe.codec import Recipe

ICON = "⚠️"  # the icon of the warning that shows flag_note (Streamlit takes a leading emoji as the icon)

__all__ = [  # BADGE and RULE re-exported: a page needs this one import
    "BADGE", "ICON", "RULE", "at_chance", "flag_note", "labelled", "learned_text", "merged_entries", "option_label",
    "recipe_entries", "run_entries", "sweep_flags", "task_flags", "with_badges",
]


def labelled(entry: Entry) -> str:
    """An adapter's name, with the badge when it did not learn: what a picker or legend shows."""
    return f"{entry.name}  {BADGE}" if entry.did_not_learn else entry.name


def with_badges(labels: Sequence[str], entries: Sequence[Entry]) -> list[str]:
    """Short labels (e.g. heatmap ticks) of `entries`, in order, with "⚠" after each that did not learn."""
    return [f"{label} ⚠" if entry.did_not_learn else label for label, entry in zip(labels, entries, strict=True)]


def learned_text(entry: Entry) -> str:
    """What a table's "Learned its task" column says: the badge, "yes" (an accuracy and its majority
    class are recorded and clear the rule) or "unknown" (nothing recorded to judge by)."""
    if entry.did_not_learn:
        return BADGE
    known = entry.single_task_accuracy is not None and entry.majority_baseline is not None
    return "yes" if known else "unknown"


def option_label(entries: Sequence[Entry]) -> Callable[[str], str]:
    """A `format_func` for a picker of adapter names: each name, badged when it did not learn."""
    by_name = {e.name: e for e in entries}
    return lambda name: labelled(by_name[name]) if name in by_name else name


def at_chance(entries: Sequence[Entry]) -> list[Entry]:
    """The entries that did not learn, once each, in their order."""
    seen, flagged = set(), []
    for entry in entries:
        if entry is not None and entry.did_not_learn and entry.name not in seen:
            seen.add(entry.name)
            flagged.append(entry)
    return flagged


def merged_entries(entries: Sequence[Entry], names: Sequence[str], osrm: str = "off") -> list[Entry]:
    """The entries a recipe of `names` with OSRM mode `osrm` merges: in mode "twins" each adapter's
    OSRM twin where it has one (catalog.twin_of), else the adapter itself."""
    merged = []
    for name in names:
        entry = entry_by_name(entries, name)
        if entry is None:
            continue
        twin = twin_of(entries, entry) if osrm == "twins" else None
        merged.append(twin or entry)
    return merged


def run_entries(entries: Sequence[Entry], listed: Sequence[str], twins: Mapping[str, str] | None = None) -> list[Entry]:
    """The entries a stored run merged: its listed adapters (results' `merge.adapters`), each
    replaced by the OSRM twin the run swapped in (its `osrm.twins`); names no longer listed are skipped."""
    merged = [entry_by_name(entries, (twins or {}).get(name, name)) for name in listed]
    return [e for e in merged if e is not None]


def recipe_entries(entries: Sequence[Entry], recipes: Iterable[Recipe]) -> list[Entry]:
    """The entries the recipes merge, in order (repeats kept; at_chance keeps one of each): each
    adapter by name, else path (catalog.entry_for), its OSRM twin in mode "twins" where it has one.
    The Tour: `flag_note(recipe_entries(catalog.zoo_entries(zoo), [m.recipe for m in tour.needs(i)]))`."""
    found = []
    for recipe in recipes:
        for ref in recipe.adapters:
            entry = entry_for(entries, ref.name, ref.path)
            if entry is None:
                continue
            twin = twin_of(entries, entry) if recipe.osrm == "twins" else None
            found.append(twin or entry)
    return found


def sweep_flags(entries: Sequence[Entry], sets: Mapping[str, Mapping]) -> dict[tuple[str, str], str]:
    """{(task, init): why} for the adapters a sweep merged that did not learn: `sets` is a sweep
    result's {init: {"names": merged adapter names, ...}} (merging.lab.run_jobs); the task is the one
    each adapter is scored on, as the sweep's curves are keyed (plots.sweep_curves' `flagged`)."""
    flags = {}
    for init, data in sets.items():
        for name in data.get("names") or []:
            entry = entry_by_name(entries, name)
            task = scored_task(entry) if entry is not None else None
            if entry is not None and entry.did_not_learn and task:
                flags[(task, init)] = entry.did_not_learn
    return flags


def task_flags(entries: Sequence[Entry]) -> dict[str, str]:
    """{task: why} for the entries that did not learn, by the task each is scored on (a merge's
    per-task charts are keyed so; plots.accuracy_bars' `flagged`)."""
    return {task: e.did_not_learn for e in at_chance(entries) if (task := scored_task(e))}


def flag_note(flagged: Sequence[Entry], what: str = "") -> str | None:
    """One line naming each adapter at chance and why (its accuracy and majority class, or its
    loss), starting "At chance:", or None when there is none. `what` says where they are
    ("merged here", ...). Pages show it as a warning with ICON."""
    flagged = at_chance(flagged)
    if not flagged:
        return None
    where = f" {what}" if what else ""
    one = len(flagged) == 1
    return (
        f"At chance: {'this adapter' if one else 'these adapters'}{where} did not learn "
        f"{'its task' if one else 'their tasks'}, so {'it says' if one else 'they say'} nothing about the method — "
        + "; ".join(f"**{e.name}**: {e.did_not_learn}" for e in flagged)
        + "."
    )
