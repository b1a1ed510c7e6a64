"""Full-model export: the base model with a merged update folded in, as a Hugging Face folder.

`python -m merging merge RECIPE --out DIR --full-model` writes what `from_pretrained(DIR)` loads
(AutoModelForCausalLM, or AutoModelForSequenceClassification for a classification base): the
config, safetensors shards with their index, the tokenizer and generation config files, and
`mergescope_export.json` (the recipe and what was folded in). The PEFT folder stays the default
output; this is the "merge_and_unload, then convert" step users otherwise do by hand.

One tensor at a time, so peak memory is one tensor and one module's update, not a copy of the
base: each target module's weight gets W + ΔW with ΔW the module's dense merged update
(merging.engine.merge.dense_deltas: computed from the source adapters as it is written, never factored;
or B·A of given factors), transposed for GPT-2's Conv1D, whose weight is stored (d_in, d_out). The
shards' safetensors headers are written first (every shape and dtype is known from the plan), then
each tensor at its offset; base tensors are read with plain reads (no memory map whose pages would
count as this process's memory). Nothing but a meta-device skeleton of the model (no memory) is
built to learn the layout: which names are Conv1D, which tensors are tied, the names the model
class expects. The folder is staged beside `out` and swapped in when complete (merging.core.staging), so
a failure never leaves a folder that looks like a model.

Precision: W + ΔW is summed in float32 and rounded once to the output dtype. `dtype="auto"` keeps
each tensor's stored dtype (a bfloat16 checkpoint stays bfloat16); float32 / bfloat16 / float16
cast every floating tensor.

Carried tensors (modules_to_save such as embed_tokens / lm_head, merged by the recipe's rule) replace
the base's. A tied embedding (embed_tokens ≡ lm_head, e.g. GPT-2, tie_word_embeddings=true) stays
one tensor: a carried copy of either name is written to the one stored tensor (`tie_carried`).
A classification export takes one task's head (the first adapter's that has one, or `head`): an
exported model has one head, while a merged PEFT folder keeps every task's.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError

from merging.adapters.lora import AdapterError, LoraModule
from merging.core.staging import (
    ADAPTER_MARKER,
    ADAPTER_OWNED,
    StagingError,
    check_no_foreign,
    is_write_failure,
    staged_folder,
    write_failure,
)
from merging.methods.blocks import cpu_merge_threads
from merging.models.base import KINDS, _quiet_transformers, check_model_dir, model_kind, weight_files

EXPORT_MARKER = "mergescope_export.json"
# An export may replace an earlier export or a merged PEFT folder, nothing else.
EXPORT_MARKERS = (EXPORT_MARKER, ADAPTER_MARKER)
# What replacing an output folder with an export replaces (the rest of the folder is kept): an
# earlier export's weights, index, config and marker, and an adapter's files (left beside a full
# model, they would make from_pretrained load the folder as an adapter); side files (tokenizer) are
# replaced when the new export has them.
EXPORT_OWNED = (
    *ADAPTER_OWNED, EXPORT_MARKER, "config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json",
)
DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# Weight files of the base are rewritten, never copied (pickles are never read at all).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf", ".onnx")
_SKIPPED_FILES = {"model.safetensors.index.json", "pytorch_model.bin.index.json", EXPORT_MARKER}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


class ExportError(ValueError):
    """An export that cannot be written, with a message fit for the user."""


# ----------------------------------------------------------------------------------------------
# The model's layout, from a meta-device skeleton


@dataclass
class Layout:
    """What the model class expects, learnt without allocating any weights."""

    kind: str
    names: set[str]  # state-dict names of the model class
    prefix: str  # base_model_prefix (bert, model, transformer)
    conv1d: set[str]  # module names whose weight is stored (d_in, d_out)
    tied: list[set[str]]  # groups of parameter names that share one tensor
    architecture: str

    def tied_with(self, name: str) -> set[str]:
        return next((group for group in self.tied if name in group), {name})


def model_layout(folder: Path, kind: str, num_labels: int | None = None) -> Layout:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.pytorch_utils import Conv1D


    with _quiet_transformers():
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        if num_labels is not None:
            config.num_labels = num_labels
        auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
        try:
            with torch.device("meta"):
                skeleton = auto.from_config(config)
        except (ValueError, KeyError) as err:
            raise ExportError(f"{folder}: {config.model_type} has no {kind} model class ({err})") from None
    by_tensor: dict[int, set[str]] = {}
    for name, parameter in skeleton.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(parameter), set()).add(name)
    return Layout(
        kind=kind,
        names=set(skeleton.state_dict().keys()) | {n for group in by_tensor.values() for n in group},
        prefix=getattr(skeleton, "base_model_prefix", "") or "",
        conv1d={name for name, module in skeleton.named_modules() if isinstance(module, Conv1D)},
        tied=[group for group in by_tensor.values() if len(group) > 1],
        architecture=type(skeleton).__name__,
    )


def model_name(key: str, layout: Layout) -> str:
    """A checkpoint key under the model class's name: a bare encoder's checkpoint (BertModel:
    `encoder.layer.0…`) gains the head model's prefix (`bert.encoder.layer.0…`)."""
    if key in layout.names or not layout.prefix:
        return key
    if f"{layout.prefix}.{key}" in layout.names:
        return f"{layout.prefix}.{key}"
    return key


