"""The run store: every merge and its results, in SQLite in the workspace folder.

Each call opens its own connection, so two browser tabs (two Streamlit sessions, two threads) can
write at the same time; SQLite serialises the writes and WAL mode lets readers go on meanwhile.
A run is written before the page shows it, so nothing a user saw can be lost.

A store that cannot be used — a corrupt file, a read-only one, another program's database — never
stops the app: the store says why in :attr:`RunStore.problem` (one line with its path), keeps
what it can (a read-only store is still listed) and stores nothing else; pages show the line. A
foreign database is never written to. A malformed row (bad JSON, wrong types) is skipped and
reported by :meth:`RunStore.read`, so one bad row cannot hide the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    recipe TEXT NOT NULL,
    results TEXT NOT NULL,
    summary TEXT NOT NULL,
    device TEXT NOT NULL,
    seconds REAL NOT NULL
)
"""


@dataclass(frozen=True)
class RunRecord:
    id: int
    created: float
    kind: str
    recipe: dict
    results: dict
    summary: dict
    device: str
    seconds: float


COLUMNS = ("id", "created", "kind", "recipe", "results", "summary", "device", "seconds")


@dataclass(frozen=True)
class SkippedRow:
    """A row of the store that could not be read back, and why."""

    id: object
    reason: str


@dataclass(frozen=True)
class RunListing:
    records: list[RunRecord]
    skipped: list[SkippedRow] = field(default_factory=list)


class RunStoreError(ValueError):
    """A run store that cannot be used, with its path and the reason."""


