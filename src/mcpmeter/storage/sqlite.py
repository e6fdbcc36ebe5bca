"""The embedded store: one SQLite file in WAL mode.

One writer connection (used under a lock; the collector feeds it from a single writer
thread), and one reader connection per thread so reads never wait for writes.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from .. import settings, usersets
from ..events import ROW_FIELDS, Row
from ..exceptions import StorageError, Unstorable
from . import sqlite_rollups
from .base import IngestResult
from .core import SQLStore
from .dialect import Dialect, T
from .dialect import now_ms as _now_ms
from .rollup import Deltas, aggregate
from .sqlite_migrations import MIGRATIONS

_MEASUREMENT_UPSERT = """
INSERT INTO measurement_{grain} VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, name, {grain}, server, type, tags) DO UPDATE SET
    count = count + 1, sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max),
    last_value = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_value ELSE last_value END,
    last_ts = max(last_ts, excluded.last_ts)
"""
_MEASUREMENT_DAY_UPSERT = _MEASUREMENT_UPSERT.format(grain="day")
_MEASUREMENT_HOUR_UPSERT = _MEASUREMENT_UPSERT.format(grain="hour")
DIALECT = Dialect(
    seq="rowid", greatest="max", collate="", hist_column="hist", decode_hist=None,  # msgpack or dense blobs, read as stored
    users_column="users", users_of=usersets.as_int, users_value=usersets.encode, users_param="?", for_update="",
    users_union="users_agg({})", users_count="users_count({})",  # sqlite_rollups.register_functions
)

# Events go in with multi-row INSERTs of these many rows (largest first), so SQLite runs a
# whole chunk per step: executemany() hands the GIL back and forth once per row, which
# stalls the writer whenever the event loop is busy decoding the next requests.
_INSERT_CHUNKS = (256, 64, 16, 4, 1)


@functools.lru_cache(maxsize=len(_INSERT_CHUNKS))
def _insert_events_sql(rows: int) -> str:
    """INSERT of ``rows`` events; ?1 is the project id, ?2 the receive time, then each row's fields."""
    width = len(ROW_FIELDS)
    values = ", ".join(
        "(?1, " + ", ".join(f"?{3 + r * width + c}" for c in range(width)) + ", ?2)" for r in range(rows)
    )
    return f"INSERT OR IGNORE INTO events (project_id, {', '.join(ROW_FIELDS)}, received_at) VALUES {values}"


