"""The workspace folder: adapters the user imported or trained, and the task files they trained on.

Layout (the dashboard's sidebar names the folder; the CLI takes it as an argument)::

    workspace/
      adapters/<name>/      PEFT LoRA folders (adapter_config.json + adapter_model.safetensors
                            + mergescope.json), one per adapter
      tasks/<file>          user task files (CSV/JSONL) that trained adapters refer to, and the
                            evaluation files attached to adapters
      evals.json            which evaluation file each workspace adapter is scored on:
                            {"adapter name": "file name in tasks/"} (attach_eval_file)
      runs.sqlite           the run store (merging.store.runs)

An evaluation file is attached to an adapter by name in the workspace, not written into the
adapter's folder: the folder stays as the user imported it (an import with "replace" keeps the
attachment), and removing the adapter drops it.

Everything that writes into ``adapters/`` builds the new folder in a hidden staging folder beside
it (merging.core.staging: same file system) and swaps it into place only when it is complete and has
been loaded back with :func:`merging.adapters.lora.load_adapter`. A failure of any kind, or a cancelled
training, leaves nothing behind; what a killed process left is removed by :func:`clean_workspace`,
which the dashboard runs when it opens a workspace. Broken adapters are listed with their problem
(merging.lab.catalog: an entry's `error`) and can be removed (:func:`remove_adapter`).

Zip imports are untrusted input: the compressed size, the number of members, the total
*uncompressed* size and each member's expansion ratio are capped, from the declared sizes before
anything is written and again on the bytes actually decompressed (headers can lie); absolute
paths, ``..`` components, backslashes, symbolic links, special files and encrypted members are
refused; and only the adapter's own files are extracted at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from merging.adapters.lora import (
    CONFIG_FILE,
    HEADS_FILE,
    META_FILE,
    PICKLE_WEIGHTS_FILE,
    WEIGHTS_FILE,
    AdapterError,
    load_adapter,
    load_pickled_weights,
)
from merging.core.staging import StagingError, clean_leftovers, move_into_place, staging_dir
from merging.tasks import SUPPORTED_SUFFIXES, read_task_file

ADAPTERS = "adapters"
TASKS = "tasks"
EVALS_FILE = "evals.json"
INCOMING = ".incoming"  # the staging area of older versions, removed by clean_workspace

MAX_ZIP_BYTES = 200 * 1024**2  # compressed upload (Streamlit's own default upload limit)
MAX_UNZIPPED_BYTES = 1024**3  # everything the zip expands to
MAX_ZIP_MEMBERS = 1000
# A member may expand at most this many times; real adapter files expand 1–5 times (float weights
# hardly compress), a zero-filled bomb ~1000 times. Members under RATIO_FLOOR_BYTES are exempt:
# small JSON files compress well and cannot do harm.
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 1024**2
MAX_TASK_FILE_BYTES = 50 * 1024**2
MAX_NAME_LENGTH = 100

# The files of an adapter folder that mergescope uses; anything else in a source folder or a zip
# (a model card README, optimizer states, checkpoints) stays behind.
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, META_FILE, HEADS_FILE)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class WorkspaceError(ValueError):
    """An import or training request that cannot be carried out, with a message fit for the user."""


def adapters_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace).expanduser() / ADAPTERS


def tasks_dir(workspace: str | os.PathLike) -> Path:
    return Path(workspace).expanduser() / TASKS


# ----------------------------------------------------------------------------------------------
# Names


def check_adapter_name(name: str) -> str:
    """An adapter name that is safe as a folder name: letters, digits, '.', '_' and '-'."""
    name = (name or "").strip()
    if not name:
        raise WorkspaceError("the adapter needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise WorkspaceError(f"adapter name is too long ({len(name)} characters, at most {MAX_NAME_LENGTH})")
    if not _NAME.match(name):
        raise WorkspaceError(
            f"adapter name {name!r} may only hold letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return name


def suggest_name(name: str) -> str:
    """Turn any text (a folder or file name) into a valid adapter name, or '' when nothing is left."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip(".-_")
    return cleaned[:MAX_NAME_LENGTH]


