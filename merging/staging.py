"""Writing a folder so that nothing the user had is lost: stage beside it, then swap it in.

Every folder mergescope writes (a saved or merged adapter, the zoo, a workspace import, a trained
adapter) is built in a hidden staging folder in the same parent — same file system, so the final
step is a rename — and appears under its real name only when complete. Replacing an existing
folder is a swap: the old folder is renamed aside (``.NAME.mergescope-old-…``) only after the new
one is complete, the new one is renamed into place, and only then is the old one removed.

Only a folder that holds a mergescope/PEFT output may be replaced (:func:`check_replaceable`): the
current folder, the home folder, the filesystem root, any folder above the current one, a file, a
link, or a non-empty folder without an output marker file is refused, so ``--out . --overwrite``
can never empty the user's working folder.

A process killed mid-write (SIGKILL, power cut) cannot clean up after itself. Staging names carry
the writer's process id, and :func:`clean_leftovers` — run at the next write into the same parent
and when the dashboard opens a workspace — removes the leftovers of processes that are gone; a
swap interrupted between its two renames is completed backwards (the old folder is put back).
"""

from __future__ import annotations

import contextlib
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

_TAG = "mergescope"
# .NAME.mergescope-staging-PID-RANDOM (a folder being built) / .NAME.mergescope-old-PID-RANDOM
# (a replaced folder about to be removed). NAME may itself hold dots, so parse from the right.
_LEFTOVER = re.compile(rf"^\.(?P<name>.+)\.{_TAG}-(?P<kind>staging|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


class StagingError(ValueError):
    """A write that would lose or endanger the user's files, with a message fit for the user."""


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
        with contextlib.suppress(OSError):
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


def move_into_place(
    staged: Path, target: Path, overwrite: bool = False, markers: Iterable[str] = OUTPUT_MARKERS
) -> Path:
    """Rename the complete folder `staged` to `target` (same parent); swap an existing one out.

    The old folder is renamed aside only once the new one is complete, and removed only once the
    new one is in place; a failure between the two renames puts the old one back.
    """
    # staging folders come from mkdtemp (mode 0700): give the result its parent's permissions
    # (os.umask cannot be read without setting it, which would race with other threads)
    os.chmod(staged, stat.S_IMODE(target.parent.stat().st_mode) & 0o777)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise StagingError(f"{target} already exists; choose another name or allow replacing it")
        check_replaceable(target, markers)
        old = Path(tempfile.mkdtemp(prefix=_hidden_name(target, "old"), dir=target.parent))
        os.rmdir(old)  # only the unique name was needed
        os.replace(target, old)
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, target)
    return target


@contextlib.contextmanager
def staged_folder(
    target: str | os.PathLike, overwrite: bool = False, markers: Iterable[str] = OUTPUT_MARKERS
) -> Iterator[Path]:
    """A hidden folder beside `target` to fill; swapped onto `target` only if the block succeeds.

    Refuses at once (before any work) when `target` exists and may not be replaced. A failure or
    Ctrl-C removes the staging folder, so no half-written folder ever looks valid.
    """
    target = Path(target)
    markers = tuple(markers)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise StagingError(f"{target} already exists; choose another output folder or allow replacing it")
        check_replaceable(target, markers)
    with staging_dir(target.parent, target.name) as staging:
        yield staging
        move_into_place(staging, target, overwrite, markers)

