"""The Recipe ↔ widgets, for the Merge and Sweep pages: one function each way, in one place.

`recipe_from_widgets` builds the Recipe from the widgets' state; `widgets_from_recipe` sets the
widgets' state from a Recipe (a share link, "Reopen in Merge"). Each method's controls are drawn
from its parameter schema in the registry (a float with a range → slider, a choice → radio or
select, a bool → toggle), so a new method needs nothing here.

Every value from a URL went through `Recipe.from_url` (the library's validation) and is then
clamped to the range its widget can show, with a warning naming the field: a share link can never
put a value into a widget that the widget refuses (Streamlit raises on those, on every rerun).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from merging.lab import catalog
from merging.methods import REGISTRY, Param, get_method
from merging.methods.do_merging import SCHEMA as DO_SCHEMA
from merging.methods.do_merging import DoMergingOptions
from merging.recipe.codec import OSRM_MODES, AdapterRef, Recipe, RecipeError, WeightOverride

WEIGHT_RANGE = (0.0, 2.0)  # the λ sliders
RANK_RANGE = (1, 1024)
SEED_RANGE = (0, 2**31 - 1)
# the controls' ranges (narrower than what a recipe may hold: DO-Merging's schema, do_merging.SCHEMA)
DO_RANGES = {"steps": (0, 2000), "lr": (0.0001, 1.0), "mu": (0.0, 100.0)}


def do_key(name: str) -> str:
    """The session-state key of DO-Merging's option `name` (one control per schema field)."""
    return f"do_{name}"


_CASTS = {"bool": bool, "int": int, "float": float, "choice": str}
OSRM_LABELS = {
    "off": "off",
    "twins": "OSRM twins",
    "posthoc": "post-hoc projection",
}
OSRM_HELP = (
    "OSRM twins: merge each adapter's OSRM-initialised twin (same task, same folder); an adapter without "
    "one is projected onto OSRM's subspace after the fact. Post-hoc projection: project every adapter. "
    "Saved in the recipe as `osrm`."
)
KEEP = "session"  # widget values survive a trip to another page


# ----------------------------------------------------------------------------------------------
# Widget keys: one place names them


def adapters_key(prefix: str) -> str:
    return f"{prefix}_adapters"


def weight_key(name: str) -> str:
    return f"weight:{name}"


def param_key(prefix: str, method: str, name: str) -> str:
    return f"{prefix}_param:{method}:{name}"


def adapter_param_key(prefix: str, method: str, adapter: str, name: str) -> str:
    return f"{prefix}_adapter_param:{method}:{adapter}:{name}"


def carry_key(prefix: str) -> str:
    """Recipe fields with no widget (overrides, base_model, dtype, modules_to_save): kept as they came, and said so."""
    return f"{prefix}_carry"


# ----------------------------------------------------------------------------------------------
# A parameter's widget and its range


def widget_range(param: Param) -> tuple[float | None, float | None, float]:
    """(lowest, highest, step) a parameter's widget shows; an exclusive minimum starts one step up."""
    if param.kind == "int":
        step = 1
    elif param.minimum is not None and param.maximum is not None and param.maximum - param.minimum > 1:
        step = (param.maximum - param.minimum) / 100
    else:
        step = 0.01
    low = param.minimum
    if low is not None and param.exclusive_minimum:
        low = low + step
    return low, param.maximum, step


def _clamp(value: float, low: float | None, high: float | None, what: str, warnings: list[str]) -> float:
    clamped = value
    if low is not None and clamped < low:
        clamped = low
    if high is not None and clamped > high:
        clamped = high
    if clamped != value:
        shown = f"[{'−∞' if low is None else f'{low:g}'}, {'∞' if high is None else f'{high:g}'}]"
        warnings.append(f"{what}: {value:g} is outside what the page can set {shown}; set to {clamped:g}.")
    return clamped


def _widget_value(param: Param, value: Any, what: str, warnings: list[str]) -> Any:
    if param.kind in ("float", "int"):
        low, high, _ = widget_range(param)
        value = _clamp(value, low, high, what, warnings)
        return int(value) if param.kind == "int" else float(value)
    return value


