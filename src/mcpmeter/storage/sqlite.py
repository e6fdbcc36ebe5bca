"""The embedded store: one SQLite file in WAL mode.

One writer connection (used under a lock; the collector feeds it from a single writer
thread), and one reader connection per thread so reads never wait for writes.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from ..events import ROW_FIELDS
from ..exceptions import SchemaVersionError, StorageError
from .base import EventFilter, IngestResult, KeyInfo, Project, ToolStats
from .sqlite_migrations import MIGRATIONS

_INSERT_EVENT = (
    f"INSERT OR IGNORE INTO events (project_id, {', '.join(ROW_FIELDS)}, received_at) "
    f"VALUES ({', '.join('?' * (len(ROW_FIELDS) + 2))})"
)
_KEY_COLUMNS = (
    "k.id, k.project_id, p.name, k.name, k.prefix, k.scopes, k.created_at, "
    "k.last_used_at, k.revoked_at, k.expires_at"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class SQLiteStore:
    def __init__(self, path: Path, durable: bool = True) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        self._synchronous = "FULL" if durable else "NORMAL"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open store {self.path}: {exc}", hint="check the path and its permissions") from None
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
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

    def ensure_project(self, name: str) -> Project:
        existing = self.project_by_name(name)
        if existing:
            return existing

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO projects (name, user_salt, created_at) VALUES (?, ?, ?)",
                (name, secrets.token_hex(32), _now_ms()),
            )

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
                expires_at: int | None = None, replace: bool = False) -> KeyInfo:
        scope_text = ",".join(sorted(set(scopes)))

        def run(conn: sqlite3.Connection) -> None:
            if replace:
                conn.execute("DELETE FROM api_keys WHERE project_id = ? AND name = ?", (project_id, name))
            conn.execute(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, name, prefix, key_hash, scope_text, _now_ms(), expires_at),
            )

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

    def revoke_key(self, project_id: int | None, name_or_prefix: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            sql = "UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND (name = ? OR prefix = ?)"
            params: list = [_now_ms(), name_or_prefix, name_or_prefix]
            if project_id is not None:
                sql += " AND project_id = ?"
                params.append(project_id)
            return conn.execute(sql, params).rowcount

        return self._write(run)

    def touch_keys(self, last_used: dict[int, int]) -> None:
        if last_used:
            self._write(lambda conn: conn.executemany(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                [(ts, key_id) for key_id, ts in last_used.items()],
            ))

    # ---- events ---------------------------------------------------------------------

    def ingest(self, groups: Sequence[tuple[int, Sequence[tuple]]]) -> list[IngestResult]:
        received = _now_ms()

        def run(conn: sqlite3.Connection) -> list[IngestResult]:
            results = []
            for project_id, rows in groups:
                cur = conn.executemany(_INSERT_EVENT, [(project_id, *row, received) for row in rows])
                inserted = cur.rowcount if cur.rowcount >= 0 else len(rows)
                results.append(IngestResult(inserted, len(rows) - inserted))
            return results

        return self._write(run)

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

    def tool_stats(self, f: EventFilter) -> list[ToolStats]:
        where, params = self._where(f)
        conn = self._reader()
        stats = {
            (server, tool): ToolStats(server, tool, calls, errors, users, last_ts, [])
            for server, tool, calls, errors, users, last_ts in conn.execute(
                f"SELECT server, tool, count(*), sum(ok = 0), count(DISTINCT user_hash), max(ts) "
                f"FROM events WHERE {where} GROUP BY server, tool", params)
        }
        for server, tool, duration in conn.execute(
            f"SELECT server, tool, duration_ms FROM events WHERE {where} AND duration_ms IS NOT NULL ORDER BY server, tool, duration_ms", params
        ):
            stats[(server, tool)].durations.append(duration)
        return sorted(stats.values(), key=lambda s: (-s.calls, s.server, s.tool))

    def daily_calls(self, f: EventFilter) -> list[tuple[str, int, int]]:
        where, params = self._where(f)
        return self._reader().execute(
            f"SELECT date(ts / 1000, 'unixepoch') AS day, count(*), sum(ok = 0) FROM events WHERE {where} GROUP BY day ORDER BY day", params
        ).fetchall()

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
    # executescript() would COMMIT our transaction; run statement by statement instead.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _key(row: tuple) -> KeyInfo:
    (key_id, project_id, project, name, prefix, scopes, created, used, revoked, expires) = row
    return KeyInfo(key_id, project_id, project, name, prefix, frozenset(scopes.split(",")), created, used, revoked, expires)
