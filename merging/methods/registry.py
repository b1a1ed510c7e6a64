"""The method registry: each method is one object that carries its schema and its behaviour.

A `Method` says what it is called, what it does, which parameters it takes (a schema the pages draw
their controls from and the Recipe validates against), and how it merges: from the factors exactly
(`factored`), from the factors block of rows by block (`streamed`, a dense result without holding
the n dense updates), and/or on dense updates (`dense`, also what DO-Merging's directions need).
merge.py picks among these by what a method has, never by its name. A new method is one file that
builds a `Method` plus one line in `catalogue.py`.

Each method also declares how it is written in a mergekit config (`Mergekit`: mergekit's method
name, the parameters both tools name alike, mergekit's defaults), or why no mergekit config merges
what it merges; merging/recipe/mergekit_config.py reads these in both directions.

Implementations receive validated parameters through `MethodArgs`: the method-wide values (schema
defaults filled in) and, for parameters the schema marks `per_adapter`, each adapter's own value.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from merging.adapters.lora import LoraModule
    from merging.methods.factored import Factored

PARAM_KINDS = ("float", "int", "choice", "bool")


class MethodError(ValueError):
    """A method name or parameter that is not allowed; the message names where."""


def _did_you_mean(value: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Param:
    """One parameter of a method: its type, range, default and what it means."""

    name: str
    kind: str  # "float" | "int" | "choice" | "bool"
    default: Any
    minimum: float | None = None  # inclusive unless `exclusive_minimum`
    maximum: float | None = None  # inclusive
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    per_adapter: bool = False  # may also be given per adapter (adapters[i].parameters)
    label: str = ""  # the control's label; "" = the name, capitalised
    # Where a new control starts, when that differs from `default` (what a recipe without the key
    # means, kept for old recipe files): TIES at density 1 trims nothing, so the dashboard starts at 0.5.
    start: Any = None
    # (low, high): the λ search may tune this parameter, by default within these bounds (a float or
    # int parameter; inside its own range). None: not searchable.
    search: tuple[float, float] | None = None

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    @property
    def start_value(self) -> Any:
        return self.default if self.start is None else self.start

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"parameter '{self.name}': kind {self.kind!r} is not one of {PARAM_KINDS}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"parameter '{self.name}': a choice needs its choices")
        self.validate(self.default, f"default of '{self.name}'")  # a schema whose default it refuses is a bug
        if self.start is not None:
            self.validate(self.start, f"start of '{self.name}'")
        if self.search is not None:
            if self.kind not in ("float", "int"):
                raise ValueError(f"parameter '{self.name}': only a number can be searched")
            low, high = self.search
            if not low < high:
                raise ValueError(f"parameter '{self.name}': search bounds {self.search} are not LOW < HIGH")
            self.validate(low, f"search bound of '{self.name}'")
            self.validate(high, f"search bound of '{self.name}'")

    @property
    def searchable(self) -> bool:
        return self.search is not None

    def to_dict(self) -> dict[str, Any]:
        """The schema of this parameter as plain data (`mergescope methods --json`)."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "default": self.default, "help": self.help}
        if self.kind in ("float", "int"):
            data["range"] = {"minimum": self.minimum, "maximum": self.maximum, "exclusive_minimum": self.exclusive_minimum}
        if self.choices:
            data["choices"] = list(self.choices)
        data["per_adapter"] = self.per_adapter
        data["searchable"] = self.searchable
        if self.search is not None:
            data["search_bounds"] = list(self.search)
        return data

    def validate(self, value: Any, where: str) -> Any:
        """The clean value (float, int, str or bool), or MethodError naming `where`."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise MethodError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                hint = _did_you_mean(value, self.choices) if isinstance(value, str) else ""
                raise MethodError(f"{where}: {value!r} is not allowed{hint} (allowed: {', '.join(self.choices)})")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MethodError(f"{where}: expected a number, got {value!r}")
        if self.kind == "int":
            if not math.isfinite(float(value)) or float(value) != int(value):
                raise MethodError(f"{where}: expected a whole number, got {value!r}")
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise MethodError(f"{where}: expected a finite number, got {value!r}")
        if self.minimum is not None:
            if self.exclusive_minimum and not value > self.minimum:
                raise MethodError(f"{where}: expected a number above {self.minimum:g}{self._range()}, got {value!r}")
            if not self.exclusive_minimum and not value >= self.minimum:
                raise MethodError(f"{where}: expected a number ≥ {self.minimum:g}{self._range()}, got {value!r}")
        if self.maximum is not None and not value <= self.maximum:
            raise MethodError(f"{where}: expected a number ≤ {self.maximum:g}{self._range()}, got {value!r}")
        return value

    @property
    def range_text(self) -> str:
        """The allowed values, as the methods table writes them: (0, 1], ≥ 1, a | b, true/false."""
        if self.kind == "bool":
            return "true/false"
        if self.kind == "choice":
            return " | ".join(self.choices)
        low = "" if self.minimum is None else f"{'(' if self.exclusive_minimum else '['}{self.minimum:g}"
        high = "" if self.maximum is None else f"{self.maximum:g}]"
        if low and high:
            return f"{low}, {high}"
        if low:
            return f"{'>' if self.exclusive_minimum else '≥'} {self.minimum:g}"
        return f"≤ {self.maximum:g}" if high else "any"

    def _range(self) -> str:
        if self.minimum is None or self.maximum is None:
            return ""
        opening = "(" if self.exclusive_minimum else "["
        return f" (range {opening}{self.minimum:g}, {self.maximum:g}])"


@dataclass(frozen=True)
class MethodArgs:
    """What an implementation gets besides the updates and the weights.

    `parameters`: the method's validated parameters. `per_adapter[i]`: adapter i's own values for
    parameters marked per_adapter (empty, or one mapping per update passed, in the same order).
    """

    parameters: Mapping[str, Any]
    per_adapter: tuple[Mapping[str, Any], ...] = ()
    generator: torch.Generator | None = None
    device: torch.device | str = "cpu"

    def __getitem__(self, name: str) -> Any:
        return self.parameters[name]

    def value(self, name: str, index: int) -> Any:
        """Adapter `index`'s value of `name`: its own when given, else the method-wide one."""
        if self.per_adapter and name in self.per_adapter[index]:
            return self.per_adapter[index][name]
        return self.parameters[name]

    def select(self, indices: Sequence[int]) -> MethodArgs:
        """The same arguments for a subset of the adapters (e.g. those that have a module)."""
        if not self.per_adapter:
            return self
        return MethodArgs(self.parameters, tuple(self.per_adapter[i] for i in indices), self.generator, self.device)


