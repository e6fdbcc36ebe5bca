"""The embedded store: one SQLite file in WAL mode.

One writer connection (used under a lock; the collector feeds it from a single writer
thread), and one reader connection per thread so reads never wait for writes.
"""

from __future__ import annotations

import functools
import secrets
import sqlite3
import threading
import time
from itertools import chain
from pathlib import Path
from typing import Iterable, Sequence

from .. import settings, usersets
from ..events import ROW_FIELDS
from ..exceptions import SchemaVersionError, StorageError
from .base import AuditEntry, EventFilter, IngestResult, KeyInfo, Project
from . import sqlite_rollups
from .rollup import aggregate
from .sqlite_migrations import MIGRATIONS
from .sqlite_security import SQLiteSecurity, _audit

ROLLUP_VERSION = 2
_MEASUREMENT_DAY_UPSERT = """
INSERT INTO measurement_day VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, name, day, server, type, tags) DO UPDATE SET
    count = count + 1, sum = sum + excluded.sum, min = min(min, excluded.min), max = max(max, excluded.max),
    last_value = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last_value ELSE last_value END,
    last_ts = max(last_ts, excluded.last_ts)
"""
_KEY_COLUMNS = (
    "k.id, k.project_id, p.name, k.name, k.prefix, k.scopes, k.created_at, "
    "k.last_used_at, k.revoked_at, k.expires_at"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


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
                   rows: Sequence[tuple]) -> int:
    """Insert ``rows`` (in order, duplicates ignored); the number really inserted."""
    inserted, start, total = 0, 0, len(rows)
    for size in chunks:
        while total - start >= size:
            params = [project_id, received]
            params.extend(chain.from_iterable(rows[start:start + size]))
            inserted += conn.execute(_insert_events_sql(size), params).rowcount
            start += size
    return inserted


