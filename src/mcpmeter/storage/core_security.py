"""The security queries both stores share (mixed into ``core.SQLStore``).

Keys version (immediate revocation), signing secrets, key rotation, people's access
grants, the audit log, erasing one user's data, the dashboard's sessions (shared by every
collector process on the store), the collectors' own secrets and the request counts of
rate limits shared by every collector (``rate_windows``). Each change that must be recorded is
written to ``audit_log`` in the same transaction as the change itself. The SQL is written
once with ``?`` placeholders and runs through the store's hooks (``dialect.SQLBase``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from ..events import ROW_FIELDS, Row
from .base import AuditEntry, KeyInfo, SessionRow
from .dialect import SQLBase, now_ms, write_audit
from .rollup import DAY_MS, USER_SETS, Deltas, aggregate

_FIELDS = ", ".join(ROW_FIELDS)
_SESSION_CHUNK = 500  # session ids per IN list
# Sessions about to be deleted leave the daily session cells (schema 11): each cell loses
# the sessions of the list that count in it; the cells left empty go.
_SESSION_CELL = ("{s}first_ts - {s}first_ts % {day} AS day, {s}server AS server, coalesce({s}client, '') AS client, "
                 "coalesce({s}client_version, '') AS client_version, coalesce({s}protocol_version, '') AS protocol_version")
_UNCOUNT_SESSIONS = (
    "UPDATE session_day SET sessions = session_day.sessions - c.n FROM (SELECT project_id, {cell}, count(*) AS n "
    "FROM sessions WHERE project_id = ? AND {ids} GROUP BY 1, 2, 3, 4, 5, 6) AS c WHERE session_day.project_id = c.project_id "
    "AND session_day.day = c.day AND session_day.server = c.server AND session_day.client = c.client "
    "AND session_day.client_version = c.client_version AND session_day.protocol_version = c.protocol_version")
_UNCOUNT_SESSION_TOOLS = (
    "UPDATE session_tool_day SET sessions = session_tool_day.sessions - c.n FROM (SELECT s.project_id, t.tool, {cell}, "
    "count(*) AS n FROM sessions s JOIN session_tools t ON t.project_id = s.project_id AND t.session_id = s.session_id "
    "WHERE s.project_id = ? AND s.{ids} GROUP BY 1, 2, 3, 4, 5, 6, 7) AS c WHERE session_tool_day.project_id = c.project_id "
    "AND session_tool_day.day = c.day AND session_tool_day.server = c.server AND session_tool_day.tool = c.tool "
    "AND session_tool_day.client = c.client AND session_tool_day.client_version = c.client_version "
    "AND session_tool_day.protocol_version = c.protocol_version")


def rotated_name(name: str, now: int) -> str:
    return f"{name}@{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now / 1000))}"


class SecurityQueries(SQLBase):
    """Methods of ``storage.base.SecurityStore`` over the hooks of ``dialect.SQLBase``."""

    # ---- keys --------------------------------------------------------------------------

    def keys_version(self) -> int:
        rows = self._fetch(None, "SELECT value FROM security_state WHERE name = 'keys_version'")
        return int(rows[0][0]) if rows else 0

    def signing_secret(self, key_id: int) -> str | None:
        rows = self._fetch(None, "SELECT signing_secret FROM api_keys WHERE id = ?", (key_id,))
        return rows[0][0] if rows else None

    def set_signing_secret(self, key_id: int, secret: str | None) -> None:
        self._write(lambda conn: conn.execute(self._sql("UPDATE api_keys SET signing_secret = ? WHERE id = ?"), (secret, key_id)))

    def rotate_key(self, project_id: int, name: str, key_hash: str, prefix: str, overlap_ms: int,
                   signing_secret: str | None = None, audit: AuditEntry | None = None) -> tuple[KeyInfo, KeyInfo] | None:
        """Give the active key ``name`` a successor with the same scopes (and a signing secret
        if it had one); the old key is renamed ``name@<time>`` and expires after the overlap.
        None when there is no active key of that name."""
        now = now_ms()
        sql = self._sql

        def run(conn: Any) -> tuple[int, int] | None:
            row = conn.execute(sql(
                "SELECT id, scopes, expires_at, servers FROM api_keys WHERE project_id = ? AND name = ? AND revoked_at IS NULL "
                f"AND (expires_at IS NULL OR expires_at > ?){self._dialect.for_update}"), (project_id, name, now)).fetchone()
            if row is None:
                return None
            old_id, scopes, expires, servers = row
            old_name, n = rotated_name(name, now), 1
            while conn.execute(sql("SELECT 1 FROM api_keys WHERE project_id = ? AND name = ?"), (project_id, old_name)).fetchone():
                old_name, n = f"{rotated_name(name, now)}-{n}", n + 1
            until = now + overlap_ms
            conn.execute(sql("UPDATE api_keys SET name = ?, expires_at = ? WHERE id = ?"),
                         (old_name, until if expires is None else min(expires, until), old_id))
            new_id = self._insert_returning_id(
                conn, "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, signing_secret, servers) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (project_id, name, prefix, key_hash, scopes, now, signing_secret, servers))
            write_audit(self, conn, audit)
            return old_id, new_id

        ids = self._write(run)
        if ids is None:
            return None
        by_id = {k.id: k for k in self.list_keys(project_id)}
        return by_id[ids[0]], by_id[ids[1]]

    # ---- audit ----------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry) -> None:
        self._write(lambda conn: write_audit(self, conn, entry))

    def audit_entries(self, project_id: int | None = None, since_ms: int = 0, limit: int = 1000) -> list[AuditEntry]:
        sql = "SELECT ts, project_id, project, actor, action, target, detail, source FROM audit_log WHERE ts >= ?"
        params: list[Any] = [since_ms]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        rows = self._fetch(None, sql + " ORDER BY id DESC LIMIT ?", [*params, limit])
        return [AuditEntry(*r) for r in reversed(rows)]

    # ---- people's access ---------------------------------------------------------------------

    def grant_access(self, project_id: int, identity: str, role: str, audit: AuditEntry | None = None) -> None:
        def run(conn: Any) -> None:
            conn.execute(self._sql("INSERT INTO access_grants VALUES (?, ?, ?, ?) ON CONFLICT (project_id, identity) "
                                   "DO UPDATE SET role = excluded.role"), (project_id, identity, role, now_ms()))
            write_audit(self, conn, audit)

        self._write(run)

    def revoke_access(self, project_id: int, identity: str, audit: AuditEntry | None = None) -> int:
        def run(conn: Any) -> int:
            n: int = conn.execute(self._sql("DELETE FROM access_grants WHERE project_id = ? AND identity = ?"),
                                  (project_id, identity)).rowcount
            if n:
                write_audit(self, conn, audit)
            return n

        result: int = self._write(run)
        return result

    def access_for(self, identities: Sequence[str]) -> list[tuple[int, str, str, str]]:
        """Grants of any of these identities: (project_id, project name, identity, role)."""
        if not identities:
            return []
        where, params = self._in("g.identity", list(identities))
        c = self._dialect.collate
        return self._fetch(None, "SELECT g.project_id, p.name, g.identity, g.role FROM access_grants g "
                                 f"JOIN projects p ON p.id = g.project_id WHERE {where} ORDER BY p.name{c}, g.identity{c}", params)

    def list_access(self, project_id: int | None = None) -> list[tuple[str, str, str, int]]:
        sql = "SELECT p.name, g.identity, g.role, g.created_at FROM access_grants g JOIN projects p ON p.id = g.project_id"
        params: list[Any] = []
        if project_id is not None:
            sql += " WHERE g.project_id = ?"
            params.append(project_id)
        c = self._dialect.collate
        return self._fetch(None, sql + f" ORDER BY p.name{c}, g.identity{c}", params)

    # ---- limits ------------------------------------------------------------------------------

    def known_names(self, project_id: int) -> tuple[set[str], set[tuple[str, str]]]:
        """Servers and (server, tool) pairs the project's rollups and catalog know (with the
        servers its measurements and server events name)."""
        rows = self._fetch(None, "SELECT DISTINCT server, tool FROM rollup_day WHERE project_id = ? "
                                 "UNION SELECT server, tool FROM tool_catalog WHERE project_id = ? "
                                 "UNION SELECT server, '' FROM measurement_day WHERE project_id = ? "
                                 "UNION SELECT server, '' FROM server_events WHERE project_id = ?", (project_id,) * 4)
        return {s for s, _ in rows}, {(s, t) for s, t in rows if t}

    # ---- dashboard sessions and collector secrets ---------------------------------------------

    def add_session(self, token_hash: str, project_id: int, owner: str, person: str | None, expires_at: int,
                    per_owner: int, per_project: int) -> int:
        """Store a session; first drop expired ones, then the owner's oldest beyond ``per_owner``
        and the project's oldest beyond ``per_project`` (never another project's). Returns how
        many live sessions were ended to make room."""
        now = now_ms()
        sql = self._sql

        def oldest(conn: Any, column: str, value: Any, keep: int) -> list[str]:
            count = conn.execute(sql(f"SELECT count(*) FROM dashboard_sessions WHERE {column} = ?"), (value,)).fetchone()[0]
            if count < keep:
                return []
            rows = conn.execute(sql(f"SELECT token_hash FROM dashboard_sessions WHERE {column} = ? "
                                    "ORDER BY created_at, token_hash LIMIT ?"), (value, count - keep + 1)).fetchall()
            return [r[0] for r in rows]

        def run(conn: Any) -> int:
            conn.execute(sql("DELETE FROM dashboard_sessions WHERE expires_at <= ?"), (now,))
            evicted = 0
            for column, value, keep in (("owner", owner, per_owner), ("project_id", project_id, per_project)):
                gone = oldest(conn, column, value, keep)
                if gone:
                    where, params = self._in("token_hash", gone)
                    evicted += conn.execute(sql(f"DELETE FROM dashboard_sessions WHERE {where}"), params).rowcount
            conn.execute(sql("INSERT INTO dashboard_sessions VALUES (?, ?, ?, ?, ?, ?)"),
                         (token_hash, project_id, owner, person, now, expires_at))
            return evicted

        result: int = self._write(run)
        return result

    def session(self, token_hash: str) -> SessionRow | None:
        """A live session (not expired) by its token's hash."""
        rows = self._fetch(None, "SELECT project_id, owner, person, expires_at FROM dashboard_sessions "
                                 "WHERE token_hash = ? AND expires_at > ?", (token_hash, now_ms()))
        return SessionRow(*rows[0]) if rows else None

    def update_session(self, token_hash: str, project_id: int, person: str | None) -> bool:
        """What a live session stands for (a person who switched projects)."""
        def run(conn: Any) -> int:
            n: int = conn.execute(self._sql("UPDATE dashboard_sessions SET project_id = ?, person = ? WHERE token_hash = ? "
                                            "AND expires_at > ?"), (project_id, person, token_hash, now_ms())).rowcount
            return n

        return bool(self._write(run))

    def drop_session(self, token_hash: str) -> int:
        def run(conn: Any) -> int:
            n: int = conn.execute(self._sql("DELETE FROM dashboard_sessions WHERE token_hash = ?"), (token_hash,)).rowcount
            return n

        result: int = self._write(run)
        return result

    def count_sessions(self, project_id: int | None = None) -> int:
        """Live sessions: of one project, or (None) of the whole store."""
        sql, params = "SELECT count(*) FROM dashboard_sessions WHERE expires_at > ?", [now_ms()]
        if project_id is not None:
            sql += " AND project_id = ?"
            params.append(project_id)
        return int(self._fetch(None, sql, params)[0][0])

    def take_once(self, token_hash: str, expires_at: int) -> bool:
        """True the first time ``token_hash`` is taken (remembered until ``expires_at``), False after."""
        def run(conn: Any) -> int:
            conn.execute(self._sql("DELETE FROM used_once WHERE expires_at <= ?"), (now_ms(),))
            n: int = conn.execute(self._sql("INSERT INTO used_once VALUES (?, ?) ON CONFLICT (token_hash) DO NOTHING"),
                                  (token_hash, expires_at)).rowcount
            return n

        return bool(self._write(run))

    def count_request(self, name: str, window_start: int, window_ms: int) -> int:
        """One more request of ``name`` in its window (one atomic upsert); the first request of a
        window also removes that name's windows that have ended."""
        def run(conn: Any) -> int:
            row = conn.execute(self._sql(
                "INSERT INTO rate_windows (name, window_start, requests) VALUES (?, ?, 1) ON CONFLICT (name, window_start) "
                "DO UPDATE SET requests = rate_windows.requests + 1 RETURNING requests"), (name, window_start)).fetchone()
            if row[0] == 1:
                conn.execute(self._sql("DELETE FROM rate_windows WHERE name = ? AND window_start < ?"),
                             (name, window_start - window_ms))
            return int(row[0])

        return int(self._write(run))

    def collector_secret(self, name: str) -> str:
        """A random secret the collectors on this store share (made by whichever asks first)."""
        rows = self._fetch(None, "SELECT value FROM collector_secrets WHERE name = ?", (name,))
        if rows:
            return str(rows[0][0])
        self._write(lambda conn: conn.execute(self._sql("INSERT INTO collector_secrets VALUES (?, ?, ?) "
                                                        "ON CONFLICT (name) DO NOTHING"),
                                              (name, secrets.token_urlsafe(32), now_ms())))
        return str(self._fetch(None, "SELECT value FROM collector_secrets WHERE name = ?", (name,))[0][0])

    # ---- erasure -----------------------------------------------------------------------------

    def delete_user(self, project_id: int, user_hash: str, audit: AuditEntry | None = None) -> dict[str, int]:
        """Remove one user's raw events and identifying rows, and take their calls out of the
        rollups where raw events still cover the whole day; see docs/security.md."""
        result: dict[str, int] = self._write(_delete_user, self, project_id, user_hash, audit)
        return result


