"""The local spool: batches the collector could not take yet, kept on disk until it can.

Each row is one gzip-compressed JSON batch for one collector URL. Event ids are assigned
before a batch is spooled, so replaying a batch that did arrive after all counts once.
Several processes may share the file (SQLite locking); a batch is deleted only after
the collector acknowledged it.

The read side (``spooled_batches``) lets ``mcpmeter report`` answer from what is waiting here
while the collector is down, without taking or changing anything.
"""

from __future__ import annotations

import gzip
import sqlite3
import time
from collections.abc import Iterator
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


def spooled_batches(path: Path, url: str | None = None) -> Iterator[bytes]:
    """The JSON bodies waiting in the spool at ``path`` (for collector ``url``; every URL when
    None), oldest first; nothing when there is no spool. Read-only: a running recorder keeps
    replaying and deleting them meanwhile."""
    path = Path(path)
    if not path.exists():
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'spool'").fetchone():
            return
        sql = "SELECT body FROM spool"
        params: tuple[str, ...] = ()
        if url is not None:
            sql, params = sql + " WHERE url = ?", (url.rstrip("/"),)
        for (body,) in conn.execute(sql + " ORDER BY id", params).fetchall():
            try:
                yield gzip.decompress(body)
            except (OSError, EOFError):  # a damaged batch: the others still count
                continue
    finally:
        conn.close()
