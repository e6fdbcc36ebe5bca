"""The SQL both stores share: every read, key, project and retention query, written once.

``SQLStore`` holds the queries in one SQL text (``?`` placeholders) and runs them through the
hooks of ``dialect.SQLBase`` that each backend fills in: how a statement reaches its
connection (placeholders, which connection and, for PostgreSQL, which row-level security
context, one transaction per write), and a ``Dialect`` for the few places where the SQL or
the stored values really differ (the insertion-order column, ``greatest``, a byte-wise
collation, how a histogram and a user set are stored and read back). The security
queries (access, audit, rotation, erasure) are in ``core_security``; what is truly one
backend's own (connecting, transactions, the bulk ingest path, partitions, migrations)
stays in ``sqlite.py`` / ``postgres.py``.

Every query that ends in ``LIMIT`` or that a caller shows in order has a total ORDER BY
(ties broken by a unique column, text compared byte-wise), so both backends give the same
rows in the same order; ``tests/storage_pg`` checks it query by query.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from typing import Any

from ..events import ROW_FIELDS
from ..exceptions import SchemaVersionError, StorageError
from .base import AuditEntry, EventFilter, KeyInfo, Project
from .core_insights import InsightQueries
from .core_security import SecurityQueries
from .dialect import dims, now_ms, whole_days
from .dialect import write_audit as _audit
from .rollup import DAILY_VERSION, DAY_MS, HOUR_MS, USER_SETS, aggregate

_KEY_COLUMNS = (
    "k.id, k.project_id, p.name, k.name, k.prefix, k.scopes, k.created_at, "
    "k.last_used_at, k.revoked_at, k.expires_at, k.servers"
)
ROLLUP_VERSION = 2  # the schema that brought the rollups: migrating to it builds them from the raw events
_ROLLUP_TABLES = ("rollup_hour", "rollup_day", "user_day", "user_hour", "user_first", "error_hour",
                  "sessions", "session_tools", "tool_catalog")
_NUMBERED_TABLES = ("rollup_tool_day", "user_number")  # schema 5 on
# Schema 11 on: the daily cells of sessions, funnel subjects and per-client user sets (with the
# funnel itself: its daily cells are kept as its rows change, so both are rebuilt together).
_DAILY_TABLES = ("session_day", "session_tool_day", "activation", "activation_day", "error_day", "user_client_day",
                 "user_tool_client_day")
_PROJECT_COLUMNS = "id, name, user_salt, created_at"
_OUTCOMES = "caller_errors, server_errors, cancelled"  # a cell's calls by outcome class beyond calls and errors
# (table, time column, which cut) of what ``prune`` deletes after the raw events, in this order.
_PRUNED = (
    ("measurements", "ts", "raw"), ("user_hour", "hour", "rollups"), ("rollup_hour", "bucket", "rollups"),
    ("rollup_day", "bucket", "rollups"), ("rollup_tool_day", "bucket", "rollups"), ("user_day", "day", "rollups"),
    ("error_hour", "bucket", "rollups"), ("session_tools", "", "rollups"), ("sessions", "last_ts", "rollups"),
    ("measurement_day", "day", "rollups"), ("server_events", "ts", "rollups"),
    ("measurement_hour", "hour", "rollups"), ("action_user_day", "day", "rollups"), ("action_user_hour", "hour", "rollups"),
    ("activation", "first_ts", "rollups"), ("session_day", "day", "rollups"), ("session_tool_day", "day", "rollups"),
    ("activation_day", "day", "rollups"), ("error_day", "day", "rollups"), ("user_client_day", "bucket", "rollups"),
    ("user_tool_client_day", "bucket", "rollups"),
)


def key_info(row: Sequence[Any]) -> KeyInfo:
    (key_id, project_id, project, name, prefix, scopes, created, used, revoked, expires, servers) = row
    return KeyInfo(key_id, project_id, project, name, prefix, frozenset(scopes.split(",")), created, used, revoked, expires,
                   frozenset(json.loads(servers)) if servers else None)



class SQLStore(SecurityQueries, InsightQueries):
    """The ``Store`` and ``SecurityStore`` queries over a backend's hooks (see the module docstring)."""

    url: str

    # ---- what a caller may show about the store -------------------------------------------

    @property
    def location(self) -> str:
        """Where the store is, for messages and pages (a path, or the URL without its password)."""
        return self.url

    def size_bytes(self) -> int | None:
        return None

    # ---- schema -----------------------------------------------------------------------------

    def upgrade(self, target: int | None = None) -> list[int]:
        """Apply the migrations up to ``target`` (default: the newest) in one transaction."""
        migrations = self._migrations
        latest = migrations[-1].version
        target = latest if target is None else target
        if target > latest:
            raise SchemaVersionError(f"no schema version {target}; the newest this mcpmeter knows is {latest}")
        if self.schema_version() == target:  # the common case for every collector start: no lock needed
            return []

        def run(conn: Any) -> list[int]:
            self._lock_migrations(conn)  # concurrent collectors wait here
            conn.execute(self._migrations_table)
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > latest:
                raise SchemaVersionError(
                    f"store {self.location} has schema version {current}, newer than this mcpmeter ({latest})",
                    hint="upgrade mcpmeter, or run `mcpmeter db downgrade` with the newer version",
                )
            applied = []
            for m in migrations:
                if current < m.version <= target:
                    self._run_migration(conn, m.up)
                    if m.version == ROLLUP_VERSION:  # rollups of events stored before they existed
                        self._rebuild_rollups(conn, m.version)
                    conn.execute(self._sql("INSERT INTO schema_migrations VALUES (?, ?, ?)"), (m.version, m.name, now_ms()))
                    applied.append(m.version)
            return applied

        applied: list[int] = self._write(run)
        self._schema_changed()
        return applied

    def downgrade(self, target: int) -> list[int]:
        """Revert the applied migrations above ``target``, newest first, in one transaction."""
        if target < 0:
            raise SchemaVersionError("the target version must be 0 or more")

        def run(conn: Any) -> list[int]:
            self._lock_migrations(conn)
            conn.execute(self._migrations_table)
            done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            reverted = []
            for m in reversed(self._migrations):
                if m.version > target and m.version in done:
                    self._run_migration(conn, m.down)
                    conn.execute(self._sql("DELETE FROM schema_migrations WHERE version = ?"), (m.version,))
                    reverted.append(m.version)
            return reverted

        reverted: list[int] = self._write(run)
        self._schema_changed()
        return reverted

    def _rebuild_rollups(self, conn: Any, version: int, chunk: int = 50_000) -> None:
        """Recompute the rollups of schema ``version`` from the raw events (when the rollup
        schema first appears; later migrations fill what they add from these)."""
        for table in _ROLLUP_TABLES + (_NUMBERED_TABLES if version >= 5 else ()) + (_DAILY_TABLES if version >= DAILY_VERSION else ()):
            conn.execute(f"DELETE FROM {table}")
        seq, after = self._dialect.seq, 0
        select = self._sql(f"SELECT {seq}, project_id, {', '.join(ROW_FIELDS)} FROM events WHERE {seq} > ? ORDER BY {seq} LIMIT ?")
        while rows := conn.execute(select, (after, chunk)).fetchall():
            by_project: dict[int, list[tuple[Any, ...]]] = {}
            for row in rows:
                by_project.setdefault(row[1], []).append(row[2:])
            self._apply_rollups(conn, {p: aggregate(project_rows) for p, project_rows in by_project.items()}, version)
            after = rows[-1][0]

    # ---- projects and keys --------------------------------------------------------------

    def ensure_project(self, name: str, audit: AuditEntry | None = None) -> Project:
        """The project ``name``, created if new; ``audit`` is written with the creation only
        (its project id and name filled in when the caller could not know them yet)."""
        entry = audit
        existing = self.project_by_name(name)
        if existing:
            return existing

        def run(conn: Any) -> None:
            created = conn.execute(self._sql("INSERT INTO projects (name, user_salt, created_at) VALUES (?, ?, ?) "
                                             "ON CONFLICT (name) DO NOTHING"), (name, secrets.token_hex(32), now_ms())).rowcount
            if created and entry is not None:
                project_id = conn.execute(self._sql("SELECT id FROM projects WHERE name = ?"), (name,)).fetchone()[0]
                _audit(self, conn, entry._replace(project_id=entry.project_id or project_id, project=entry.project or name))

        self._write(run)
        project = self.project_by_name(name)
        assert project is not None
        return project

    def project_by_name(self, name: str) -> Project | None:
        rows = self._fetch(None, f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE name = ?", (name,))
        return Project(*rows[0]) if rows else None

    def project_by_id(self, project_id: int) -> Project | None:
        rows = self._fetch(None, f"SELECT {_PROJECT_COLUMNS} FROM projects WHERE id = ?", (project_id,))
        return Project(*rows[0]) if rows else None

    def list_projects(self) -> list[Project]:
        return [Project(*r) for r in self._fetch(None, f"SELECT {_PROJECT_COLUMNS} FROM projects ORDER BY id")]

    def add_key(self, project_id: int, name: str, key_hash: str, prefix: str, scopes: Iterable[str],
                expires_at: int | None = None, replace: bool = False, audit: AuditEntry | None = None,
                servers: Iterable[str] | None = None) -> KeyInfo:
        scope_text = ",".join(sorted(set(scopes)))
        server_text = json.dumps(sorted(set(servers))) if servers else None  # a JSON list: names may hold commas

        def run(conn: Any) -> None:
            if replace:
                self._lock_key_name(conn, project_id, name)
                conn.execute(self._sql("DELETE FROM api_keys WHERE project_id = ? AND name = ?"), (project_id, name))
            conn.execute(self._sql(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, expires_at, servers) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
                (project_id, name, prefix, key_hash, scope_text, now_ms(), expires_at, server_text))
            _audit(self, conn, audit)

        try:
            self._write(run)
        except StorageError as exc:
            if self._is_unique_violation(exc.__cause__):
                raise StorageError(f"a key named {name!r} already exists in this project",
                                   hint="pick another --name, or revoke the old key first") from None
            raise
        key = self.key_by_hash(key_hash)
        assert key is not None
        return key

    def key_by_hash(self, key_hash: str) -> KeyInfo | None:
        rows = self._fetch(None, f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id "
                                 "WHERE k.key_hash = ?", (key_hash,))
        return key_info(rows[0]) if rows else None

    def list_keys(self, project_id: int | None = None) -> list[KeyInfo]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id"
        params: tuple[Any, ...] = ()
        if project_id is not None:
            sql += " WHERE k.project_id = ?"
            params = (project_id,)
        return [key_info(r) for r in self._fetch(None, sql + " ORDER BY k.id", params)]

    def revoke_key(self, project_id: int | None, name_or_prefix: str, audit: AuditEntry | None = None) -> int:
        """Revoke the active keys of that name or prefix; ``audit`` is written when one was."""

        def run(conn: Any) -> int:
            sql = "UPDATE api_keys SET revoked_at = ? WHERE revoked_at IS NULL AND (name = ? OR prefix = ?)"
            params: list[Any] = [now_ms(), name_or_prefix, name_or_prefix]
            if project_id is not None:
                sql += " AND project_id = ?"
                params.append(project_id)
            n: int = conn.execute(self._sql(sql), params).rowcount
            if n:
                _audit(self, conn, audit)
            return n

        result: int = self._write(run)
        return result

    def touch_keys(self, last_used: dict[int, int]) -> None:
        if last_used:
            sql = self._sql(f"UPDATE api_keys SET last_used_at = {self._dialect.greatest}(coalesce(last_used_at, 0), ?) WHERE id = ?")
            rows = [(ts, key_id) for key_id, ts in sorted(last_used.items())]  # in key order: no deadlock between collectors
            self._write(lambda conn: self._executemany(conn, sql, rows))

    # ---- raw-event reads ------------------------------------------------------------------

    @staticmethod
    def _where(f: EventFilter, kind: str | None = "tool_call") -> tuple[str, list[Any]]:
        sql = "project_id = ? AND ts >= ? AND ts < ?"
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        where, more = dims(f, client_column="client_name")
        return sql + where, params + more

    def _one(self, project_id: int | None, sql: str, params: Sequence[Any]) -> Any:
        return self._fetch(project_id, sql, params)[0][0]

    def count_events(self, f: EventFilter, kind: str | None = "tool_call") -> int:
        where, params = self._where(f, kind)
        result: int = self._one(f.project_id, f"SELECT count(*) FROM events WHERE {where}", params)
        return result

    def call_counts(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(server, tool, calls, errors) of the raw tool calls in the window, to the millisecond
        (for the edges of a window that whole hours of the rollups do not cover)."""
        where, params = self._where(f)
        return self._fetch(f.project_id, f"SELECT server, tool, count(*), sum(CASE WHEN ok = 0 THEN 1 ELSE 0 END) "
                                         f"FROM events WHERE {where} GROUP BY server, tool", params)

    def distinct_users(self, f: EventFilter) -> int:
        where, params = self._where(f)
        result: int = self._one(f.project_id, f"SELECT count(DISTINCT user_hash) FROM events WHERE {where}", params)
        return result

    def recent_errors(self, f: EventFilter, limit: int = 20) -> list[tuple[Any, ...]]:
        """Newest failed events first (the later stored first among equal times): (ts, kind,
        server, tool, error_type, error_message, client_name, session_id, attributes)."""
        where, params = dims(f, client_column="client_name")
        return self._fetch(
            f.project_id,
            f"SELECT ts, kind, server, tool, error_type, error_message, client_name, session_id, attributes FROM events "
            f"WHERE project_id = ? AND ok = 0 AND ts >= ? AND ts < ?{where} ORDER BY ts DESC, {self._dialect.seq} DESC LIMIT ?",
            [f.project_id, f.start_ms, f.end_ms, *params, limit])

    def export_events(self, project_id: int, after: int = 0, limit: int = 5000) -> list[tuple[Any, ...]]:
        """Stored events in insertion order as (cursor, *ROW_FIELDS); pass the last cursor as ``after``."""
        seq = self._dialect.seq
        return self._fetch(
            project_id,
            f"SELECT {seq}, {', '.join(ROW_FIELDS)} FROM events WHERE project_id = ? AND {seq} > ? ORDER BY {seq} LIMIT ?",
            (project_id, after, limit))

    # ---- rollup reads (cost grows with buckets x dimensions, not with events) ---------------

    def _hist_rows(self, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        decode = self._dialect.decode_hist
        if decode is None:
            return rows
        return [(*r[:11], decode(r[11]) if r[11] else None, *r[12:]) for r in rows]

    def cells(self, f: EventFilter, grain: str, kinds: Sequence[str] | None = ("tool_call",),
              latency: bool = True) -> list[tuple[Any, ...]]:
        """Rollup cells in the window: (bucket, kind, server, tool, client, calls, errors,
        dur_count, dur_sum, dur_min, dur_max, hist, caller_errors, server_errors, cancelled);
        ``hist`` as ``rollup.Cell.add_cell`` reads it (None without ``latency``). ``kinds`` None: every kind."""
        table = "rollup_hour" if grain == "hour" else "rollup_day"
        where, params = dims(f)
        kind_sql, kind_params = self._in("kind", list(kinds)) if kinds is not None else ("true", [])
        return self._hist_rows(self._fetch(
            f.project_id,
            f"SELECT bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, "
            f"{self._dialect.hist_column if latency else 'NULL'}, {_OUTCOMES} FROM {table} "
            f"WHERE project_id = ? AND bucket >= ? AND bucket < ? AND {kind_sql}{where}",
            [f.project_id, f.start_ms, f.end_ms, *kind_params, *params]))

    def client_counts(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """Tool calls per client in the window, every other dimension summed in SQL: rows (client,
        calls, errors, caller_errors, server_errors, cancelled)."""
        table = "rollup_hour" if grain == "hour" else "rollup_day"
        where, params = dims(f)
        rows = self._fetch(
            f.project_id,
            f"SELECT client, sum(calls), sum(errors), sum(caller_errors), sum(server_errors), sum(cancelled) FROM {table} "
            f"WHERE project_id = ? AND bucket >= ? AND bucket < ? AND kind = 'tool_call'{where} GROUP BY client",
            [f.project_id, f.start_ms, f.end_ms, *params])
        return [(client, *(int(n) for n in counts)) for client, *counts in rows]

    def tool_cells(self, f: EventFilter, grain: str, latency: bool = True) -> list[tuple[Any, ...]]:
        """Tool-call cells with every client together, in the shape of ``cells`` (client ''):
        read from the per-tool daily rollup when it can answer (day grain, no client filter)."""
        if grain != "day" or f.client is not None:
            return self.cells(f, grain, latency=latency)
        where, params = dims(f)
        return self._hist_rows(self._fetch(
            f.project_id,
            "SELECT bucket, 'tool_call', server, tool, '', calls, errors, dur_count, dur_sum, dur_min, dur_max, "
            f"{self._dialect.hist_column if latency else 'NULL'}, {_OUTCOMES} FROM rollup_tool_day WHERE project_id = ? AND bucket >= ? AND bucket < ?{where}",
            [f.project_id, f.start_ms, f.end_ms, *params]))

    def _sets(self, f: EventFilter, group: Sequence[str], aggregate: str) -> list[tuple[Any, ...]]:
        """Rows (*group, aggregate of the users) over the daily user sets of the window, from the
        narrowest table keyed by ``group`` and the columns the filter asks for (``rollup.USER_SETS``);
        the sets are united in SQL, so only one value per group leaves the database."""
        wanted = set(group) | {"bucket", "server"}
        if f.tool is not None or f.category is not None:
            wanted.add("tool")
        if f.client is not None:
            wanted.add("client")
        table = next(t for keys, t in USER_SETS.items() if wanted <= set(keys))
        where, params = dims(f)
        cols = ", ".join(group)
        sql = (f"SELECT {cols + ', ' if cols else ''}{aggregate.format('users')} FROM {table} "
               f"WHERE project_id = ? AND bucket >= ? AND bucket < ?{where}")
        return self._fetch(f.project_id, sql + (f" GROUP BY {cols}" if cols else ""), [f.project_id, f.start_ms, f.end_ms, *params])

    def _user_sets(self, f: EventFilter, group: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """The union of the window's daily user sets per ``group``: rows (*group, users as an int)."""
        users_of = self._dialect.users_of
        return [(*key, users_of(users)) for *key, users in self._sets(f, group, self._dialect.users_union)]

    @staticmethod
    def _user_source(f: EventFilter, grain: str, need_dims: bool = False) -> tuple[str, list[Any]]:
        """A subquery of (bucket, server, tool, client, user_hash) rows for the window."""
        filtered = need_dims or f.server is not None or f.tool is not None or f.client is not None or f.category is not None
        if grain == "day":
            where, params = dims(f)
            return (f"SELECT day AS bucket, server, tool, client, user_hash FROM user_day "
                    f"WHERE project_id = ? AND day >= ? AND day < ?{where}", [f.project_id, f.start_ms, f.end_ms, *params])
        if not filtered:
            return ("SELECT hour AS bucket, NULL AS server, NULL AS tool, NULL AS client, user_hash FROM user_hour "
                    "WHERE project_id = ? AND hour >= ? AND hour < ?", [f.project_id, f.start_ms, f.end_ms])
        # Hour grain with filters: raw events (hour windows span at most two days).
        where, params = dims(f, client_column="client_name")
        return (f"SELECT ts / {HOUR_MS} * {HOUR_MS} AS bucket, server, coalesce(tool, '') AS tool, "
                f"coalesce(client_name, '') AS client, user_hash FROM events "  # '' = none, as in the rollups
                f"WHERE project_id = ? AND ts >= ? AND ts < ? AND kind = 'tool_call' AND user_hash IS NOT NULL{where}",
                [f.project_id, f.start_ms, f.end_ms, *params])

    def users(self, f: EventFilter, grain: str, group: Sequence[str] = ()) -> list[tuple[Any, ...]]:
        """Distinct users in the window, grouped by any of bucket, server, tool, client: rows (*group, count)."""
        if grain == "day":  # unions of exact daily user sets, counted in SQL
            rows = self._sets(f, group, self._dialect.users_count)
            if not group:
                return [(int(rows[0][0] or 0) if rows else 0,)]
            return [(*key, int(n)) for *key, n in rows if n]
        source, params = self._user_source(f, grain, need_dims=bool(set(group) & {"server", "tool", "client"}))
        cols = ", ".join(group)
        sql = f"SELECT {cols + ', ' if cols else ''}count(DISTINCT user_hash) FROM ({source}) AS s"
        if cols:
            sql += f" GROUP BY {cols}"
        return self._fetch(f.project_id, sql, params)

    def new_users(self, f: EventFilter, grain: str) -> int:
        """Users active in the window whose first call (on the filtered server, or anywhere) falls in it."""
        window: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if f.tool is None and f.client is None and f.category is None:
            # A user whose first call (there) falls in the window was active in it: count those.
            if f.server is None:
                return int(self._one(f.project_id, "SELECT count(*) FROM user_number WHERE project_id = ? "
                                                   "AND first_seen >= ? AND first_seen < ?", window))
            return int(self._one(f.project_id, "SELECT count(*) FROM user_first WHERE project_id = ? "
                                               "AND first_seen >= ? AND first_seen < ? AND server = ?", [*window, f.server]))
        if grain == "day":
            active = 0
            for row in self._user_sets(f):
                active |= row[-1]
            first, params = self._first_numbers(f)
            return sum(1 for n, _ in self._fetch(f.project_id, first, params) if active >> n & 1)
        source, params = self._user_source(f, grain)
        first = "SELECT user_hash, min(first_seen) AS first_seen FROM user_first WHERE project_id = ?"
        first_params: list[Any] = [f.project_id]
        if f.server is not None:
            first += " AND server = ?"
            first_params.append(f.server)
        first += " GROUP BY user_hash"
        return int(self._one(
            f.project_id,
            f"SELECT count(*) FROM (SELECT DISTINCT user_hash FROM ({source}) AS s) a JOIN ({first}) b USING (user_hash) "
            f"WHERE b.first_seen >= ?", [*params, *first_params, f.start_ms]))

    @staticmethod
    def _first_numbers(f: EventFilter) -> tuple[str, list[Any]]:
        """(number, first call) of the users whose first call (on the filtered server, or anywhere) is in the window."""
        window: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if f.server is None:  # first call anywhere
            return "SELECT number, first_seen FROM user_number WHERE project_id = ? AND first_seen >= ? AND first_seen < ?", window
        return ("SELECT n.number, u.first_seen FROM user_first u JOIN user_number n ON n.project_id = u.project_id "
                "AND n.user_hash = u.user_hash WHERE u.project_id = ? AND u.first_seen >= ? AND u.first_seen < ? AND u.server = ?",
                [*window, f.server])

    def new_users_by_bucket(self, f: EventFilter, grain: str) -> dict[int, int]:
        """``new_users`` of each bucket of the window, {bucket start: count} (buckets without any left
        out): at day grain from the daily user sets and the users' first calls, two reads in all."""
        if grain != "day":
            counts = {b: self.new_users(f._replace(start_ms=b, end_ms=b + HOUR_MS), grain) for b in range(f.start_ms, f.end_ms, HOUR_MS)}
            return {b: n for b, n in counts.items() if n}
        active: dict[int, int] = dict(self._user_sets(f, ("bucket",)))
        first, params = self._first_numbers(f)
        out: dict[int, int] = {}
        for n, seen in self._fetch(f.project_id, first, params):
            day = seen - seen % DAY_MS  # new on the day of their first call, if active on it (within the filter)
            if active.get(day, 0) >> n & 1:
                out[day] = out.get(day, 0) + 1
        return out

    def error_groups(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """(server, tool, error_type, outcome, count, last_ts) of the errors (tool, server and caller
        errors), most frequent first: from the daily cells for a window of whole UTC days."""
        where, params = dims(f)
        c = self._dialect.collate
        table, column = ("error_day", "day") if whole_days(f) else ("error_hour", "bucket")
        rows = self._fetch(
            f.project_id,
            f"SELECT server, tool, error_type, outcome, sum(count), max(last_ts) FROM {table} "
            f"WHERE project_id = ? AND {column} >= ? AND {column} < ? AND outcome <> 'cancelled'{where} "
            f"GROUP BY server, tool, error_type, outcome "
            f"ORDER BY sum(count) DESC, server{c}, tool{c}, error_type{c}, outcome{c}",
            [f.project_id, f.start_ms, f.end_ms, *params])
        return [(server, tool, error, outcome, int(n), last) for server, tool, error, outcome, n, last in rows]

    def _sessions_where(self, f: EventFilter) -> tuple[str, list[Any]]:
        sql = "s.project_id = ? AND s.first_ts >= ? AND s.first_ts < ?"
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("s.server", f.server), ("s.client", f.client)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if f.tool is not None:
            sql += (" AND EXISTS (SELECT 1 FROM session_tools t WHERE t.project_id = s.project_id "
                    "AND t.session_id = s.session_id AND t.tool = ?)")
            params.append(f.tool)
        if f.category is not None:
            sql += (" AND EXISTS (SELECT 1 FROM session_tools t JOIN tool_catalog c ON c.project_id = t.project_id "
                    "AND c.server = s.server AND c.tool = t.tool WHERE t.project_id = s.project_id "
                    "AND t.session_id = s.session_id AND c.category = ?)")
            params.append(f.category)
        return sql, params

    def sessions(self, f: EventFilter, limit: int = 200_000) -> list[tuple[Any, ...]]:
        """Sessions that started in the window, oldest first: (session_id, server, client, client_version,
        protocol_version, transport, first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts, tools)."""
        where, params = self._sessions_where(f)
        return self._fetch(
            f.project_id,
            "SELECT s.session_id, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.first_ts, "
            "s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts, "
            "(SELECT count(*) FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id) "
            f"FROM sessions s WHERE {where} ORDER BY s.first_ts, s.session_id{self._dialect.collate} LIMIT ?", [*params, limit])

    def session_counts(self, f: EventFilter) -> list[tuple[Any, ...]]:
        """Sessions that started in the window, counted per (client, client_version, protocol_version).

        A window of whole UTC days reads the daily session cells (with a tool filter, the
        sessions that called the tool), unless it asks for a category: a session that called
        two tools of it would count twice there, so that one reads the sessions."""
        if f.category is None and whole_days(f):
            table = "session_day" if f.tool is None else "session_tool_day"
            where, params = dims(f)
            rows = self._fetch(
                f.project_id,
                f"SELECT client, client_version, protocol_version, sum(sessions) FROM {table} "
                f"WHERE project_id = ? AND day >= ? AND day < ?{where} GROUP BY client, client_version, protocol_version",
                [f.project_id, f.start_ms, f.end_ms, *params])
            return [(client or None, version or None, protocol or None, int(n)) for client, version, protocol, n in rows if n]
        where, params = self._sessions_where(f)
        return self._fetch(f.project_id, "SELECT s.client, s.client_version, s.protocol_version, count(*) FROM sessions s "
                                         f"WHERE {where} GROUP BY s.client, s.client_version, s.protocol_version", params)

    def _catalog(self, columns: str, project_id: int, server: str | None, condition: str = "") -> list[tuple[Any, ...]]:
        sql = f"SELECT {columns} FROM tool_catalog WHERE project_id = ?{condition}"
        params: list[Any] = [project_id]
        if server is not None:
            sql += " AND server = ?"
            params.append(server)
        c = self._dialect.collate
        return self._fetch(project_id, sql + f" ORDER BY server{c}, tool{c}", params)

    def catalog(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]:
        """Tools servers listed or were called with: (server, tool, first_seen, last_seen)."""
        return self._catalog("server, tool, first_seen, last_seen", project_id, server)

    def last_calls(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]:
        """When each tool was last called (listings aside): (server, tool, last_called)."""
        return self._catalog("server, tool, last_called", project_id, server, " AND last_called IS NOT NULL")

    # ---- measurements and server events -----------------------------------------------------

    def measurement_days(self, f: EventFilter, name: str | None = None) -> list[tuple[Any, ...]]:
        """(day, server, name, type, tags, count, sum, min, max, last_value) for whole UTC days in the window."""
        sql = ("SELECT day, server, name, type, tags, count, sum, min, max, last_value FROM measurement_day "
               "WHERE project_id = ? AND day >= ? AND day < ?")
        params: list[Any] = [f.project_id, f.start_ms - f.start_ms % DAY_MS, f.end_ms]
        for column, value in (("name", name), ("server", f.server)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        c = self._dialect.collate
        return self._fetch(f.project_id, sql + f" ORDER BY name{c}, day, server{c}, tags{c}, type{c}", params)

    def server_events(self, f: EventFilter, limit: int = 1000) -> list[tuple[Any, ...]]:
        """(ts, server, type, version, message, attributes) in the window, oldest first."""
        sql = "SELECT ts, server, type, version, message, attributes FROM server_events WHERE project_id = ? AND ts >= ? AND ts < ?"
        params: list[Any] = [f.project_id, f.start_ms, f.end_ms]
        if f.server is not None:
            sql += " AND server = ?"
            params.append(f.server)
        return self._fetch(f.project_id, sql + f" ORDER BY ts, event_id{self._dialect.collate} LIMIT ?", [*params, limit])

    def tool_catalog(self, project_id: int, server: str | None = None) -> list[tuple[Any, ...]]:
        """Every tool servers listed or were called with: (server, tool, first_seen, last_seen,
        last_called, listed_first, listed_last, def_bytes, category); listed_* None for a tool
        never seen in a ``tools/list`` (called only), def_bytes the definition's size at the last listing."""
        return self._catalog("server, tool, first_seen, last_seen, last_called, listed_first, listed_last, def_bytes, category",
                             project_id, server)

    def category_users(self, f: EventFilter, grain: str) -> list[tuple[Any, ...]]:
        """Distinct calling users per tool category in the window: rows (category or None, users)."""
        if grain == "day":  # unions of the per-tool (per-client) exact user sets
            category = {(s, t): c for s, t, *_, c in self.tool_catalog(f.project_id, f.server)}
            sets: dict[str | None, int] = {}
            for server, tool, users in self._user_sets(f, ("server", "tool")):
                key = category.get((server, tool))
                sets[key] = sets.get(key, 0) | users
            return [(c, users.bit_count()) for c, users in sets.items()]
        source, params = self._user_source(f, grain, need_dims=True)
        return self._fetch(
            f.project_id,
            f"SELECT c.category, count(DISTINCT s.user_hash) FROM ({source}) AS s LEFT JOIN tool_catalog c "
            "ON c.project_id = ? AND c.server = s.server AND c.tool = s.tool GROUP BY c.category",
            [*params, f.project_id])

    # ---- retention --------------------------------------------------------------------------

    def _delete_in_chunks(self, sql: str, params: Sequence[Any], chunk: int) -> int:
        """Run a DELETE of at most ``chunk`` rows (its last parameter) in short transactions until
        it deletes fewer: ingest never waits long behind one. How many rows it deleted."""
        removed = 0
        while True:
            n: int = self._write(lambda conn: conn.execute(self._sql(sql), (*params, chunk)).rowcount)
            removed += n
            if n < chunk:
                return removed

    def prune(self, raw_before_ms: int, rollups_before_ms: int, chunk: int = 20_000) -> dict[str, int]:
        """Delete raw data older than ``raw_before_ms`` and rollups older than ``rollups_before_ms``.

        Raw events go in small transactions (or whole partitions) so ingest is never blocked
        for long. Rollups are never touched for data inside their own retention, so their
        answers do not change.
        """
        removed = {"events": self._prune_events(raw_before_ms, chunk)}
        for table, column, which in _PRUNED:
            cutoff = raw_before_ms if which == "raw" else rollups_before_ms
            if table == "session_tools":
                sql = ("DELETE FROM session_tools WHERE (project_id, session_id) IN "
                       "(SELECT project_id, session_id FROM sessions WHERE last_ts < ?)")
            else:
                sql = f"DELETE FROM {table} WHERE {column} < ?"
            removed[table] = self._write(lambda conn, sql=sql, cutoff=cutoff: conn.execute(self._sql(sql), (cutoff,)).rowcount)
        return removed