@dataclass(frozen=True)
class Mergekit:
    """How a method is written in a mergekit config (mergekit's generalized task arithmetic), or why
    it cannot be.

    name         mergekit's `merge_method`; None: no mergekit method merges the same (`refusal` says why)
    parameters   the method's parameters that mergekit names and means alike (density, gamma), per
                 model or global
    normalize    mergekit's default for `normalize` with this method
    rescale      what the sparsifier does with what it keeps, in mergekit's terms: True always
                 rescales by 1/density (DARE), False never, None: nothing to rescale (no `rescale` key)
    A consensus method (one with `divide_by`) maps mergekit's `normalize` onto `divide_by`.
    """

    name: str | None = None
    refusal: str = ""
    parameters: tuple[str, ...] = ()
    normalize: bool = False
    rescale: bool | None = None

    def __post_init__(self) -> None:
        if self.name is None and not self.refusal:
            raise ValueError("a method without a mergekit name says why (refusal)")


NO_MERGEKIT = Mergekit(refusal="mergekit has no method that merges the same")


@dataclass(frozen=True)
class Rule:
    """A rule across a method's parameters: `holds(values)` on the validated values (method-wide,
    or one adapter's with its own values in); else refused, naming every field in `fields`."""

    fields: tuple[str, ...]
    holds: Callable[[Mapping[str, Any]], bool]
    message: str  # what must hold, e.g. "density − epsilon must stay above 0"

    def check(self, values: Mapping[str, Any], where: str) -> None:
        if not self.holds(values):
            named = " and ".join(f"{where}.{name} = {values[name]!r}" for name in self.fields)
            raise MethodError(f"{where}: {named} together are refused: {self.message}")