class RunStore:
    """The runs of one workspace. `problem` is None when runs can be stored, else the reason why not."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self.problem: str | None = None
        self.readable = True
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as connection:
                self._check_schema(connection)
                if not read_only:
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute(SCHEMA)
                    # a write, so that a read-only file is found now rather than at the first run
                    version = connection.execute("PRAGMA user_version").fetchone()[0]
                    connection.execute(f"PRAGMA user_version = {int(version)}")
        except RunStoreError as err:  # another program's database: neither read nor written
            self.readable = False
            self.problem = str(err)
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            if self._is_read_only_error(err) and not read_only:
                # a read-only file: list what it holds, store nothing new
                with contextlib.suppress(sqlite3.Error, OSError, RunStoreError):
                    self.read_only = True
                    with self._connect() as connection:
                        self._check_schema(connection)
                        connection.execute("SELECT count(*) FROM runs").fetchone()
                    self.readable = True
                    return
                self.readable = False
            else:
                self.readable = False

    # ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            connection = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        else:
            connection = sqlite3.connect(self.path, timeout=30)
        try:
            with connection:  # commits, or rolls back on error
                yield connection
        finally:
            connection.close()

    def _check_schema(self, connection: sqlite3.Connection) -> None:
        """A database without tables is ours to set up; one with other tables or columns is not."""
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not str(row[0]).startswith("sqlite_")
        }
        if "runs" in tables:
            columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(runs)"))
            if columns != COLUMNS:
                raise RunStoreError(
                    f"the run store {self.path} has a 'runs' table with columns {', '.join(columns)}, not "
                    "mergescope's: it is another program's database; runs are not stored "
                    "(move it away or choose another workspace)"
                )
        elif tables:
            raise RunStoreError(
                f"the run store {self.path} is another program's database (tables {', '.join(sorted(tables)[:5])}); "
                "runs are not stored (move it away or choose another workspace)"
            )

    @staticmethod
    def _is_read_only_error(err: Exception) -> bool:
        text = str(err).lower()
        return "readonly" in text or "read-only" in text or isinstance(err, PermissionError)

    def _fail(self, err: Exception) -> None:
        if self._is_read_only_error(err):
            self.problem = f"the run store {self.path} is read-only: its runs are shown, new runs are not stored"
            return
        if "not a database" in str(err) or "malformed" in str(err):
            reason = "the file is damaged or is not an SQLite database"
        else:
            reason = str(err) or type(err).__name__
        self.problem = f"the run store {self.path} cannot be used ({reason}); runs are not stored"

    @property
    def writable(self) -> bool:
        return self.problem is None and not self.read_only

    # ------------------------------------------------------------------------------------------

    def add(
        self,
        recipe: dict,
        results: dict,
        summary: dict | None = None,
        device: str = "cpu",
        seconds: float = 0.0,
        kind: str = "merge",
    ) -> int | None:
        """Store one run and return its id; None (and `problem` says why) when it cannot be stored."""
        if not self.writable:
            if self.problem is None:
                self.problem = f"the run store {self.path} is open read-only; runs are not stored"
            return None
        try:
            with self._connect() as connection:
                cursor = connection.execute(
                    "INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        time.time(),
                        kind,
                        json.dumps(recipe, sort_keys=True),
                        json.dumps(results, default=str),
                        json.dumps(summary or {}, default=str),
                        device,
                        float(seconds),
                    ),
                )
                return int(cursor.lastrowid)
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            return None

    def read(self, kind: str | None = None, limit: int = 500) -> RunListing:
        """The runs, newest first, and the rows that could not be read back (with the reason)."""
        if not self.readable:
            return RunListing([], [])
        query = "SELECT * FROM runs"
        params: tuple = ()
        if kind:
            query += " WHERE kind = ?"
            params = (kind,)
        query += " ORDER BY id DESC LIMIT ?"
        try:
            with self._connect() as connection:
                rows = connection.execute(query, params + (limit,)).fetchall()
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            self.readable = False
            return RunListing([], [])
        records, skipped = [], []
        for row in rows:
            try:
                records.append(_record(row))
            except RunStoreError as err:
                skipped.append(SkippedRow(row[0] if row else None, str(err)))
        return RunListing(records, skipped)

    def list(self, kind: str | None = None, limit: int = 500) -> list[RunRecord]:
        """The runs that can be read back, newest first (see :meth:`read` for the skipped rows)."""
        return self.read(kind, limit).records

    def get(self, run_id: int) -> RunRecord | None:
        if not self.readable:
            return None
        try:
            with self._connect() as connection:
                row = connection.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            return None
        if not row:
            return None
        try:
            return _record(row)
        except RunStoreError:
            return None

    def delete(self, run_ids: list[int]) -> int:
        if not run_ids or not self.writable:
            return 0
        try:
            with self._connect() as connection:
                cursor = connection.execute(
                    f"DELETE FROM runs WHERE id IN ({','.join('?' * len(run_ids))})", [int(i) for i in run_ids]
                )
                return cursor.rowcount
        except (sqlite3.Error, OSError) as err:
            self._fail(err)
            return 0


def _record(row: tuple) -> RunRecord:
    """A row as a RunRecord, or a RunStoreError saying which column is malformed."""
    if len(row) != len(COLUMNS):
        raise RunStoreError(f"expected {len(COLUMNS)} columns, got {len(row)}")
    run_id, created, kind, recipe, results, summary, device, seconds = row
    decoded = {}
    for column, text in (("recipe", recipe), ("results", results), ("summary", summary)):
        try:
            value = json.loads(text)
        except (TypeError, ValueError, RecursionError) as err:
            raise RunStoreError(f"column '{column}' is not valid JSON ({type(err).__name__})") from None
        if not isinstance(value, dict):
            raise RunStoreError(f"column '{column}' is not a JSON object")
        decoded[column] = value
    for column, value in (("created", created), ("seconds", seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunStoreError(f"column '{column}' is not a number ({value!r})")
    for column, value in (("kind", kind), ("device", device)):
        if not isinstance(value, str):
            raise RunStoreError(f"column '{column}' is not text ({value!r})")
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise RunStoreError(f"column 'id' is not a whole number ({run_id!r})")
    return RunRecord(
        id=run_id,
        created=float(created),
        kind=kind,
        recipe=decoded["recipe"],
        results=decoded["results"],
        summary=decoded["summary"],
        device=device,
        seconds=float(seconds),
    )
