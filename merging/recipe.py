"""A merge is data: the Recipe describes one merge completely.

The Merge page's widgets, a JSON/YAML file given to the CLI, a page URL and the run store all hold
the same Recipe, so any result can be reproduced from it. Validation names the bad field and what
is allowed there.

    {"adapters": [{"path": "...", "weight": 1.0}], "method": "ties", "density": 0.5,
     "sign": "total", "rank": null, "seed": 0, "device": "auto",
     "do_merging": {"decouple": false, "orthogonalize": false},
     "overrides": [{"match": "layer\\\\.0\\\\.", "weights": [0.5, 1.0]}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from merging.do_merging import MAGNITUDE_RULES, DoMergingOptions
from merging.lora import layer_of
from merging.methods import METHODS, SIGN_RULES, MethodError, get_method

DEVICES = ("auto", "cpu", "cuda")
KNOTS_INNER = ("task_arithmetic", "ties")


class RecipeError(ValueError):
    """A recipe field that is missing or not allowed; the message names the field."""


@dataclass(frozen=True)
class AdapterRef:
    path: str
    weight: float = 1.0
    name: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).name


@dataclass(frozen=True)
class WeightOverride:
    """Per-adapter weights for the modules whose name matches `match` (a regex) or whose block
    index is in `layers`; the first override that applies to a module wins (mergekit's filters)."""

    weights: tuple[float, ...]
    match: str | None = None
    layers: tuple[int, ...] | None = None

    def applies_to(self, module_name: str) -> bool:
        if self.match is not None and not re.search(self.match, module_name):
            return False
        if self.layers is not None and layer_of(module_name) not in self.layers:
            return False
        return True


@dataclass(frozen=True)
class Recipe:
    adapters: tuple[AdapterRef, ...]
    method: str = "task_arithmetic"
    density: float = 1.0
    sign: str = "total"
    rank: int | None = None
    seed: int = 0
    device: str = "auto"
    do_merging: DoMergingOptions = field(default_factory=DoMergingOptions)
    knots_inner: str = "task_arithmetic"
    overrides: tuple[WeightOverride, ...] = ()
    # Project each adapter onto OSRM's subspace before merging (needs the base model and task data).
    osrm_posthoc: bool = False

    @property
    def weights(self) -> list[float]:
        return [a.weight for a in self.adapters]

    def weights_for(self, module_name: str) -> list[float]:
        for override in self.overrides:
            if override.applies_to(module_name):
                return list(override.weights)
        return self.weights

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["adapters"] = [{k: v for k, v in a.items() if v is not None} for a in data["adapters"]]
        data["overrides"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.items() if v is not None}
            for o in data["overrides"]
        ]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def with_weights(self, weights: list[float]) -> "Recipe":
        return replace(
            self, adapters=tuple(replace(a, weight=float(w)) for a, w in zip(self.adapters, weights, strict=True))
        )


# ----------------------------------------------------------------------------------------------
# Parsing and validation


def _number(data: Mapping, key: str, default: Any, kind: type, where: str = "") -> Any:
    value = data.get(key, default)
    label = f"{where}{key}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"field '{label}': expected a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise RecipeError(f"field '{label}': expected a whole number, got {value!r}")
        return int(value)
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise RecipeError(f"field '{label}': expected a finite number, got {value!r}")
    return value


def _choice(data: Mapping, key: str, default: str, allowed: tuple[str, ...], where: str = "") -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise RecipeError(f"field '{where}{key}': {value!r} is not allowed (allowed: {', '.join(allowed)})")
    return value


def _flag(data: Mapping, key: str, where: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise RecipeError(f"field '{where}{key}': expected true or false, got {value!r}")
    return value


def _check_keys(data: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"unknown field '{where}{unknown[0]}' (allowed: {', '.join(sorted(allowed))})")


def _adapters(raw: Any, base_dir: Path | None) -> tuple[AdapterRef, ...]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError("field 'adapters': expected a non-empty list of {\"path\": ..., \"weight\": ...}")
    refs = []
    for index, item in enumerate(raw):
        where = f"adapters[{index}]."
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, Mapping):
            raise RecipeError(f"field 'adapters[{index}]': expected an object with 'path' and 'weight'")
        _check_keys(item, {"path", "weight", "name"}, where)
        path = item.get("path")
        if not isinstance(path, str) or not path:
            raise RecipeError(f"field '{where}path': expected the path of a PEFT adapter folder")
        if base_dir is not None and not Path(path).is_absolute():
            path = str((base_dir / path).resolve())
        name = item.get("name")
        if name is not None and not isinstance(name, str):
            raise RecipeError(f"field '{where}name': expected a string")
        refs.append(AdapterRef(path=path, weight=_number(item, "weight", 1.0, float, where), name=name))
    names = [r.display_name for r in refs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"field 'adapters': two adapters are named '{duplicates[0]}'; give each a 'name'")
    return tuple(refs)


