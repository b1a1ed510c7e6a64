"""Writing a folder so that nothing the user had is lost: stage beside it, then swap it in.

Every folder mergescope writes (a saved or merged adapter, the zoo, a workspace import, a trained
adapter) is built in a hidden staging folder in the same parent — same file system, so the final
step is a rename — and appears under its real name only when complete.

Replacing (``--overwrite``) replaces what mergescope writes and nothing else: an existing output
folder may hold the user's own files beside the adapter (a Hugging Face Trainer folder with
``checkpoint-500/``, ``training_args.bin``, notes). Only once the new output is complete are the
folder's *owned* entries — the names the new output has, and the names an earlier output of the
same kind may have left (``owned``: an adapter's four files, an export's shards and index, a zoo's
manifest and the adapter folders it lists) — renamed aside into a hidden
``.NAME.mergescope-parts-…`` folder, the new entries renamed in, and only then the old ones
removed. Everything else in the folder stays where it was. A failure puts the old entries back.

Only a folder that holds a mergescope/PEFT output may be replaced (:func:`check_replaceable`): the
current folder, the home folder, the filesystem root, any folder above the current one, a file, a
link, or a non-empty folder without an output marker file is refused, so ``--out . --overwrite``
can never empty the user's working folder.

A process killed mid-write (SIGKILL, power cut) cannot clean up after itself. Staging names carry
the writer's process id, and :func:`clean_leftovers` — run at the next write into the same parent
and when the dashboard opens a workspace — removes the leftovers of processes that are gone; a
replace interrupted between its renames is undone (the old entries are put back, guided by the
journal the parts folder holds).

An output must not be one of its own inputs: :func:`check_not_an_input` refuses an output folder
that is, holds or lies inside an input folder (a recipe's adapters, an export's base model).
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# Files whose presence marks a folder as mergescope's or PEFT's output (replaceable by --overwrite).
ADAPTER_MARKER = "adapter_config.json"
OUTPUT_MARKERS = (ADAPTER_MARKER,)
# The entries (glob patterns, top level) an adapter output owns: replaced by a new output, the rest kept.
ADAPTER_OWNED = (ADAPTER_MARKER, "adapter_model.safetensors", "mergescope.json", "mergescope_heads.safetensors")

_TAG = "mergescope"
# .NAME.mergescope-staging-PID-RANDOM (a folder being built) / .NAME.mergescope-old-PID-RANDOM
# (a replaced folder about to be removed, older versions) / .NAME.mergescope-parts-PID-RANDOM (the
# replaced entries of an output folder, and the journal of that replace). NAME may itself hold
# dots, so parse from the right.
_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.{_TAG}-(?P<kind>staging|old|parts)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_JOURNAL = "mergescope-replace.json"


class StagingError(ValueError):
    """A write that would lose or endanger the user's files, with a message fit for the user."""


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def is_write_failure(err: BaseException) -> bool:
    """A write the file system refused (full disk, quota, read-only, file too large), whether as an
    OSError or as safetensors' own error that only carries the text."""
    if isinstance(err, OSError):
        return err.errno in _WRITE_ERRNOS
    text = str(err)
    return any(words in text for words in ("No space left", "Disk quota", "Read-only file system", "File too large"))


def write_failure(target: str | os.PathLike, err: BaseException) -> StagingError:
    """One line for a write that failed part-way (a full disk, a quota, a read-only folder):
    names the output and says that nothing of it was replaced (the staging copy is removed)."""
    text = str(err)
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "No space left" in text:
        reason = "no space left on the device"
    elif isinstance(err, OSError) and err.errno == errno.EDQUOT:
        reason = "the disk quota is exceeded"
    elif isinstance(err, OSError) and err.strerror:
        reason = err.strerror.lower()
    else:
        reason = (text.splitlines() or [type(err).__name__])[0][:200]
    return StagingError(f"could not write {target}: {reason}; nothing was replaced (any earlier output is unchanged)")


def check_not_an_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "input") -> None:
    """Refuse an output folder that is, holds or lies inside one of `inputs` (a merge's adapters,
    an export's base model): replacing it would destroy what the merge reads."""
    out_resolved = Path(out).resolve()
    for folder in inputs:
        source = Path(folder).resolve()
        if out_resolved == source:
            raise StagingError(f"{out} is the recipe's {what} {folder}; choose another output folder")
        if out_resolved in source.parents:
            raise StagingError(f"{out} holds the recipe's {what} {folder}; choose another output folder")
        if source in out_resolved.parents:
            raise StagingError(f"{out} lies inside the recipe's {what} {folder}; choose another output folder")


# ----------------------------------------------------------------------------------------------
# What may be replaced