FactoredMerge = Callable[[Sequence["LoraModule"], Sequence[float], MethodArgs], "Factored"]
StreamedMerge = Callable[[Sequence["LoraModule | None"], Sequence[float], MethodArgs], torch.Tensor]
DenseMerge = Callable[[Sequence[torch.Tensor], Sequence[float], MethodArgs], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """One merge method: what it is, its parameter schema, and its implementations.

    factored(modules, weights, args) -> Factored: the exact merge from the factors sᵢBᵢAᵢ.
    streamed(modules or None, weights, args) -> dense ΔW, rebuilt from the factors a block of rows
        at a time (None contributes zero).
    dense(deltas, weights, args) -> dense ΔW from dense updates (DO-Merging's directions, references).
    At least one is given. `dense_refusal` says why a method without `dense` cannot run on dense
    updates (shown to the user).
    """

    name: str
    label: str
    description: str
    params: tuple[Param, ...] = ()
    factored: FactoredMerge | None = None
    streamed: StreamedMerge | None = None
    dense: DenseMerge | None = None
    dense_refusal: str = ""
    mergekit: Mergekit = NO_MERGEKIT  # how a mergekit config writes it, or why it cannot
    paper: str = ""  # where the method comes from (a link)
    rules: tuple[Rule, ...] = ()  # rules across parameters, checked by `validate`
    _by_name: dict[str, Param] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.factored is None and self.streamed is None and self.dense is None:
            raise ValueError(f"method '{self.name}' has no implementation")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"method '{self.name}' declares a parameter twice: {names}")
        self._by_name.update({p.name: p for p in self.params})
        for name in self.mergekit.parameters:
            if name not in self._by_name:
                raise ValueError(f"method '{self.name}' maps '{name}' to mergekit but has no such parameter")
        for rule in self.rules:
            for name in rule.fields:
                if name not in self._by_name:
                    raise ValueError(f"method '{self.name}' has a rule on '{name}' but no such parameter")

    # ----- the schema

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def param(self, name: str) -> Param:
        return self._by_name[name]

    def has_param(self, name: str) -> bool:
        return name in self._by_name

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, parameters: Mapping[str, Any] | None, where: str = "parameters") -> dict[str, Any]:
        """Every schema parameter (schema order), defaults for missing ones; unknown keys refused."""
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, Mapping):
            raise MethodError(f"{where}: expected an object of {self.name}'s parameters, got {parameters!r}")
        self._refuse_unknown(parameters, self.param_names, where)
        clean = {p.name: p.validate(parameters[p.name], f"{where}.{p.name}") if p.name in parameters else p.default
                 for p in self.params}
        self.check_rules(clean, where)
        return clean

    def check_rules(self, values: Mapping[str, Any], where: str = "parameters") -> None:
        """Refuse values that break a rule across parameters (MethodError naming each field)."""
        for rule in self.rules:
            rule.check(values, where)

    @property
    def searchable(self) -> tuple[Param, ...]:
        """The parameters the λ search may tune, with their default bounds."""
        return tuple(p for p in self.params if p.searchable)

    def to_dict(self) -> dict[str, Any]:
        """The method as plain data (`mergescope methods --json`)."""
        return {
            "name": self.name,
            "label": self.label,
            "description": self.description,
            "paper": self.paper,
            "parameters": [p.to_dict() for p in self.params],
            "rules": [{"fields": list(r.fields), "message": r.message} for r in self.rules],
            "exact_factored": self.exact_factored,
            "runs_on_dense": self.runs_on_dense,
            "mergekit": {"name": self.mergekit.name, "parameters": list(self.mergekit.parameters)}
            if self.mergekit.name is not None else {"name": None, "refusal": self.mergekit.refusal},
        }

    def validate_per_adapter(self, parameters: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
        """One adapter's own values: only parameters marked per_adapter, nothing filled in."""
        parameters = {} if parameters is None else parameters
        if not isinstance(parameters, Mapping):
            raise MethodError(f"{where}: expected an object of per-adapter parameters, got {parameters!r}")
        allowed = tuple(p.name for p in self.params if p.per_adapter)
        self._refuse_unknown(parameters, allowed, where)
        return {name: self._by_name[name].validate(parameters[name], f"{where}.{name}")
                for name in allowed if name in parameters}

    def _refuse_unknown(self, parameters: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
        for key in parameters:
            if key not in allowed:
                hint = _did_you_mean(str(key), allowed)
                listed = ", ".join(allowed) if allowed else "none"
                raise MethodError(f"{where}: '{key}' is not a parameter of {self.name}{hint} (allowed: {listed})")

    # ----- what merge.py asks

    @property
    def exact_factored(self) -> bool:
        """Merges from the factors exactly, with no dense d_out × d_in update."""
        return self.factored is not None

    @property
    def runs_on_dense(self) -> bool:
        """Can merge dense updates, hence DO-Merging's directions."""
        return self.dense is not None

    # ----- convenience: validate keyword parameters and call an implementation

    def args(self, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
             per_adapter: Sequence[Mapping[str, Any]] = (), **parameters: Any) -> MethodArgs:
        clean = self.validate(parameters)
        own = tuple(self.validate_per_adapter(p, f"adapters[{i}].parameters") for i, p in enumerate(per_adapter))
        return MethodArgs(clean, own, generator, device)

    def merge_dense(self, deltas: Sequence[torch.Tensor], weights: Sequence[float],
                    generator: torch.Generator | None = None, **parameters: Any) -> torch.Tensor:
        if self.dense is None:
            raise MethodError(self.dense_refusal or f"{self.name} has no dense implementation")
        return self.dense(deltas, weights, self.args(generator, **parameters))

    def merge_factored(self, modules: Sequence[LoraModule], weights: Sequence[float],
                       device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                       **parameters: Any) -> Factored:
        if self.factored is None:
            raise MethodError(f"{self.name} has no exact factored implementation")
        return self.factored(modules, weights, self.args(generator, device, **parameters))

    def merge_streamed(self, modules: Sequence[LoraModule | None], weights: Sequence[float],
                       device: torch.device | str = "cpu", generator: torch.Generator | None = None,
                       **parameters: Any) -> torch.Tensor:
        if self.streamed is None:
            raise MethodError(f"{self.name} has no streamed implementation")
        return self.streamed(modules, weights, self.args(generator, device, **parameters))


# insertion order = the order the UI lists; filled by merging/methods/catalogue.py
REGISTRY: dict[str, Method] = {}


def register(*methods: Method) -> None:
    for method in methods:
        if method.name in REGISTRY:
            raise ValueError(f"method '{method.name}' is registered twice")
        if not method.paper:
            raise ValueError(f"method '{method.name}' declares no paper link (paper=...)")
        REGISTRY[method.name] = method


def get_method(name: str) -> Method:
    if isinstance(name, str) and name in REGISTRY:
        return REGISTRY[name]
    hint = _did_you_mean(name, list(REGISTRY)) if isinstance(name, str) else ""
    raise MethodError(f"unknown method '{name}'{hint} (allowed: {', '.join(REGISTRY)})")
