"""LoRA adapters in memory, and the one place where PEFT adapter folders are read and written.

An adapter is a mapping from target-module name to its factors (A, B, scale), so that the module's
update is ΔW = scale · B · A with A of shape (r, d_in) and B of shape (d_out, r). Module names are
the base model's own names (``bert.encoder.layer.0.attention.self.query``), without PEFT's
``base_model.model.`` prefix, so adapters saved by different PEFT versions line up.

Everything that touches adapter files lives here. Loading is the gate for untrusted folders: it
refuses anything but plain LoRA, unsafe pickles, config fields that give no finite scale or a rank
the factors do not have, malformed factors, non-finite weights, scales whose updates would overflow
float32 in a merge, and a malformed mergescope.json — each with one AdapterError naming the file
and the field or module (the CLI prints it as one line). Saving refuses non-finite tensors and
builds the folder beside its target (merging.core.staging), swapping it in only when complete.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from merging.core.staging import StagingError, is_write_failure, staged_folder, write_failure

PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS_FILE = "adapter_model.bin"
# mergescope's side file: task name, label names, provenance. PEFT ignores it.
META_FILE = "mergescope.json"
# Heads (modules_to_save tensors) of the adapters that went into a merge, one set per source adapter.
HEADS_FILE = "mergescope_heads.safetensors"

# mergescope.json and adapter_config.json are small; a huge one is not an adapter's.
MAX_JSON_BYTES = 16 * 1024**2
# ΔW entries must stay below √(float32 max) ≈ 1.8e19 so that the squares a merge takes (norms, Gram
# matrices, SVDs) stay finite in float32; a real adapter's entries are many orders smaller.
MAX_UPDATE_ENTRY = math.sqrt(torch.finfo(torch.float32).max)

# PEFT types that are not plain LoRA, with the name a user knows them by.
_NON_LORA_FLAGS = {"use_dora": "DoRA", "use_qalora": "QA-LoRA", "use_bdlora": "BD-LoRA"}


class AdapterError(ValueError):
    """An adapter folder or tensor set that mergescope refuses, with a message fit for the user."""


@dataclass(frozen=True)
class LoraModule:
    """The factors of one module's update ΔW = scale · B · A."""

    A: torch.Tensor  # (r, d_in)
    B: torch.Tensor  # (d_out, r)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the dense update."""
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The dense float32 update scale · B · A."""
        A = self.A.to(device=device, dtype=torch.float32)
        B = self.B.to(device=device, dtype=torch.float32)
        return (B * self.scale) @ A

    def to(self, device: torch.device | str) -> LoraModule:
        return LoraModule(
            self.A.to(device=device, dtype=torch.float32),
            self.B.to(device=device, dtype=torch.float32),
            self.scale,
        )


@dataclass
class Adapter:
    """One LoRA adapter: its modules, the tensors it saves whole (e.g. a task head), and metadata."""

    name: str
    modules: dict[str, LoraModule]
    saved_modules: dict[str, torch.Tensor] = field(default_factory=dict)
    base_model: str | None = None
    path: Path | None = None
    config: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    def ranks(self) -> dict[str, int]:
        return {name: module.rank for name, module in self.modules.items()}

    def summary(self) -> dict:
        """JSON-ready description: ranks, shapes, scales and norms per module."""
        modules = {}
        for name, module in self.modules.items():
            modules[name] = {
                "rank": module.rank,
                "shape": list(module.shape),
                "scale": module.scale,
                "delta_fro_norm": float(delta_fro_norm(module)),
            }
        return {
            "name": self.name,
            "path": str(self.path) if self.path else None,
            "base_model": self.base_model,
            "task": self.task,
            "labels": self.labels,
            "num_modules": len(self.modules),
            "ranks": sorted(set(m.rank for m in self.modules.values())),
            "saved_modules": sorted(self.saved_modules),
            "modules": modules,
        }


def delta_fro_norm(module: LoraModule) -> float:
    """‖scale·B·A‖_F from the factors: ‖B A‖²_F = trace((BᵀB)(AAᵀ)), no dense d_out × d_in matrix."""
    A = module.A.to(torch.float32)
    B = module.B.to(torch.float32)
    gram = (B.T @ B) * (A @ A.T)
    return abs(module.scale) * math.sqrt(max(float(gram.sum()), 0.0))


# ----------------------------------------------------------------------------------------------
# PEFT's per-module patterns, and the config fields the scale depends on


def _pattern_value(patterns: Mapping[str, float], module_name: str, default: float) -> float:
    """PEFT's rule for rank_pattern / alpha_pattern: a key matches a module whose name ends in it."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module_name):
                return value
        except re.error as err:
            raise AdapterError(f"pattern {pattern!r} is not a valid regular expression ({err})") from None
    return default