def unique_name(workspace: str | os.PathLike, base: str, reserved: Iterable[str] = ()) -> str:
    """`base`, or `base-2`, `base-3`, … : the first name free in the workspace and not reserved."""
    base = suggest_name(base) or "adapter"
    taken = set(reserved)
    folder = adapters_dir(workspace)
    candidate, index = base, 1
    while candidate in taken or (folder / candidate).exists():
        index += 1
        candidate = f"{base}-{index}"
    return candidate


def _check_free(target: Path, overwrite: bool, reserved: Iterable[str]) -> None:
    if target.name in set(reserved):
        raise WorkspaceError(f"the name {target.name!r} is taken by a built-in zoo adapter; choose another name")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise WorkspaceError(
            f"an adapter named {target.name!r} already exists in {target.parent}; "
            "choose another name or allow overwriting"
        )


# ----------------------------------------------------------------------------------------------
# Staging and the atomic move into place (merging.core.staging does both for every writer)


def _staging(parent: Path) -> contextlib.AbstractContextManager[Path]:
    """A private empty folder in `parent` (hidden, same file system), removed on exit."""
    return staging_dir(parent, "incoming")


def _move_into_place(staged: Path, target: Path, overwrite: bool) -> None:
    """Rename a complete folder to `target`; an existing adapter is swapped out only with `overwrite`."""
    try:
        move_into_place(staged, target, overwrite, owned=None)  # a workspace adapter is mergescope's own
    except StagingError as err:
        raise WorkspaceError(str(err)) from None


def clean_workspace(workspace: str | os.PathLike) -> list[str]:
    """Remove what interrupted writes left in the workspace (run when the dashboard opens it).

    Staging folders of processes that are gone, and the ``.incoming`` staging area of older
    versions (nothing uses it any more); an interrupted replace is put back. Returns what was done.
    """
    done: list[str] = []
    for folder in (adapters_dir(workspace), tasks_dir(workspace)):
        done += clean_leftovers(folder)
        legacy = folder / INCOMING
        if legacy.is_dir() and not legacy.is_symlink():
            shutil.rmtree(legacy, ignore_errors=True)
            done.append(f"removed {legacy}, left by an interrupted import")
    return done


def remove_adapter(workspace: str | os.PathLike, name: str) -> Path:
    """Delete the workspace adapter `name` (broken or not): renamed aside first, then removed.

    Only a folder directly inside ``workspace/adapters`` can be removed, so a crafted name cannot
    reach anything else; a link is removed as a link, never followed.
    """
    folder = adapters_dir(workspace)
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise WorkspaceError(f"{name!r} is not the name of a workspace adapter")
    target = folder / name
    if target.is_symlink():
        target.unlink()
        return target
    if not target.is_dir():
        raise WorkspaceError(f"no adapter named {name!r} in {folder}")
    with staging_dir(folder, name) as trash:
        os.replace(target, trash / name)  # gone from the listing at once; deleted with the staging folder
    if name in _read_evals(workspace):
        detach_eval_file(workspace, name)
    return target


def _copy_adapter_files(src: Path, dst: Path) -> None:
    """Copy the files mergescope uses; pickled weights become safetensors (loaded weights_only)."""
    dst.mkdir()
    for file_name in ADAPTER_FILES:
        if (src / file_name).is_file():
            shutil.copyfile(src / file_name, dst / file_name)
    if not (dst / WEIGHTS_FILE).is_file() and (src / PICKLE_WEIGHTS_FILE).is_file():
        from safetensors.torch import save_file

        state = load_pickled_weights(src / PICKLE_WEIGHTS_FILE)
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(dst / WEIGHTS_FILE))


def _install(src: Path, target: Path, staging: Path, overwrite: bool, shown_as: str | None = None) -> Path:
    """Validate `src`, copy its adapter files into `staging`, validate the copy, move it to `target`."""
    load_adapter(src, name=target.name)
    staged = staging / "adapter"
    _copy_adapter_files(src, staged)
    try:
        load_adapter(staged, name=target.name)  # what lands in the workspace loads, not just the source
    except AdapterError as err:
        raise AdapterError(str(err).replace(str(staged), shown_as or str(src))) from err
    _move_into_place(staged, target, overwrite)
    return target


# ----------------------------------------------------------------------------------------------
# Import a folder