def tie_carried(carried: Mapping[str, torch.Tensor], tied: Sequence[set[str]]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Carried tensors with each tied group reduced to one value, so tied weights stay tied.

    When adapters carry copies under two names of one tied group (embed_tokens and lm_head) that
    differ, the input embedding's copy is kept (it is the stored tensor) and a note says so.
    """
    result = dict(carried)
    notes = []
    for group in tied:
        present = sorted((k for k in group if k in result), key=lambda k: ("embed" not in k, k))
        if len(present) < 2:
            continue
        kept = present[0]
        for other in present[1:]:
            if not torch.equal(result[other], result[kept]):
                notes.append(f"{other} and {kept} are tied in this model: the carried {kept} serves both")
            del result[other]
    return result, notes


# ----------------------------------------------------------------------------------------------
# The plan: which output tensor comes from where, and what is added to it


@dataclass
class Source:
    file: Path | None  # None: a tensor that is not in the base (a classification head)
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    update: str | None = None  # merged module whose ΔW is added
    transposed: bool = False  # Conv1D: ΔWᵀ
    replacement: torch.Tensor | None = None  # a carried tensor or a head
    offset: int = 0  # where the tensor's bytes start in `file`


@dataclass
class ExportReport:
    out: Path
    kind: str
    architecture: str
    shards: int
    bytes: int
    dtype: str
    updated: list[str]
    carried: list[str]
    head_from: str | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "kind": self.kind, "architecture": self.architecture, "shards": self.shards,
            "bytes": self.bytes, "dtype": self.dtype, "updated_modules": len(self.updated),
            "carried": self.carried, "head_from": self.head_from, "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


_SAFE_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


_SAFE_NAMES = {dtype: name for name, dtype in _SAFE_DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024**2  # safetensors' own limit


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and where its data starts (checked, never trusted)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ExportError(f"{path}: unreadable safetensors file (shorter than its 8-byte header length)")
            length = int.from_bytes(prefix, "little")
            if length > min(_MAX_HEADER_BYTES, size - 8):
                raise ExportError(f"{path}: unreadable safetensors file (header length {length} beyond the file)")
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: unreadable safetensors file ({str(err)[:200]})") from None
    if not isinstance(header, dict):
        raise ExportError(f"{path}: unreadable safetensors file (its header is not a JSON object)")
    return header, 8 + length


def base_tensors(folder: Path) -> dict[str, Source]:
    """Every tensor of the base's safetensors files: where its bytes are, its shape and dtype (headers
    only; each entry checked against the file, so a tensor is later read with one plain read)."""
    sources: dict[str, Source] = {}
    for path in weight_files(folder):
        header, start = _safetensors_header(path)
        end_of_file = path.stat().st_size
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            where = f"{path}: tensor {key}"
            if not isinstance(entry, dict):
                raise ExportError(f"{where}: its header entry is not an object")
            dtype = _SAFE_DTYPES.get(entry.get("dtype"))
            if dtype is None:
                raise ExportError(f"{where} has dtype {entry.get('dtype')}, which is not supported")
            shape, offsets = entry.get("shape"), entry.get("data_offsets")
            if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
                raise ExportError(f"{where}: shape {shape!r} is not a list of sizes")
            if (not isinstance(offsets, list) or len(offsets) != 2
                    or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)):
                raise ExportError(f"{where}: data_offsets {offsets!r} is not [begin, end]")
            begin, end = offsets
            if not 0 <= begin <= end or start + end > end_of_file or end - begin != _nbytes(shape, dtype):
                raise ExportError(f"{where}: data_offsets {offsets} do not fit its shape {shape} or the file")
            sources[key] = Source(path, key, tuple(shape), dtype, offset=start + begin)
    return sources


def read_tensor(source: Source) -> torch.Tensor:
    """One base tensor, read from its file into fresh memory (a plain read, no memory map: the file's
    pages stay in the page cache, not in this process's resident set)."""
    tensor = torch.empty(source.shape, dtype=source.dtype)
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes:
        view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
        with open(source.file, "rb", buffering=0) as handle:
            handle.seek(source.offset)
            done = 0
            while done < nbytes:
                count = handle.readinto(view[done:])
                if not count:
                    raise ExportError(f"{source.file}: tensor {source.key} is cut short (file truncated?)")
                done += count
    return tensor


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def plan_export(
    folder: Path,
    modules: Mapping[str, LoraModule],
    carried: Mapping[str, torch.Tensor],
    layout: Layout,
    head: Mapping[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Source], list[str]]:
    """Output name → Source, checked: every merged module and carried tensor finds its base tensor
    with the right shape (else an ExportError naming it)."""
    plan: dict[str, Source] = {}
    for key, source in base_tensors(folder).items():
        name = model_name(key, layout)
        if name in plan:
            raise ExportError(f"{folder}: tensors {plan[name].key} and {key} both give {name}")
        plan[name] = source
    notes: list[str] = []

    def stored(name: str, what: str) -> str:
        if name in plan:
            return name
        partner = next((n for n in layout.tied_with(name) if n in plan), None)
        if partner is None:
            raise ExportError(f"{what}: the base model has no tensor {name}; adapter of another base model?")
        return partner

    for module_name, module in modules.items():
        target = stored(f"{module_name}.weight", f"module {module_name}")
        transposed = module_name in layout.conv1d
        expected = tuple(reversed(module.shape)) if transposed else tuple(module.shape)
        if plan[target].shape != expected:
            raise ExportError(
                f"module {module_name}: update of shape {module.shape} does not fit the base weight "
                f"{plan[target].shape}; adapter of another base model?"
            )
        if plan[target].update is not None:
            raise ExportError(f"module {module_name}: its weight {target} is tied to another updated module")
        plan[target].update, plan[target].transposed = module_name, transposed
    tied_carried, tie_notes = tie_carried(carried, layout.tied)
    notes += tie_notes
    for key, tensor in tied_carried.items():
        target = stored(key, f"carried tensor {key}")
        if plan[target].shape != tuple(tensor.shape):
            raise ExportError(f"carried tensor {key} {tuple(tensor.shape)} does not fit the base's {plan[target].shape}")
        if plan[target].update is not None:
            notes.append(f"{key}: carried whole, and the LoRA update of {plan[target].update} is added to it")
        plan[target].replacement = tensor
    for key, tensor in (head or {}).items():
        if key in plan and plan[key].shape != tuple(tensor.shape):
            notes.append(f"{key}: the base's {plan[key].shape} head is replaced by the task's {tuple(tensor.shape)}")
        plan[key] = Source(None, key, tuple(tensor.shape), tensor.dtype, replacement=tensor)
    return plan, notes


def _output_dtype(source: Source, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None or not source.dtype.is_floating_point:
        return source.dtype
    return dtype


def built_tensor(source: Source, delta: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor:
    """One output tensor: the base's (or its replacement), plus the dense ΔW added in place in
    float32, rounded once to the output dtype."""
    out_dtype = _output_dtype(source, dtype)
    fresh = source.replacement is None
    tensor = read_tensor(source) if fresh else source.replacement
    if delta is None:
        return tensor.to(out_dtype).contiguous()
    if tensor.dtype == torch.float32 and fresh:
        summed = tensor  # our own copy: W += ΔW in place
    else:
        summed = tensor.to(torch.float32, copy=True)
    summed += delta.T if source.transposed else delta
    if not bool(torch.isfinite(summed).all()):
        raise ExportError(f"module {source.update}: W + ΔW is not finite; refusing to write it")
    return summed.to(out_dtype).contiguous()


def _shards(plan: Mapping[str, Source], dtype: torch.dtype | None, max_bytes: int) -> list[list[str]]:
    """Names grouped into shards of at most `max_bytes` (a larger tensor gets a shard of its own),
    in the base's file order so each base file is read once, front to back."""
    order = sorted(plan, key=lambda n: (plan[n].file is None, str(plan[n].file), n))
    shards: list[list[str]] = [[]]
    size = 0
    for name in order:
        nbytes = _nbytes(plan[name].shape, _output_dtype(plan[name], dtype))
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def parse_size(value: int | str) -> int:
    """`max_shard_size` as bytes: an int, or "500MB", "2GB", "64KB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip().upper()
    try:
        for unit, factor in (("GIB", 1024**3), ("MIB", 1024**2), ("KIB", 1024), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
            if text.endswith(unit):
                return int(float(text[: -len(unit)]) * factor)
        return int(text)
    except (ValueError, OverflowError):  # "lots", "nanGB", "1e999GB"
        raise ExportError(
            f"max_shard_size: expected a size such as 2GB, 500MB or a number of bytes, got {str(value)[:40]!r}"
        ) from None


# ----------------------------------------------------------------------------------------------
# Writing


def _side_files(base: Path) -> list[str]:
    """Tokenizer, generation config and other small files of the base (weights are rewritten)."""
    return [
        path.name for path in sorted(base.iterdir())
        if path.is_file() and not path.name.endswith(_WEIGHT_SUFFIXES) and path.name not in _SKIPPED_FILES
        and not path.name.startswith(".")
    ]


def _copy_side_files(base: Path, staging: Path) -> None:
    for name in _side_files(base):
        shutil.copyfile(base / name, staging / name)


def export_owned(base: Path, out: Path) -> tuple[str, ...]:
    """What an export into `out` may replace: EXPORT_OWNED, and the side files when `out` holds an
    earlier export (its tokenizer and model card are mergescope's copies, not the user's)."""
    if (out / EXPORT_MARKER).is_file():
        return (*EXPORT_OWNED, *(glob.escape(name) for name in _side_files(base)))
    return EXPORT_OWNED


def _write_config(base: Path, staging: Path, layout: Layout, dtype: torch.dtype | None, head: Mapping | None,
                  labels: Sequence[str] | None) -> None:
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config["architectures"] = [layout.architecture]
    if dtype is not None:
        config["dtype"] = _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))
        config.pop("torch_dtype", None)
    if head:
        weight = next((t for k, t in head.items() if k.endswith("weight")), None)
        if weight is not None:
            count = int(weight.shape[0])
            names = list(labels) if labels and len(labels) == count else [f"LABEL_{i}" for i in range(count)]
            config["id2label"] = {str(i): name for i, name in enumerate(names)}
            config["label2id"] = {name: i for i, name in enumerate(names)}
            config["num_labels"] = count
    (staging / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


@dataclass
class _Slot:
    """Where one output tensor's bytes go: a shard file and an offset in it."""

    path: Path
    offset: int
    nbytes: int


def _shard_header(plan: Mapping[str, Source], shard: Sequence[str], dtype: torch.dtype | None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A safetensors header for `shard` (its tensors laid out in order) and each tensor's byte range
    relative to the data. The format: an 8-byte little-endian length, the JSON header padded with
    spaces to a multiple of 8, then the tensors' bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    ranges: dict[str, tuple[int, int]] = {}
    position = 0
    for name in shard:
        out_dtype = _output_dtype(plan[name], dtype)
        nbytes = _nbytes(plan[name].shape, out_dtype)
        header[name] = {"dtype": _SAFE_NAMES[out_dtype], "shape": list(plan[name].shape),
                        "data_offsets": [position, position + nbytes]}
        ranges[name] = (position, position + nbytes)
        position += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text, ranges


def _write_at(fd: int, tensor: torch.Tensor, slot: _Slot) -> None:
    data = memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy())
    if len(data) != slot.nbytes:  # a plan/tensor mismatch is a bug, never a silently wrong file
        raise ExportError(f"internal error: {slot.nbytes} bytes planned, {len(data)} built")
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], slot.offset + done)


def export_full_model(
    base_dir: str | os.PathLike,
    modules: Mapping[str, LoraModule],
    out: str | os.PathLike,
    *,
    carried: Mapping[str, torch.Tensor] | None = None,
    head: Mapping[str, torch.Tensor] | None = None,
    labels: Sequence[str] | None = None,
    kind: str | None = None,
    dtype: str = "auto",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    provenance: Mapping | None = None,
    progress=None,
    deltas: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None,
) -> ExportReport:
    """Write base + Σ ΔW (the merged `modules`, scale folded in) as a Hugging Face model folder.

    `carried`: whole tensors that replace the base's (state-dict names); `head`: a classification
    head's tensors (`classifier.weight`, …); `dtype`: auto (as stored), float32, bfloat16, float16.
    `deltas`: yields (module name, dense ΔW) for every module of `modules`, one at a time (then
    `modules` only gives their shapes); by default each module's ΔW = B·A from its factors.

    Each shard's header is written first (every shape and dtype is known from the plan), then each
    updated tensor as its ΔW arrives (W read, W += ΔW, written at its offset), then the rest: one
    tensor in memory at a time besides the one module's update.
    """
    import time

    start = time.perf_counter()
    base = check_model_dir(base_dir)
    kind = kind or model_kind(base)
    if kind not in KINDS:
        raise ExportError(f"model kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if dtype not in ("auto", *(_DTYPE_NAMES.values())):
        raise ExportError(f"dtype must be one of auto, float32, bfloat16, float16, got {dtype!r}")
    out_dtype = None if dtype == "auto" else getattr(torch, dtype)
    num_labels = None
    if kind == "classification":
        if not head:
            raise ExportError("a classification export needs a task head; none of the adapters carries one")
        num_labels = int(next(t for k, t in head.items() if k.endswith("weight")).shape[0])
    head = dict(head or {}) if kind == "classification" else {}
    layout = model_layout(base, kind, num_labels)
    plan, notes = plan_export(base, modules, dict(carried or {}), layout, head)
    max_bytes = parse_size(max_shard_size)
    if max_bytes < 1:
        raise ExportError(f"max_shard_size must be positive, got {max_shard_size!r}")
    shards = _shards(plan, out_dtype, max_bytes)
    names = (
        ["model.safetensors"] if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    if deltas is None:
        def deltas():
            return ((name, module.delta("cpu")) for name, module in modules.items())
    target_of = {source.update: name for name, source in plan.items() if source.update is not None}
    total = 0
    weight_map: dict[str, str] = {}
    fds: dict[Path, int] = {}
    owned = export_owned(base, Path(out))
    if overwrite and Path(out).is_dir():  # before the work: a user's file the export would replace
        try:
            check_no_foreign(Path(out), [*_side_files(base), "config.json", *names], owned)
        except StagingError as err:
            raise ExportError(str(err)) from None
    try:
        # one thread per op here too: reads, W += ΔW and casts are memory-bound, and a busy machine
        # would make every multi-threaded op wait (merging/methods/blocks.py)
        with cpu_merge_threads("cpu"), staged_folder(
            out, overwrite=overwrite, markers=EXPORT_MARKERS, owned=owned
        ) as staging:
            slots: dict[str, _Slot] = {}
            try:
                for shard, file_name in zip(shards, names):
                    header, ranges = _shard_header(plan, shard, out_dtype)
                    path = staging / file_name
                    fd = fds[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    size = len(header) + (max(end for _, end in ranges.values()) if ranges else 0)
                    os.ftruncate(fd, size)
                    os.pwrite(fd, header, 0)
                    for name, (begin, end) in ranges.items():
                        slots[name] = _Slot(path, len(header) + begin, end - begin)
                        weight_map[name] = file_name
                        total += end - begin
                count, done = len(plan), 0
                # the updated tensors first, in the order their updates are computed
                for module_name, delta in deltas():
                    name = target_of.pop(module_name, None)
                    if name is None:
                        raise ExportError(f"module {module_name}: an update that the plan has no place for")
                    if progress:
                        progress(done, count, name)
                    tensor = built_tensor(plan[name], delta, out_dtype)
                    del delta
                    _write_at(fds[slots[name].path], tensor, slots[name])
                    del tensor
                    done += 1
                if target_of:
                    raise ExportError(f"module {sorted(target_of)[0]}: no update came for it")
                for shard in shards:
                    for name in shard:
                        if plan[name].update is not None:
                            continue
                        if progress:
                            progress(done, count, name)
                        tensor = built_tensor(plan[name], None, out_dtype)
                        _write_at(fds[slots[name].path], tensor, slots[name])
                        del tensor
                        done += 1
            finally:
                for fd in fds.values():
                    os.close(fd)
            if len(shards) > 1:
                index_data = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
                (staging / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2), encoding="utf-8")
            _copy_side_files(base, staging)
            _write_config(base, staging, layout, out_dtype, head, labels)
            report = ExportReport(
                out=Path(out), kind=kind, architecture=layout.architecture, shards=len(shards), bytes=total,
                dtype=dtype, updated=sorted(modules), carried=sorted(carried or {}),
                head_from=(provenance or {}).get("head_from"), notes=notes,
            )
            marker = {"base_model": str(base), **(provenance or {}), **report.to_dict()}
            (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=2, default=str), encoding="utf-8")
    except StagingError as err:
        raise ExportError(str(err)) from None
    except AdapterError:
        raise
    except (OSError, SafetensorError) as err:  # a full disk, a quota: the staging copy is gone
        if not is_write_failure(err):
            raise
        raise ExportError(str(write_failure(out, err))) from None
    if progress:
        progress(len(plan), len(plan), "done")
    report.seconds = time.perf_counter() - start
    return report


@dataclass(frozen=True)
class _Shape:
    shape: tuple[int, int]


def _module_shape(merged, name: str) -> tuple[int, int]:
    return next(a.modules[name].shape for a in merged.sources if name in a.modules)


def export_merged(
    merged,
    base_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    head_from: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress=None,
) -> ExportReport:
    """Export a MergedAdapter (merging.engine.merge) onto its base: its modules, its carried tensors and,
    for a classification base, the head of `head_from` (default: the first listed adapter that
    carries one). `dtype` defaults to the recipe's.

    When the merge carries its source adapters (merge_adapters does) and the recipe asks for no
    output rank, each module's dense merged update is recomputed and added whole (exact up to the
    float32 rounding of W + ΔW); otherwise the merged factors' B·A is added."""
    kind = model_kind(check_model_dir(base_dir))
    head, labels, chosen = None, None, None
    if kind == "classification":
        order = [ref.display_name for ref in merged.recipe.adapters]
        candidates = [name for name in order if name in merged.heads] + [n for n in merged.heads if n not in order]
        if head_from is not None:
            if head_from not in merged.heads:
                raise ExportError(f"adapter {head_from!r} carries no head (heads: {', '.join(merged.heads) or 'none'})")
            candidates = [head_from]
        if not candidates:
            raise ExportError("a classification export needs a task head; none of the adapters carries one")
        chosen = candidates[0]
        head = merged.heads[chosen]
        labels = (merged.source_meta.get(chosen) or {}).get("labels")
    recipe_dtype = dtype or merged.recipe.dtype
    provenance = {
        "recipe": merged.recipe.to_dict(),
        "head_from": chosen,
        "carried_rule": merged.recipe.modules_to_save,
    }
    modules, deltas = merged.adapter.modules, None
    if merged.sources and (merged.recipe.rank is None or not modules):
        # exact: each module's dense merged update, computed as it is written (no factorisation)
        from merging.engine.merge import dense_deltas

        modules = {name: _Shape(_module_shape(merged, name)) for name in merged.compatibility.modules}

        def deltas():
            return dense_deltas(merged)

        provenance["update"] = "dense merged update, applied whole"
    report = export_full_model(
        base_dir, modules, out, carried=merged.adapter.saved_modules, head=head, labels=labels,
        kind=kind, dtype=recipe_dtype, max_shard_size=max_shard_size, overwrite=overwrite, provenance=provenance,
        progress=progress, deltas=deltas,
    )
    if chosen is not None:
        report.notes.append(f"classification head of {chosen}: an exported model has one head, one task")
    return report