def lora_scale(config: Mapping, module_name: str, rank: int) -> float:
    """The scale PEFT applies to B·A for this module: alpha/r, or alpha/√r with rsLoRA."""
    if rank <= 0:
        raise AdapterError(f"module {module_name} has rank {rank}; a LoRA factor needs at least one row")
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module_name, config.get("lora_alpha", 8))
    alpha = _finite_number(alpha, f"module {module_name}", "lora_alpha")
    if alpha == 0:
        raise AdapterError(
            f"module {module_name}: field 'lora_alpha' (or its alpha_pattern) is 0, so the scale lora_alpha / r "
            "is 0 and this adapter changes nothing; give the alpha it was trained with"
        )
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


def _finite_number(value: object, where: str, field_name: str) -> float:
    """`value` as a float, or an AdapterError naming the field (bools and strings are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdapterError(f"{where}: field '{field_name}' must be a number, got {_short(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        number = math.inf
    if not math.isfinite(number):
        raise AdapterError(f"{where}: field '{field_name}' must be a finite number, got {_short(value)}")
    return number


def _positive_int(value: object, where: str, field_name: str) -> int:
    """A rank: a whole number ≥ 1; one written as a float (8.0, as some tools save it) is that number."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterError(f"{where}: field '{field_name}' must be a whole number ≥ 1, got {_short(value)}")
    return value


def check_lora_config(config: Mapping, where: str) -> None:
    """Refuse a config whose fields cannot give every module a finite scale and a definite rank.

    The checks name the file and the field: `r` and `rank_pattern` values are ranks (whole numbers
    ≥ 1), `lora_alpha` and `alpha_pattern` values finite numbers, the pattern keys valid regular
    expressions (PEFT matches them against the end of a module name), `use_rslora` a boolean.
    """
    check_plain_lora(config, where)
    if config.get("r") is not None:
        _positive_int(config["r"], where, "r")
    if "lora_alpha" in config:
        if _finite_number(config["lora_alpha"], where, "lora_alpha") == 0:
            raise AdapterError(
                f"{where}: field 'lora_alpha' is 0, so the scale lora_alpha / r is 0 and the adapter changes "
                "nothing; give the alpha it was trained with"
            )
    for key, check in (("rank_pattern", _positive_int), ("alpha_pattern", _finite_number)):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise AdapterError(f"{where}: field '{key}' must be an object of pattern → value, got {_short(patterns)}")
        for pattern, value in patterns.items():
            try:
                re.compile(rf"(.*\.)?({pattern})$")
            except re.error as err:
                raise AdapterError(
                    f"{where}: field '{key}' key {pattern!r} is not a valid regular expression ({err})"
                ) from None
            check(value, where, f"{key}[{pattern!r}]")
    if config.get("use_rslora") is not None and not isinstance(config["use_rslora"], bool):
        raise AdapterError(f"{where}: field 'use_rslora' must be true or false, got {config['use_rslora']!r}")
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise AdapterError(f"{where}: field 'base_model_name_or_path' must be a string, got {base!r}")


def configured_rank(config: Mapping, module_name: str) -> int | None:
    """The rank the config declares for a module (rank_pattern, else `r`); None when it says none."""
    return _pattern_value(config.get("rank_pattern") or {}, module_name, config.get("r"))


# ----------------------------------------------------------------------------------------------
# Reading


def read_config(folder: Path) -> dict:
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise AdapterError(f"{folder}: not a folder")
    if not config_path.is_file():
        raise AdapterError(f"{folder}: missing {CONFIG_FILE}; is this a PEFT adapter folder?")
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    return config