def import_adapter_folder(
    src: str | os.PathLike,
    workspace: str | os.PathLike,
    name: str | None = None,
    overwrite: bool = False,
    reserved: Iterable[str] = (),
) -> Path:
    """Copy a PEFT LoRA folder into ``workspace/adapters/<name>`` (default: the folder's own name).

    The folder is validated with :func:`merging.adapters.lora.load_adapter` first, so a bad folder is refused
    with its message (missing adapter_config.json, not plain LoRA, NaN weights, ...). Only the files
    mergescope uses are copied (config, weights, mergescope.json, heads); pickled weights
    are converted to safetensors. `reserved` names (e.g. the zoo's adapters) are refused.
    """
    text = str(src).strip()
    if not text:
        raise WorkspaceError("give the path of an adapter folder")
    source = Path(text).expanduser()
    if not source.exists():
        raise WorkspaceError(f"{source}: no such folder")
    if not source.is_dir():
        raise WorkspaceError(f"{source}: not a folder (to import a zip, upload it instead)")
    source = source.resolve()
    load_adapter(source)  # refuse a bad folder before touching the workspace
    name = check_adapter_name(name if name else suggest_name(source.name))
    target = adapters_dir(workspace) / name
    if target.exists() and target.resolve() == source:
        raise WorkspaceError(f"{source} is already this workspace's adapter {name!r}")
    _check_free(target, overwrite, reserved)
    with _staging(target.parent) as staging:
        return _install(source, target, staging, overwrite)


# ----------------------------------------------------------------------------------------------
# Import a zip


