"""The coordinator's SQLite store (WAL): one connection, one writer, idempotent schema.

For now it remembers every model name ever served, so that a known model with no
connected host is answered 503 (not 404) after a restart too.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS models_seen (name TEXT PRIMARY KEY, first_seen REAL NOT NULL)",
]
SCHEMA_VERSION = 1


class Store:
    def __init__(self, path: str) -> None:
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path or ":memory:", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        for statement in SCHEMA:
            self.db.execute(statement)
        if self.db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
            self.db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    def known_models(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT name FROM models_seen ORDER BY name")]

    def add_models(self, names: Iterable[str]) -> None:
        now = time.time()
        self.db.executemany(
            "INSERT OR IGNORE INTO models_seen (name, first_seen) VALUES (?, ?)", [(n, now) for n in names]
        )

    def close(self) -> None:
        self.db.close()
