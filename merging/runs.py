"""The run store: every merge and its results, in SQLite in the workspace folder.

Each call opens its own connection, so two browser tabs (two Streamlit sessions, two threads) can
write at the same time; SQLite serialises the writes and WAL mode lets readers go on meanwhile.
A run is written before the page shows it, so nothing a user saw can be lost.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


class RunStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            with connection:  # commits, or rolls back on error
                yield connection
        finally:
            connection.close()

    def add(
        self,
        recipe: dict,
        results: dict,
        summary: dict | None = None,
        device: str = "cpu",
        seconds: float = 0.0,
        kind: str = "merge",
    ) -> int:
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (created, kind, recipe, results, summary, device, seconds) VALUES (?, ?, ?, ?, ?, ?, ?)",
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

    def list(self, kind: str | None = None, limit: int = 500) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        params: tuple = ()
        if kind:
            query += " WHERE kind = ?"
            params = (kind,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._connect() as connection:
            rows = connection.execute(query, params + (limit,)).fetchall()
        return [_record(row) for row in rows]

    def get(self, run_id: int) -> RunRecord | None:
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return _record(row) if row else None

    def delete(self, run_ids: list[int]) -> int:
        if not run_ids:
            return 0
        with self._connect() as connection:
            cursor = connection.execute(
                f"DELETE FROM runs WHERE id IN ({','.join('?' * len(run_ids))})", [int(i) for i in run_ids]
            )
            return cursor.rowcount


def _record(row: tuple) -> RunRecord:
    run_id, created, kind, recipe, results, summary, device, seconds = row
    return RunRecord(
        id=run_id,
        created=created,
        kind=kind,
        recipe=json.loads(recipe),
        results=json.loads(results),
        summary=json.loads(summary),
        device=device,
        seconds=seconds,
    )
