"""The PostgreSQL store's side of the security features (mixed into ``PostgresStore``).

The same methods, meanings and transactions as ``sqlite_security``: keys version (bumped
by triggers, see migration 6), signing secrets, key rotation, people's access grants, the
audit log (written in the transaction of the change it records), and erasing one user.
"""

from __future__ import annotations

import time
from typing import Sequence

from ..events import ROW_FIELDS
from . import postgres_rollups
from .base import AuditEntry, KeyInfo
from .rollup import DAY_MS, Deltas, aggregate
from .sqlite_security import rotated_name

_FIELDS = ", ".join(ROW_FIELDS)
_AUDIT_INSERT = ("INSERT INTO audit_log (ts, project_id, project, actor, action, target, detail, source) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _audit(conn, entry: AuditEntry | None) -> None:
    if entry is not None:
        conn.execute(_AUDIT_INSERT, tuple(entry))


class PostgresSecurity:
    """Methods of ``storage.base.SecurityStore`` for ``PostgresStore`` (uses ``_write`` and ``_owner_read``)."""

    def keys_version(self) -> int:
        rows = self._owner_read("SELECT value FROM security_state WHERE name = 'keys_version'")  # type: ignore[attr-defined]
        return rows[0][0] if rows else 0

    def signing_secret(self, key_id: int) -> str | None:
        rows = self._owner_read("SELECT signing_secret FROM api_keys WHERE id = %s", (key_id,))  # type: ignore[attr-defined]
        return rows[0][0] if rows else None

    def set_signing_secret(self, key_id: int, secret: str | None) -> None:
        self._write(lambda conn: conn.execute("UPDATE api_keys SET signing_secret = %s WHERE id = %s", (secret, key_id)))  # type: ignore[attr-defined]

    def rotate_key(self, project_id: int, name: str, key_hash: str, prefix: str, overlap_ms: int,
                   signing_secret: str | None = None, audit: AuditEntry | None = None) -> tuple[KeyInfo, KeyInfo] | None:
        now = _now_ms()

        def run(conn) -> tuple[int, int] | None:
            row = conn.execute(
                "SELECT id, scopes, expires_at FROM api_keys WHERE project_id = %s AND name = %s AND revoked_at IS NULL "
                "AND (expires_at IS NULL OR expires_at > %s) FOR UPDATE", (project_id, name, now)).fetchone()
            if row is None:
                return None
            old_id, scopes, expires = row
            old_name, n = rotated_name(name, now), 1
            while conn.execute("SELECT 1 FROM api_keys WHERE project_id = %s AND name = %s", (project_id, old_name)).fetchone():
                old_name, n = f"{rotated_name(name, now)}-{n}", n + 1
            until = now + overlap_ms
            conn.execute("UPDATE api_keys SET name = %s, expires_at = %s WHERE id = %s",
                         (old_name, until if expires is None else min(expires, until), old_id))
            new_id = conn.execute(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, signing_secret) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (project_id, name, prefix, key_hash, scopes, now, signing_secret)).fetchone()[0]
            _audit(conn, audit)
            return old_id, new_id

        ids = self._write(run)  # type: ignore[attr-defined]
        if ids is None:
            return None
        by_id = {k.id: k for k in self.list_keys(project_id)}  # type: ignore[attr-defined]
        return by_id[ids[0]], by_id[ids[1]]

    def add_audit(self, entry: AuditEntry) -> None:
        self._write(_audit, entry)  # type: ignore[attr-defined]

    def audit_entries(self, project_id: int | None = None, since_ms: int = 0, limit: int = 1000) -> list[AuditEntry]:
        sql = "SELECT ts, project_id, project, actor, action, target, detail, source FROM audit_log WHERE ts >= %s"
        params: list = [since_ms]
        if project_id is not None:
            sql += " AND project_id = %s"
            params.append(project_id)
        rows = self._owner_read(sql + " ORDER BY id DESC LIMIT %s", [*params, limit])  # type: ignore[attr-defined]
        return [AuditEntry(*r) for r in reversed(rows)]

    def grant_access(self, project_id: int, identity: str, role: str, audit: AuditEntry | None = None) -> None:
        def run(conn) -> None:
            conn.execute("INSERT INTO access_grants VALUES (%s, %s, %s, %s) ON CONFLICT (project_id, identity) DO UPDATE SET "
                         "role = excluded.role", (project_id, identity, role, _now_ms()))
            _audit(conn, audit)

        self._write(run)  # type: ignore[attr-defined]

    def revoke_access(self, project_id: int, identity: str, audit: AuditEntry | None = None) -> int:
        def run(conn) -> int:
            n = conn.execute("DELETE FROM access_grants WHERE project_id = %s AND identity = %s", (project_id, identity)).rowcount
            if n:
                _audit(conn, audit)
            return n

        return self._write(run)  # type: ignore[attr-defined]

    def access_for(self, identities: Sequence[str]) -> list[tuple[int, str, str, str]]:
        if not identities:
            return []
        return self._owner_read(  # type: ignore[attr-defined]
            "SELECT g.project_id, p.name, g.identity, g.role FROM access_grants g JOIN projects p ON p.id = g.project_id "
            "WHERE g.identity = ANY(%s) ORDER BY p.name", (list(identities),))

    def list_access(self, project_id: int | None = None) -> list[tuple[str, str, str, int]]:
        sql = "SELECT p.name, g.identity, g.role, g.created_at FROM access_grants g JOIN projects p ON p.id = g.project_id"
        params: list = []
        if project_id is not None:
            sql += " WHERE g.project_id = %s"
            params.append(project_id)
        return self._owner_read(sql + " ORDER BY p.name, g.identity", params)  # type: ignore[attr-defined]

    def known_names(self, project_id: int) -> tuple[set[str], set[tuple[str, str]]]:
        rows = self._owner_read(  # type: ignore[attr-defined]
            "SELECT DISTINCT server, tool FROM rollup_day WHERE project_id = %s "
            "UNION SELECT server, tool FROM tool_catalog WHERE project_id = %s", (project_id, project_id))
        return {s for s, _ in rows}, {(s, t) for s, t in rows if t}

    def delete_user(self, project_id: int, user_hash: str, audit: AuditEntry | None = None) -> dict[str, int]:
        return self._write(_delete_user, project_id, user_hash, audit)  # type: ignore[attr-defined]