def param_control(prefix: str, method: str, param: Param, disabled: bool = False) -> Any:
    """One parameter's widget, drawn from its schema; returns its value."""
    key = param_key(prefix, method, param.name)
    label = param.display_label
    st.session_state.setdefault(key, _widget_value(param, param.start_value, label, []))
    if param.kind == "bool":
        return st.toggle(label, key=key, help=param.help or None, disabled=disabled, persist_state=KEEP)
    if param.kind == "choice":
        if len(param.choices) <= 3:
            return st.radio(label, param.choices, horizontal=True, key=key, help=param.help or None,
                            disabled=disabled, persist_state=KEEP)
        return st.selectbox(label, param.choices, key=key, help=param.help or None, disabled=disabled,
                            persist_state=KEEP)
    low, high, step = widget_range(param)
    if param.kind == "float" and low is not None and high is not None:
        return st.slider(label, float(low), float(high), step=float(step), key=key, help=param.help or None,
                         disabled=disabled, persist_state=KEEP)
    cast = int if param.kind == "int" else float
    return st.number_input(
        label, None if low is None else cast(low), None if high is None else cast(high), step=cast(step), key=key,
        help=param.help or None, disabled=disabled, persist_state=KEEP,
    )


def method_controls(prefix: str, method: str, disabled: bool = False) -> dict[str, Any]:
    """Every parameter of the method, from its schema; returns {name: value}."""
    return {p.name: param_control(prefix, method, p, disabled) for p in get_method(method).params}


def per_adapter_controls(prefix: str, method: str, names: Sequence[str]) -> None:
    """Optional per-adapter values of the parameters the schema marks per_adapter (empty = the method's)."""
    params = [p for p in get_method(method).params if p.per_adapter and p.kind in ("float", "int")]
    if not params or not names:
        return
    set_any = any(st.session_state.get(adapter_param_key(prefix, method, n, p.name)) is not None
                  for n in names for p in params)
    with st.expander("Per-adapter values", expanded=set_any):
        st.caption("Leave empty to use the method's value.")
        columns = st.columns(min(len(names), 4))
        for index, name in enumerate(names):
            with columns[index % len(columns)]:
                for param in params:
                    low, high, step = widget_range(param)
                    cast = int if param.kind == "int" else float
                    key = adapter_param_key(prefix, method, name, param.name)
                    st.session_state.setdefault(key, None)
                    st.number_input(
                        f"{param.name} · {name}", None if low is None else cast(low),
                        None if high is None else cast(high), step=cast(step), key=key, persist_state=KEEP,
                    )


def osrm_control(prefix: str, help_text: str = OSRM_HELP) -> str:
    st.session_state.setdefault(f"{prefix}_osrm", "off")
    return st.radio("OSRM", OSRM_MODES, format_func=OSRM_LABELS.get, horizontal=True, key=f"{prefix}_osrm",
                    help=help_text, persist_state=KEEP)


# ----------------------------------------------------------------------------------------------
# Widgets → Recipe


@dataclass(frozen=True)
class Carry:
    """Recipe fields the page has no widget for; a link or a reopened run keeps them."""

    overrides: tuple[WeightOverride, ...] = ()
    base_model: str | None = None
    dtype: str = "auto"
    modules_to_save: str = "average"

    def describe(self) -> str:
        parts = []
        if self.overrides:
            parts.append(f"{len(self.overrides)} per-module weight override{'s' if len(self.overrides) != 1 else ''}")
        if self.base_model:
            parts.append(f"base model `{self.base_model}`")
        if self.dtype != "auto":
            parts.append(f"dtype {self.dtype}")
        if self.modules_to_save != "average":
            parts.append(f"carried modules_to_save: {self.modules_to_save}")
        return ", ".join(parts)