def read_json(path: Path) -> object:
    """A small JSON side file (config, mergescope.json), or an AdapterError naming it."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise AdapterError(f"{path}: {path.stat().st_size} bytes; a JSON side file is at most {MAX_JSON_BYTES}")
        with path.open("rb") as handle:
            data = handle.read(MAX_JSON_BYTES + 1)  # a device or a growing file reports no true size
        if len(data) > MAX_JSON_BYTES:
            raise AdapterError(f"{path}: more than {MAX_JSON_BYTES} bytes; a JSON side file is at most that")
        return json.loads(data.decode("utf-8-sig"))  # -sig: a byte-order mark (Windows editors) is read
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise AdapterError(f"{path}: not valid JSON ({type(err).__name__}: {str(err)[:120]})") from None
    except OSError as err:
        raise AdapterError(f"{path}: cannot be read ({err.strerror or err})") from None


def check_plain_lora(config: Mapping, where: str) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        shown = config.get("peft_type") or "none given"
        raise AdapterError(f"{where}: PEFT type {shown} is not supported; mergescope merges plain LoRA only")
    for flag, label in _NON_LORA_FLAGS.items():
        if config.get(flag):
            raise AdapterError(f"{where}: {label} adapters ({flag}=true) are not supported; plain LoRA only")
    # fan_in_fan_out (GPT-2's Conv1D) is read as any LoRA: PEFT keeps A (r, d_in) and B (d_out, r)
    # either way; only the base weight is stored transposed, so only applying ΔW to it transposes
    # (merging.evaluation.evaluate.weight_update, merging.engine.export).
    if config.get("fan_in_fan_out") not in (None, True, False):
        raise AdapterError(f"{where}: field 'fan_in_fan_out' must be true or false, got {config['fan_in_fan_out']!r}")
    # fields PEFT reads to build the model: mergescope goes by the factors, but a value PEFT cannot
    # read means a damaged config, and a merged output would inherit it
    targets = config.get("target_modules")
    if targets is not None and not isinstance(targets, str) and not (
        isinstance(targets, list) and all(isinstance(t, str) for t in targets)
    ):
        raise AdapterError(f"{where}: field 'target_modules' must be a module name pattern or a list of names, "
                           f"got {_short(targets)}")
    layers = config.get("layers_to_transform")
    if layers is not None and not (isinstance(layers, int) and not isinstance(layers, bool)) and not (
        isinstance(layers, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
    ):
        raise AdapterError(f"{where}: field 'layers_to_transform' must be a block index or a list of them, "
                           f"got {_short(layers)}")


# What mergescope reads from mergescope.json, the JSON types it needs, and how to say so.
_META_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "task": ((str,), "a string"),
    "init": ((str,), "a string"),
    "base_model": ((str,), "a string"),
    "task_file": ((str,), "a string"),
    "labels": ((list,), "a list of strings"),
    "data": ((dict,), "a JSON object"),
    "single_task_accuracy": ((int, float), "a finite number"),
    "majority_baseline": ((int, float), "a finite number"),
}


def check_meta(meta: object, where: str) -> dict:
    """mergescope.json must be an object whose fields mergescope reads have the right types."""
    if not isinstance(meta, dict):
        raise AdapterError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    for key, (types, wanted) in _META_FIELDS.items():
        value = meta.get(key)
        if value is None:
            continue
        wrong = isinstance(value, bool) or not isinstance(value, types)
        wrong = wrong or (isinstance(value, float) and not math.isfinite(value))
        wrong = wrong or (key == "labels" and not all(isinstance(label, str) for label in value))
        if wrong:
            raise AdapterError(f"{where}: field '{key}' must be {wanted}, got {_short(value)}")
    for key, value in (meta.get("data") or {}).items():
        counted = key in ("train_size", "eval_size", "seed") and value is not None
        if counted and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise AdapterError(f"{where}: field 'data.{key}' must be a whole number ≥ 0, got {_short(value)}")
    return meta


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_pickled_weights(path: Path) -> object:
    """torch.load with weights_only (nothing but tensors); torch's own warnings about the file (an
    unusual pickle protocol, with a source line) are kept off the terminal: a refusal is one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as err:
            raise AdapterError(f"{weights}: unreadable safetensors file ({str(err)[:200]})") from None
    pickled = folder / PICKLE_WEIGHTS_FILE
    if pickled.is_file():
        # A pickle can run code when loaded; weights_only refuses anything but tensors.
        try:
            state = load_pickled_weights(pickled)
        except Exception as err:  # torch raises several types for a refused or broken pickle
            raise AdapterError(
                f"{pickled}: refused to load this pickled file safely ({type(err).__name__}); "
                "convert it to safetensors"
            ) from None
        if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise AdapterError(f"{pickled}: expected a mapping of tensor names to tensors")
        return state
    raise AdapterError(f"{folder}: missing {WEIGHTS_FILE}")