class SQLiteStore(SQLiteSecurity):  # keys version, rotation, access, audit, erasure: sqlite_security.py
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
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        busy = settings.get("MCPMETER_BUSY_TIMEOUT_SECONDS")  # then StorageError: the collector answers 503
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=busy)
        conn.execute("PRAGMA journal_mode=WAL")
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

    def _write(self, fn, *args):
        """Run ``fn(conn, *args)`` in one IMMEDIATE transaction on the writer connection."""
        with self._write_lock:
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn, *args)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise StorageError(f"write to {self.path} failed: {exc}", hint="is the disk full, or the file read-only?") from exc

    # ---- schema ---------------------------------------------------------------------

    def schema_version(self) -> int:
        try:
            row = self._writer.execute("SELECT max(version) FROM schema_migrations").fetchone()
        except sqlite3.OperationalError:
            return 0
        return row[0] or 0

    def upgrade(self, target: int | None = None) -> list[int]:
        latest = MIGRATIONS[-1].version
        target = latest if target is None else target
        if target > latest:
            raise SchemaVersionError(f"no schema version {target}; the newest this mcpmeter knows is {latest}")

        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > latest:
                raise SchemaVersionError(
                    f"store {self.path} has schema version {current}, newer than this mcpmeter ({latest})",
                    hint="upgrade mcpmeter, or run `mcpmeter db downgrade` with the newer version",
                )
            applied = []
            for m in MIGRATIONS:
                if current < m.version <= target:
                    _run_script(conn, m.up)
                    if m.version == ROLLUP_VERSION:  # rollups of events stored before they existed
                        sqlite_rollups.rebuild(conn, ", ".join(ROW_FIELDS), m.version)
                    conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (m.version, m.name, _now_ms()))
                    applied.append(m.version)
            return applied

        return self._write(run)

    def downgrade(self, target: int) -> list[int]:
        if target < 0:
            raise SchemaVersionError("the target version must be 0 or more")

        def run(conn: sqlite3.Connection) -> list[int]:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
            done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            reverted = []
            for m in reversed(MIGRATIONS):
                if m.version > target and m.version in done:
                    _run_script(conn, m.down)
                    conn.execute("DELETE FROM schema_migrations WHERE version = ?", (m.version,))
                    reverted.append(m.version)
            return reverted

        return self._write(run)

    # ---- projects and keys ------------------------------------------------------------

    def ensure_project(self, name: str, audit: AuditEntry | None = None) -> Project:
        """The project ``name``, created when new (and then ``audit`` written with its id)."""
        existing = self.project_by_name(name)
        if existing:
            return existing

        def run(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "INSERT OR IGNORE INTO projects (name, user_salt, created_at) VALUES (?, ?, ?)",
                (name, secrets.token_hex(32), _now_ms()),
            )
            if cur.rowcount and audit is not None:
                _audit(conn, audit._replace(project_id=cur.lastrowid))

        self._write(run)
        project = self.project_by_name(name)
        assert project is not None
        return project

    def project_by_name(self, name: str) -> Project | None:
        row = self._reader().execute("SELECT id, name, user_salt, created_at FROM projects WHERE name = ?", (name,)).fetchone()
        return Project(*row) if row else None

    def project_by_id(self, project_id: int) -> Project | None:
        row = self._reader().execute("SELECT id, name, user_salt, created_at FROM projects WHERE id = ?", (project_id,)).fetchone()
        return Project(*row) if row else None

    def list_projects(self) -> list[Project]:
        return [Project(*r) for r in self._reader().execute("SELECT id, name, user_salt, created_at FROM projects ORDER BY id")]

    def add_key(self, project_id: int, name: str, key_hash: str, prefix: str, scopes: Iterable[str],
                expires_at: int | None = None, replace: bool = False, audit: AuditEntry | None = None) -> KeyInfo:
        scope_text = ",".join(sorted(set(scopes)))

        def run(conn: sqlite3.Connection) -> None:
            if replace:
                conn.execute("DELETE FROM api_keys WHERE project_id = ? AND name = ?", (project_id, name))
            conn.execute(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, name, prefix, key_hash, scope_text, _now_ms(), expires_at),
            )
            _audit(conn, audit)

        try:
            self._write(run)
        except StorageError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise StorageError(f"a key named {name!r} already exists in this project", hint="pick another --name, or revoke the old key first") from None
            raise
        key = self.key_by_hash(key_hash)
        assert key is not None
        return key

    def key_by_hash(self, key_hash: str) -> KeyInfo | None:
        row = self._reader().execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.key_hash = ?", (key_hash,)
        ).fetchone()
        return _key(row) if row else None

    def list_keys(self, project_id: int | None = None) -> list[KeyInfo]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id"
        params: tuple = ()
        if project_id is not None:
            sql += " WHERE k.project_id = ?"
            params = (project_id,)
        return [_key(r) for r in self._reader().execute(sql + " ORDER BY k.id", params)]

    def revoke_key(self, project_id: int | None, name_or_prefix: str, audit: AuditEntry | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            sql = "UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND (name = ? OR prefix = ?)"
            params: list = [_now_ms(), name_or_prefix, name_or_prefix]
            if project_id is not None:
                sql += " AND project_id = ?"
                params.append(project_id)
            n = conn.execute(sql, params).rowcount
            if n:
                _audit(conn, audit)
            return n

        return self._write(run)

    def touch_keys(self, last_used: dict[int, int]) -> None:
        if last_used:
            self._write(lambda conn: conn.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(ts, key_id) for key_id, ts in last_used.items()],
            ))

    # ---- events ---------------------------------------------------------------------

    def ingest(self, groups: Sequence[tuple[int, Sequence[tuple]]],
               stored_rows: dict[int, list[tuple]] | None = None) -> list[IngestResult]:
        received = _now_ms()

        def run(conn: sqlite3.Connection) -> tuple[list[IngestResult], dict[int, list[tuple]]]:
            results = []
            stored: dict[int, list[tuple]] = {}  # project -> rows really inserted, in order
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
                sqlite_rollups.apply(conn, project_id, aggregate(rows))
            return results, stored

        results, stored = self._write(run)
        if stored_rows is not None:  # only once committed
            for project_id, rows in stored.items():
                stored_rows.setdefault(project_id, []).extend(rows)
        return results

    # ---- reads ----------------------------------------------------------------------

    def _where(self, f: EventFilter, kind: str | None = "tool_call") -> tuple[str, list]:
        sql = "project_id = ? AND ts >= ? AND ts < ?"
        params: list = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("kind", kind), ("server", f.server), ("tool", f.tool), ("client_name", f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return sql, params

    def count_events(self, f: EventFilter, kind: str | None = "tool_call") -> int:
        where, params = self._where(f, kind)
        return self._reader().execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()[0]

    def distinct_users(self, f: EventFilter) -> int:
        where, params = self._where(f)
        return self._reader().execute(f"SELECT count(DISTINCT user_hash) FROM events WHERE {where}", params).fetchone()[0]

    # ---- rollup reads (cost grows with buckets x dimensions, not with events) ----------

    def _dims(self, f: EventFilter, client_column: str = "client") -> tuple[str, list]:
        sql, params = "", []
        for column, value in (("server", f.server), ("tool", f.tool), (client_column, f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return sql, params

    def cells(self, f: EventFilter, grain: str, kinds: Sequence[str] = ("tool_call",)) -> list[tuple]:
        """Rollup cells in the window: (bucket, kind, server, tool, client, calls, errors,
        dur_count, dur_sum, dur_min, dur_max, hist)."""
        table = "rollup_hour" if grain == "hour" else "rollup_day"
        dims, params = self._dims(f)
        marks = ", ".join("?" * len(kinds))
        return self._reader().execute(
            f"SELECT bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist "
            f"FROM {table} WHERE project_id = ? AND bucket >= ? AND bucket < ? AND kind IN ({marks}){dims}",
            [f.project_id, f.start_ms, f.end_ms, *kinds, *params],
        ).fetchall()

    def tool_cells(self, f: EventFilter, grain: str) -> list[tuple]:
        """Tool-call cells with every client together, in the shape of ``cells`` (client ''):
        read from the per-tool daily rollup when it can answer (day grain, no client filter)."""
        if grain != "day" or f.client is not None:
            return self.cells(f, grain)
        dims, params = self._dims(f)
        return self._reader().execute(
            "SELECT bucket, 'tool_call', server, tool, '', calls, errors, dur_count, dur_sum, dur_min, dur_max, hist "
            f"FROM rollup_tool_day WHERE project_id = ? AND bucket >= ? AND bucket < ?{dims}",
            [f.project_id, f.start_ms, f.end_ms, *params],
        ).fetchall()

    def _user_sets(self, f: EventFilter) -> list[tuple]:
        """(bucket, server, tool, users as an int) per day and tool of the window (no client filter)."""
        dims, params = self._dims(f)
        as_int = usersets.as_int
        return [(bucket, server, tool, as_int(users)) for bucket, server, tool, users in self._reader().execute(
            f"SELECT bucket, server, tool, users FROM rollup_tool_day WHERE project_id = ? AND bucket >= ? AND bucket < ?{dims}",
            [f.project_id, f.start_ms, f.end_ms, *params])]

    def _user_source(self, f: EventFilter, grain: str, need_dims: bool = False) -> tuple[str, list]:
        """A subquery of (bucket, server, tool, client, user_hash) rows for the window."""
        filtered = need_dims or f.server is not None or f.tool is not None or f.client is not None
        if grain == "day":
            dims, params = self._dims(f)
            return (f"SELECT day AS bucket, server, tool, client, user_hash FROM user_day "
                    f"WHERE project_id = ? AND day >= ? AND day < ?{dims}", [f.project_id, f.start_ms, f.end_ms, *params])
        if not filtered:
            return ("SELECT hour AS bucket, NULL AS server, NULL AS tool, NULL AS client, user_hash FROM user_hour "
                    "WHERE project_id = ? AND hour >= ? AND hour < ?", [f.project_id, f.start_ms, f.end_ms])
        # Hour grain with filters: raw events (hour windows span at most two days).
        dims, params = self._dims(f, client_column="client_name")
        return (f"SELECT ts - ts % 3600000 AS bucket, server, coalesce(tool, '') AS tool, "
                f"coalesce(client_name, '') AS client, user_hash FROM events "  # '' = none, as in the rollups
                f"WHERE project_id = ? AND ts >= ? AND ts < ? AND kind = 'tool_call' AND user_hash IS NOT NULL{dims}",
                [f.project_id, f.start_ms, f.end_ms, *params])

    def users(self, f: EventFilter, grain: str, group: Sequence[str] = ()) -> list[tuple]:
        """Distinct users in the window, grouped by any of bucket, server, tool, client: rows (*group, count)."""
        if grain == "day" and f.client is None and "client" not in group:  # unions of exact user sets
            return usersets.count_grouped(self._user_sets(f), group)
        source, params = self._user_source(f, grain, need_dims=bool(set(group) & {"server", "tool", "client"}))
        cols = ", ".join(group)
        sql = f"SELECT {cols + ', ' if cols else ''}count(DISTINCT user_hash) FROM ({source})"
        if cols:
            sql += f" GROUP BY {cols}"
        return self._reader().execute(sql, params).fetchall()

    def new_users(self, f: EventFilter, grain: str) -> int:
        """Users active in the window whose first call (on the filtered server, or anywhere) falls in it."""
        if f.tool is None and f.client is None:
            # A user whose first call (there) falls in the window was active in it: count those.
            if f.server is None:
                sql, params = "SELECT count(*) FROM user_number WHERE project_id = ? AND first_seen >= ? AND first_seen < ?", []
            else:
                sql, params = "SELECT count(*) FROM user_first WHERE project_id = ? AND first_seen >= ? AND first_seen < ? AND server = ?", [f.server]
            return self._reader().execute(sql, [f.project_id, f.start_ms, f.end_ms, *params]).fetchone()[0]
        if grain == "day" and f.client is None:
            active = 0
            for row in self._user_sets(f):
                active |= row[3]
            if f.server is None:  # first call anywhere
                first, params = "SELECT number FROM user_number WHERE project_id = ? AND first_seen >= ? AND first_seen < ?", []
            else:
                first = ("SELECT n.number FROM user_first u JOIN user_number n ON n.project_id = u.project_id "
                         "AND n.user_hash = u.user_hash WHERE u.project_id = ? AND u.first_seen >= ? AND u.first_seen < ? AND u.server = ?")
                params = [f.server]
            rows = self._reader().execute(first, [f.project_id, f.start_ms, f.end_ms, *params])
            return sum(1 for (n,) in rows if active >> n & 1)
        source, params = self._user_source(f, grain)
        first = "SELECT user_hash, min(first_seen) AS first_seen FROM user_first WHERE project_id = ?"
        first_params: list = [f.project_id]
        if f.server is not None:
            first += " AND server = ?"
            first_params.append(f.server)
        first += " GROUP BY user_hash"
        return self._reader().execute(
            f"SELECT count(*) FROM (SELECT DISTINCT user_hash FROM ({source})) a JOIN ({first}) b USING (user_hash) "
            f"WHERE b.first_seen >= ?",
            [*params, *first_params, f.start_ms],
        ).fetchone()[0]

    def error_groups(self, f: EventFilter) -> list[tuple]:
        """(server, tool, error_type, count, last_ts), most frequent first."""
        dims, params = self._dims(f)
        return self._reader().execute(
            f"SELECT server, tool, error_type, sum(count), max(last_ts) FROM error_hour "
            f"WHERE project_id = ? AND bucket >= ? AND bucket < ?{dims} GROUP BY server, tool, error_type "
            f"ORDER BY sum(count) DESC, server, tool, error_type",
            [f.project_id, f.start_ms, f.end_ms, *params],
        ).fetchall()

    def recent_errors(self, f: EventFilter, limit: int = 20) -> list[tuple]:
        """Newest failed events: (ts, kind, server, tool, error_type, error_message, client_name, session_id)."""
        dims, params = self._dims(f, client_column="client_name")
        return self._reader().execute(
            f"SELECT ts, kind, server, tool, error_type, error_message, client_name, session_id FROM events "
            f"WHERE project_id = ? AND ok = 0 AND ts >= ? AND ts < ?{dims} ORDER BY ts DESC LIMIT ?",
            [f.project_id, f.start_ms, f.end_ms, *params, limit],
        ).fetchall()

    def sessions(self, f: EventFilter, limit: int = 200_000) -> list[tuple]:
        """Sessions that started in the window: (session_id, server, client, client_version,
        protocol_version, transport, first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts, tools)."""
        sql = ("SELECT s.session_id, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.first_ts, "
               "s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts, "
               "(SELECT count(*) FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id) "
               "FROM sessions s WHERE s.project_id = ? AND s.first_ts >= ? AND s.first_ts < ?")
        params: list = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("s.server", f.server), ("s.client", f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if f.tool is not None:
            sql += " AND EXISTS (SELECT 1 FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id AND t.tool = ?)"
            params.append(f.tool)
        return self._reader().execute(sql + " ORDER BY s.first_ts LIMIT ?", [*params, limit]).fetchall()

    def session_counts(self, f: EventFilter) -> list[tuple]:
        """Sessions that started in the window, counted per (client, client_version, protocol_version)."""
        sql = ("SELECT s.client, s.client_version, s.protocol_version, count(*) FROM sessions s "
               "WHERE s.project_id = ? AND s.first_ts >= ? AND s.first_ts < ?")
        params: list = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("s.server", f.server), ("s.client", f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if f.tool is not None:
            sql += " AND EXISTS (SELECT 1 FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id AND t.tool = ?)"
            params.append(f.tool)
        return self._reader().execute(sql + " GROUP BY 1, 2, 3", params).fetchall()

    def catalog(self, project_id: int, server: str | None = None) -> list[tuple]:
        """Tools servers listed or were called with: (server, tool, first_seen, last_seen)."""
        sql, params = "SELECT server, tool, first_seen, last_seen FROM tool_catalog WHERE project_id = ?", [project_id]
        if server is not None:
            sql += " AND server = ?"
            params.append(server)
        return self._reader().execute(sql + " ORDER BY server, tool", params).fetchall()

    def last_calls(self, project_id: int, server: str | None = None) -> list[tuple]:
        """When each tool was last called (listings aside): (server, tool, last_called)."""
        sql = "SELECT server, tool, last_called FROM tool_catalog WHERE project_id = ? AND last_called IS NOT NULL"
        params: list = [project_id]
        if server is not None:
            sql += " AND server = ?"
            params.append(server)
        return self._reader().execute(sql, params).fetchall()

    # ---- measurements and server events ------------------------------------------------

    def ingest_measurements(self, project_id: int, rows: Sequence[tuple]) -> IngestResult:
        """Rows (measurement_id, server, name, type, tags, ts, value); new ones fold into daily aggregates."""

        def run(conn: sqlite3.Connection) -> IngestResult:
            before = conn.execute("SELECT coalesce(max(rowid), 0) FROM measurements").fetchone()[0]
            conn.executemany("INSERT OR IGNORE INTO measurements VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(project_id, *r) for r in rows])
            new = conn.execute("SELECT server, name, type, tags, ts, value FROM measurements WHERE rowid > ?", (before,)).fetchall()
            conn.executemany(_MEASUREMENT_DAY_UPSERT, [(project_id, ts - ts % 86_400_000, server, name, kind, tags, value, value, value, ts, value)
                                                      for server, name, kind, tags, ts, value in new])
            return IngestResult(len(new), len(rows) - len(new))

        return self._write(run)

    def measurement_days(self, f: EventFilter, name: str | None = None) -> list[tuple]:
        """(day, server, name, type, tags, count, sum, min, max, last_value) for whole UTC days in the window."""
        sql = ("SELECT day, server, name, type, tags, count, sum, min, max, last_value FROM measurement_day "
               "WHERE project_id = ? AND day >= ? AND day < ?")
        params: list = [f.project_id, f.start_ms - f.start_ms % 86_400_000, f.end_ms]
        for column, value in (("name", name), ("server", f.server)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return self._reader().execute(sql + " ORDER BY name, day, server, tags", params).fetchall()

    def ingest_server_events(self, project_id: int, rows: Sequence[tuple]) -> IngestResult:
        """Rows (event_id, server, type, ts, version, message, attributes)."""

        def run(conn: sqlite3.Connection) -> IngestResult:
            cur = conn.executemany("INSERT OR IGNORE INTO server_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(project_id, *r) for r in rows])
            return IngestResult(cur.rowcount, len(rows) - cur.rowcount)

        return self._write(run)

    def server_events(self, f: EventFilter, limit: int = 1000) -> list[tuple]:
        """(ts, server, type, version, message, attributes) in the window, oldest first."""
        sql = "SELECT ts, server, type, version, message, attributes FROM server_events WHERE project_id = ? AND ts >= ? AND ts < ?"
        params: list = [f.project_id, f.start_ms, f.end_ms]
        if f.server is not None:
            sql += " AND server = ?"
            params.append(f.server)
        return self._reader().execute(sql + " ORDER BY ts LIMIT ?", [*params, limit]).fetchall()

    # ---- retention ------------------------------------------------------------------------

    def prune(self, raw_before_ms: int, rollups_before_ms: int, chunk: int = 20_000) -> dict[str, int]:
        """Delete raw data older than ``raw_before_ms`` and rollups older than ``rollups_before_ms``.

        Raw events go in small transactions so ingest is never blocked for long. Rollups are
        never touched for data inside their own retention, so their answers do not change.
        """
        removed = {"events": 0}
        for (project_id,) in self._reader().execute("SELECT id FROM projects").fetchall():
            while True:
                n = self._write(lambda conn: conn.execute(
                    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE project_id = ? AND ts < ? LIMIT ?)",
                    (project_id, raw_before_ms, chunk)).rowcount)
                removed["events"] += n
                if n < chunk:
                    break
        statements = {
            "measurements": ("DELETE FROM measurements WHERE ts < ?", raw_before_ms),
            "user_hour": ("DELETE FROM user_hour WHERE hour < ?", rollups_before_ms),
            "rollup_hour": ("DELETE FROM rollup_hour WHERE bucket < ?", rollups_before_ms),
            "rollup_day": ("DELETE FROM rollup_day WHERE bucket < ?", rollups_before_ms),
            "rollup_tool_day": ("DELETE FROM rollup_tool_day WHERE bucket < ?", rollups_before_ms),
            "user_day": ("DELETE FROM user_day WHERE day < ?", rollups_before_ms),
            "error_hour": ("DELETE FROM error_hour WHERE bucket < ?", rollups_before_ms),
            "session_tools": ("DELETE FROM session_tools WHERE (project_id, session_id) IN "
                              "(SELECT project_id, session_id FROM sessions WHERE last_ts < ?)", rollups_before_ms),
            "sessions": ("DELETE FROM sessions WHERE last_ts < ?", rollups_before_ms),
            "measurement_day": ("DELETE FROM measurement_day WHERE day < ?", rollups_before_ms),
            "server_events": ("DELETE FROM server_events WHERE ts < ?", rollups_before_ms),
        }
        for table, (sql, cutoff) in statements.items():
            removed[table] = self._write(lambda conn: conn.execute(sql, (cutoff,)).rowcount)
        return removed

    def export_events(self, project_id: int, after: int = 0, limit: int = 5000) -> list[tuple]:
        """Stored events in insertion order as (cursor, *ROW_FIELDS); pass the last cursor as ``after``."""
        return self._reader().execute(
            f"SELECT rowid, {', '.join(ROW_FIELDS)} FROM events WHERE project_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (project_id, after, limit),
        ).fetchall()

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


def _key(row: tuple) -> KeyInfo:
    (key_id, project_id, project, name, prefix, scopes, created, used, revoked, expires) = row
    return KeyInfo(key_id, project_id, project, name, prefix, frozenset(scopes.split(",")), created, used, revoked, expires)