def _read_limited(data, max_bytes: int) -> tuple[bytes, str | None]:
    """The archive's bytes (refusing more than max_bytes) and its file name when known."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        file_name = None
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise WorkspaceError(f"{path}: no such file")
        if path.stat().st_size > max_bytes:
            raise WorkspaceError(f"{path.name} is {_size(path.stat().st_size)}; the limit is {_size(max_bytes)}")
        raw, file_name = path.read_bytes(), path.name
    elif hasattr(data, "read"):
        if hasattr(data, "seek"):
            with contextlib.suppress(OSError, ValueError):
                data.seek(0)
        raw = data.read(max_bytes + 1)
        file_name = getattr(data, "name", None)
    else:
        raise WorkspaceError(f"expected the zip's bytes, a file or a path, got {type(data).__name__}")
    if len(raw) > max_bytes:
        raise WorkspaceError(f"the zip is larger than the limit of {_size(max_bytes)}")
    return raw, (Path(str(file_name)).name if file_name else None)


def _size(count: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} bytes"  # unreachable


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path components, or a WorkspaceError for any path that could leave the folder."""
    name = info.filename
    if not name or "\x00" in name:
        raise WorkspaceError("the zip has a member with an empty or invalid name")
    if "\\" in name:
        raise WorkspaceError(f"the zip member {name!r} uses backslashes in its path; refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise WorkspaceError(f"the zip member {name!r} has an absolute path; refused")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise WorkspaceError(f"the zip member {name!r} points outside its folder ('..'); refused")
    if len(parts) > 32:
        raise WorkspaceError(f"the zip member {name!r} is nested too deeply")
    return parts


def _check_member(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise WorkspaceError(f"the zip member {info.filename!r} is a symbolic link; refused")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise WorkspaceError(f"the zip member {info.filename!r} is not a regular file or folder; refused")
    if info.flag_bits & 0x1:
        raise WorkspaceError(f"the zip member {info.filename!r} is encrypted; refused")


def _plan_extraction(
    archive: zipfile.ZipFile, archive_label: str, max_unzipped_bytes: int, max_members: int, max_ratio: float
) -> tuple[tuple[str, ...], list[tuple[zipfile.ZipInfo, str]]]:
    """Check every member from the zip's directory, before anything is written; pick what to extract.

    Returns the adapter folder's path inside the zip and its members to extract, each with its
    file name: only the files an adapter needs (ADAPTER_FILES and pickled weights), so a README of
    900 MiB or any other passenger is never unpacked.
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise WorkspaceError(f"the zip holds {len(infos)} members; the limit is {max_members}")
    members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    declared = 0
    for info in infos:
        parts = _member_parts(info)
        _check_member(info)
        if not parts or parts[0] == "__MACOSX":  # macOS resource forks: never part of an adapter
            continue
        if not info.is_dir():
            _check_ratio(info, max_ratio)
            declared += info.file_size
        members.append((info, parts))
    if declared > max_unzipped_bytes:
        raise WorkspaceError(
            f"the zip expands to {_size(declared)}; the limit is {_size(max_unzipped_bytes)} (zip bomb?)"
        )
    configs = sorted(parts[:-1] for info, parts in members if parts[-1] == CONFIG_FILE and not info.is_dir())
    if not configs:
        raise WorkspaceError(
            f"{archive_label} holds no {CONFIG_FILE}: zip a PEFT adapter folder ({CONFIG_FILE} + {WEIGHTS_FILE})"
        )
    if len(configs) > 1:
        listed = ", ".join("/".join(folder) or "." for folder in configs[:5])
        raise WorkspaceError(f"{archive_label} holds {len(configs)} adapter folders ({listed}); zip one at a time")
    folder = configs[0]
    wanted = set(ADAPTER_FILES) | {PICKLE_WEIGHTS_FILE}
    chosen = [
        (info, parts[-1])
        for info, parts in members
        if not info.is_dir() and parts[:-1] == folder and parts[-1] in wanted
    ]
    return folder, chosen


def _check_ratio(info: zipfile.ZipInfo, max_ratio: float) -> None:
    """A member that claims to expand more than `max_ratio` times (beyond a small floor) is a bomb."""
    if info.file_size > RATIO_FLOOR_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
        ratio = info.file_size / max(info.compress_size, 1)
        raise WorkspaceError(
            f"the zip member {info.filename!r} expands {ratio:.0f} times ({_size(info.compress_size)} → "
            f"{_size(info.file_size)}); the limit is {max_ratio:.0f} times (zip bomb?)"
        )


def _extract(
    archive: zipfile.ZipFile,
    chosen: list[tuple[zipfile.ZipInfo, str]],
    root: Path,
    max_unzipped_bytes: int,
    max_ratio: float,
) -> None:
    """Extract the chosen members into `root` (empty), counting the bytes actually written.

    The headers were checked already, but they can lie: the total and each member's ratio are
    enforced again on the decompressed stream, so the cap holds whatever the zip claims.
    """
    budget = max_unzipped_bytes
    for info, file_name in chosen:
        destination = root / file_name
        allowed = max(max_ratio * max(info.compress_size, 1), RATIO_FLOOR_BYTES)
        written = 0
        try:
            with archive.open(info) as source, open(destination, "xb") as sink:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    budget -= len(chunk)
                    if budget < 0 or written > allowed:
                        raise WorkspaceError(
                            f"the zip member {info.filename!r} expands to more than its limit "
                            f"({_size(min(allowed, max_unzipped_bytes))}); refused (zip bomb?)"
                        )
                    sink.write(chunk)
        except FileExistsError:
            raise WorkspaceError(f"the zip holds {info.filename!r} twice; refused") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise WorkspaceError(f"the zip member {info.filename!r} is damaged ({err})") from None
        except NotImplementedError as err:  # an unsupported compression method
            raise WorkspaceError(f"the zip member {info.filename!r} cannot be read: {err}") from None


def import_adapter_zip(
    data: bytes | BinaryIO | str | os.PathLike,
    workspace: str | os.PathLike,
    name: str | None = None,
    overwrite: bool = False,
    reserved: Iterable[str] = (),
    file_name: str | None = None,
    max_bytes: int = MAX_ZIP_BYTES,
    max_unzipped_bytes: int = MAX_UNZIPPED_BYTES,
    max_members: int = MAX_ZIP_MEMBERS,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> Path:
    """Import the one adapter folder inside a zip into ``workspace/adapters/<name>``.

    `data` is the zip's bytes, an open binary file (e.g. Streamlit's UploadedFile) or a path. The
    adapter folder is the one holding adapter_config.json (the zip's root or any sub-folder); its
    name (or the zip's) is the default adapter name. Refused, leaving nothing behind: a zip over
    `max_bytes`, one whose members expand beyond `max_unzipped_bytes` in all or more than
    `max_ratio` times each (members under 1 MiB excepted), more than `max_members` members, unsafe
    paths or links, no or several adapter folders, and anything load_adapter refuses. Only the
    adapter's own files are extracted and kept.
    """
    raw, known_name = _read_limited(data, max_bytes)
    archive_label = file_name or known_name or "the zip"
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OverflowError):
        raise WorkspaceError(f"{archive_label} is not a zip file (or a damaged one)") from None
    if name:
        check_adapter_name(name)
        _check_free(adapters_dir(workspace) / name, overwrite, reserved)
    with archive:
        folder_parts, chosen = _plan_extraction(archive, archive_label, max_unzipped_bytes, max_members, max_ratio)
        if not name:
            stem = folder_parts[-1] if folder_parts else Path(file_name or known_name or "").stem
            name = suggest_name(stem)
            if not name:
                raise WorkspaceError("the zip does not say what the adapter is called; give it a name")
        name = check_adapter_name(name)
        folder = adapters_dir(workspace)
        target = folder / name
        _check_free(target, overwrite, reserved)
        shown = f"{archive_label}:{'/'.join(folder_parts)}" if folder_parts else archive_label
        with _staging(folder) as staging:
            source = staging / "unzipped"
            source.mkdir()
            _extract(archive, chosen, source, max_unzipped_bytes, max_ratio)
            try:
                return _install(source, target, staging, overwrite, shown_as=shown)
            except AdapterError as err:
                raise AdapterError(str(err).replace(str(source), shown)) from None


# ----------------------------------------------------------------------------------------------
# Task files


def store_task_file(
    data: bytes | BinaryIO,
    file_name: str,
    workspace: str | os.PathLike,
    max_bytes: int = MAX_TASK_FILE_BYTES,
    validate: bool | Callable[[Path], object] = True,
) -> Path:
    """Keep an uploaded CSV/JSONL task file in ``workspace/tasks/`` so adapters can refer to it.

    The stored name carries a hash of the content (``reviews-1a2b3c4d5e.csv``): uploading the same
    file again reuses it, and a different file of the same name never replaces the data that an
    existing adapter was trained and is evaluated on. With `validate`, a file that
    merging.tasks.read_task_file refuses (not UTF-8, missing columns, empty values) is not kept and
    its TaskError is raised; `validate` may also be the reader to check the file with (evaluation
    files of causal tasks have other columns).
    """

    if hasattr(data, "read"):
        if hasattr(data, "seek"):
            with contextlib.suppress(OSError, ValueError):
                data.seek(0)
        data = data.read(max_bytes + 1)
    data = bytes(data)
    path = PurePosixPath(Path(file_name or "").name)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise WorkspaceError(
            f"{path.name or 'the file'}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use {' or '.join(SUPPORTED_SUFFIXES)}"
        )
    if len(data) > max_bytes:
        raise WorkspaceError(f"{path.name} is larger than the limit of {_size(max_bytes)}")
    digest = hashlib.sha256(data).hexdigest()[:10]
    stem = suggest_name(path.stem) or "task"
    folder = tasks_dir(workspace)
    target = folder / f"{stem}-{digest}{suffix}"
    if target.is_file():
        return target
    with _staging(folder) as staging:
        staged = staging / f"{stem}{suffix}"  # its name is the one error messages show
        staged.write_bytes(data)
        if callable(validate):
            validate(staged)
        elif validate:
            read_task_file(staged)
        os.replace(staged, target)
    return target


def task_display_name(path: str | os.PathLike) -> str:
    """The task name of a stored task file: its name without the content hash store_task_file adds."""
    stem = Path(path).stem
    match = re.match(r"^(.*)-[0-9a-f]{10}$", stem)
    return match.group(1) if match else stem


def list_task_files(workspace: str | os.PathLike) -> list[Path]:

    folder = tasks_dir(workspace)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)


# ----------------------------------------------------------------------------------------------
# Evaluation files attached to adapters (evals.json)


def _read_evals(workspace: str | os.PathLike) -> dict[str, str]:
    """evals.json as {adapter name: file name}; a missing or damaged file reads as no attachments
    (the adapters stay usable; the user attaches again), entries of the wrong type are skipped."""
    path = Path(workspace).expanduser() / EVALS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and _safe_file_name(v)}


def _safe_file_name(name: str) -> bool:
    """A plain file name inside tasks/: no folder part, so evals.json cannot point elsewhere."""
    return bool(name) and PurePosixPath(name).name == name and "\\" not in name and not name.startswith(".")


def _write_evals(workspace: str | os.PathLike, evals: dict[str, str]) -> None:
    """Replace evals.json atomically: written beside it, then renamed over it."""
    folder = Path(workspace).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{EVALS_FILE}.{os.getpid()}.tmp"
    staged.write_text(json.dumps(dict(sorted(evals.items())), indent=2) + "\n", encoding="utf-8")
    os.replace(staged, folder / EVALS_FILE)


def attached_eval_files(workspace: str | os.PathLike) -> dict[str, Path]:
    """Each workspace adapter's attached evaluation file, when the file is still there."""
    folder = tasks_dir(workspace)
    found = {name: folder / file_name for name, file_name in _read_evals(workspace).items()}
    return {name: path for name, path in found.items() if path.is_file()}


def check_eval_file(path: str | os.PathLike) -> object:
    """Read an evaluation file as the scorer will: a causal task's prompt/completion or chat JSONL
    (merging.tasks.completions), or a classification task's text,label; TaskError names the line."""

    try:
        from merging.tasks.completions import file_format, read_causal_task
    except ImportError:  # a build without causal tasks reads classification files only
        return read_task_file(Path(path))
    if file_format(path) == "classification":
        return read_task_file(Path(path))
    return read_causal_task(path)


def attach_eval_file(
    workspace: str | os.PathLike,
    adapter_name: str,
    eval_file: str | os.PathLike | bytes | BinaryIO,
    file_name: str | None = None,
) -> Path:
    """Score workspace adapter `adapter_name` on an evaluation file; returns the stored file.

    `eval_file` is a path on this machine or an upload's bytes/file (then `file_name` names it).
    The file is checked with :func:`check_eval_file` and kept in ``tasks/`` by
    :func:`store_task_file` (content-named: attaching the same file twice stores it once, and a
    changed file never replaces the one a stored run was scored on).
    """
    name = check_adapter_name(adapter_name)
    if not (adapters_dir(workspace) / name).is_dir():
        raise WorkspaceError(f"no adapter named {name!r} in {adapters_dir(workspace)}")
    if isinstance(eval_file, (str, os.PathLike)):
        source = Path(str(eval_file).strip()).expanduser()
        if not str(eval_file).strip():
            raise WorkspaceError("give the path of an evaluation file")
        if not source.is_file():
            raise WorkspaceError(f"{source}: no such file")
        if source.stat().st_size > MAX_TASK_FILE_BYTES:
            raise WorkspaceError(f"{source.name} is larger than the limit of {_size(MAX_TASK_FILE_BYTES)}")
        stored = store_task_file(source.read_bytes(), file_name or source.name, workspace, validate=check_eval_file)
    else:
        stored = store_task_file(eval_file, file_name or getattr(eval_file, "name", ""), workspace,
                                 validate=check_eval_file)
    evals = _read_evals(workspace)
    evals[name] = stored.name
    _write_evals(workspace, evals)
    return stored


def detach_eval_file(workspace: str | os.PathLike, adapter_name: str) -> None:
    """Forget which evaluation file an adapter is scored on (the file itself stays in tasks/)."""
    evals = _read_evals(workspace)
    if evals.pop(adapter_name, None) is not None:
        _write_evals(workspace, evals)


# ----------------------------------------------------------------------------------------------
# What the adapter table shows about a folder (its config only: no tensors are read)


def describe_adapter_folder(path: str | os.PathLike) -> dict:
    """Rank(s), target modules, base model and modules_to_save from adapter_config.json."""
    folder = Path(path)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError, RecursionError) as err:
        return {"rank": None, "target_modules": None, "base_model": None, "problem": f"unreadable config ({err})"}
    patterns = config.get("rank_pattern")
    values = [config.get("r")] + (list(patterns.values()) if isinstance(patterns, dict) else [])
    ranks = sorted({r for r in values if isinstance(r, int) and not isinstance(r, bool)})
    rank = None if not ranks else str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    targets = config.get("target_modules")
    if isinstance(targets, (list, tuple)):
        # merged adapters list full module names: show each kind once (query, value, ...)
        targets = ", ".join(sorted({str(t).rsplit(".", 1)[-1] for t in targets}))
    base_model = config.get("base_model_name_or_path")
    return {
        "rank": rank,
        "target_modules": targets if isinstance(targets, str) or targets is None else str(targets),
        "base_model": base_model if isinstance(base_model, str) else None,
        "modules_to_save": config.get("modules_to_save"),
    }