def check_replaceable(target: str | os.PathLike, markers: Iterable[str] = OUTPUT_MARKERS) -> None:
    """Refuse to replace anything but an empty folder or one holding one of `markers` at its top."""
    target = Path(target)
    if target.is_symlink():
        raise StagingError(f"{target} is a symbolic link; refusing to replace it (choose another output folder)")
    if not target.exists():
        return
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise StagingError(
            f"{target} is the current folder or one above it; refusing to replace it (choose another output folder)"
        )
    if resolved == Path.home().resolve():
        raise StagingError(f"{target} is your home folder; refusing to replace it (choose another output folder)")
    if resolved == Path(resolved.anchor):
        raise StagingError(f"{target} is the filesystem root; refusing to replace it")
    if not target.is_dir():
        raise StagingError(f"{target} is a file, not an output folder; refusing to replace it")
    markers = tuple(markers)
    if any((target / marker).is_file() for marker in markers):
        return
    if any(True for _ in target.iterdir()):
        raise StagingError(
            f"{target} is not empty and holds no {' or '.join(markers)}: it is not a mergescope/PEFT output, "
            "so it is not replaced (choose another output folder)"
        )


# ----------------------------------------------------------------------------------------------
# Leftovers of killed writers


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def clean_leftovers(parent: str | os.PathLike) -> list[str]:
    """Remove the staging folders of writers that died in `parent`; put back interrupted swaps.

    Returns what was done, one line per leftover (for a log or a caption). Folders of live
    processes (another write in progress) and anything not named by this module are left alone.
    """
    parent = Path(parent)
    done: list[str] = []
    try:
        children = list(parent.iterdir())
    except OSError:
        return done
    for child in sorted(children):
        match = _LEFTOVER.match(child.name)
        if not match or _process_alive(int(match["pid"])):
            continue
        original = parent / match["name"]
        with contextlib.suppress(OSError, ValueError):
            if match["kind"] == "parts":
                if len(match["name"]) >= _MAX_NAME:  # the name was cut short: keep it for the user
                    continue
                if _undo_replace(child, original):
                    done.append(f"restored {original} from an interrupted replace")
                shutil.rmtree(child)
                done.append(f"removed {child.name}, left by a write that was interrupted")
                continue
            if match["kind"] == "old" and not original.exists() and not original.is_symlink():
                if len(match["name"]) >= _MAX_NAME:  # the name was cut short: keep it for the user
                    continue
                os.replace(child, original)  # killed between the two renames of a swap: undo it
                done.append(f"restored {original} from an interrupted replace")
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
            done.append(f"removed {child.name}, left by a write that was interrupted")
    return done


def _read_journal(parts: Path) -> dict:
    path = parts / _JOURNAL
    if not path.is_file() or path.stat().st_size > 1024**2:
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _write_journal(parts: Path, data: dict) -> None:
    temporary = parts / f".{_JOURNAL}.tmp"
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, parts / _JOURNAL)