def _apply(conn, p: int, d: Deltas) -> None:
    by_project = {p: d}
    postgres_rollups.apply(conn, by_project, numbers=postgres_rollups.number_users(conn, postgres_rollups.first_calls(by_project)))


def _delete_user(conn, p: int, user: str, audit: AuditEntry | None) -> dict[str, int]:
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (postgres_rollups.USERS_LOCK, p))  # no numbering meanwhile
    mine = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = %s AND user_hash = %s", (p, user)).fetchall()
    ts_at, session_at = ROW_FIELDS.index("ts"), ROW_FIELDS.index("session_id")
    days = sorted({row[ts_at] - row[ts_at] % DAY_MS for row in mine})
    covered, partial = [], []
    for day in days:
        rolled = conn.execute("SELECT coalesce(sum(calls), 0) FROM rollup_day WHERE project_id = %s AND bucket = %s", (p, day)).fetchone()[0]
        raw = conn.execute("SELECT count(*) FROM events WHERE project_id = %s AND ts >= %s AND ts < %s AND kind != 'tool_listed'",
                           (p, day, day + DAY_MS)).fetchone()[0]
        (covered if rolled == raw else partial).append(day)
    number = conn.execute("SELECT number FROM user_number WHERE project_id = %s AND user_hash = %s", (p, user)).fetchone()
    sessions = {row[session_at] for row in mine if row[session_at]}
    sessions.update(s for (s,) in conn.execute("SELECT session_id FROM sessions WHERE project_id = %s AND user_hash = %s", (p, user)))
    counts = {"events": conn.execute("DELETE FROM events WHERE project_id = %s AND user_hash = %s", (p, user)).rowcount}
    for table in ("user_day", "user_hour", "user_first", "user_number"):
        counts[table] = conn.execute(f"DELETE FROM {table} WHERE project_id = %s AND user_hash = %s", (p, user)).rowcount
    if number is not None:
        n = number[0]
        rows = conn.execute("SELECT bucket, server, tool, users::text FROM rollup_tool_day WHERE project_id = %s "
                            "AND length(users) > %s AND substring(users from %s for 1) = B'1'", (p, n, n + 1)).fetchall()
        for bucket, server, tool, users in rows:
            conn.execute("UPDATE rollup_tool_day SET users = %s::varbit WHERE project_id = %s AND bucket = %s AND server = %s AND tool = %s",
                         (postgres_rollups.bits(postgres_rollups.from_bits(users) & ~(1 << n)), p, bucket, server, tool))
    for day in covered:
        end = day + DAY_MS
        for table, column in (("rollup_hour", "bucket"), ("rollup_day", "bucket"), ("rollup_tool_day", "bucket"),
                              ("error_hour", "bucket"), ("user_day", "day"), ("user_hour", "hour")):
            conn.execute(f"DELETE FROM {table} WHERE project_id = %s AND {column} >= %s AND {column} < %s", (p, day, end))
        rest = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = %s AND ts >= %s AND ts < %s", (p, day, end)).fetchall()
        d = aggregate(rest)
        d.sessions = {}
        _apply(conn, p, d)
    if sessions:
        ids = sorted(sessions)
        conn.execute("DELETE FROM session_tools WHERE project_id = %s AND session_id = ANY(%s)", (p, ids))
        counts["sessions"] = conn.execute("DELETE FROM sessions WHERE project_id = %s AND session_id = ANY(%s)", (p, ids)).rowcount
        rest = conn.execute(f"SELECT {_FIELDS} FROM events WHERE project_id = %s AND session_id = ANY(%s)", (p, ids)).fetchall()
        if rest:
            _apply(conn, p, Deltas(sessions=aggregate(rest).sessions))
    counts["days_recomputed"] = len(covered)
    counts["days_left_aggregated"] = len(partial)
    _audit(conn, audit)
    return counts
