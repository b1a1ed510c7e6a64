"""LoRA adapters in memory, and the one place where PEFT adapter folders are read and written.

An adapter is a mapping from target-module name to its factors (A, B, scale), so that the module's
update is ΔW = scale · B · A with A of shape (r, d_in) and B of shape (d_out, r). Module names are
the base model's own names (``bert.encoder.layer.0.attention.self.query``), without PEFT's
``base_model.model.`` prefix, so adapters saved by different PEFT versions line up.

Everything that touches files lives here: loading refuses anything but plain LoRA, pickles and
non-finite weights, and saving writes to a temporary folder that is renamed only when complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

PEFT_PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_WEIGHTS_FILE = "adapter_model.bin"
# mergescope's side file: task name, label names, provenance. PEFT ignores it.
META_FILE = "mergescope.json"
# Heads (modules_to_save tensors) of the adapters that went into a merge, one set per source adapter.
HEADS_FILE = "mergescope_heads.safetensors"

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

    def to(self, device: torch.device | str) -> "LoraModule":
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
# PEFT's per-module patterns


def _pattern_value(patterns: Mapping[str, float], module_name: str, default: float) -> float:
    """PEFT's rule for rank_pattern / alpha_pattern: a key matches a module whose name ends in it."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return default


def lora_scale(config: Mapping, module_name: str, rank: int) -> float:
    """The scale PEFT applies to B·A for this module: alpha/r, or alpha/√r with rsLoRA."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module_name, config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return float(alpha) / math.sqrt(rank)
    return float(alpha) / rank


# ----------------------------------------------------------------------------------------------
# Reading


def read_config(folder: Path) -> dict:
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise AdapterError(f"{folder}: not a folder")
    if not config_path.is_file():
        raise AdapterError(f"{folder}: missing {CONFIG_FILE}; is this a PEFT adapter folder?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object")
    return config


def check_plain_lora(config: Mapping, where: str) -> None:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        shown = config.get("peft_type") or "none given"
        raise AdapterError(f"{where}: PEFT type {shown} is not supported; mergescope merges plain LoRA only")
    for flag, label in _NON_LORA_FLAGS.items():
        if config.get(flag):
            raise AdapterError(f"{where}: {label} adapters ({flag}=true) are not supported; plain LoRA only")
    if config.get("fan_in_fan_out"):
        # Conv1D layers (GPT-2) store weights transposed; supporting them means transposing here.
        raise AdapterError(f"{where}: fan_in_fan_out=true (GPT-2 style Conv1D) is not supported yet")


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        try:
            return load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise AdapterError(f"{weights}: unreadable safetensors file ({err})") from err
    pickled = folder / PICKLE_WEIGHTS_FILE
    if pickled.is_file():
        # A pickle can run code when loaded; weights_only refuses anything but tensors.
        try:
            state = torch.load(str(pickled), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for a refused or broken pickle
            raise AdapterError(
                f"{pickled}: refused to load this pickled file safely ({type(err).__name__}); "
                "convert it to safetensors"
            ) from err
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
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
    """Build an Adapter from PEFT-style tensor names (``...lora_A.weight`` / ``...lora_B.weight``)."""
    where = where or name
    check_plain_lora(config, where)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    saved: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = re.match(r"^(.*)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
        if match:
            factors.setdefault(_module_name(match.group(1)), {})[match.group(2)] = tensor
        elif ".lora_embedding_" in key or ".lora_magnitude_vector" in key:
            raise AdapterError(f"{where}: tensor {key} is not a plain linear LoRA factor")
        else:
            saved[_module_name(key)] = tensor
    if not factors:
        raise AdapterError(f"{where}: no LoRA factors (lora_A / lora_B tensors) found")
    modules: dict[str, LoraModule] = {}
    for module_name, pair in sorted(factors.items()):
        if set(pair) != {"A", "B"}:
            missing = ({"A", "B"} - set(pair)).pop()
            raise AdapterError(f"{where}: module {module_name} has no lora_{missing} tensor")
        A, B = pair["A"], pair["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise AdapterError(
                f"{where}: module {module_name} has factors of incompatible shapes "
                f"A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        for label, tensor in (("lora_A", A), ("lora_B", B)):
            if not torch.isfinite(tensor.float()).all():
                raise AdapterError(f"{where}: module {module_name} {label} contains NaN or Inf")
        modules[module_name] = LoraModule(A, B, lora_scale(config, module_name, int(A.shape[0])))
    for key, tensor in saved.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor.float()).all():
            raise AdapterError(f"{where}: saved tensor {key} contains NaN or Inf")
    return Adapter(
        name=name,
        modules=modules,
        saved_modules=dict(saved),
        base_model=config.get("base_model_name_or_path"),
        config=dict(config),
    )


def load_adapter(folder: str | os.PathLike, name: str | None = None) -> Adapter:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."""
    folder = Path(folder)
    config = read_config(folder)
    check_plain_lora(config, str(folder))
    state = _read_tensors(folder)
    adapter = adapter_from_state(name or folder.name, state, config, where=str(folder))
    adapter.path = folder
    meta_path = folder / META_FILE
    if meta_path.is_file():
        try:
            adapter.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AdapterError(f"{meta_path}: not valid JSON ({err})") from err
    return adapter


# ----------------------------------------------------------------------------------------------
# Compatibility


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
    ranks = {r for a in adapters for r in a.ranks().values()}
    if len(ranks) > 1:
        notes.append(f"adapters have different ranks {sorted(ranks)}; merged in ΔW space, which is exact")
    return Compatibility(modules=modules, shapes=shapes, missing=missing, notes=notes)


def _natural_key(name: str) -> list:
    """Sort layer.10 after layer.9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def layer_of(module_name: str) -> int | None:
    """The transformer block index in a module name (``...layer.3...`` or ``...layers.3...``)."""
    match = re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", f".{module_name}.")
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------------------------
# Writing


def adapter_state(adapter: Adapter) -> dict[str, torch.Tensor]:
    """PEFT tensor names for an adapter's factors (scale folded into B) and saved modules."""
    state: dict[str, torch.Tensor] = {}
    for module_name, module in adapter.modules.items():
        prefix = PEFT_PREFIX + module_name
        state[f"{prefix}.lora_A.weight"] = module.A.detach().to("cpu", torch.float32).contiguous()
        state[f"{prefix}.lora_B.weight"] = (module.B.detach().to("cpu", torch.float32) * module.scale).contiguous()
    for key, tensor in adapter.saved_modules.items():
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
            "fan_in_fan_out": False,
            "inference_mode": True,
        }
    )
    config["modules_to_save"] = sorted({k.rsplit(".", 1)[0] for k in adapter.saved_modules}) or None
    config.setdefault("task_type", None)
    return config


def save_adapter(
    adapter: Adapter,
    folder: str | os.PathLike,
    template_config: Mapping | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PEFT LoRA folder atomically: build it beside the target, then rename into place."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise AdapterError(f"{folder} already exists; choose another output folder")
    with staged_folder(folder) as staging:
        config = peft_config_for(adapter, template_config)
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        save_file(adapter_state(adapter), str(staging / WEIGHTS_FILE))
        if adapter.meta:
            (staging / META_FILE).write_text(json.dumps(adapter.meta, indent=2), encoding="utf-8")
        for file_name, content in (extra_files or {}).items():
            (staging / file_name).write_bytes(content)
    return folder


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A hidden folder beside `target` to fill; renamed onto `target` only if the block succeeds.

    A failure (or Ctrl-C) removes the staging folder, so no half-written folder ever looks valid.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
