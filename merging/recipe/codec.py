"""A merge is data: the Recipe describes one merge completely, and is the only codec for it.

The Merge and Sweep pages' widgets, a JSON/YAML file given to the CLI, a page URL and the run store
all hold the same Recipe, through one pair of functions: `Recipe.to_dict` / `Recipe.from_dict`
(and `to_url` / `from_url`, `to_json` / `load_recipe` on top of them). If a page needs a setting the
Recipe lacks, the Recipe gains a field here, with validation and a round-trip test.

    {"adapters": [{"path": "zoo/sms_spam-standard", "weight": 1.0, "name": "sms_spam-standard",
                   "parameters": {"density": 0.3}, "eval": "data/spam.csv", "task": "spam"}],
     "method": "ties", "parameters": {"density": 0.5, "sign": "total"},
     "rank": null, "seed": 0, "device": "auto", "osrm": "off", "base_model": null, "dtype": "auto",
     "modules_to_save": "average",
     "do_merging": {"decouple": false, "orthogonalize": false, "magnitude": "mean",
                    "steps": 50, "lr": 0.01, "mu": 1.0},
     "overrides": [{"match": "layer\\\\.0\\\\.", "weights": [0.5, 1.0]}]}

`parameters` belong to the method and are checked against its schema in the method registry
(merging.methods): unknown keys are refused, missing ones take the schema's default, and `to_dict`
writes every one, so a stored recipe does not change meaning when a default does.
`adapters[i].parameters` holds per-adapter values of the parameters the schema marks `per_adapter`.
`adapters[i].eval` is the user's evaluation file for that adapter's task (relative paths resolve
against the recipe file's folder, like adapter paths) and `adapters[i].task` its name (default: the
file's stem); without them the adapter's own task (mergescope.json) is scored, as before.
`adapters[i].dev` (needs `eval`) is the λ search's dev file for that task, in the same formats;
without it the search carves a seeded dev split from `eval` and reports on the rest (merging.search.study).

`osrm` says how OSRM enters the merge, resolved by the library from the recipe alone
(merging.lab.catalog.merge_inputs), so the CLI and the dashboard give the same body:
  off      the adapters as listed;
  twins    each adapter swapped for its OSRM-trained twin (same task, init "osrm", same folder of
           adapters); one without a twin is projected post-hoc, as the dashboard always did;
  posthoc  each adapter projected onto OSRM's subspace before merging.

`modules_to_save` is the rule for whole tensors adapters train besides LoRA (PEFT's
modules_to_save: embed_tokens, lm_head, ...) carried into the merged output: `average`, the
λ-weighted average Σ λᵢ·Tᵢ / Σ λᵢ of the copies of the adapters that carry it, or `first`, the copy
of the first listed adapter that carries it. Classification heads are not merged by it: each task
keeps its own head (merging.engine.merge).

Old files and stored runs keep working: the flat keys of the previous form (`density`, `sign`,
`knots_inner`, `osrm_posthoc`, and the old share links' boolean `osrm`) are accepted by `from_dict`
and mapped into this form; `to_dict` never writes them.

Paths, one rule: in a recipe file every relative path — `adapters[].path`, `adapters[].eval`, and a
`base_model` that names a folder — is relative to the recipe file's folder, never to the working
folder (a relative `base_model` that is no folder there is taken as given: a Hub id, looked up in
the local cache by merging.models.base_check). A loaded Recipe, and every stored run, holds them absolute;
`to_file(path)` writes the paths under the file's folder relative to it again, so the folder
travels whole.

Files: JSON is read as JSON (`.yaml`/`.yml` files only as YAML). YAML is read with YAML 1.2's
core-schema rules for numbers and booleans, not PyYAML's YAML 1.1 ones: `5e-1`, `1e-3` and `1E0`
are numbers, and `off`/`yes` are strings (in YAML 1.1 `5e-1` is a string and `osrm: off` is false).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from merging.adapters.lora import layer_of
from merging.methods import REGISTRY, MethodError, get_method
from merging.methods.do_merging import FIELDS as DO_FIELDS
from merging.methods.do_merging import SCHEMA as DO_SCHEMA
from merging.methods.do_merging import STEPS_MAX, DoMergingOptions

DEVICES = ("auto", "cpu", "cuda")
OSRM_MODES = ("off", "twins", "posthoc")
DTYPES = ("auto", "float32", "bfloat16", "float16")
MODULES_TO_SAVE_RULES = ("average", "first")
DO_STEPS_MAX = STEPS_MAX  # the earlier name
YAML_SUFFIXES = (".yaml", ".yml")
# A recipe is a few hundred bytes; one with a per-layer override for every block of a large model
# stays far below this. Checked before reading: a larger file, or one that is not a regular file
# (/dev/zero, a pipe), is refused at once.
MAX_RECIPE_BYTES = 1024**2
# JSON/YAML nesting deeper than any recipe needs is refused before parsing (no RecursionError).
MAX_NESTING = 64


class RecipeError(ValueError):
    """A recipe field that is missing or not allowed; the message names the field."""


def _shown(value: Any, limit: int = 60) -> str:
    """A value as the message shows it: its repr, cut short (a hostile link may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hint(value: Any, allowed: Any) -> str:
    """`; did you mean 'x'?` when a string is close to one of the allowed names."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class AdapterRef:
    path: str
    weight: float = 1.0
    name: str | None = None
    # Per-adapter values of the method's `per_adapter` parameters (e.g. mergekit's per-model density).
    parameters: dict[str, Any] = field(default_factory=dict, hash=False)
    # The user's evaluation file for this adapter's task (JSONL prompt/completion or chat messages,
    # CSV/JSONL text,label), and the task's name (default: the file's stem). None: the adapter's
    # own task (mergescope.json), as before.
    eval: str | None = None
    task: str | None = None
    # The λ search's dev file for this task (same formats as `eval`). None: the search carves a
    # seeded dev split from `eval` and reports on the rest (merging.search.study).
    dev: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or Path(self.path).name

    @property
    def task_name(self) -> str | None:
        """The task this adapter is scored on when the recipe gives its evaluation file."""
        if self.task is not None:
            return self.task
        return Path(self.eval).stem if self.eval is not None else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "weight": self.weight}
        if self.name is not None:
            data["name"] = self.name
        if self.parameters:
            data["parameters"] = dict(self.parameters)
        if self.eval is not None:
            data["eval"] = self.eval
        if self.task is not None:
            data["task"] = self.task
        if self.dev is not None:
            data["dev"] = self.dev
        return data


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
        return self.layers is None or layer_of(module_name) in self.layers

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.match is not None:
            data["match"] = self.match
        if self.layers is not None:
            data["layers"] = list(self.layers)
        data["weights"] = list(self.weights)
        return data


@dataclass(frozen=True)
class Recipe:
    adapters: tuple[AdapterRef, ...]
    method: str = "task_arithmetic"
    # The method's own parameters; completed with the schema's defaults on construction.
    parameters: dict[str, Any] = field(default_factory=dict, hash=False)
    rank: int | None = None
    seed: int = 0
    device: str = "auto"
    osrm: str = "off"
    base_model: str | None = None
    dtype: str = "auto"
    modules_to_save: str = "average"  # how carried whole tensors (embed_tokens, lm_head) are merged
    do_merging: DoMergingOptions = field(default_factory=DoMergingOptions)
    overrides: tuple[WeightOverride, ...] = ()

    def __post_init__(self) -> None:
        # Every Recipe, however built, is valid: what `from_dict` refuses, the constructor refuses
        # (RecipeError naming the field), and it carries the method's full, checked parameter set.
        _check_recipe(self)

    @property
    def weights(self) -> list[float]:
        return [a.weight for a in self.adapters]

    def weights_for(self, module_name: str) -> list[float]:
        for override in self.overrides:
            if override.applies_to(module_name):
                return list(override.weights)
        return self.weights

    def adapter_parameters(self, index: int) -> dict[str, Any]:
        """The method's parameters as they apply to adapter `index` (its own values win)."""
        return {**self.parameters, **self.adapters[index].parameters}

    def with_weights(self, weights: list[float]) -> Recipe:
        return replace(
            self, adapters=tuple(replace(a, weight=float(w)) for a, w in zip(self.adapters, weights, strict=True))
        )

    # -- the codec ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapters": [a.to_dict() for a in self.adapters],
            "method": self.method,
            "parameters": dict(self.parameters),
            "rank": self.rank,
            "seed": self.seed,
            "device": self.device,
            "osrm": self.osrm,
            "base_model": self.base_model,
            "dtype": self.dtype,
            "modules_to_save": self.modules_to_save,
            "do_merging": self.do_merging.to_dict(),
            "overrides": [o.to_dict() for o in self.overrides],
        }

    @classmethod
    def from_dict(
        cls, data: Any, base_dir: Path | None = None, path_of: Callable[[str], str] | None = None
    ) -> Recipe:
        return recipe_from_dict(data, base_dir, path_of)

    def to_file(self, path: str | Path) -> Path:
        """Write the recipe (YAML for .yaml/.yml, else JSON) with every path inside the file's folder
        relative to it, so `load_recipe` of the file, wherever the folder is moved, gives this Recipe
        with its paths moved along (see the module docstring)."""
        path = Path(path)
        folder = path.resolve().parent

        def portable(value: str | None) -> str | None:
            if value is None or not Path(value).is_absolute():
                return value
            try:
                return Path(value).resolve().relative_to(folder).as_posix() or "."
            except ValueError:
                return value  # outside the file's folder: stays absolute

        data = self.to_dict()
        for adapter in data["adapters"]:
            adapter["path"] = portable(adapter["path"])
            for task_file in ("eval", "dev"):
                if adapter.get(task_file) is not None:
                    adapter[task_file] = portable(adapter[task_file])
        if data["base_model"] is not None and Path(data["base_model"]).is_dir():
            data["base_model"] = portable(data["base_model"])
        text = (
            yaml.dump(data, Dumper=_Yaml12Dumper, sort_keys=False, allow_unicode=True)
            if path.suffix.lower() in YAML_SUFFIXES
            else json.dumps(data, indent=2, allow_nan=False)
        )
        path.write_text(text, encoding="utf-8")
        return path

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_yaml(self) -> str:
        """YAML that reads back to this Recipe (strings that look like numbers are quoted)."""
        return yaml.dump(self.to_dict(), Dumper=_Yaml12Dumper, sort_keys=False, allow_unicode=True)

    def to_url(self) -> str:
        """The value of the page URL's `recipe=` query parameter: compact JSON of to_dict()."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_url(cls, value: str, path_of: Callable[[str], str] | None = None) -> Recipe:
        """Read a share link's `recipe=` value; anything wrong is one RecipeError naming the field.
        `path_of(name)` gives the path of an adapter the link names without a path (old links)."""
        return recipe_from_dict(_json_loads(value, "the link's recipe"), path_of=path_of)


# ----------------------------------------------------------------------------------------------
# Validation of each field


def _number(data: Mapping, key: str, default: Any, kind: type, where: str = "") -> Any:
    value = data.get(key, default)
    label = f"{where}{key}"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecipeError(f"field '{label}': expected a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RecipeError(f"field '{label}': expected a finite number, got {_shown(value)}")
    if kind is int:
        if number != int(number):
            raise RecipeError(f"field '{label}': expected a whole number, got {_shown(value)}")
        return int(value)
    return number


def _choice(data: Mapping, key: str, default: str, allowed: tuple[str, ...], where: str = "") -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or value not in allowed:
        raise RecipeError(
            f"field '{where}{key}': {_shown(value)} is not allowed (allowed: {', '.join(allowed)}){_hint(value, allowed)}"
        )
    return value


def _flag(data: Mapping, key: str, where: str, default: bool = False) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise RecipeError(f"field '{where}{key}': expected true or false, got {_shown(value)}")
    return value


def _check_keys(data: Mapping, allowed: set[str] | tuple[str, ...], where: str, also: tuple[str, ...] = ()) -> None:
    """Refuse keys outside `allowed` (`also`: accepted, but not offered: the old flat form)."""
    unknown = sorted(str(k) for k in data if k not in allowed and k not in also)
    if unknown:
        name = unknown[0]
        raise RecipeError(
            f"unknown field '{where}{name[:40]}' (allowed: {', '.join(sorted(allowed))}){_hint(name, allowed)}"
        )


def _method_error(err: MethodError) -> RecipeError:
    """The registry's `where: what` as this module's `field 'where': what`."""
    where, _, what = str(err).partition(": ")
    message = f"field '{where}': {what}" if what and " " not in where else str(err)
    return RecipeError(message if len(message) <= 300 else message[:299] + "…")


def _method_parameters(method_name: str, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"field '{where}': expected an object of {method_name}'s parameters, got {_shown(raw)}")
    try:
        return get_method(method_name).validate(dict(raw), where)
    except MethodError as err:
        raise _method_error(err) from err


def _adapter_parameters(method_name: str, raw: Any, where: str) -> dict[str, Any]:
    """Per-adapter values: only the parameters the method's schema marks `per_adapter`."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RecipeError(f"field '{where}': expected an object like {{\"density\": 0.3}}, got {_shown(raw)}")
    per_adapter = {p.name: p for p in get_method(method_name).params if p.per_adapter}
    clean = {}
    for key, value in raw.items():
        if key not in per_adapter:
            allowed = ", ".join(per_adapter) or f"none: {method_name} takes no per-adapter parameters"
            raise RecipeError(
                f"unknown field '{where}.{str(key)[:40]}' (allowed: {allowed}){_hint(key, per_adapter)}"
            )
        try:
            clean[key] = per_adapter[key].validate(value, f"{where}.{key}")
        except MethodError as err:
            raise _method_error(err) from err
    return clean