def _plain(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def _undo_replace(parts: Path, target: Path) -> bool:
    """Put back the entries of an interrupted replace (see :func:`replace_entries`). True if any."""
    journal = _read_journal(parts)
    if journal.get("state") not in ("moving-old", "moving-new") or not target.is_dir() or target.is_symlink():
        return False
    if journal["state"] == "moving-new":  # the new entries that got in are half an output: out again
        for name in filter(_plain, journal.get("new", [])):
            entry = target / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    restored = False
    for entry in parts.iterdir():
        if entry.name in (_JOURNAL, f".{_JOURNAL}.tmp") or (target / entry.name).exists():
            continue
        os.replace(entry, target / entry.name)
        restored = True
    return restored


# ----------------------------------------------------------------------------------------------
# Staging and the swap


_MAX_NAME = 150  # of the target's name kept in a hidden name, so the whole stays under 255 bytes


def _hidden_name(target: Path, kind: str) -> str:
    return f".{target.name[:_MAX_NAME]}.{_TAG}-{kind}-{os.getpid()}-"


@contextlib.contextmanager
def staging_dir(parent: Path, for_name: str) -> Iterator[Path]:
    """A private empty folder in `parent` (same file system), removed on exit whatever happens.

    Folders created for it (`parent` and its missing ancestors) are removed again if they are
    left empty, so a refused write leaves nothing behind.
    """
    parent = Path(parent)
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(parent)
    folder = Path(tempfile.mkdtemp(prefix=_hidden_name(parent / for_name, "staging"), dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for empty in created:
            try:
                empty.rmdir()  # only when empty: it holds the result, or another write uses it
            except OSError:
                break


def owned_entries(target: Path, owned: Iterable[str]) -> list[str]:
    """The top-level entries of `target` whose names match one of the glob patterns `owned`."""
    patterns = tuple(owned)
    return sorted(e.name for e in target.iterdir() if any(fnmatch.fnmatchcase(e.name, p) for p in patterns))


def check_no_foreign(target: Path, new_names: Iterable[str], owned: Iterable[str]) -> None:
    """Refuse when the new output would replace an entry of `target` that is not one of the
    output's own (`owned`): a user's README or tokenizer beside an adapter is theirs, not ours."""
    if not target.is_dir() or target.is_symlink():
        return
    patterns = tuple(owned)
    foreign = sorted(
        n for n in set(new_names)
        if ((target / n).exists() or (target / n).is_symlink()) and not any(fnmatch.fnmatchcase(n, p) for p in patterns)
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise StagingError(
            f"{target} holds {shown}, not written by mergescope, which the new output would replace; "
            "move it away or choose another output folder"
        )


def replace_entries(staged: Path, target: Path, owned: Iterable[str] = ADAPTER_OWNED) -> list[str]:
    """Move the entries of the complete folder `staged` into the existing folder `target`, after
    moving aside the entries of `target` they replace and those matching `owned` (what an earlier
    output left); nothing else in `target` is touched, and a new entry whose name is taken by
    something not `owned` is refused (:func:`check_no_foreign`). Returns the names replaced.

    Each step is a rename in one file system. The entries moved aside wait in a hidden parts
    folder beside `target` with a journal, so a failure here — or a kill, undone by
    :func:`clean_leftovers` at the next write — puts them back.
    """
    new = sorted(e.name for e in staged.iterdir())
    owned = tuple(owned)
    check_no_foreign(target, new, owned)
    old = sorted(set(owned_entries(target, owned)) | {n for n in new if (target / n).exists() or (target / n).is_symlink()})
    parts = Path(tempfile.mkdtemp(prefix=_hidden_name(target, "parts"), dir=target.parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        _write_journal(parts, {"state": "moving-old", "new": new, "old": old})
        for name in old:
            os.replace(target / name, parts / name)
            moved_old.append(name)
        _write_journal(parts, {"state": "moving-new", "new": new, "old": old})
        for name in new:
            os.replace(staged / name, target / name)
            moved_new.append(name)
        _write_journal(parts, {"state": "done", "new": new, "old": old})
    except BaseException:
        for name in reversed(moved_new):
            with contextlib.suppress(OSError):
                os.replace(target / name, staged / name)
        for name in reversed(moved_old):
            with contextlib.suppress(OSError):
                os.replace(parts / name, target / name)
        shutil.rmtree(parts, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    return old


def _swap_whole(staged: Path, target: Path) -> None:
    os.chmod(staged, stat.S_IMODE(target.parent.stat().st_mode) & 0o777)
    old = Path(tempfile.mkdtemp(prefix=_hidden_name(target, "old"), dir=target.parent))
    os.rmdir(old)  # only the unique name was needed
    os.replace(target, old)
    try:
        os.replace(staged, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def move_into_place(
    staged: Path,
    target: Path,
    overwrite: bool = False,
    markers: Iterable[str] = OUTPUT_MARKERS,
    owned: Iterable[str] | None = ADAPTER_OWNED,
) -> Path:
    """Rename the complete folder `staged` to `target` (same parent); into an existing output
    folder (only with `overwrite`), replace its owned entries and keep the rest (:func:`replace_entries`).

    `owned=None`: the whole folder is mergescope's own (a workspace's adapter copy): the old folder
    is renamed aside, the new one renamed in, and only then the old one removed.
    """
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise StagingError(f"{target} already exists; choose another name or allow replacing it")
        check_replaceable(target, markers)
        if owned is None:
            _swap_whole(staged, target)
        else:
            replace_entries(staged, target, owned)
            staged.rmdir()
    else:
        # staging folders come from mkdtemp (mode 0700): give the result its parent's permissions
        # (os.umask cannot be read without setting it, which would race with other threads)
        os.chmod(staged, stat.S_IMODE(target.parent.stat().st_mode) & 0o777)
        os.replace(staged, target)
    return target


@contextlib.contextmanager
def staged_folder(
    target: str | os.PathLike,
    overwrite: bool = False,
    markers: Iterable[str] = OUTPUT_MARKERS,
    owned: Iterable[str] | None = ADAPTER_OWNED,
) -> Iterator[Path]:
    """A hidden folder beside `target` to fill; swapped onto `target` only if the block succeeds.

    Refuses at once (before any work) when `target` exists and may not be replaced. A failure or
    Ctrl-C removes the staging folder, so no half-written folder ever looks valid.
    """
    target = Path(target)
    markers, owned = tuple(markers), (None if owned is None else tuple(owned))
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise StagingError(f"{target} already exists; choose another output folder or allow replacing it")
        check_replaceable(target, markers)
    with staging_dir(target.parent, target.name) as staging:
        yield staging
        move_into_place(staging, target, overwrite, markers, owned)