def _delete_user(conn: Any, store: SQLBase, p: int, user: str, audit: AuditEntry | None) -> dict[str, int]:
    sql, d = store._sql, store._dialect

    def run(statement: str, params: Sequence[Any]) -> Any:
        return conn.execute(sql(statement), params)

    store._lock_users(conn, p)  # no numbering meanwhile
    mine = [Row._make(row) for row in run(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND user_hash = ?", (p, user))]
    days = sorted({row.ts - row.ts % DAY_MS for row in mine})
    # A day is recomputed from raw events only when they still cover all of it: retention
    # may have pruned raw events whose calls the day's rollups still count.
    covered: list[int] = []
    partial: list[int] = []
    for day in days:
        rolled = run("SELECT coalesce(sum(calls), 0) FROM rollup_day WHERE project_id = ? AND bucket = ?", (p, day)).fetchone()[0]
        raw = run("SELECT count(*) FROM events WHERE project_id = ? AND ts >= ? AND ts < ? AND kind != 'tool_listed'",
                  (p, day, day + DAY_MS)).fetchone()[0]
        (covered if rolled == raw else partial).append(day)
    number = run("SELECT number FROM user_number WHERE project_id = ? AND user_hash = ?", (p, user)).fetchone()
    sessions = {row.session_id for row in mine if row.session_id}
    sessions.update(s for (s,) in run("SELECT session_id FROM sessions WHERE project_id = ? AND user_hash = ?", (p, user)))
    counts = {"events": run("DELETE FROM events WHERE project_id = ? AND user_hash = ?", (p, user)).rowcount}
    for table in ("user_day", "user_hour", "user_first", "user_number"):
        counts[table] = run(f"DELETE FROM {table} WHERE project_id = ? AND user_hash = ?", (p, user)).rowcount
    if number is not None:  # the user's bit leaves every per-tool (and per-client) user set, however old
        n = number[0]
        for keys, table in USER_SETS.items():
            updates = []
            for *key, stored in run(f"SELECT {', '.join(keys)}, {d.users_column} FROM {table} "
                                    "WHERE project_id = ? AND users IS NOT NULL", (p,)):
                users = d.users_of(stored)
                if users >> n & 1:
                    updates.append((d.users_value(users & ~(1 << n)), p, *key))
            if updates:
                where = " AND ".join(f"{k} = ?" for k in keys)
                store._executemany(conn, sql(f"UPDATE {table} SET users = {d.users_param} WHERE project_id = ? AND {where}"), updates)
    for day in covered:
        end = day + DAY_MS
        for table, column in (("rollup_hour", "bucket"), ("rollup_day", "bucket"), ("rollup_tool_day", "bucket"),
                              ("user_client_day", "bucket"), ("user_tool_client_day", "bucket"), ("error_hour", "bucket"),
                              ("error_day", "day"), ("user_day", "day"), ("user_hour", "hour")):
            run(f"DELETE FROM {table} WHERE project_id = ? AND {column} >= ? AND {column} < ?", (p, day, end))
        rest = run(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND ts >= ? AND ts < ?", (p, day, end)).fetchall()
        deltas = aggregate(rest)
        deltas.sessions = {}  # sessions span days: rebuilt below, once
        store._apply_rollups(conn, {p: deltas})
    if sessions:
        ids = sorted(sessions)
        counts["sessions"] = 0
        for i in range(0, len(ids), _SESSION_CHUNK):
            where, params = store._in("session_id", ids[i:i + _SESSION_CHUNK])
            run(_UNCOUNT_SESSION_TOOLS.format(cell=_SESSION_CELL.format(s="s.", day=DAY_MS), ids=where), (p, *params))
            run(_UNCOUNT_SESSIONS.format(cell=_SESSION_CELL.format(s="", day=DAY_MS), ids=where), (p, *params))
            run("DELETE FROM session_tool_day WHERE project_id = ? AND sessions = 0", (p,))
            run("DELETE FROM session_day WHERE project_id = ? AND sessions = 0", (p,))
            run(f"DELETE FROM session_tools WHERE project_id = ? AND {where}", (p, *params))
            counts["sessions"] += run(f"DELETE FROM sessions WHERE project_id = ? AND {where}", (p, *params)).rowcount
            rest = run(f"SELECT {_FIELDS} FROM events WHERE project_id = ? AND {where}", (p, *params)).fetchall()
            if rest:  # what other users did in those sessions stays
                store._apply_rollups(conn, {p: Deltas(sessions=aggregate(rest).sessions)})
    counts["days_recomputed"] = len(covered)
    counts["days_left_aggregated"] = len(partial)
    write_audit(store, conn, audit)
    return counts
