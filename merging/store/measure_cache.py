"""Measurements kept on disk in the workspace, so a restarted server is ready at once.

What the dashboard measures slowly — the Tour's merges and factor metrics, the cross-task and
data-parameter interference matrices, and every score the lab counts (each single adapter, each
merged body and the base model on a task: `DiskMemo`, so the Merge page's scores of a recipe run
before come back at once) — is written to ``<workspace>/cache/measures/<kind>/<key>.json``. The key is a hash of everything the
value depends on:

- what was measured (a recipe with its adapters' versions, merging.lab.catalog.results_key, or the
  adapter versions of a cross-task matrix), which the caller passes as `parts`;
- the base model's version (its folder's files and their modification times, when it is a folder);
- the code that measures: a hash of the source of the modules that merge, evaluate and compute
  the metrics (`code_version`), so an edited method is never shown with the old numbers.

An adapter retrained in place has a new version (merging.adapters.lora.adapter_version: its weights'
modification time), hence a new key: the stale entry is simply never found again. Each file also
stores its own key and is only read back when it matches, so a file copied or renamed by hand is
not trusted either.

Writes are atomic: the JSON goes to a hidden temporary file in the same folder, is flushed to disk,
and is renamed over the target (os.replace), so a reader sees the old file or the new one, never a
half-written one. A file that cannot be read or parsed is treated as missing (and measured again).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

FOLDER = Path("cache") / "measures"
FORMAT = 1  # bump when the stored layout changes

# The modules whose code decides a measured value (relative to the merging package).
MEASURING_CODE = (
    "lab/catalog.py", "evaluation/evaluate.py", "evaluation/causal.py",
    "core/intervals.py", "lab/lab.py", "adapters/lora.py", "engine/merge.py", "analysis/metrics.py",
    "models/base.py", "models/devices.py", "training/osrm.py", "methods", "tasks",
)
# merging/analysis/tour.py also words and draws the steps: only its measuring part is hashed, so a new headline
# or chart does not throw away a tour measured before it.
TOUR_MEASURING = ("FIXES", "_recipe", "tour_steps", "limit_eval_sets", "_with_sizes", "measure_merge",
                  "measure_factors", "measure")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the measuring modules' source: any edit to them gives every key a new value."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"format {FORMAT}".encode())
    for name in MEASURING_CODE:
        path = root / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                digest.update(str(file.relative_to(root)).encode())
                digest.update(file.read_bytes())
    # read from tour.py's source, not imported: the tour uses this cache, and an import back would be a cycle
    tour_source = (root / "analysis" / "tour.py").read_text(encoding="utf-8")
    definitions = {}
    for node in ast.parse(tour_source).body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [
            target.id for target in getattr(node, "targets", [getattr(node, "target", None)]) if isinstance(target, ast.Name)
        ]
        for defined in names:
            definitions[defined] = ast.get_source_segment(tour_source, node)
    for name in TOUR_MEASURING:
        digest.update(name.encode())
        digest.update(definitions[name].encode())
    return digest.hexdigest()[:16]


def model_version(base_model: str) -> str:
    """A base model's identity: a folder's top-level files with sizes and modification times; a
    name (the demo model, a Hub id) as itself."""
    path = Path(base_model).expanduser()
    if not path.is_dir():
        return str(base_model)
    parts = []
    for file in sorted(path.iterdir()):
        with contextlib.suppress(OSError):
            info = file.stat()
            parts.append(f"{file.name}:{info.st_size}:{info.st_mtime_ns}")
    return f"{path.resolve()}|" + "|".join(parts)


class MeasureCache:
    """JSON values by key in a folder; `MeasureCache.in_workspace(folder)` is the dashboard's."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    @classmethod
    def in_workspace(cls, workspace: str | os.PathLike) -> MeasureCache:
        return cls(Path(workspace).expanduser() / FOLDER)

    @staticmethod
    def key(kind: str, base_model: str = "", **parts: Any) -> str:
        """The key of a value of `kind` measured on `base_model` from `parts` (JSON-able)."""
        data = {"kind": kind, "model": model_version(base_model) if base_model else "", "parts": parts,
                "code": code_version()}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _path(self, kind: str, key: str) -> Path:
        if not key.isalnum() or not kind.replace("_", "").isalnum():
            raise ValueError(f"measure cache: invalid kind/key {kind!r}/{key!r}")
        return self.folder / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> Any | None:
        """The stored value, or None (never stored, unreadable, or stored under another key)."""
        path = self._path(kind, key)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or stored.get("kind") != kind:
            return None
        return stored.get("value")

    def put(self, kind: str, key: str, value: Any) -> bool:
        """Store atomically; False (and nothing changed) when the folder cannot be written — the
        value is then only kept in memory by the caller, the pages work on."""
        target = self._path(kind, key)
        text = json.dumps({"kind": kind, "key": key, "value": value}, allow_nan=True)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=target.parent)
        except OSError:
            return False
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
            return True
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            return False

    def entries(self, kind: str) -> list[Path]:
        folder = self.folder / kind
        return sorted(folder.glob("*.json")) if folder.is_dir() else []


class DiskMemo(MutableMapping):
    """A dict of measured values that is also kept in a MeasureCache, under `kind`.

    The lab's score caches (merging.lab.lab.Lab: each single adapter's, each merged body's and the
    base model's tallies on a task) are of this type when the lab has a workspace: a restarted server
    or the CLI's next run finds a score counted before instead of running the forward passes again.
    A key of the dict names what was scored (a body's fingerprint or an adapter's version, the task,
    its data's digest); `context` adds what the scorer depends on beyond it (the base model's version,
    the device, the dtype, the maximum length), and MeasureCache.key the measuring code's version.

    Lookups read memory first; `clear` forgets the memory only (the disk entries stay valid).
    """

    def __init__(
        self, cache: MeasureCache, kind: str, context: dict[str, Any],
        encode: Callable[[Any], Any], decode: Callable[[Any], Any],
    ) -> None:
        self.cache, self.kind, self.context = cache, kind, context
        self._encode, self._decode = encode, decode
        self._memory: dict = {}

    def _disk_key(self, key: Any) -> str:
        return MeasureCache.key(self.kind, **self.context, entry=list(key) if isinstance(key, tuple) else key)

    def __getitem__(self, key: Any) -> Any:
        if key in self._memory:
            return self._memory[key]
        stored = self.cache.get(self.kind, self._disk_key(key))
        if stored is None:
            raise KeyError(key)
        try:
            value = self._decode(stored)
        except (TypeError, ValueError, KeyError):  # written by another layout: measure again
            raise KeyError(key) from None
        self._memory[key] = value
        return value

    def __contains__(self, key: object) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def __setitem__(self, key: Any, value: Any) -> None:
        self._memory[key] = value
        self.cache.put(self.kind, self._disk_key(key), self._encode(value))

    def __delitem__(self, key: Any) -> None:
        del self._memory[key]

    def __iter__(self) -> Iterator:
        return iter(self._memory)

    def __len__(self) -> int:
        return len(self._memory)

    def clear(self) -> None:
        self._memory.clear()