def _task_file(item: Mapping, key: str, what: str, base_dir: Path | None, where: str) -> str | None:
    """`adapters[i].eval` / `.dev`: a task file's path, resolved against the recipe's folder."""
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise RecipeError(f"field '{where}{key}': expected the path of {what} (.jsonl or .csv), got {_shown(value)}")
    if base_dir is not None and not Path(value).is_absolute():
        value = str((base_dir / value).resolve())
    return value


def _adapters(
    raw: Any, base_dir: Path | None, method_name: str, path_of: Callable[[str], str] | None = None
) -> tuple[AdapterRef, ...]:
    if not isinstance(raw, list) or not raw:
        raise RecipeError("field 'adapters': expected a non-empty list of {\"path\": ..., \"weight\": ...}")
    refs = []
    for index, item in enumerate(raw):
        where = f"adapters[{index}]."
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, Mapping):
            raise RecipeError(f"field 'adapters[{index}]': expected an object with 'path' and 'weight', got {_shown(item)}")
        _check_keys(item, {"path", "weight", "name", "parameters", "eval", "task", "dev"}, where)
        path = item.get("path")
        if path is None and path_of is not None and isinstance(item.get("name"), str) and item["name"]:
            path = path_of(item["name"])  # a share link may name a catalogue adapter instead
        if not isinstance(path, str) or not path or "\x00" in path:
            raise RecipeError(f"field '{where}path': expected the path of a PEFT adapter folder, got {_shown(path)}")
        if base_dir is not None and not Path(path).is_absolute():
            path = str((base_dir / path).resolve())
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise RecipeError(f"field '{where}name': expected a non-empty string, got {_shown(name)}")
        weight = _number(item, "weight", 1.0, float, where)
        if weight is None:
            raise RecipeError(f"field '{where}weight': expected a number, got null")
        parameters = _adapter_parameters(method_name, item.get("parameters"), f"{where}parameters")
        eval_file = _task_file(item, "eval", "an evaluation file", base_dir, where)
        dev_file = _task_file(item, "dev", "a dev file for the λ search", base_dir, where)
        if dev_file is not None and eval_file is None:
            raise RecipeError(
                f"field '{where}dev': a dev file needs the task's evaluation file in '{where}eval' "
                "(the search chooses λ on dev and reports on eval)"
            )
        task = item.get("task")
        if task is not None:
            if not isinstance(task, str) or not task.strip() or "\x00" in task:
                raise RecipeError(f"field '{where}task': expected a non-empty task name, got {_shown(task)}")
            if eval_file is None:
                raise RecipeError(
                    f"field '{where}task': a task name needs the task's file in '{where}eval' "
                    "(without one, the adapter's own task from mergescope.json is used)"
                )
        refs.append(
            AdapterRef(path=path, weight=weight, name=name, parameters=parameters, eval=eval_file, task=task, dev=dev_file)
        )
    names = [r.display_name for r in refs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"field 'adapters': two adapters are named {_shown(duplicates[0])}; give each a 'name'")
    return tuple(refs)


