"""The local spool: batches the collector could not take yet, kept on disk until it can.

Each row is one gzip-compressed JSON batch for one collector URL *and one sender identity*
(``owner``: a hash of the API key and of the signing secret the batch was sent with - never
the key itself). Several programs of several projects may share the file (same home, same
URL); each replays only the rows of its own identity, so a batch can never be delivered
under another project's key. Rows spooled by a version that did not record the owner have
``owner`` NULL: they are kept, reported, and never replayed under a key that cannot be
proven to be theirs.

Event ids are assigned before a batch is spooled, so replaying a batch that did arrive
after all counts once. Several processes may share the file (SQLite locking); a batch is
deleted only after the collector acknowledged it (or refused its contents for good).

The read side (``spooled_batches``) lets ``mcpmeter report`` answer from what is waiting here
while the collector is down, without taking or changing anything.
"""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path


def spool_owner(api_key: str | None, signing_secret: str | None) -> str:
    """Whose a batch is: a one-way hash of the key and the signing secret it is sent with."""
    digest = hashlib.sha256()
    for part in (api_key or "", signing_secret or ""):
        digest.update(hashlib.sha256(part.encode()).digest())
    return "k1:" + digest.hexdigest()[:32]


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
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(spool)")}
        for column, ddl in (("owner", "owner TEXT"), ("attempts", "attempts INTEGER NOT NULL DEFAULT 0")):
            if column not in columns:  # a spool written by an earlier version: its rows keep owner NULL
                try:
                    self._conn.execute(f"ALTER TABLE spool ADD COLUMN {ddl}")
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise

    def size_bytes(self) -> int:
        return int(self._conn.execute("SELECT coalesce(sum(length(body)), 0) FROM spool").fetchone()[0])

    def put(self, url: str, owner: str, body_gz: bytes, events: int) -> bool:
        """Keep a batch of ``owner``'s; False (and nothing written) when the spool is full."""
        if self.size_bytes() + len(body_gz) > self.max_bytes:
            return False
        self._conn.execute(
            "INSERT INTO spool (url, owner, events, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (url, owner, events, body_gz, int(time.time() * 1000)),
        )
        return True

    def pending(self, url: str, owner: str | None = None) -> int:
        """Events waiting for ``url`` (of ``owner`` only, when given)."""
        args: tuple[str, ...]
        if owner is None:
            sql, args = "SELECT coalesce(sum(events), 0) FROM spool WHERE url = ?", (url,)
        else:
            sql, args = "SELECT coalesce(sum(events), 0) FROM spool WHERE url = ? AND owner = ?", (url, owner)
        return int(self._conn.execute(sql, args).fetchone()[0])

    def unowned(self, url: str) -> int:
        """Events spooled by an earlier version, without an owner: never replayed."""
        return int(self._conn.execute(
            "SELECT coalesce(sum(events), 0) FROM spool WHERE url = ? AND owner IS NULL", (url,)).fetchone()[0])

    def oldest(self, url: str, owner: str, limit: int = 20, after: int = 0) -> list[tuple[int, int, bytes]]:
        """``owner``'s oldest batches for ``url`` (ids above ``after``): (id, events, gzip body)."""
        return self._conn.execute(
            "SELECT id, events, body FROM spool WHERE url = ? AND owner = ? AND id > ? ORDER BY id LIMIT ?",
            (url, owner, after, limit),
        ).fetchall()

    def strike(self, row_id: int) -> int:
        """One more failed replay of a batch while others got through; returns its count so far."""
        self._conn.execute("UPDATE spool SET attempts = attempts + 1 WHERE id = ?", (row_id,))
        row = self._conn.execute("SELECT attempts FROM spool WHERE id = ?", (row_id,)).fetchone()
        return int(row[0]) if row else 0

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