def _insert_chunks(conn: sqlite3.Connection) -> tuple[int, ...]:
    """The chunk sizes whose statements stay within this SQLite's limit on bound parameters."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return tuple(size for size in _INSERT_CHUNKS if 2 + size * len(ROW_FIELDS) <= limit)


def _insert_events(conn: sqlite3.Connection, chunks: tuple[int, ...], project_id: int, received: int,
                   rows: Sequence[Row]) -> int:
    """Insert ``rows`` (in order, duplicates ignored); the number really inserted."""
    inserted, start, total = 0, 0, len(rows)
    for size in chunks:
        while total - start >= size:
            params: list[Any] = [project_id, received]
            params.extend(chain.from_iterable(rows[start:start + size]))
            inserted += conn.execute(_insert_events_sql(size), params).rowcount
            start += size
    return inserted


def _wal(conn: sqlite3.Connection, busy: float) -> None:
    """Put the file in WAL mode. Switching a new file's journal mode answers "database is
    locked" at once, without the busy handler, while another connection is opening it too
    (two processes or meters starting together): retried until the busy timeout."""
    deadline = time.monotonic() + busy
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SQLiteStore(SQLStore):  # every query is in core.py / core_security.py
    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._synchronous = "FULL" if durable else "NORMAL"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._insert_chunks = _insert_chunks(self._writer)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open store {self.path}: {exc}", hint="check the path and its permissions") from None
        self._write_lock = threading.Lock()
        self._known = sqlite_rollups.Known()  # rollup rows ingest may skip (see Known)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        busy = settings.get("MCPMETER_BUSY_TIMEOUT_SECONDS")  # then StorageError: the collector answers 503
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy)
        _wal(conn, busy)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
        sqlite_rollups.register_functions(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._readers.append(conn)
        return conn

    _dialect = DIALECT

    @property
    def location(self) -> str:
        return str(self.path)

    def size_bytes(self) -> int | None:
        """The file and its WAL (and shared-memory index) on disk."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.stat(f"{self.path}{suffix}").st_size
            except OSError:
                pass
        return total

    # ---- the hooks of core.SQLStore ----------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql

    def _fetch(self, project_id: int | None, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"read from {self.path} failed: {exc}",
                               hint="is the store reachable and up to date (`mcpmeter db upgrade`)?") from exc

    def _executemany(self, conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.executemany(sql, rows)

    def _insert_returning_id(self, conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
        row_id = conn.execute(sql, params).lastrowid
        assert row_id is not None
        return row_id

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} IN ({', '.join('?' * len(values))})", list(values)

    def _is_unique_violation(self, exc: BaseException | None) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def _apply_rollups(self, conn: sqlite3.Connection, by_project: dict[int, Deltas], version: int | None = None) -> None:
        for project_id, deltas in by_project.items():
            sqlite_rollups.apply(conn, project_id, deltas, sqlite_rollups.LATEST if version is None else version)

    def _write(self, fn: Callable[..., T], *args: Any, learned: sqlite_rollups.Known | None = None) -> T:
        """Run ``fn(conn, *args)`` in one IMMEDIATE transaction on the writer connection.

        Only ingest passes ``learned`` (the rollup rows it stored, merged into what the store
        knows once committed); any other write may remove rollup rows, so it forgets them all.
        """
        with self._write_lock:
            conn = self._writer
            if learned is None:
                self._known.clear()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn, *args)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                if learned is not None:
                    self._known.merge(learned)
                return result
            except (sqlite3.DataError, UnicodeError, OverflowError) as exc:  # a value SQLite cannot hold: the data's fault
                raise Unstorable(f"the store cannot hold a value of this request: {exc}",
                                 hint="nothing of it was stored; correct the value (a bug in validation: please report it)") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"write to {self.path} failed: {exc}", hint="is the disk full, or the file read-only?") from exc

    # ---- schema ---------------------------------------------------------------------

    def schema_version(self) -> int:
        try:
            row = self._writer.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except sqlite3.OperationalError:
            return 0
        return row[0] or 0

    _migrations = MIGRATIONS
    _migrations_table = ("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")

    def _run_migration(self, conn: sqlite3.Connection, script: str) -> None:
        _run_script(conn, script)

    # ---- events ---------------------------------------------------------------------

    def ingest(self, groups: Sequence[tuple[int, Sequence[Row]]],
               stored_rows: dict[int, list[Row]] | None = None) -> list[IngestResult]:
        received = _now_ms()
        known, learned = self._known, sqlite_rollups.Known()

        def run(conn: sqlite3.Connection) -> tuple[list[IngestResult], dict[int, list[Row]]]:
            learned.data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            if learned.data_version != known.data_version:  # another connection committed: forget
                known.clear()
            results = []
            stored: dict[int, list[Row]] = {}  # project -> rows really inserted, in order
            for project_id, rows in groups:
                if not rows:
                    results.append(IngestResult(0, 0))
                    continue
                total = len(rows)
                before = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()[0]
                inserted = _insert_events(conn, self._insert_chunks, project_id, received, rows)
                if inserted < len(rows):  # some were duplicates: roll up only the rows really stored
                    new_ids = {i for (i,) in conn.execute("SELECT event_id FROM events WHERE rowid > ?", (before,))}
                    kept = []
                    for row in rows:  # the first of equal ids is the one stored
                        if row[0] in new_ids:
                            new_ids.discard(row[0])
                            kept.append(row)
                    rows = kept
                    inserted = len(rows)
                stored.setdefault(project_id, []).extend(rows)
                results.append(IngestResult(inserted, total - inserted))
            # One rollup delta per project for the whole group (rollups are additive): the
            # requests of a group share most keys, so this saves most of the upserts.
            for project_id, rows in stored.items():
                sqlite_rollups.apply(conn, project_id, aggregate(rows), known=known, learned=learned)
            return results, stored

        results, stored = self._write(run, learned=learned)
        if stored_rows is not None:  # only once committed
            for project_id, rows in stored.items():
                stored_rows.setdefault(project_id, []).extend(rows)
        return results

    # ---- measurements and server events ------------------------------------------------

    def ingest_measurements(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        """Rows (measurement_id, server, name, type, tags, ts, value); new ones fold into hourly and daily aggregates."""

        def run(conn: sqlite3.Connection) -> IngestResult:
            before = conn.execute("SELECT coalesce(max(rowid), 0) FROM measurements").fetchone()[0]
            conn.executemany("INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(project_id, *r) for r in rows])
            new = conn.execute("SELECT server, name, type, tags, ts, value FROM measurements WHERE rowid > ?", (before,)).fetchall()
            conn.executemany(_MEASUREMENT_DAY_UPSERT, [(project_id, ts - ts % 86_400_000, server, name, kind, tags, value, value, value, ts, value)
                                                      for server, name, kind, tags, ts, value in new])
            conn.executemany(_MEASUREMENT_HOUR_UPSERT, [(project_id, ts - ts % 3_600_000, server, name, kind, tags, value, value, value, ts, value)
                                                       for server, name, kind, tags, ts, value in new])
            return IngestResult(len(new), len(rows) - len(new))

        return self._write(run)

    def ingest_server_events(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        """Rows (event_id, server, type, ts, version, message, attributes)."""

        def run(conn: sqlite3.Connection) -> IngestResult:
            cur = conn.executemany("INSERT OR IGNORE INTO server_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(project_id, *r) for r in rows])
            return IngestResult(cur.rowcount, len(rows) - cur.rowcount)

        return self._write(run)

    def _prune_events(self, cut: int, chunk: int) -> int:
        return sum(self._delete_in_chunks(
            "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE project_id = ? AND ts < ? LIMIT ?)",
            (project_id, cut), chunk) for (project_id,) in self._fetch(None, "SELECT id FROM projects"))

    def close(self) -> None:
        for conn in [self._writer, *self._readers]:
            try:
                conn.close()
            except sqlite3.Error:
                pass


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT our transaction; run statement by statement instead
    # (a trigger's body holds semicolons: a statement ends where SQLite says it is complete).
    statement = ""
    for part in script.split(";"):
        statement += part + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \t\n;"):
                conn.execute(statement)
            statement = ""