def _do_merging(raw: Any) -> DoMergingOptions:
    """`do_merging`, checked field by field against DO-Merging's schema (merging.methods.do_merging.SCHEMA)."""
    if raw is None:
        return DoMergingOptions()
    if not isinstance(raw, Mapping):
        raise RecipeError("field 'do_merging': expected an object like {\"decouple\": false, \"orthogonalize\": false}")
    where = "do_merging."
    _check_keys(raw, DO_FIELDS.keys(), where)
    values: dict[str, Any] = {}
    for param in DO_SCHEMA:
        if param.kind == "bool":
            value = _flag(raw, param.name, where, param.default)
        elif param.kind == "choice":
            value = _choice(raw, param.name, param.default, param.choices, where)
        else:
            value = _number(raw, param.name, param.default, int if param.kind == "int" else float, where)
            if value is None:
                raise RecipeError(f"field '{where}{param.name}': expected a number, got null")
        try:
            values[param.name] = param.validate(value, f"{where}{param.name}")
        except MethodError as err:
            raise _method_error(err) from err
    return DoMergingOptions(**values)


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
        numbers = []
        for position, weight in enumerate(weights):
            number = _number({f"weights[{position}]": weight}, f"weights[{position}]", None, float, where)
            if number is None:
                raise RecipeError(f"field '{where}weights[{position}]': expected a number, got null")
            numbers.append(number)
        match = item.get("match")
        if match is not None:
            if not isinstance(match, str):
                raise RecipeError(f"field '{where}match': expected a regular expression, got {_shown(match)}")
            try:
                re.compile(match)
            except (re.error, RecursionError, OverflowError) as err:
                raise RecipeError(f"field '{where}match': not a valid regular expression ({err})") from err
        layers = item.get("layers")
        if layers is not None:
            if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
                raise RecipeError(f"field '{where}layers': expected a list of block indices, got {_shown(layers)}")
            layers = tuple(layers)
        if match is None and layers is None:
            raise RecipeError(f"field '{where}match': give 'match' (a regex) or 'layers' (block indices)")
        result.append(WeightOverride(weights=tuple(numbers), match=match, layers=layers))
    return tuple(result)


