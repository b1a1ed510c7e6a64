"""User tasks: a CSV or JSONL file with ``text`` and ``label`` columns, read with a clear message
for every way such a file can be wrong (encoding, columns, empty values, one label, swapped columns),
and split exactly like the demo tasks.
"""

from __future__ import annotations

import csv
import io
import json
import stat
from collections.abc import Iterable
from pathlib import Path

from merging.tasks.data import Example, TaskData, TaskError
from merging.tasks.split import dedupe, make_task

# A user file with more distinct labels than this almost surely has its columns swapped.
MAX_LABELS = 100
SUPPORTED_SUFFIXES = (".csv", ".jsonl")


# An evaluation or task file is read whole: checked before reading, it is a regular file (not
# /dev/zero, a pipe) of at most this size (the workspace's upload limit, merging.store.workspace).
MAX_TASK_FILE_BYTES = 50 * 1024**2


def read_bounded(path: Path, max_bytes: int = MAX_TASK_FILE_BYTES) -> bytes:
    """A task file's bytes, or one TaskError naming it: missing, not a regular file, or too large."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, pipe or socket)"
            raise TaskError(f"{path.name}: {kind}, not a task file")
        if info.st_size > max_bytes:
            raise TaskError(f"{path.name}: {info.st_size:,} bytes; a task file is at most {max_bytes:,}")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise TaskError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise TaskError(f"{path.name}: more than {max_bytes:,} bytes; a task file is at most that")
    return data


class _RowError(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    row: dict = {}
    for key, value in pairs:
        if key in row:
            raise _RowError(f"the field {key!r} appears twice")
        row[key] = value
    return row


def _no_constant(name: str):
    raise _RowError(f"{name} is not a value JSON allows")


def parse_json_line(line: str, where: str):
    """One JSONL line: NaN/Infinity and a key given twice are refused, deep nesting too (`where`:
    the file and line, for the message)."""
    try:
        return json.loads(line, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except _RowError as err:
        raise TaskError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise TaskError(f"{where}: not valid JSON ({err.msg})") from None
    except RecursionError:
        raise TaskError(f"{where}: not valid JSON (nested too deeply)") from None


def _decode_utf8(data: bytes, filename: str) -> str:
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the byte-order mark Excel writes
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise TaskError(
            f"{filename} is not UTF-8 text: byte 0x{data[err.start]:02x} at offset {err.start} "
            f"(line {line}) cannot be decoded; save the file with UTF-8 encoding"
        ) from None


def _label_text(value: object) -> str:
    # JSON labels may be numbers or booleans; a label is a name, so compare them as text.
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()


def _check_row(filename: str, line: int, text: object, label: object,
               text_column: str, label_column: str) -> Example:
    if text is None or not str(text).strip():
        raise TaskError(f"{filename}, line {line}: the {text_column!r} value is empty")
    label_name = _label_text(label)
    if not label_name:
        raise TaskError(f"{filename}, line {line}: the {label_column!r} value is empty")
    return str(text), label_name


def _rows_from_csv(content: str, filename: str, text_column: str,
                   label_column: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        columns = [c.strip() for c in (reader.fieldnames or [])]
    except csv.Error as err:
        raise TaskError(f"{filename}, line 1: not valid CSV ({err})") from None
    reader.fieldnames = columns  # tolerate "text, label" with spaces after the commas
    for column in (text_column, label_column):
        if column not in columns:
            raise TaskError(
                f"{filename} has no {column!r} column (columns found: {', '.join(columns)}); "
                f"the first line must name the columns, e.g. '{text_column},{label_column}'"
            )
    examples = []
    try:
        for row in reader:
            if None in row:  # DictReader files surplus fields under the key None
                raise TaskError(
                    f"{filename}, line {reader.line_num}: more fields than the header has "
                    "columns; put texts that contain commas in double quotes"
                )
            examples.append(_check_row(filename, reader.line_num, row[text_column],
                                       row[label_column], text_column, label_column))
    except csv.Error as err:
        raise TaskError(f"{filename}, line {reader.line_num}: not valid CSV ({err})") from None
    return examples


def _rows_from_jsonl(content: str, filename: str, text_column: str,
                     label_column: str) -> list[Example]:
    examples = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        row = parse_json_line(line, f"{filename}, line {number}")
        if not isinstance(row, dict):
            raise TaskError(f"{filename}, line {number}: expected a JSON object like "
                            f'{{"{text_column}": "...", "{label_column}": "..."}}')
        for column in (text_column, label_column):
            if column not in row:
                raise TaskError(
                    f"{filename}, line {number}: no {column!r} field "
                    f"(fields found: {', '.join(map(str, row)) or 'none'})"
                )
        examples.append(_check_row(filename, number, row[text_column], row[label_column],
                                   text_column, label_column))
    return examples


def _label_order(names: Iterable[str]) -> list[str]:
    # Numeric labels in numeric order ("2" before "10"), then the others alphabetically.
    def key(name: str) -> tuple[int, float, str]:
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    return sorted(set(names), key=key)


def read_task_file(
    path: str | Path, text_column: str = "text", label_column: str = "label"
) -> list[Example]:
    """Raw (text, label) rows of a user CSV or JSONL file, with clear errors for bad files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TaskError(
            f"{path.name}: unsupported file type {suffix or '(no extension)'!r}; "
            f"use {' or '.join(SUPPORTED_SUFFIXES)} with '{text_column}' and "
            f"'{label_column}' columns"
        )
    data = read_bounded(path)
    content = _decode_utf8(data, path.name)
    if not content.strip():
        raise TaskError(f"{path.name} is empty")
    reader = _rows_from_csv if suffix == ".csv" else _rows_from_jsonl
    examples = reader(content, path.name, text_column, label_column)
    if not examples:
        raise TaskError(f"{path.name} has no data rows, only a header")
    return examples


def load_task_file(
    path: str | Path,
    train_size: int | None = 1000,
    eval_size: int = 200,
    seed: int = 0,
    name: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
) -> TaskData:
    """A user task from a CSV or JSONL file with ``text`` and ``label`` columns.

    Split exactly like the demo tasks (see :func:`split_examples`). Raises :class:`TaskError`
    with a message meant for the user: unknown extension, non-UTF-8 bytes, empty file, missing
    column, empty values, a single label, or an implausible number of labels.
    """
    path = Path(path)
    examples = dedupe(read_task_file(path, text_column, label_column))
    labels = _label_order(label for _, label in examples)
    if len(labels) < 2:
        only = f" (only {labels[0]!r})" if labels else ""
        raise TaskError(
            f"{path.name} has a single label{only}; a classification task needs at least 2"
        )
    if len(labels) > MAX_LABELS:
        raise TaskError(
            f"{path.name} has {len(labels)} different labels (more than {MAX_LABELS}); "
            f"are the {text_column!r} and {label_column!r} columns swapped?"
        )
    return make_task(
        name or path.stem,
        examples,
        labels,
        train_size,
        eval_size,
        seed,
        description=f"user task from {path.name}",
        source=str(path),
        licence="",
    )
