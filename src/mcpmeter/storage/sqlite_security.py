"""The SQLite store's side of the security features (mixed into ``SQLiteStore``).

Keys version (immediate revocation), signing secrets, key rotation, people's access
grants, the audit log, and erasing one user's data. Each change that must be recorded is
written to ``audit_log`` in the same transaction as the change itself.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Sequence

from .. import usersets
from ..events import ROW_FIELDS
from ..exceptions import StorageError
from . import sqlite_rollups
from .base import AuditEntry, KeyInfo
from .rollup import DAY_MS, Deltas, aggregate

_FIELDS = ", ".join(ROW_FIELDS)
_AUDIT_INSERT = ("INSERT INTO audit_log (ts, project_id, project, actor, action, target, detail, source) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _audit(conn: sqlite3.Connection, entry: AuditEntry | None) -> None:
    if entry is not None:
        conn.execute(_AUDIT_INSERT, tuple(entry))


def rotated_name(name: str, now_ms: int) -> str:
    return f"{name}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now_ms / 1000))}"


class SQLiteSecurity:
    """Methods of ``storage.base.SecurityStore`` for ``SQLiteStore`` (uses its ``_write`` and ``_reader``)."""

    def _security_read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self._reader().execute(sql, params).fetchall()  # type: ignore[attr-defined]
        except sqlite3.Error as exc:
            raise StorageError(f"read from {self.path} failed: {exc}", hint="is the store reachable and up to date (`mcpmeter db upgrade`)?") from exc  # type: ignore[attr-defined]

    # ---- keys -----------------------------------------------------------------------------

    def keys_version(self) -> int:
        rows = self._security_read("SELECT value FROM security_state WHERE name = 'keys_version'")
        return rows[0][0] if rows else 0

    def signing_secret(self, key_id: int) -> str | None:
        rows = self._security_read("SELECT signing_secret FROM api_keys WHERE id = ?", (key_id,))
        return rows[0][0] if rows else None

    def set_signing_secret(self, key_id: int, secret: str | None) -> None:
        self._write(lambda conn: conn.execute("UPDATE api_keys SET signing_secret = ? WHERE id = ?", (secret, key_id)))  # type: ignore[attr-defined]

    def rotate_key(self, project_id: int, name: str, key_hash: str, prefix: str, overlap_ms: int,
                   signing_secret: str | None = None, audit: AuditEntry | None = None) -> tuple[KeyInfo, KeyInfo] | None:
        """Give the active key ``name`` a successor with the same scopes (and a signing secret
        if it had one); the old key is renamed ``name@<time>`` and expires after the overlap.
        None when there is no active key of that name."""
        now = _now_ms()

        def run(conn: sqlite3.Connection) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT id, scopes, expires_at FROM api_keys WHERE project_id = ? AND name = ? AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > ?)", (project_id, name, now)).fetchone()
            if row is None:
                return None
            old_id, scopes, expires = row
            old_name, n = rotated_name(name, now), 1
            while conn.execute("SELECT 1 FROM api_keys WHERE project_id = ? AND name = ?", (project_id, old_name)).fetchone():
                old_name, n = f"{rotated_name(name, now)}-{n}", n + 1
            until = now + overlap_ms
            conn.execute("UPDATE api_keys SET name = ?, expires_at = ? WHERE id = ?",
                         (old_name, until if expires is None else min(expires, until), old_id))
            new_id = conn.execute(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, signing_secret) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (project_id, name, prefix, key_hash, scopes, now, signing_secret)).lastrowid
            _audit(conn, audit)
            return old_id, new_id

        ids = self._write(run)  # type: ignore[attr-defined]
        if ids is None:
            return None
        by_id = {k.id: k for k in self.list_keys(project_id)}  # type: ignore[attr-defined]
        return by_id[ids[0]], by_id[ids[1]]

    # ---- audit ----------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        self._write(_audit, entry)  # type: ignore[attr-defined]

    def audit_entries(self, project_id: int | None = None, since_ms: int = 0, limit: int = 1000) -> list[AuditEntry]:
        sql = "SELECT ts, project_id, project, actor, action, target, detail, source FROM audit_log WHERE ts >= ?"
        params: list = [since_ms]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        rows = self._security_read(sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [AuditEntry(*r) for r in reversed(rows)]

    # ---- people's access ---------------------------------------------------------------------

    def grant_access(self, project_id: int, identity: str, role: str, audit: AuditEntry | None = None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO access_grants VALUES (?, ?, ?, ?) ON CONFLICT (project_id, identity) DO UPDATE SET "
                         "role = excluded.role", (project_id, identity, role, _now_ms()))
            _audit(conn, audit)

        self._write(run)  # type: ignore[attr-defined]

    def revoke_access(self, project_id: int, identity: str, audit: AuditEntry | None = None) -> int:
        def run(conn: sqlite3.Connection) -> int:
            n = conn.execute("DELETE FROM access_grants WHERE project_id = ? AND identity = ?", (project_id, identity)).rowcount
            if n:
                _audit(conn, audit)
            return n

        return self._write(run)  # type: ignore[attr-defined]

    def access_for(self, identities: Sequence[str]) -> list[tuple[int, str, str, str]]:
        if not identities:
            return []
        marks = ", ".join("?" * len(identities))
        return self._security_read(
            f"SELECT g.project_id, p.name, g.identity, g.role FROM access_grants g JOIN projects p ON p.id = g.project_id "
            f"WHERE g.identity IN ({marks}) ORDER BY p.name", list(identities))

    def list_access(self, project_id: int | None = None) -> list[tuple[str, str, str, int]]:
        sql = ("SELECT p.name, g.identity, g.role, g.created_at FROM access_grants g JOIN projects p ON p.id = g.project_id")
        params: list = []
        if project_id is not None:
            sql += " WHERE g.project_id = ?"
            params.append(project_id)
        return self._security_read(sql + " ORDER BY p.name, g.identity", params)

    # ---- limits ------------------------------------------------------------------------------

    def known_names(self, project_id: int) -> tuple[set[str], set[tuple[str, str]]]:
        rows = self._security_read(
            "SELECT DISTINCT server, tool FROM rollup_day WHERE project_id = ? "
            "UNION SELECT server, tool FROM tool_catalog WHERE project_id = ?", (project_id, project_id))
        return {s for s, _ in rows}, {(s, t) for s, t in rows if t}

    # ---- erasure -----------------------------------------------------------------------------

    def delete_user(self, project_id: int, user_hash: str, audit: AuditEntry | None = None) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return _delete_user(conn, project_id, user_hash, audit)

        return self._write(run)  # type: ignore[attr-defined]


def _delete_user(conn: sqlite3.Connection, p: int, user: str, audit: AuditEntry | None) -> dict[str, int]:
    mine = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND user_hash = ?", (p, user)).fetchall()
    ts_at, session_at = ROW_FIELDS.index("ts"), ROW_FIELDS.index("session_id")
    days = sorted({row[ts_at] - row[ts_at] % DAY_MS for row in mine})
    # A day is recomputed from raw events only when they still cover all of it: retention
    # may have pruned raw events whose calls the day's rollups still count.
    covered, partial = [], []
    for day in days:
        rolled = conn.execute("SELECT coalesce(sum(calls), 0) FROM rollup_day WHERE project_id = ? AND bucket = ?", (p, day)).fetchone()[0]
        raw = conn.execute("SELECT count(*) FROM events WHERE project_id = ? AND ts >= ? AND ts < ? AND kind != 'tool_listed'",
                           (p, day, day + DAY_MS)).fetchone()[0]
        (covered if rolled == raw else partial).append(day)
    number = conn.execute("SELECT number FROM user_number WHERE project_id = ? AND user_hash = ?", (p, user)).fetchone()
    sessions = {row[session_at] for row in mine if row[session_at]}
    sessions.update(s for (s,) in conn.execute("SELECT session_id FROM sessions WHERE project_id = ? AND user_hash = ?", (p, user)))
    counts = {"events": conn.execute("DELETE FROM events WHERE project_id = ? AND user_hash = ?", (p, user)).rowcount}
    for table, column in (("user_day", "user_hash"), ("user_hour", "user_hash"), ("user_first", "user_hash"), ("user_number", "user_hash")):
        counts[table] = conn.execute(f"DELETE FROM {table} WHERE project_id = ? AND {column} = ?", (p, user)).rowcount
    if number is not None:  # the user's bit leaves every per-tool user set, however old
        bit = ~(1 << number[0])
        updates = [(usersets.encode(usersets.as_int(users) & bit), bucket, server, tool)
                   for bucket, server, tool, users in conn.execute(
                       "SELECT bucket, server, tool, users FROM rollup_tool_day WHERE project_id = ? AND users IS NOT NULL", (p,))
                   if usersets.as_int(users) >> number[0] & 1]
        conn.executemany("UPDATE rollup_tool_day SET users = ? WHERE project_id = ? AND bucket = ? AND server = ? AND tool = ?",
                         [(u, p, b, s, t) for u, b, s, t in updates])
    for day in covered:
        end = day + DAY_MS
        for table, column in (("rollup_hour", "bucket"), ("rollup_day", "bucket"), ("rollup_tool_day", "bucket"),
                              ("error_hour", "bucket"), ("user_day", "day"), ("user_hour", "hour")):
            conn.execute(f"DELETE FROM {table} WHERE project_id = ? AND {column} >= ? AND {column} < ?", (p, day, end))
        rest = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND ts >= ? AND ts < ?", (p, day, end)).fetchall()
        d = aggregate(rest)
        d.sessions = {}  # sessions span days: rebuilt below, once
        sqlite_rollups.apply(conn, p, d)
    if sessions:
        ids = sorted(sessions)
        counts["sessions"] = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            conn.execute(f"DELETE FROM session_tools WHERE project_id = ? AND session_id IN ({marks})", (p, *chunk))
            counts["sessions"] += conn.execute(f"DELETE FROM sessions WHERE project_id = ? AND session_id IN ({marks})", (p, *chunk)).rowcount
            rest = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND session_id IN ({marks})", (p, *chunk)).fetchall()
            if rest:  # what other users did in those sessions stays
                sqlite_rollups.apply(conn, p, Deltas(sessions=aggregate(rest).sessions))
    counts["days_recomputed"] = len(covered)
    counts["days_left_aggregated"] = len(partial)
    _audit(conn, audit)
    return counts