def _check_recipe(recipe: Recipe) -> None:
    """The constructor's checks: each field as `recipe_from_dict` checks it (same messages), on the
    built values. Fills in the method's defaults and each adapter's clean per-adapter parameters."""
    set_field = partial(object.__setattr__, recipe)
    if not isinstance(recipe.method, str) or recipe.method not in REGISTRY:
        raise RecipeError(
            f"field 'method': {_shown(recipe.method)} is not a method (allowed: {', '.join(REGISTRY)})"
            f"{_hint(recipe.method, REGISTRY)}"
        )
    set_field("parameters", get_method(recipe.method).validate(_mapping(recipe.parameters, "parameters"), "parameters"))
    adapters = recipe.adapters
    if not isinstance(adapters, (tuple, list)) or not adapters:
        raise RecipeError("field 'adapters': expected a non-empty list of {\"path\": ..., \"weight\": ...}")
    checked = []
    for index, ref in enumerate(adapters):
        where = f"adapters[{index}]."
        if not isinstance(ref, AdapterRef):
            raise RecipeError(f"field 'adapters[{index}]': expected an AdapterRef, got {_shown(ref)}")
        if not isinstance(ref.path, str) or not ref.path or "\x00" in ref.path:
            raise RecipeError(f"field '{where}path': expected the path of a PEFT adapter folder, got {_shown(ref.path)}")
        if ref.name is not None and (not isinstance(ref.name, str) or not ref.name):
            raise RecipeError(f"field '{where}name': expected a non-empty string, got {_shown(ref.name)}")
        weight = _number({"weight": ref.weight}, "weight", None, float, where)
        if weight is None:
            raise RecipeError(f"field '{where}weight': expected a number, got null")
        for key in ("eval", "dev"):
            value = getattr(ref, key)
            if value is not None and (not isinstance(value, str) or not value.strip() or "\x00" in value):
                raise RecipeError(f"field '{where}{key}': expected the path of a task file (.jsonl or .csv), got {_shown(value)}")
        if ref.dev is not None and ref.eval is None:
            raise RecipeError(
                f"field '{where}dev': a dev file needs the task's evaluation file in '{where}eval' "
                "(the search chooses λ on dev and reports on eval)"
            )
        if ref.task is not None:
            if not isinstance(ref.task, str) or not ref.task.strip() or "\x00" in ref.task:
                raise RecipeError(f"field '{where}task': expected a non-empty task name, got {_shown(ref.task)}")
            if ref.eval is None:
                raise RecipeError(
                    f"field '{where}task': a task name needs the task's file in '{where}eval' "
                    "(without one, the adapter's own task from mergescope.json is used)"
                )
        own = _adapter_parameters(recipe.method, ref.parameters, f"{where}parameters")
        if own:  # the rules across parameters hold for each adapter's own values too
            try:
                get_method(recipe.method).check_rules({**recipe.parameters, **own}, f"{where}parameters")
            except MethodError as err:
                raise _method_error(err) from err
        checked.append(ref if own == ref.parameters else replace(ref, parameters=own))
    names = [r.display_name for r in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RecipeError(f"field 'adapters': two adapters are named {_shown(duplicates[0])}; give each a 'name'")
    set_field("adapters", tuple(checked))
    rank = _number({"rank": recipe.rank}, "rank", None, int)
    if rank is not None and rank < 1:
        raise RecipeError(f"field 'rank': expected null (exact) or a positive integer, got {rank}")
    seed = _number({"seed": recipe.seed}, "seed", None, int)
    if seed is None or not 0 <= seed < 2**63:
        raise RecipeError(f"field 'seed': expected a whole number from 0 to 2**63 - 1, got {_shown(recipe.seed)}")
    base_model = recipe.base_model
    if base_model is not None and (not isinstance(base_model, str) or not base_model.strip() or "\x00" in base_model):
        raise RecipeError(
            f"field 'base_model': expected null (the adapters' own) or a local folder / Hub id, got {_shown(base_model)}"
        )
    for key, allowed in (("device", DEVICES), ("osrm", OSRM_MODES), ("dtype", DTYPES), ("modules_to_save", MODULES_TO_SAVE_RULES)):
        _choice({key: getattr(recipe, key)}, key, "", allowed)
    options = recipe.do_merging
    if not isinstance(options, DoMergingOptions):
        raise RecipeError(f"field 'do_merging': expected DoMergingOptions, got {_shown(options)}")
    _do_merging(dataclasses.asdict(options))
    overrides = recipe.overrides
    if not isinstance(overrides, (tuple, list)) or not all(isinstance(o, WeightOverride) for o in overrides):
        raise RecipeError(f"field 'overrides': expected WeightOverride objects, got {_shown(overrides)}")
    _overrides([o.to_dict() for o in overrides], len(checked))
    set_field("overrides", tuple(overrides))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RecipeError(f"field '{where}': expected an object, got {_shown(value)}")
    return dict(value)


RECIPE_FIELDS = (
    "adapters", "method", "parameters", "rank", "seed", "device", "osrm", "base_model", "dtype", "modules_to_save",
    "do_merging", "overrides",
)
# The previous flat form, still read (old recipe files, stored runs, old share links).
LEGACY_PARAMETER_FIELDS = {"density": "density", "sign": "sign", "knots_inner": "inner"}
LEGACY_FIELDS = (*LEGACY_PARAMETER_FIELDS, "osrm_posthoc")


def _legacy_parameters(data: Mapping, method_name: str) -> dict[str, Any]:
    """Map the old flat `density`/`sign`/`knots_inner` onto the method's parameters.

    Old files wrote all three whatever the method, so a key the method does not take is dropped
    (it never affected that merge) — after the check it always had (density 5 was never valid)."""
    names = {p.name for p in get_method(method_name).params}
    mapped = {}
    for old, new in LEGACY_PARAMETER_FIELDS.items():
        if old not in data:
            continue
        schema = next((m.param(new) for m in REGISTRY.values() if m.has_param(new)), None)
        if schema is not None:
            try:
                schema.validate(data[old], old)
            except MethodError as err:
                raise _method_error(err) from err
        if new in names:
            mapped[new] = data[old]
    return mapped


def _osrm(data: Mapping) -> str:
    value = data.get("osrm", "off")
    if isinstance(value, bool):  # the old share links' switch: twins where they exist, else post-hoc
        value = "twins" if value else "off"
    mode = _choice({"osrm": value}, "osrm", "off", OSRM_MODES)
    if "osrm_posthoc" in data:
        legacy = _flag(data, "osrm_posthoc", "")
        if legacy and "osrm" in data and mode != "posthoc":
            raise RecipeError(f"field 'osrm_posthoc': true contradicts 'osrm': {_shown(mode)}; give 'osrm' alone")
        if legacy:
            mode = "posthoc"
    return mode


def _resolve_base_model(value: str, base_dir: Path) -> str:
    """A relative base_model in a recipe file: the folder (or file) of that name beside the file (made
    absolute) when there is one; otherwise as given (a Hub id: merging.models.base_check looks it up)."""
    if value.startswith("~") or Path(value).is_absolute():
        return value
    try:
        beside = base_dir / value
        return str(beside.resolve()) if beside.exists() else value
    except (OSError, ValueError):
        return value


def recipe_from_dict(data: Any, base_dir: Path | None = None, path_of: Callable[[str], str] | None = None) -> Recipe:
    """Validate a parsed recipe. Relative adapter paths resolve against `base_dir` when given;
    `path_of(name)` fills in the path of an adapter given by name alone."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"a recipe must be an object (a JSON/YAML mapping), got {type(data).__name__}")
    _check_keys(data, RECIPE_FIELDS, "", also=LEGACY_FIELDS)
    method = data.get("method", "task_arithmetic")
    if not isinstance(method, str) or method not in REGISTRY:
        raise RecipeError(
            f"field 'method': {_shown(method)} is not a method (allowed: {', '.join(REGISTRY)}){_hint(method, REGISTRY)}"
        )
    raw_parameters = data.get("parameters")
    legacy = _legacy_parameters(data, method)
    if legacy:
        if raw_parameters is not None and not isinstance(raw_parameters, Mapping):
            raise RecipeError(f"field 'parameters': expected an object of {method}'s parameters, got {_shown(raw_parameters)}")
        given = dict(raw_parameters or {})
        for key, value in legacy.items():
            if key in given and given[key] != value:
                raise RecipeError(f"field '{key}': given twice, as 'parameters.{key}' and as the old top-level key")
            given[key] = value
        raw_parameters = given
    parameters = _method_parameters(method, raw_parameters, "parameters")
    adapters = _adapters(data.get("adapters"), base_dir, method, path_of)
    rank = _number(data, "rank", None, int)
    if rank is not None and rank < 1:
        raise RecipeError(f"field 'rank': expected null (exact) or a positive integer, got {rank}")
    seed = _number(data, "seed", 0, int)
    if seed is not None and not 0 <= seed < 2**63:
        raise RecipeError(f"field 'seed': expected a whole number from 0 to 2**63 - 1, got {seed}")
    base_model = data.get("base_model")
    if base_model is not None and (not isinstance(base_model, str) or not base_model.strip() or "\x00" in base_model):
        raise RecipeError(
            f"field 'base_model': expected null (the adapters' own) or a local folder / Hub id, got {_shown(base_model)}"
        )
    if base_model is not None and base_dir is not None:
        base_model = _resolve_base_model(base_model, base_dir)
    return Recipe(
        adapters=adapters,
        method=method,
        parameters=parameters,
        rank=rank,
        seed=0 if seed is None else seed,
        device=_choice(data, "device", "auto", DEVICES),
        osrm=_osrm(data),
        base_model=base_model,
        dtype=_choice(data, "dtype", "auto", DTYPES),
        modules_to_save=_choice(data, "modules_to_save", "average", MODULES_TO_SAVE_RULES),
        do_merging=_do_merging(data.get("do_merging")),
        overrides=_overrides(data.get("overrides"), len(adapters)),
    )


def recipe_of_run(recipe: Mapping, results: Mapping | None = None) -> Recipe:
    """The Recipe of a stored run. Runs stored before the `osrm` field kept the page's OSRM switch in
    their results (`results.osrm.switch`) with the twins already swapped into the adapter list;
    mode "twins" reproduces them (a twin's twin is itself; one without a twin is projected)."""
    data = dict(recipe)
    switch = ((results or {}).get("osrm") or {}) if isinstance(results, Mapping) else {}
    if "osrm" not in data and "osrm_posthoc" not in data and isinstance(switch, Mapping) and switch.get("switch") is True:
        data["osrm"] = "twins"
    return recipe_from_dict(data)


# ----------------------------------------------------------------------------------------------
# Text and files


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"the key {_shown(key)} appears twice in one object; keep one")
        result[key] = value
    return result


def nesting_depth(text: str, limit: int = MAX_NESTING) -> int:
    """How deeply `[`/`{` nest in `text` (brackets inside strings counted too: an upper bound), at
    most `limit` + 1; a cheap check before a recursive parser sees the text."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif char in "]}" and depth:
            depth -= 1
    return deepest


def _check_nesting(text: str, source: str, syntax: str) -> None:
    if nesting_depth(text) > MAX_NESTING:
        raise RecipeError(f"{source}: not valid {syntax} (nested too deeply: more than {MAX_NESTING} levels)")


def _json_loads(text: str, source: str) -> Any:
    text = text.removeprefix("\ufeff")  # a byte-order mark (Windows editors write one)
    _check_nesting(text, source, "JSON")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as err:
        raise RecipeError(f"{source}: {err}") from err
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError; deep nesting recurses
        detail = str(err) if not isinstance(err, RecursionError) else "nested too deeply"
        raise RecipeError(f"{source}: not valid JSON ({detail})".replace("\n", " ")) from err


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema numbers and booleans (not YAML 1.1's)."""


class _Yaml12Dumper(yaml.SafeDumper):
    """The matching dumper: a string that YAML 1.2 would read as a number or boolean is quoted."""


_YAML12_RESOLVERS = [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]


def _use_yaml12(cls: type) -> None:
    cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in {t for t, _, _ in _YAML12_RESOLVERS}]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, pattern, first in _YAML12_RESOLVERS:
        cls.add_implicit_resolver(tag, re.compile(pattern), first)


