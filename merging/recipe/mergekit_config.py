"""mergekit configs for LoRA merges, read as mergescope recipes.

`mergescope merge config.yaml` takes mergekit's YAML as well as a native recipe. A mergekit config
merges full models; a LoRA enters it as `model: BASE+path/to/lora`, which mergekit turns into the
full model BASE + ΔW (PEFT's merge_and_unload) before it takes task vectors θᵢ − BASE = ΔWᵢ. So on
the modules the LoRAs touch, mergekit's arithmetic is arithmetic on the ΔWᵢ that mergescope merges,
and a config translates into the native recipe dict (RECIPE_SPEC: adapters, method, parameters,
base_model, dtype) wherever the two agree *exactly*. Where they do not, the config is refused with
one line naming the key; nothing is approximated silently.

What mergekit computes (mergekit/merge_methods/generalized_task_arithmetic.py, linear.py,
sparsify.py, config.py), per tensor, with wᵢ the models' weights, Sᵢ the sparsified ΔWᵢ and λ the
global `lambda` (default 1):

    task_arithmetic, dare_linear, breadcrumbs   Δ = λ·Σ wᵢSᵢ / D,  D = Σwᵢ if normalize else 1
        → task arithmetic with weights λ·wᵢ/D (exact). `normalize` defaults to false for all three.
    ties, dare_ties, breadcrumbs_ties           Δ = λ·Σ wᵢSᵢmᵢ / D,  D = Σ wᵢmᵢ if normalize else 1
        mᵢ = [sign(wᵢSᵢ) = sign(Σⱼ wⱼSⱼ)], the sign elected by mass (mergescope's sign "total",
        ties to +), a divisor of 0 read as 1. The registry's consensus declares the divisor
        (`divide_by`, merging/methods/consensus.py), so every such config maps exactly:
        normalize: false → divide_by "none", weights λ·wᵢ;
        normalize: true, every weight the same w > 0 → divide_by "count", weights λ (w cancels:
            λ·the mean of the agreeing Sᵢ, the form mergescope's own TIES recipes have);
        normalize: true, other weights → divide_by "weights", weights wᵢ (λ must be 1 there: a
            common factor of the weights cancels in Σ wᵢSᵢmᵢ / Σ wᵢmᵢ, so no weight carries it).
    linear                                      θ = Σ wⱼθⱼ / D over every model listed (the base
        model counts as θ = BASE, with its weight), D = Σwⱼ if normalize (default true) else 1
        → BASE + Σ (wᵢ/D)·ΔWᵢ when Σwⱼ/D = 1; otherwise the base itself would be rescaled: refused.

Sparsification: `density` per model (or global; mergekit's default 1.0) keeps int(density·numel)
entries by magnitude (ties), at random (DARE) or outside the top `gamma` and bottom
(breadcrumbs); per-model density goes to `adapters[i].parameters.density`. mergekit's `rescale`
(DARE's default) scales the kept entries back up; mergescope's DARE always divides by density,
so `rescale: false` with DARE, and `rescale: true` with a magnitude cut, are refused. DARE's random
masks come from different generators in the two tools, so a DARE merge is reproduced in
distribution, not entry for entry (newer mergekit rescales to the same L1 norm instead of by
1/density: the same in expectation). mergekit's breadcrumbs keeps nothing of a tensor whose
gamma·numel < 1 (its slice `[n_bot:-0]` is empty); mergescope's keeps the density fraction there.

Accepted and ignored: `int8_mask` (a memory knob of mergekit's sign mask: no effect on the
result), `tokenizer_source: base` (the merged adapter uses the base model's tokenizer). `dtype` /
`out_dtype` (float32, float16, bfloat16) become the dtype of the written factors; mergescope
computes in float32 whatever mergekit's `dtype` says.

Which native method a mergekit method is, which of its parameters mergekit names alike, and
mergekit's defaults (normalize, rescale) are declared by each method in the registry
(`Method.mergekit`, merging/methods/catalogue.py); this module keeps only what is mergekit's alone
(its methods mergescope has not, its top-level keys).

The other way, `mergekit_dict_from_recipe` / `mergescope export-mergekit recipe.json` writes a native
recipe as the mergekit config that merges the same, or refuses with the reason: a method whose
registry entry has no mergekit name (KnOTS, TSV-Merge, PEFT naive, magnitude prune), DO-Merging's
switches, OSRM's twins or projection, per-module weight overrides, a rank truncation, the
frequency sign rule, divide_by "count" with unequal weights. Reading the written config back gives
a recipe with the same merged body (DARE, DELLA: the same in distribution; the seed does not travel).

Refused, naming the key: other merge methods (slerp and nuslerp interpolate whole weights,
model_stock, passthrough, …), `slices` / `modules` (layer surgery),
`tokenizer` / `chat_template`, a full model that is not the base (`model: X` without `+lora`),
a LoRA on another base than `base_model`, revisions (`@rev`), per-layer gradients and filtered
values (lists), and any parameter the method does not have (mergekit would ignore it silently;
here it more likely means a typo or a wrong expectation).

Paths: a relative LoRA path resolves against the config file's folder, like a native recipe's
adapter paths (mergekit resolves against the working folder).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from merging.methods import REGISTRY, get_method
from merging.recipe.codec import (
    MAX_NESTING,
    Recipe,
    RecipeError,
    UniqueKeySafeLoader,
    load_recipe,
    nesting_depth,
    read_recipe_text,
)

# ----------------------------------------------------------------------------------------------
# mergekit's methods, as far as mergescope can reproduce them


@dataclass(frozen=True)
class _Family:
    """One of mergekit's generalized-task-arithmetic methods and the native method that declares it."""

    native: str
    parameters: tuple[str, ...]  # mergekit's per-model parameters besides weight (density, gamma)
    consensus: bool  # the native method has TIES' consensus (its `divide_by` takes `normalize`)
    default_normalize: bool
    rescale: bool | None  # None: no sparsifier (no `rescale` key); else what the native one always does

    @property
    def default_rescale(self) -> bool:
        return bool(self.rescale)