def recipe_from_widgets(
    prefix: str, entries: Sequence[catalog.Entry], device: str, with_weights: bool = True,
    with_merge_settings: bool = True,
) -> Recipe:
    """The Recipe the page's widgets describe. Raises RecipeError/MethodError when it is not valid."""
    state = st.session_state
    names = list(state.get(adapters_key(prefix)) or [])
    if not names:
        raise RecipeError("choose at least one adapter")
    method = get_method(state.get(f"{prefix}_method", next(iter(REGISTRY))))
    parameters = {p.name: state.get(param_key(prefix, method.name, p.name), p.default) for p in method.params}
    refs = []
    for name in names:
        entry = catalog.entry_by_name(entries, name)
        if entry is None:
            raise RecipeError(f"adapter '{name}' is not in the adapter list any more")
        own = {
            p.name: state[adapter_param_key(prefix, method.name, name, p.name)]
            for p in method.params
            if p.per_adapter and state.get(adapter_param_key(prefix, method.name, name, p.name)) is not None
        }
        weight = float(state.get(weight_key(name), 1.0)) if with_weights else 1.0
        refs.append(AdapterRef(path=str(entry.path), weight=weight, name=entry.name, parameters=own))
    carry: Carry = state.get(carry_key(prefix)) or Carry()
    overrides = tuple(o for o in carry.overrides if len(o.weights) == len(refs))
    fields: dict[str, Any] = {}
    if with_merge_settings:
        fields = {
            "rank": None if state.get(f"{prefix}_exact", True) else int(state.get(f"{prefix}_rank", 8)),
            "seed": int(state.get(f"{prefix}_seed", 0)),
            "do_merging": DoMergingOptions(
                **{p.name: _CASTS[p.kind](state.get(do_key(p.name), p.default)) for p in DO_SCHEMA}
            ),
        }
    return Recipe(  # validated when made, as every Recipe is
        adapters=tuple(refs), method=method.name, parameters=parameters, device=device,
        osrm=state.get(f"{prefix}_osrm", "off"), base_model=carry.base_model, dtype=carry.dtype,
        modules_to_save=carry.modules_to_save, overrides=overrides, **fields,
    )


# ----------------------------------------------------------------------------------------------
# Recipe → widgets


def widgets_from_recipe(
    prefix: str, recipe: Recipe, entries: Sequence[catalog.Entry], with_weights: bool = True,
    with_merge_settings: bool = True, allowed_names: Sequence[str] | None = None,
) -> list[str]:
    """Set the page's widgets from a Recipe; returns warnings for what was clamped or left out.

    Adapters are matched to the catalogue by name, else by path; one that is not there (or not
    allowed on this page) is left out with a warning, never loaded from the link's path.
    """
    state = st.session_state
    warnings: list[str] = []
    method = get_method(recipe.method)
    names, missing = [], []
    for ref in recipe.adapters:
        entry = catalog.entry_for(entries, ref.name, ref.path)
        if entry is None or not entry.usable or (allowed_names is not None and entry.name not in allowed_names):
            missing.append(ref.display_name)
            continue
        if entry.name in names:
            continue
        names.append(entry.name)
        if with_weights:
            state[weight_key(entry.name)] = _clamp(
                ref.weight, *WEIGHT_RANGE, f"λ of {entry.name} (adapters[].weight)", warnings
            )
        for p in method.params:
            if p.per_adapter and p.kind in ("float", "int"):
                value = ref.parameters.get(p.name)
                key = adapter_param_key(prefix, method.name, entry.name, p.name)
                state[key] = None if value is None else _widget_value(
                    p, value, f"{entry.name}'s {p.name} (adapters[].parameters.{p.name})", warnings
                )
    if missing:
        warnings.append(
            "Not in the adapter list here, left out: " + ", ".join(missing)
            + ". Import them on the Adapters page to use them."
        )
    state[adapters_key(prefix)] = names
    state[f"{prefix}_method"] = method.name
    for p in method.params:
        state[param_key(prefix, method.name, p.name)] = _widget_value(
            p, recipe.parameters[p.name], f"{p.name} (parameters.{p.name})", warnings
        )
    state[f"{prefix}_osrm"] = recipe.osrm
    overrides = recipe.overrides
    if overrides and len(names) != len(recipe.adapters):
        warnings.append("The recipe's per-module weight overrides were left out: they need every adapter it lists.")
        overrides = ()
    state[carry_key(prefix)] = Carry(overrides, recipe.base_model, recipe.dtype, recipe.modules_to_save)
    if with_merge_settings:
        state[f"{prefix}_exact"] = recipe.rank is None
        if recipe.rank is not None:
            state[f"{prefix}_rank"] = int(_clamp(recipe.rank, *RANK_RANGE, "Output rank (rank)", warnings))
        state[f"{prefix}_seed"] = int(_clamp(recipe.seed, *SEED_RANGE, "Seed (seed)", warnings))
        for p, value in zip(DO_SCHEMA, recipe.do_merging.to_dict().values(), strict=True):
            if p.name in DO_RANGES:
                where = f"{p.display_label} (do_merging.{p.name})"
                value = _CASTS[p.kind](_clamp(value, *DO_RANGES[p.name], where, warnings))
            state[do_key(p.name)] = value
    return warnings