_use_yaml12(_Yaml12Loader)
_use_yaml12(_Yaml12Dumper)
_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029", "\ufeff")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # YAML reads NEL and the Unicode line/paragraph separators as line breaks in plain or single-
    # quoted scalars; only a double-quoted scalar escapes them, so such a name stays itself.
    style = '"' if any(ch in value for ch in _YAML_LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Yaml12Dumper.add_representer(str, _represent_str)


def _construct_yaml12_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith(("0o", "0x")):
        return int(text, 0)
    return int(text)  # YAML 1.2: a leading 0 is decimal, not octal


_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)


def _construct_mapping_once(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    """A YAML mapping whose keys are all different (PyYAML keeps the last of two silently)."""
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {_shown(key)} appears twice in one mapping; keep one", key_node.start_mark
                )
            seen.add(key)
        except TypeError:  # an unhashable key: the base constructor names it
            break
    return loader.construct_mapping(node)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping_once)


class UniqueKeySafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1 rules, as mergekit reads its configs) refusing duplicate keys."""


UniqueKeySafeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping_once)


def load_yaml_text(text: str, source: str) -> Any:
    """YAML with 1.2 number/boolean rules; tags are never executed (safe loader)."""
    _check_nesting(text, source, "YAML")
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: tags are not executed
    except yaml.MarkedYAMLError as err:
        where = f" (line {err.problem_mark.line + 1})" if err.problem_mark else ""
        problem = str(err.problem or err).replace("\n", " ")
        if "appears twice" in problem:
            raise RecipeError(f"{source}: {problem}{where}") from err
        raise RecipeError(f"{source}: not valid YAML ({problem}{where})") from err
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        detail = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise RecipeError(f"{source}: not valid YAML ({detail})".replace("\n", " ")) from err


def parse_recipe_text(
    text: str, base_dir: Path | None = None, source: str = "recipe", syntax: str | None = None
) -> Recipe:
    """Parse a recipe: YAML when `syntax` is "yaml" or `source` ends in .yaml/.yml, JSON otherwise."""
    if syntax is None:
        syntax = "yaml" if source.lower().endswith(YAML_SUFFIXES) else "json"
    data = load_yaml_text(text, source) if syntax == "yaml" else _json_loads(text, source)
    return recipe_from_dict(data, base_dir)


def read_recipe_text(path: Path) -> str:
    """A recipe file's text, or one RecipeError naming the file (shared with merging.recipe.mergekit_config)."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise RecipeError(f"{path}: a folder, not a recipe file")
        if not stat.S_ISREG(info.st_mode):
            raise RecipeError(f"{path}: not a regular file (a device, pipe or socket), so not a recipe file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: {info.st_size:,} bytes; a recipe file is at most {MAX_RECIPE_BYTES:,}")
        with path.open("rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)  # the file may grow between stat and read
        if len(data) > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: more than {MAX_RECIPE_BYTES:,} bytes; a recipe file is at most that")
        return data.decode("utf-8").removeprefix("\ufeff")
    except FileNotFoundError as err:
        raise RecipeError(f"{path}: no such recipe file") from err
    except IsADirectoryError as err:
        raise RecipeError(f"{path}: a folder, not a recipe file") from err
    except PermissionError as err:
        raise RecipeError(f"{path}: not readable (permission denied)") from err
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text") from err


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    text = read_recipe_text(path)
    try:
        return parse_recipe_text(text, base_dir=path.resolve().parent, source=str(path))
    except RecipeError as err:
        message = str(err)
        raise RecipeError(message if message.startswith(str(path)) else f"{path}: {message}") from err