def _gta_methods() -> dict[str, _Family]:
    """mergekit's name -> _Family, from each registered method's `mergekit` declaration."""

    return {
        method.mergekit.name: _Family(
            method.name,
            method.mergekit.parameters,
            method.has_param("divide_by"),
            method.mergekit.normalize,
            method.mergekit.rescale,
        )
        for method in REGISTRY.values()
        if method.mergekit.name is not None
    }


GTA_METHODS: dict[str, _Family] = _gta_methods()
SUPPORTED_METHODS = ("linear", *GTA_METHODS)

_REFUSED_METHODS = {
    "slerp": "slerp interpolates whole weight tensors on a sphere, which is not a sum of LoRA updates",
    "nuslerp": "nuslerp interpolates whole weight tensors on a sphere, which is not a sum of LoRA updates",
    "multislerp": "multislerp interpolates whole weight tensors on a sphere, which is not a sum of LoRA updates",
}

_TOP_LEVEL = {"models", "merge_method", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source"}
_REFUSED_TOP_LEVEL = {
    "slices": "layer slices compose models layer by layer; mergescope merges whole adapters",
    "modules": "per-module definitions compose models part by part; mergescope merges whole adapters",
    "tokenizer": "mergescope writes an adapter that uses the base model's tokenizer",
    "chat_template": "mergescope writes an adapter that uses the base model's tokenizer and template",
}
_DTYPES = ("float32", "float16", "bfloat16")


def is_mergekit_config(data: Any) -> bool:
    """True for a parsed mergekit config: a mapping with mergekit's required `merge_method` key
    (a native recipe names its method `method`)."""
    return isinstance(data, Mapping) and "merge_method" in data


# ----------------------------------------------------------------------------------------------
# Reading values


def _refuse(where: str, message: str) -> RecipeError:
    return RecipeError(f"mergekit config: '{where}': {message}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, list | tuple | Mapping):
        raise _refuse(where, "per-layer gradients and filtered values are not supported; give one number")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refuse(where, f"expected a finite number, got {value!r}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, list | tuple | Mapping):
        raise _refuse(where, "per-layer gradients and filtered values are not supported; give true or false")
    if not isinstance(value, bool):
        raise _refuse(where, f"expected true or false, got {value!r}")
    return value


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _refuse(where, "expected a mapping of parameter names to values")
    return dict(raw)


def _model_reference(value: Any, where: str) -> tuple[str, str | None]:
    """mergekit's `MODEL` or `MODEL+LORA` string (common.ModelReference): (model, lora or None)."""
    if not isinstance(value, str) or not value.strip():
        raise _refuse(where, "expected 'BASE+path/to/lora' (a string)")
    if "@" in value:
        raise _refuse(where, f"{value!r}: revisions ('@rev') are not supported; give local folders or plain names")
    parts = value.split("+")
    if len(parts) > 2 or not all(part.strip() for part in parts):
        raise _refuse(where, f"{value!r}: expected MODEL or MODEL+LORA")
    return parts[0].strip(), parts[1].strip() if len(parts) == 2 else None


def _allowed_parameters(method: str) -> tuple[set[str], set[str]]:
    """(per-model parameters, global-only parameters) of a mergekit method that mergescope honours."""
    if method == "linear":
        return {"weight"}, {"normalize", "int8_mask"}
    family = GTA_METHODS[method]
    per_model = {"weight", *family.parameters}
    global_only = {"normalize", "int8_mask", "lambda"}
    if family.rescale is not None:
        global_only.add("rescale")
    return per_model, global_only


def _unknown_parameter(method: str, key: str, where: str) -> RecipeError:
    per_model, global_only = _allowed_parameters(method)
    if key in {"density", "rescale"}:
        hint = f"{method} does not sparsify: mergekit ignores '{key}' there; remove it"
    elif owners := [name for name, other in GTA_METHODS.items() if key in other.parameters]:
        hint = f"'{key}' belongs to {' and '.join(owners)}; remove it"
    elif key == "divide_by":
        hint = "'divide_by' is mergescope's; mergekit says normalize: true (divide by the agreeing weights) or false"
    elif key in {"t"}:
        hint = "'t' belongs to slerp, which mergescope does not reproduce"
    else:
        hint = f"not a parameter of mergekit's {method}"
    allowed = ", ".join(sorted(per_model | global_only))
    return _refuse(where, f"{hint} (allowed: {allowed})")


def _native_per_adapter(method: str) -> set[str]:
    """The native method's parameters that may be given per adapter (its registry schema)."""

    return {p.name for p in get_method(method).params if p.per_adapter}


# ----------------------------------------------------------------------------------------------
# The translation


@dataclass
class _Entry:
    index: int
    model: str
    lora: str | None
    parameters: dict[str, Any]


def _resolve(path: str, base_dir: Path | None) -> str:
    if base_dir is None or Path(path).is_absolute():
        return path
    return str((base_dir / path).resolve())


def recipe_dict_from_mergekit(data: Mapping, base_dir: Path | None = None) -> dict[str, Any]:
    """The native recipe dict (RECIPE_SPEC) that merges exactly what a mergekit LoRA config merges.

    Raises RecipeError naming the mergekit key for anything mergescope cannot honour exactly.
    Relative LoRA paths (and a relative base_model folder that exists) resolve against `base_dir`.
    """
    if not isinstance(data, Mapping):
        raise RecipeError("mergekit config: expected a mapping with 'merge_method' and 'models'")
    for key in data:
        if key in _REFUSED_TOP_LEVEL:
            raise _refuse(str(key), f"not supported: {_REFUSED_TOP_LEVEL[key]}")
        if key not in _TOP_LEVEL:
            raise _refuse(str(key), f"unknown or unsupported key (allowed: {', '.join(sorted(_TOP_LEVEL))})")

    method = data.get("merge_method")
    if not isinstance(method, str):
        raise _refuse("merge_method", f"expected a method name (supported: {', '.join(SUPPORTED_METHODS)})")
    if method in _REFUSED_METHODS:
        raise _refuse("merge_method", f"'{method}' is not supported: {_REFUSED_METHODS[method]}")
    if method not in SUPPORTED_METHODS:
        raise _refuse("merge_method", f"'{method}' is not supported (supported: {', '.join(SUPPORTED_METHODS)})")

    tokenizer_source = data.get("tokenizer_source")
    if tokenizer_source not in (None, "base"):
        raise _refuse(
            "tokenizer_source",
            f"{tokenizer_source!r}: only 'base' (the merged adapter uses the base model's tokenizer)",
        )

    per_model_keys, global_keys = _allowed_parameters(method)
    global_parameters = _parameters(data.get("parameters"), "parameters")
    for key in global_parameters:
        if key not in per_model_keys | global_keys:
            raise _unknown_parameter(method, str(key), f"parameters.{key}")

    base_model = data.get("base_model")
    if base_model is not None:
        base_name, base_lora = _model_reference(base_model, "base_model")
        if base_lora is not None:
            raise _refuse("base_model", f"{base_model!r}: the base must be a full model, not BASE+LORA")
        base_model = base_name

    entries = _entries(data.get("models"), method, per_model_keys)
    loras = [e for e in entries if e.lora is not None]
    if not loras:
        raise _refuse("models", "no 'BASE+path/to/lora' entry: mergescope merges LoRA adapters")
    base = base_model if base_model is not None else loras[0].model
    for entry in loras:
        if entry.model != base:
            what = "base_model" if base_model is not None else f"models[{loras[0].index}]'s base"
            raise _refuse(
                f"models[{entry.index}].model",
                f"the LoRA's base '{entry.model}' differs from {what} '{base}'; all LoRAs must share one base",
            )
    base_entries = [e for e in entries if e.lora is None]
    for entry in base_entries:
        if entry.model != base:
            raise _refuse(
                f"models[{entry.index}].model",
                f"'{entry.model}' is a full model, not the base '{base}' plus a LoRA: mergescope merges LoRA "
                "adapters (write BASE+path/to/lora)",
            )
    seen: dict[str, int] = {}
    for entry in loras:
        if entry.lora in seen:
            raise _refuse(
                f"models[{entry.index}].model",
                f"the LoRA '{entry.lora}' is listed twice (also models[{seen[entry.lora]}])",
            )
        seen[entry.lora] = entry.index

    def value(entry: _Entry, key: str, default: Any = None) -> Any:
        if key in entry.parameters:
            return entry.parameters[key], f"models[{entry.index}].parameters.{key}"
        if key in global_parameters:
            return global_parameters[key], f"parameters.{key}"
        return default, f"models[{entry.index}].parameters.{key}"

    def weight_of(entry: _Entry) -> float:
        raw, where = value(entry, "weight")
        if raw is None:
            raise _refuse(where, "missing: mergekit needs a weight for every model (here or under 'parameters')")
        return _number(raw, where)

    if "int8_mask" in global_parameters:
        _flag(global_parameters["int8_mask"], "parameters.int8_mask")  # checked, then ignored: memory only

    if method == "linear":
        weights = _linear_weights(loras, base_entries, base_model, global_parameters, weight_of)
        native_method, native_parameters, per_adapter = "task_arithmetic", {}, [{} for _ in loras]
    else:
        family = GTA_METHODS[method]
        weights, divide_by = _gta_weights(method, family, loras, global_parameters, weight_of)
        native_method = family.native
        native_parameters, per_adapter = _sparsify_parameters(method, family, loras, global_parameters)
        if divide_by is not None:
            native_parameters["divide_by"] = divide_by

    return {
        "adapters": [
            _adapter(entry, weight, own, loras, base_dir) for entry, weight, own in zip(loras, weights, per_adapter)
        ],
        "method": native_method,
        "parameters": native_parameters,
        "base_model": _resolve_base(base, base_dir),
        "dtype": _dtype(data),
    }


def _entries(raw: Any, method: str, per_model_keys: set[str]) -> list[_Entry]:
    if not isinstance(raw, list) or not raw:
        raise _refuse("models", "expected a non-empty list of {model: BASE+path/to/lora, parameters: {...}}")
    entries = []
    for index, item in enumerate(raw):
        where = f"models[{index}]"
        if not isinstance(item, Mapping):
            raise _refuse(where, "expected a mapping with 'model' and optional 'parameters'")
        for key in item:
            if key not in ("model", "parameters"):
                raise _refuse(f"{where}.{key}", "unknown key (allowed: model, parameters)")
        model, lora = _model_reference(item.get("model"), f"{where}.model")
        parameters = _parameters(item.get("parameters"), f"{where}.parameters")
        for key in parameters:
            if key not in per_model_keys:
                raise _unknown_parameter(method, str(key), f"{where}.parameters.{key}")
        entries.append(_Entry(index, model, lora, parameters))
    return entries


def _linear_weights(loras, base_entries, base_model, global_parameters, weight_of) -> list[float]:
    """linear: θ = Σ wⱼθⱼ / D over every listed model and the base; = BASE + Σ (wᵢ/D)ΔWᵢ iff Σwⱼ = D."""
    lora_weights = [weight_of(e) for e in loras]
    base_weights = [weight_of(e) for e in base_entries]
    if base_model is not None and not base_entries:
        # mergekit adds an unlisted base_model to the average, with the global weight (it has no own one)
        if "weight" not in global_parameters:
            raise _refuse(
                "base_model",
                "linear averages base_model too, and mergekit has no weight for it: list it under 'models' "
                "with a weight, or leave base_model out",
            )
        base_weights.append(_number(global_parameters["weight"], "parameters.weight"))
    total = math.fsum(lora_weights + base_weights)
    normalize = _flag(global_parameters.get("normalize", True), "parameters.normalize")
    if normalize:
        if total == 0:
            raise _refuse("parameters.normalize", "the weights sum to 0: mergekit's linear would divide by zero")
        return [w / total for w in lora_weights]
    if not math.isclose(total, 1.0, rel_tol=1e-6, abs_tol=1e-9):
        raise _refuse(
            "parameters.normalize",
            f"false with weights summing to {total:g}: linear would scale the base model's own weights by "
            f"{total:g}, which no LoRA merge reproduces (use normalize: true, or weights that sum to 1)",
        )
    return lora_weights


def _gta_weights(method, family: _Family, loras, global_parameters, weight_of) -> tuple[list[float], str | None]:
    """The native weights (and, for a consensus method, its `divide_by`) that reproduce mergekit's
    weighting, λ and normalize (see the module docstring)."""
    weights = [weight_of(e) for e in loras]
    lam = _number(global_parameters.get("lambda", 1.0), "parameters.lambda")
    normalize = _flag(global_parameters.get("normalize", family.default_normalize), "parameters.normalize")
    if family.rescale is not None:
        rescale = _flag(global_parameters.get("rescale", family.default_rescale), "parameters.rescale")
        if family.rescale and not rescale:
            raise _refuse(
                "parameters.rescale", f"false: mergescope's {family.native} always rescales the kept entries (by 1/density, DELLA by 1/pⱼ)"
            )
        if not family.rescale and rescale:
            raise _refuse(
                "parameters.rescale", f"true: mergescope's {family.native} does not rescale what its cut keeps"
            )
    if not family.consensus:
        divisor = math.fsum(weights) if normalize else 1.0
        if abs(divisor) < 1e-8:  # mergekit's guard: a vanishing sum divides by 1
            divisor = 1.0
        return [lam * w / divisor for w in weights], None
    if lam < 0:
        raise _refuse("parameters.lambda", f"{lam:g}: a negative λ flips which sign wins a tie in the election")
    if not normalize:
        return [lam * w for w in weights], "none"  # the agreeing sum, λ folded into the weights
    if all(w == weights[0] for w in weights) and weights[0] > 0:
        return [lam for _ in loras], "count"  # w cancels: λ · the mean of the agreeing updates
    if lam != 1.0:
        raise _refuse(
            "parameters.lambda",
            f"{lam:g} with normalize and unequal weights: Σ wᵢSᵢmᵢ / Σ wᵢmᵢ cancels any common factor of "
            "the weights, so no weight can carry λ; scale the merged model afterwards, or use equal weights",
        )
    return weights, "weights"


def _sparsify_parameters(
    method, family: _Family, loras, global_parameters
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The native method's parameters, and each adapter's own (per-model density / gamma)."""
    native: dict[str, Any] = {}
    per_adapter: list[dict[str, Any]] = [{} for _ in loras]
    own_allowed = _native_per_adapter(family.native)

    schema = get_method(family.native)
    for key in family.parameters:
        # the schema's default is mergekit's for every parameter a method maps (density 1, gamma
        # 0.01, epsilon 0.15; tests/test_registry_source.py holds them to mergekit's)
        default = schema.param(key).default
        native[key] = _fraction(key, global_parameters.get(key, default), f"parameters.{key}", schema)
        own = {
            i: _fraction(key, e.parameters[key], f"models[{e.index}].parameters.{key}", schema)
            for i, e in enumerate(loras)
            if key in e.parameters
        }
        if not own:
            continue
        if key in own_allowed:
            for i, v in own.items():
                per_adapter[i][key] = v
        elif len({*own.values()}) == 1 and len(own) == len(loras):
            native[key] = next(iter(own.values()))  # the same for every model: the method's own value
        else:
            first = loras[next(iter(own))]
            raise _refuse(
                f"models[{first.index}].parameters.{key}",
                f"mergescope's {family.native} takes one {key} for all adapters; give it under 'parameters'",
            )
    if family.consensus:
        native["sign"] = "total"  # mergekit's consensus "sum": the sign of the weighted mass
    return native, per_adapter


def _fraction(key: str, raw: Any, where: str, schema=None) -> float:
    value = _number(raw, where)
    if key == "density" and not 0.0 < value <= 1.0:
        raise _refuse(where, f"{value:g}: expected a density in (0, 1]")
    if key == "gamma" and not 0.0 <= value < 1.0:
        raise _refuse(where, f"{value:g}: expected a fraction in [0, 1)")
    if schema is not None and key not in ("density", "gamma"):
        from merging.methods import MethodError

        try:
            schema.param(key).validate(value, where)
        except MethodError as err:
            raise _refuse(where, str(err).partition(": ")[2] or str(err)) from err
    return value


def _adapter(entry: _Entry, weight: float, own: dict[str, Any], loras: list[_Entry], base_dir: Path | None) -> dict:
    names = [Path(e.lora).name for e in loras]
    name = Path(entry.lora).name if names.count(Path(entry.lora).name) == 1 else entry.lora
    adapter: dict[str, Any] = {"path": _resolve(entry.lora, base_dir), "weight": weight, "name": name}
    if own:
        adapter["parameters"] = own
    return adapter


def _resolve_base(base: str, base_dir: Path | None) -> str:
    """A base given as a folder next to the config resolves like the LoRA paths; a Hub id stays as it is."""
    if base_dir is not None and not Path(base).is_absolute() and (base_dir / base).is_dir():
        return str((base_dir / base).resolve())
    return base


def _dtype(data: Mapping) -> str:
    key = "out_dtype" if data.get("out_dtype") is not None else "dtype"
    raw = data.get(key)
    if raw is None:
        return "auto"
    name = raw[len("torch.") :] if isinstance(raw, str) and raw.startswith("torch.") else raw
    if name not in _DTYPES:
        raise _refuse(key, f"{raw!r} is not supported (supported: {', '.join(_DTYPES)})")
    return name


# ----------------------------------------------------------------------------------------------
# Files


def load_recipe_file(path: str | Path):
    """A Recipe from a native recipe file (JSON/YAML) or a mergekit config (YAML), told apart by
    mergekit's `merge_method` key. Every problem is a RecipeError naming the file and the key."""
    path = Path(path)
    text = read_recipe_text(path)
    try:
        data = yaml.load(text, Loader=UniqueKeySafeLoader) if nesting_depth(text) <= MAX_NESTING else None
    except (yaml.YAMLError, RecursionError, ValueError):
        data = None  # the native loader names the parse error
    if not is_mergekit_config(data):
        return load_recipe(path)
    base_dir = path.resolve().parent
    try:
        return Recipe.from_dict(recipe_dict_from_mergekit(data, base_dir), base_dir=base_dir)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from err


# ----------------------------------------------------------------------------------------------
# The other way: a native recipe as the mergekit config that merges the same


class MergekitExportError(RecipeError):
    """A recipe that no mergekit config reproduces; the message names the field and the reason."""


def _no_export(where: str, message: str) -> MergekitExportError:
    return MergekitExportError(f"no mergekit equivalent: '{where}': {message}")


def mergekit_dict_from_recipe(recipe: Recipe, base_model: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """(mergekit config, notes) that merges what `recipe` merges, or MergekitExportError.

    `base_model`: the base the LoRAs belong to, when the recipe names none (the adapters' own; the
    CLI reads it from them). Notes say what the config leaves to mergekit that is not the body
    (DARE's random masks, the seed); they go into the YAML as comments.
    """

    method = get_method(recipe.method)
    declared = method.mergekit
    if declared.name is None:
        raise _no_export("method", f"{recipe.method}: {declared.refusal}")
    if recipe.do_merging.active:
        switch = "decouple" if recipe.do_merging.decouple else "orthogonalize"
        raise _no_export(f"do_merging.{switch}", "DO-Merging's switches are mergescope's own; mergekit has no such step")
    if recipe.osrm != "off":
        raise _no_export("osrm", f"{recipe.osrm!r}: OSRM's twins and post-hoc projection are mergescope's own")
    if recipe.overrides:
        raise _no_export("overrides", "per-module weight overrides are not written as mergekit's filtered weights")
    if recipe.rank is not None:
        raise _no_export("rank", f"{recipe.rank}: mergekit merges whole weights and has no rank truncation")
    base = recipe.base_model or base_model
    if not base:
        raise _no_export("base_model", "mergekit needs the base model, and neither the recipe nor the adapters name it")
    parameters = recipe.parameters
    weights = [float(w) for w in recipe.weights]
    global_parameters: dict[str, Any] = {}
    model_weights = list(weights)
    notes: list[str] = []
    if method.has_param("divide_by"):
        if parameters.get("sign", "total") != "total":
            raise _no_export(
                "parameters.sign",
                f"{parameters['sign']!r}: mergekit's {declared.name} elects the sign by mass (sign 'total')",
            )
        divide_by = parameters["divide_by"]
        if divide_by == "count":
            if not (all(w == weights[0] for w in weights) and weights[0] > 0):
                raise _no_export(
                    "parameters.divide_by",
                    "'count' with unequal weights: mergekit divides by the agreeing weights, not by their count; "
                    "set divide_by to 'weights' (mergekit's normalize: true) or 'none' (normalize: false)",
                )
            model_weights = [1.0 for _ in weights]  # equal weights cancel; λ scales the mean
            global_parameters["normalize"] = True
            if weights[0] != 1.0:
                global_parameters["lambda"] = weights[0]
                notes.append(
                    "lambda scales the merged update: mergekit's generalized task arithmetic reads it in its newer "
                    "versions; one that does not know it would leave it out (the mean of the agreeing updates)"
                )
        else:
            global_parameters["normalize"] = divide_by == "weights"
    else:
        global_parameters["normalize"] = False  # mergescope's weights are the λᵢ themselves
    if declared.rescale is not None:
        global_parameters["rescale"] = declared.rescale
    for name in declared.parameters:
        global_parameters[name] = parameters[name]
    if declared.rescale:
        notes.append(
            f"{method.label}'s random masks: mergekit draws its own, so the merge is the same in distribution, not entry "
            f"for entry (mergescope's seed {recipe.seed} does not travel)"
        )
    models = []
    for ref, weight in zip(recipe.adapters, model_weights):
        own = {"weight": weight}
        for name, value in ref.parameters.items():
            if name not in declared.parameters:
                raise _no_export(f"adapters[{recipe.adapters.index(ref)}].parameters.{name}", "mergekit has no such parameter")
            own[name] = value
        models.append({"model": f"{base}+{ref.path}", "parameters": own})
    config: dict[str, Any] = {
        "merge_method": declared.name,
        "base_model": base,
        "models": models,
        "parameters": global_parameters,
    }
    if recipe.dtype != "auto":
        config["dtype"] = recipe.dtype
    return config, notes


def mergekit_yaml(config: Mapping[str, Any], notes: list[str], source: str = "") -> str:
    """The config as YAML, headed by comments: where it came from, and the notes."""
    header = ["# mergekit config written by `mergescope export-mergekit`" + (f" from {source}" if source else "")]
    header += [f"# note: {note}" for note in notes]
    body = yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def export_mergekit(recipe: Recipe, base_model: str | None = None, source: str = "") -> str:
    """The mergekit YAML that merges what `recipe` merges (MergekitExportError says why not)."""
    config, notes = mergekit_dict_from_recipe(recipe, base_model)
    return mergekit_yaml(config, notes, source)
