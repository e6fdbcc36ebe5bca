"""The local spool: batches the collector could not take yet, kept on disk until it can.

Each row is one gzip-compressed JSON batch for one collector URL. Event ids are assigned
before a batch is spooled, so replaying a batch that did arrive after all counts once.
Several processes may share the file (SQLite locking); a batch is deleted only after
the collector acknowledged it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class Spool:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY, url TEXT NOT NULL, events INTEGER NOT NULL, "
            "body BLOB NOT NULL, created_at INTEGER NOT NULL)"
        )

    def size_bytes(self) -> int:
        return int(self._conn.execute("SELECT coalesce(sum(length(body)), 0) FROM spool").fetchone()[0])

    def put(self, url: str, body_gz: bytes, events: int) -> bool:
        """Keep a batch; False (and nothing written) when the spool is full."""
        if self.size_bytes() + len(body_gz) > self.max_bytes:
            return False
        self._conn.execute(
            "INSERT INTO spool (url, events, body, created_at) VALUES (?, ?, ?, ?)",
            (url, events, body_gz, int(time.time() * 1000)),
        )
        return True

    def pending(self, url: str) -> int:
        return int(self._conn.execute("SELECT coalesce(sum(events), 0) FROM spool WHERE url = ?", (url,)).fetchone()[0])

    def oldest(self, url: str, limit: int = 20) -> list[tuple[int, int, bytes]]:
        return self._conn.execute(
            "SELECT id, events, body FROM spool WHERE url = ? ORDER BY id LIMIT ?", (url, limit)
        ).fetchall()

    def remove(self, row_id: int) -> None:
        self._conn.execute("DELETE FROM spool WHERE id = ?", (row_id,))

    def close(self) -> None:
        self._conn.close()