def _module_name(key: str) -> str:
    return key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key


def adapter_from_state(
    name: str,
    state: Mapping[str, torch.Tensor],
    config: Mapping,
    where: str | None = None,
) -> Adapter:
    """Build an Adapter from PEFT-style tensor names (``...lora_A.weight`` / ``...lora_B.weight``).

    Refused with the file (`where`) and the module or field named: a config that gives no finite
    scale (see :func:`check_lora_config`), factors that are not floating-point matrices, rank 0,
    empty dimensions, A and B that do not chain (A's rows ≠ B's columns), a rank other than the one
    the config declares (`r` / `rank_pattern`), NaN/Inf (or values beyond float32), two tensors for
    one factor, and a scale so large that ΔW's entries could overflow float32 in a merge.
    """
    where = where or name
    check_lora_config(config, where)
    factors: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    saved: dict[str, tuple[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise AdapterError(f"{where}: expected tensor names mapped to tensors, got {_short(key)}")
        match = re.match(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if match:
            module_name, factor = _module_name(match.group(1)), match.group(2)
            pair = factors.setdefault(module_name, {})
            if factor in pair:
                raise AdapterError(
                    f"{where}: module {module_name} has two lora_{factor} tensors ({pair[factor][0]} and {key}); "
                    "a file with several adapters in it is not supported"
                )
            pair[factor] = (key, tensor)
        elif ".lora_embedding_" in key or ".lora_magnitude_vector" in key:
            raise AdapterError(f"{where}: tensor {key} is not a plain linear LoRA factor")
        else:
            # PEFT saves a wrapped layer's own tensors (its bias, bias="all") as <module>.base_layer.bias:
            # keep the base model's name, so the tensor can be written into the base where it belongs
            saved_name = _module_name(key).replace(".base_layer.", ".")
            if saved_name in saved:
                raise AdapterError(f"{where}: tensors {saved[saved_name][0]} and {key} name the same module")
            saved[saved_name] = (key, tensor)
    if not factors:
        raise AdapterError(f"{where}: no LoRA factors (lora_A / lora_B tensors) found")
    modules: dict[str, LoraModule] = {}
    for module_name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterError(f"{where}: module {module_name} has no lora_{missing} tensor")
        A, B = pair["A"][1], pair["B"][1]
        modules[module_name] = _checked_module(module_name, A, B, config, where)
    for key, tensor in saved.values():
        if tensor.is_complex() or (tensor.is_floating_point() and not _all_finite(tensor)):
            raise AdapterError(f"{where}: saved tensor {key} contains NaN or Inf (or is not real-valued)")
    for saved_name, (key, _) in saved.items():
        if not _declared_whole_tensor(saved_name, modules, config):
            listed = config.get("modules_to_save") or []
            raise AdapterError(
                f"{where}: tensor {key} is not a LoRA factor, and its module is not in the config's "
                f"modules_to_save ({', '.join(map(str, listed)) if listed else 'none listed'}) nor a LoRA "
                "module's bias: remove it from the file or list its module in modules_to_save"
            )
    return Adapter(
        name=name,
        modules=modules,
        saved_modules={saved_name: tensor for saved_name, (_, tensor) in saved.items()},
        base_model=config.get("base_model_name_or_path"),
        config=dict(config),
    )


# Whole tensors PEFT saves without naming them in modules_to_save: a sequence classifier's head
# (task_type SEQ_CLS adds classifier/score itself) and trainable-token deltas.
_IMPLIED_WHOLE_TENSORS = ("classifier", "score")


def _declared_whole_tensor(saved_name: str, modules: Mapping[str, LoraModule], config: Mapping) -> bool:
    """Whether a non-LoRA tensor of the file is one the config accounts for: a module in
    modules_to_save (PEFT matches by name suffix), a LoRA module's bias (bias="all"/"lora_only"),
    a classification head, or a trainable-tokens delta."""
    owner = saved_name.rsplit(".", 1)[0]
    if owner in modules or "trainable_tokens" in saved_name or owner.split(".", 1)[0] in _IMPLIED_WHOLE_TENSORS:
        return True
    if config.get("bias") in ("all", "lora_only") and saved_name.endswith(".bias"):
        return True
    listed = config.get("modules_to_save") or []
    listed = [listed] if isinstance(listed, str) else listed
    return any(isinstance(t, str) and (owner == t or owner.endswith(f".{t}") or f".{t}." in f".{owner}.") for t in listed)


def _all_finite(tensor: torch.Tensor) -> bool:
    """No NaN, no Inf, and nothing that becomes Inf in float32 (a float64 1e300)."""
    return bool(torch.isfinite(tensor.to(torch.float32)).all())


def _checked_module(module_name: str, A: torch.Tensor, B: torch.Tensor, config: Mapping, where: str) -> LoraModule:
    """One module's factors and scale, after every check that keeps ΔW = scale·B·A well defined."""
    label = f"{where}: module {module_name}"
    for factor, tensor in (("lora_A", A), ("lora_B", B)):
        if not tensor.is_floating_point():
            raise AdapterError(f"{label} {factor} has dtype {str(tensor.dtype).removeprefix('torch.')}; "
                               "LoRA factors are floating-point")
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
        raise AdapterError(
            f"{label} has factors of incompatible shapes A {tuple(A.shape)} and B {tuple(B.shape)} "
            "(A is rank × d_in, B is d_out × rank)"
        )
    rank = int(A.shape[0])
    if rank == 0:
        raise AdapterError(f"{label} has rank 0 (lora_A has no rows): an adapter factor needs at least one")
    if A.shape[1] == 0 or B.shape[0] == 0:
        raise AdapterError(f"{label} has an empty dimension: A {tuple(A.shape)}, B {tuple(B.shape)}")
    declared = configured_rank(config, module_name)
    if declared is not None and declared != rank:
        field_name = "rank_pattern" if any(
            re.match(rf"(.*\.)?({p})$", module_name) for p in (config.get("rank_pattern") or {})
        ) else "r"
        raise AdapterError(
            f"{where}: field '{field_name}' says rank {declared} for module {module_name}, "
            f"but its factors have rank {rank} (A {tuple(A.shape)}, B {tuple(B.shape)})"
        )
    for factor, tensor in (("lora_A", A), ("lora_B", B)):
        if not _all_finite(tensor):
            raise AdapterError(f"{label} {factor} contains NaN or Inf (or values beyond float32's range)")
    try:
        scale = lora_scale(config, module_name, rank)
    except AdapterError as err:
        raise AdapterError(f"{where}: {err}") from None
    bound = update_entry_bound(A, B, scale)
    if not math.isfinite(bound) or bound > MAX_UPDATE_ENTRY:
        raise AdapterError(
            f"{where}: module {module_name}: scale {scale:.3g} (lora_alpha / r) makes the update's entries up to "
            f"{bound:.3g}, beyond what float32 merges can hold ({MAX_UPDATE_ENTRY:.3g}); check 'lora_alpha'"
        )
    return LoraModule(A, B, scale)


def update_entry_bound(A: torch.Tensor, B: torch.Tensor, scale: float) -> float:
    """An upper bound on |ΔW_ij| for ΔW = scale·B·A, without building ΔW (in float64).

    Cauchy–Schwarz: |ΔW_ij| = |scale|·|⟨B_i,:, A_:,j⟩| ≤ |scale| · max_i ‖B_i,:‖ · max_j ‖A_:,j‖.
    """
    if A.numel() == 0 or B.numel() == 0:
        return 0.0
    rows = float(torch.linalg.vector_norm(B.detach().double(), dim=1).max())
    columns = float(torch.linalg.vector_norm(A.detach().double(), dim=0).max())
    return abs(scale) * rows * columns


def load_adapter(folder: str | os.PathLike, name: str | None = None) -> Adapter:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors).

    Anything wrong raises one AdapterError naming the file and the field or module.
    """
    folder = Path(folder)
    config = read_config(folder)
    check_lora_config(config, str(folder / CONFIG_FILE))
    meta = None
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = check_meta(read_json(meta_path), str(meta_path))
    state = _read_tensors(folder)
    adapter = adapter_from_state(name or folder.name, state, config, where=str(folder))
    adapter.path = folder
    if meta is not None:
        adapter.meta = meta
    return adapter


# ----------------------------------------------------------------------------------------------
# Compatibility


def adapter_version(folder: str | os.PathLike) -> str:
    """An adapter folder's identity for caches: its path and its weights file's mtime, so an adapter
    retrained in place gets a new version (0 stands for a folder without weights)."""
    path = Path(folder)
    try:
        modified = (path / WEIGHTS_FILE).stat().st_mtime_ns
    except OSError:
        modified = 0
    return f"{path}@{modified}"


@dataclass(frozen=True)
class Compatibility:
    """What a set of adapters has in common, and what the merge will do about the differences."""

    modules: list[str]  # union, in a stable order
    shapes: dict[str, tuple[int, int]]
    missing: dict[str, list[str]]  # module -> adapters that lack it (they contribute zero there)
    notes: list[str]


def check_compatible(adapters: Iterable[Adapter]) -> Compatibility:
    """Refuse adapters that cannot be merged; describe the harmless differences."""
    adapters = list(adapters)
    if not adapters:
        raise AdapterError("no adapters given")
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter names must be unique, got {names}")
    bases = {a.base_model for a in adapters if a.base_model}
    if len(bases) > 1:
        raise AdapterError(f"adapters come from different base models: {sorted(bases)}")
    shapes: dict[str, tuple[int, int]] = {}
    owner: dict[str, str] = {}
    for adapter in adapters:
        for module_name, module in adapter.modules.items():
            shape = module.shape
            if module_name in shapes and shapes[module_name] != shape:
                raise AdapterError(
                    f"module {module_name} has shape {shapes[module_name]} in {owner[module_name]} "
                    f"but {shape} in {adapter.name}: adapters of different base models?"
                )
            shapes.setdefault(module_name, shape)
            owner.setdefault(module_name, adapter.name)
    modules = sorted(shapes, key=_natural_key)
    missing = {m: [a.name for a in adapters if m not in a.modules] for m in modules}
    missing = {m: lacking for m, lacking in missing.items() if lacking}
    notes = [
        f"{m}: absent from {', '.join(lacking)}; they contribute zero there" for m, lacking in missing.items()
    ]
    check_distinct(adapters)
    ranks = {r for a in adapters for r in a.ranks().values()}
    if len(ranks) > 1:
        notes.append(f"adapters have different ranks {sorted(ranks)}; merged in ΔW space, which is exact")
    return Compatibility(modules=modules, shapes=shapes, missing=missing, notes=notes)


def check_distinct(adapters: Sequence[Adapter]) -> None:
    """Refuse the same adapter folder listed twice under two names: it would be merged with itself.

    Two adapters are the same when they have the same modules and, in every module, equal A and
    equal scale·B (a copy saved by mergescope folds the scale into B). Only adapters read from
    folders are compared: that is where a recipe or a pick in the dashboard can list one twice by
    mistake, while code may merge an in-memory adapter with itself on purpose (idempotence tests).
    Comparing stops at the first module that differs: one small comparison per pair.
    """
    from_folders = [a for a in adapters if a.path is not None]
    for i, first in enumerate(from_folders):
        for second in from_folders[i + 1:]:
            if first.modules.keys() != second.modules.keys():
                continue
            if all(_same_update(first.modules[m], second.modules[m]) for m in first.modules):
                raise AdapterError(
                    f"adapters {first.name!r} and {second.name!r} are the same adapter (identical factors in every "
                    "module); list it once, with the weight you want"
                )


def _same_update(first: LoraModule, second: LoraModule) -> bool:
    if first.A.shape != second.A.shape or first.B.shape != second.B.shape:
        return False
    if not torch.equal(first.A.float(), second.A.to(device=first.A.device, dtype=torch.float32)):
        return False
    first_B = first.B.float() * first.scale
    second_B = second.B.to(device=first.B.device, dtype=torch.float32) * second.scale
    return bool(torch.allclose(first_B, second_B, rtol=1e-6, atol=0.0))


def _natural_key(name: str) -> list:
    """Sort layer.10 after layer.9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def layer_of(module_name: str) -> int | None:
    """The transformer block index in a module name (``...layer.3...`` or ``...layers.3...``)."""
    match = re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", f".{module_name}.")
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------------
# Writing


def adapter_state(adapter: Adapter, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT tensor names for an adapter's factors (scale folded into B, then cast to `dtype`) and
    saved modules (kept in their own dtype)."""
    state: dict[str, torch.Tensor] = {}
    for module_name, module in adapter.modules.items():
        prefix = PEFT_PREFIX + module_name
        state[f"{prefix}.lora_A.weight"] = module.A.detach().to("cpu", torch.float32).to(dtype).contiguous()
        B = module.B.detach().to("cpu", torch.float32) * module.scale
        state[f"{prefix}.lora_B.weight"] = B.to(dtype).contiguous()
    for key, tensor in adapter.saved_modules.items():
        owner, leaf = key.rsplit(".", 1) if "." in key else (key, "")
        if owner in adapter.modules:  # a LoRA layer's own tensor: PEFT's name for it
            key = f"{owner}.base_layer.{leaf}"
        state[PEFT_PREFIX + key] = tensor.detach().to("cpu").contiguous()
    return state


def peft_config_for(adapter: Adapter, template: Mapping | None = None) -> dict:
    """An adapter_config.json whose scale is 1 for every module (the scale is folded into B)."""
    ranks = adapter.ranks()
    default_rank = max(ranks.values()) if ranks else 1
    # rank_pattern / alpha_pattern keys are regexes matched at the end of a module name: escape dots.
    rank_pattern = {re.escape(m): r for m, r in ranks.items() if r != default_rank}
    # Full module names: PEFT matches them exactly, so no other module gets a (zero) LoRA layer.
    target_modules = sorted(ranks)
    config = dict(template or {})
    # Settings of the template adapter that would make PEFT skip or add modules on load.
    for key in (
        "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "init_lora_weights", "layers_to_transform",
        "layers_pattern", "exclude_modules", "target_parameters", "layer_replication", "trainable_token_indices",
    ):
        config.pop(key, None)
    config.update(
        {
            "peft_type": "LORA",
            "r": default_rank,
            "lora_alpha": default_rank,
            "rank_pattern": rank_pattern,
            "alpha_pattern": dict(rank_pattern),
            "use_rslora": False,
            "use_dora": False,
            "target_modules": target_modules,
            "base_model_name_or_path": adapter.base_model,
            "bias": config.get("bias", "none"),
            "lora_dropout": 0.0,
            # the base's layout, not the factors': a merge of GPT-2 adapters stays fan_in_fan_out
            "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
            "inference_mode": True,
        }
    )
    # A LoRA-targeted module's own saved tensor (its bias, with PEFT's bias="all"/"lora_only") is
    # loaded by PEFT through `bias`, not modules_to_save, which would wrap the whole layer.
    owners = {k.rsplit(".", 1)[0] for k in adapter.saved_modules}
    config["modules_to_save"] = sorted(owners - set(adapter.modules)) or None
    config.setdefault("task_type", None)
    return config


def save_adapter(
    adapter: Adapter,
    folder: str | os.PathLike,
    template_config: Mapping | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a PEFT LoRA folder atomically: build it beside the target, then swap it into place.

    Nothing non-finite is written (the module is named); an existing folder is replaced only with
    `overwrite` and only when it holds an adapter (see merging.core.staging.check_replaceable).
    """
    folder = Path(folder)
    state = adapter_state(adapter, dtype)
    for key, tensor in state.items():
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise AdapterError(f"refusing to write {folder}: tensor {key} contains NaN or Inf")
    for module_name, module in adapter.modules.items():
        if update_entry_bound(module.A, module.B, module.scale) > MAX_UPDATE_ENTRY:
            raise AdapterError(f"refusing to write {folder}: module {module_name}'s update overflows float32")
    try:
        with staged_folder(folder, overwrite=overwrite) as staging:
            config = peft_config_for(adapter, template_config)
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
            save_file(state, str(staging / WEIGHTS_FILE))
            if adapter.meta:
                (staging / META_FILE).write_text(json.dumps(adapter.meta, indent=2), encoding="utf-8")
            for file_name, content in (extra_files or {}).items():
                (staging / file_name).write_bytes(content)
    except StagingError as err:
        raise AdapterError(str(err)) from None
    except (OSError, SafetensorError) as err:  # a full disk, a quota: the staging copy is gone
        if not is_write_failure(err):
            raise
        raise AdapterError(str(write_failure(folder, err))) from None
    return folder