def read_link(prefix: str, entries: Sequence[catalog.Entry], **options: Any) -> None:
    """Once per session: set the widgets from the URL's `recipe=`; anything wrong is a warning.

    A value the Recipe refuses (e.g. density 5, seed "abc") refuses the whole link, named; a valid
    value beyond a widget's range (e.g. λ = 99) is clamped to it, named. A recipe on another base
    model first switches the sidebar to it and reruns, so that `entries` (the adapters listed for
    the sidebar's model) hold the link's adapters when the widgets are set."""
    from pages import _ui

    done, switched = f"_{prefix}_from_url_done", f"_{prefix}_from_url_switched"
    if st.session_state.get(done):
        _show_link_notes(prefix)
        return
    raw = st.query_params.get("recipe")
    if not raw:
        st.session_state[done] = True
        return
    def path_of(name: str) -> str:  # old links name catalogue adapters without a path
        entry = catalog.entry_by_name(entries, name)
        return str(entry.path) if entry is not None else name

    try:
        recipe = Recipe.from_url(raw, path_of=path_of)
    except (RecipeError, ValueError, TypeError, RecursionError, OverflowError) as err:
        st.session_state[done] = True
        _keep_link_notes(prefix, [f"The link's recipe was not used: {err}. Starting from the defaults."], {})
        _show_link_notes(prefix)
        return
    # the sidebar's chooser is drawn already in this run: it switches on the next (once, whatever happens)
    if not st.session_state.pop(switched, False) and _ui.choose_base_model_of(recipe):
        st.session_state[switched] = True
        st.rerun()
    st.session_state[done] = True
    before = {key: value for key, value in st.session_state.items() if isinstance(key, str)}
    warnings = widgets_from_recipe(prefix, recipe, entries, **options)
    set_now = {
        key: value for key, value in st.session_state.items()
        if isinstance(key, str) and not key.startswith("_") and (key not in before or before[key] is not value)
    }
    _keep_link_notes(prefix, [f"The link's recipe: {warning}" for warning in warnings], set_now)
    _show_link_notes(prefix)


# What was refused or clamped in a share link stays on the page (a warning drawn on every rerun)
# until the user dismisses it or changes one of the controls the link set: not a message that is
# gone at the next rerun.


def _keep_link_notes(prefix: str, notes: list[str], controls: dict[str, Any]) -> None:
    st.session_state[f"_{prefix}_link_notes"] = {"notes": notes, "controls": controls} if notes else None


def _show_link_notes(prefix: str) -> None:
    key = f"_{prefix}_link_notes"
    kept = st.session_state.get(key)
    if not kept:
        return
    changed = any(
        name in st.session_state and st.session_state[name] != value for name, value in kept["controls"].items()
    )
    if changed or st.session_state.get(f"_{prefix}_link_notes_dismiss"):
        st.session_state[key] = None
        return
    for note in kept["notes"]:
        st.warning(note)
    st.button("Dismiss the link's warnings", key=f"_{prefix}_link_notes_dismiss")