def _do_merging(raw: Any) -> DoMergingOptions:
    if raw is None:
        return DoMergingOptions()
    if not isinstance(raw, Mapping):
        raise RecipeError("field 'do_merging': expected an object like {\"decouple\": false, \"orthogonalize\": false}")
    where = "do_merging."
    _check_keys(raw, {"decouple", "orthogonalize", "magnitude", "steps", "lr", "mu"}, where)
    defaults = DoMergingOptions()
    options = DoMergingOptions(
        decouple=_flag(raw, "decouple", where),
        orthogonalize=_flag(raw, "orthogonalize", where),
        magnitude=_choice(raw, "magnitude", defaults.magnitude, MAGNITUDE_RULES, where),
        steps=_number(raw, "steps", defaults.steps, int, where),
        lr=_number(raw, "lr", defaults.lr, float, where),
        mu=_number(raw, "mu", defaults.mu, float, where),
    )
    if options.steps < 0 or options.steps > 10_000:
        raise RecipeError("field 'do_merging.steps': expected 0 to 10000")
    if options.lr <= 0:
        raise RecipeError("field 'do_merging.lr': expected a positive number")
    if options.mu < 0:
        raise RecipeError("field 'do_merging.mu': expected a number ≥ 0")
    return options


def _overrides(raw: Any, count: int) -> tuple[WeightOverride, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise RecipeError("field 'overrides': expected a list of {\"match\"|\"layers\", \"weights\"}")
    result = []
    for index, item in enumerate(raw):
        where = f"overrides[{index}]."
        if not isinstance(item, Mapping):
            raise RecipeError(f"field 'overrides[{index}]': expected an object")
        _check_keys(item, {"match", "layers", "weights"}, where)
        weights = item.get("weights")
        if not isinstance(weights, list) or len(weights) != count:
            raise RecipeError(f"field '{where}weights': expected a list of {count} numbers, one per adapter")
        weights = tuple(_number({"w": w}, "w", None, float, where + "weights.") for w in weights)
        match = item.get("match")
        if match is not None:
            try:
                re.compile(match)
            except (re.error, TypeError) as err:
                raise RecipeError(f"field '{where}match': not a valid regular expression ({err})") from err
        layers = item.get("layers")
        if layers is not None:
            if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
                raise RecipeError(f"field '{where}layers': expected a list of block indices")
            layers = tuple(layers)
        if match is None and layers is None:
            raise RecipeError(f"field '{where}match': give 'match' (a regex) or 'layers' (block indices)")
        result.append(WeightOverride(weights=weights, match=match, layers=layers))
    return tuple(result)


RECIPE_FIELDS = {
    "adapters", "method", "density", "sign", "rank", "seed", "device", "do_merging", "knots_inner", "overrides",
    "osrm_posthoc",
}


def recipe_from_dict(data: Any, base_dir: Path | None = None) -> Recipe:
    """Validate a parsed recipe. Relative adapter paths resolve against `base_dir` when given."""
    if not isinstance(data, Mapping):
        raise RecipeError("a recipe must be an object (a JSON/YAML mapping)")
    _check_keys(data, RECIPE_FIELDS, "")
    adapters = _adapters(data.get("adapters"), base_dir)
    method = data.get("method", "task_arithmetic")
    if not isinstance(method, str):
        raise RecipeError(f"field 'method': expected a name (allowed: {', '.join(METHODS)})")
    try:
        get_method(method)
    except MethodError as err:
        raise RecipeError(f"field 'method': {err}") from err
    density = _number(data, "density", 1.0, float)
    if density is None or not 0.0 < density <= 1.0:
        raise RecipeError(f"field 'density': expected a number in (0, 1], got {data.get('density')!r}")
    rank = _number(data, "rank", None, int)
    if rank is not None and rank < 1:
        raise RecipeError(f"field 'rank': expected null (exact) or a positive integer, got {rank}")
    seed = _number(data, "seed", 0, int)
    return Recipe(
        adapters=adapters,
        method=method,
        density=density,
        sign=_choice(data, "sign", "total", SIGN_RULES),
        rank=rank,
        seed=0 if seed is None else seed,
        device=_choice(data, "device", "auto", DEVICES),
        do_merging=_do_merging(data.get("do_merging")),
        knots_inner=_choice(data, "knots_inner", "task_arithmetic", KNOTS_INNER),
        overrides=_overrides(data.get("overrides"), len(adapters)),
        osrm_posthoc=_flag(data, "osrm_posthoc", ""),
    )


def parse_recipe_text(text: str, base_dir: Path | None = None, source: str = "recipe") -> Recipe:
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON: one parser for both
    except yaml.YAMLError as err:
        raise RecipeError(f"{source}: not valid JSON or YAML ({err})".replace("\n", " ")) from err
    return recipe_from_dict(data, base_dir)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RecipeError(f"{path}: no such recipe file") from err
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text") from err
    return parse_recipe_text(text, base_dir=path.resolve().parent, source=str(path))
