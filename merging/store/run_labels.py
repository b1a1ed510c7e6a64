"""One line that states a run's whole recipe, for the header above its results and for the change
chart's "compared with" label: a speaker (or a screenshot) must say exactly what was merged.

Pure text from a Recipe (or its ``to_dict()``, what the run store keeps), so a stored run and a fresh
one read alike. Defaults that change nothing are left out (DO-Merging off, no overrides, exact rank).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from merging.methods import REGISTRY
from merging.methods.do_merging import DoMergingOptions
from merging.recipe.codec import Recipe

if TYPE_CHECKING:
    from merging.store.stored_runs import StoredRun


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# parameter values that every recipe before them meant, left out so older labels read the same
_QUIET_DEFAULTS = {("divide_by", "count")}


def lambda_text(value: float) -> str:
    """A λ with at most two decimals ("0.62", "1", "0.5"): a 4-digit λ reads as more precise than a sweep is."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"


def lambdas(weights) -> str:
    """The λ of each adapter, or one λ when they are all equal ("0.62" rather than "0.6182, 0.6182, 0.6182")."""
    values = [lambda_text(float(w)) for w in weights]
    return values[0] if values and len(set(values)) == 1 else ", ".join(values)


def method_label(method: str) -> str:
    """A method's one name on every page: the registry's label ("TIES", "Task arithmetic"), or the key."""

    known = REGISTRY.get(method) if isinstance(method, str) else None
    return known.label if known is not None else str(method)


def describe_recipe(recipe: Recipe | Mapping[str, Any]) -> str:
    """e.g. "TIES (density 0.5, sign sum) of sst2 ×1, spam ×0.6 · OSRM twins · rank exact · seed 0"."""
    if isinstance(recipe, Recipe):
        recipe = recipe.to_dict()
    method = method_label(str(recipe.get("method", "?")))
    parameters = {k: v for k, v in (recipe.get("parameters") or {}).items() if (k, v) not in _QUIET_DEFAULTS}
    head = method + (f" ({', '.join(f'{k} {_number(v)}' for k, v in parameters.items())})" if parameters else "")
    adapters = []
    for adapter in recipe.get("adapters") or []:
        name = adapter.get("name") or str(adapter.get("path", "?")).rstrip("/").rsplit("/", 1)[-1]
        own = adapter.get("parameters") or {}
        extra = f" [{', '.join(f'{k} {_number(v)}' for k, v in own.items())}]" if own else ""
        adapters.append(f"{name} ×{_number(adapter.get('weight', 1.0))}{extra}")
    parts = [f"{head} of {', '.join(adapters) if adapters else 'no adapters'}"]
    osrm = recipe.get("osrm") or "off"
    parts.append({"off": "no OSRM", "twins": "OSRM twins", "posthoc": "OSRM post-hoc"}.get(osrm, f"OSRM {osrm}"))
    rank = recipe.get("rank")
    parts.append("exact rank" if rank is None else f"rank {rank}")
    do = {**DoMergingOptions().to_dict(), **(recipe.get("do_merging") or {})}  # the schema's defaults filled in
    if do["decouple"]:
        parts.append(f"DO decouple ({do['magnitude']})")
    if do["orthogonalize"]:
        parts.append(f"DO orthogonalize ({do['steps']} steps, lr {_number(do['lr'])}, μ {_number(do['mu'])})")
    if recipe.get("overrides"):
        parts.append(f"{len(recipe['overrides'])} weight override(s)")
    parts.append(f"seed {recipe.get('seed', 0)}")
    if recipe.get("base_model"):
        parts.append(f"base {recipe['base_model']}")
    return " · ".join(parts)


def recipe_data(run: StoredRun) -> dict:
    """A stored run's recipe as JSON data: its Recipe's, or (a recipe that cannot be read back) as stored."""
    return run.recipe.to_dict() if run.recipe is not None else dict(run.stored_recipe)


def describe_run(run: StoredRun) -> str:
    """The one-line recipe of a stored run (see describe_recipe)."""
    return describe_recipe(recipe_data(run))


def run_label(run_id: int | None, name: str | None = None) -> str:
    """How a run is named in headers and legends: "baseline 'TA' (run 12)", "run 12", "unstored run"."""
    stored = f"run {run_id}" if run_id is not None else "unstored run"
    return f"'{name}' ({stored})" if name else stored
