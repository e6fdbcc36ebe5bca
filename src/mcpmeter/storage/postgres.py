"""The shared store: PostgreSQL behind any number of stateless collectors.

Same Store protocol and the same answers as the SQLite store; what differs is how:
- a connection pool (psycopg 3) instead of one writer and per-thread readers; many
  collectors write at once, so every write is safe to run concurrently with itself;
- ingest: the ids go into ``event_ids`` (ON CONFLICT DO NOTHING RETURNING tells which
  rows are new, and a concurrent collector inserting the same id waits for ours to
  commit, then skips it), the new rows are COPYed into ``events``, and the rollup deltas
  are added with relative upserts in key order (``postgres_rollups``); all in one
  transaction, so a 2xx means every part of it is durable;
- raw events are partitioned by day (``postgres_partitions``); retention drops partitions;
- reads of a project's data run as the ``mcpmeter_reader`` role with the project id set
  for the transaction, so row-level security limits them to that project even if a query
  forgot its ``project_id = ...`` condition.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from .. import histogram, usersets
from ..events import ROW_FIELDS
from ..exceptions import SchemaVersionError, StorageError
from . import postgres_partitions as partitions
from . import postgres_rollups
from .base import AuditEntry, EventFilter, IngestResult, KeyInfo, Project
from .postgres_migrations import MIGRATIONS, READER_ROLE
from .postgres_security import PostgresSecurity, _audit
from .rollup import aggregate

ROLLUP_VERSION = 2
MIGRATION_LOCK = 0x6D63706D_6D69  # "mcpmmi": one migrator at a time per database
POOL_SIZE = 8
_RETRIES = 5  # deadlocks and serialization failures are retried (the transaction was rolled back)
_RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)

_KEY_COLUMNS = (
    "k.id, k.project_id, p.name, k.name, k.prefix, k.scopes, k.created_at, "
    "k.last_used_at, k.revoked_at, k.expires_at"
)
_COPY_EVENTS = f"COPY events (project_id, {', '.join(ROW_FIELDS)}, received_at) FROM STDIN"
_NEW_IDS = """
INSERT INTO event_ids (project_id, event_id, ts)
SELECT p, e, t FROM unnest(%b::bigint[], %b::text[], %b::bigint[], %b::int[]) AS u(p, e, t, o)
ORDER BY p, e COLLATE "C", o
ON CONFLICT DO NOTHING
RETURNING project_id, event_id
"""
_NEW_MEASUREMENTS = """
INSERT INTO measurements (project_id, measurement_id, server, name, type, tags, ts, value)
SELECT %s, m, s, n, k, g, t, v
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::float8[], %b::int[])
    AS u(m, s, n, k, g, t, v, o)
ORDER BY m COLLATE "C", o
ON CONFLICT DO NOTHING
RETURNING measurement_id
"""
_MEASUREMENT_DAY = """
INSERT INTO measurement_day AS r (project_id, day, server, name, type, tags, count, sum, min, max, last_ts, last_value)
SELECT %s, * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::float8[],
                         %b::float8[], %b::float8[], %b::bigint[], %b::float8[])
ON CONFLICT (project_id, name, day, server, type, tags) DO UPDATE SET
    count = r.count + excluded.count, sum = r.sum + excluded.sum,
    min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
    last_value = CASE WHEN excluded.last_ts >= r.last_ts THEN excluded.last_value ELSE r.last_value END,
    last_ts = greatest(r.last_ts, excluded.last_ts)
"""
_NEW_SERVER_EVENTS = """
INSERT INTO server_events (project_id, event_id, server, type, ts, version, message, attributes)
SELECT %s, e, s, k, t, v, m, a
FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::int[])
    AS u(e, s, k, t, v, m, a, o)
ORDER BY e COLLATE "C", o
ON CONFLICT DO NOTHING
"""
_hist_json = msgspec.json.Decoder(dict[int, int]).decode


def _now_ms() -> int:
    return int(time.time() * 1000)


def redact(url: str) -> str:
    """The URL without its password, for messages and ``store.url``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PostgresStore(PostgresSecurity):  # keys version, rotation, access, audit, erasure: postgres_security.py
    def __init__(self, url: str, durable: bool = True, pool_size: int = POOL_SIZE) -> None:
        self.url = redact(url)
        self._known_days: set[int] = set()
        self._durable = durable
        try:  # one direct attempt first: its error says what is wrong (a pool would only time out)
            psycopg.connect(url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {self.url}: {_first_line(exc)}",
                               hint="is PostgreSQL running, and do the host, port, user and database in the URL exist?") from None
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, configure=self._configure,
            open=False, name="mcpmeter", timeout=30,
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except psycopg_pool.PoolTimeout:
            raise StorageError(f"cannot open a connection pool to {self.url}", hint="check max_connections on the server") from None

    def _configure(self, conn: psycopg.Connection) -> None:
        if not self._durable:  # as SQLite synchronous=NORMAL: a server crash may lose the last commits
            conn.execute("SET synchronous_commit = off")

    # ---- transactions --------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout:
            raise StorageError(f"no free connection to {self.url}", hint="the database is overloaded or unreachable; retry later") from None

    def _write(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction; deadlocks and serialization failures are retried."""
        for attempt in range(_RETRIES):
            try:
                with self._connection() as conn, conn.transaction():
                    return fn(conn, *args)
            except _RETRYABLE as exc:
                if attempt == _RETRIES - 1:
                    raise StorageError(f"write to {self.url} failed: {_first_line(exc)}", hint="retry later") from exc
                time.sleep(0.01 * 2 ** attempt * (1 + secrets.randbelow(100) / 100))  # jittered back-off
            except psycopg.Error as exc:
                raise StorageError(f"write to {self.url} failed: {_first_line(exc)}",
                                   hint="is the database reachable, the disk full, or the schema out of date (`mcpmeter db upgrade`)?") from exc
        raise AssertionError("unreachable")

    def _owner_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Reads that are not about one project's data (projects, keys, schema)."""
        try:
            with self._connection() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise StorageError(f"read from {self.url} failed: {_first_line(exc)}", hint="is the database reachable?") from exc

    @contextlib.contextmanager
    def reading(self, project_id: int) -> Iterator[psycopg.Connection]:
        """A read-only transaction that can see ``project_id``'s rows and no others.

        It runs as the ``mcpmeter_reader`` role, which has no BYPASSRLS, so the tables'
        row-level security policies apply: even ``SELECT count(*) FROM events`` counts
        only this project's events.
        """
        try:
            with self._connection() as conn, conn.transaction():
                conn.execute(f"SET TRANSACTION READ ONLY; SET LOCAL ROLE {READER_ROLE}; "
                             f"SET LOCAL mcpmeter.project_id = '{int(project_id)}'")
                yield conn
        except psycopg.Error as exc:
            raise StorageError(f"read from {self.url} failed: {_first_line(exc)}", hint="is the database reachable?") from exc

    def _read(self, project_id: int, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self.reading(project_id) as conn:
            return conn.execute(sql, params).fetchall()

    # ---- schema ---------------------------------------------------------------------

    def schema_version(self) -> int:
        try:
            with self._connection() as conn:
                if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
                    return 0
                return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
        except psycopg.Error as exc:
            raise StorageError(f"read from {self.url} failed: {_first_line(exc)}", hint="is the database reachable?") from exc

    def upgrade(self, target: int | None = None) -> list[int]:
        latest = MIGRATIONS[-1].version
        target = latest if target is None else target
        if target > latest:
            raise SchemaVersionError(f"no schema version {target}; the newest this mcpmeter knows is {latest}")
        if self.schema_version() == target:  # the common case for every collector start: no lock needed
            return []

        def run(conn: psycopg.Connection) -> list[int]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))  # concurrent collectors wait here
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)")
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            if current > latest:
                raise SchemaVersionError(
                    f"store {self.url} has schema version {current}, newer than this mcpmeter ({latest})",
                    hint="upgrade mcpmeter, or run `mcpmeter db downgrade` with the newer version",
                )
            applied = []
            for m in MIGRATIONS:
                if current < m.version <= target:
                    conn.execute(m.up)
                    if m.version == ROLLUP_VERSION:  # rollups of events stored before they existed
                        postgres_rollups.rebuild(conn, ", ".join(ROW_FIELDS), m.version)
                    conn.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)", (m.version, m.name, _now_ms()))
                    applied.append(m.version)
            return applied

        applied = self._write(run)
        self._known_days.clear()
        return applied

    def downgrade(self, target: int) -> list[int]:
        if target < 0:
            raise SchemaVersionError("the target version must be 0 or more")

        def run(conn: psycopg.Connection) -> list[int]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)")
            done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
            reverted = []
            for m in reversed(MIGRATIONS):
                if m.version > target and m.version in done:
                    conn.execute(m.down)
                    conn.execute("DELETE FROM schema_migrations WHERE version = %s", (m.version,))
                    reverted.append(m.version)
            return reverted

        reverted = self._write(run)
        self._known_days.clear()
        return reverted

    # ---- projects and keys ------------------------------------------------------------

    def ensure_project(self, name: str, audit: AuditEntry | None = None) -> Project:
        """The project ``name``, created when new (and then ``audit`` written with its id)."""
        existing = self.project_by_name(name)
        if existing:
            return existing

        def run(conn: psycopg.Connection) -> None:
            row = conn.execute(
                "INSERT INTO projects (name, user_salt, created_at) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, secrets.token_hex(32), _now_ms())).fetchone()
            if row is not None and audit is not None:
                _audit(conn, audit._replace(project_id=row[0]))

        self._write(run)
        project = self.project_by_name(name)
        assert project is not None
        return project

    def project_by_name(self, name: str) -> Project | None:
        rows = self._owner_read("SELECT id, name, user_salt, created_at FROM projects WHERE name = %s", (name,))
        return Project(*rows[0]) if rows else None

    def project_by_id(self, project_id: int) -> Project | None:
        rows = self._owner_read("SELECT id, name, user_salt, created_at FROM projects WHERE id = %s", (project_id,))
        return Project(*rows[0]) if rows else None

    def list_projects(self) -> list[Project]:
        return [Project(*r) for r in self._owner_read("SELECT id, name, user_salt, created_at FROM projects ORDER BY id")]

    def add_key(self, project_id: int, name: str, key_hash: str, prefix: str, scopes: Iterable[str],
                expires_at: int | None = None, replace: bool = False, audit: AuditEntry | None = None) -> KeyInfo:
        scope_text = ",".join(sorted(set(scopes)))

        def run(conn: psycopg.Connection) -> None:
            if replace:  # collectors starting together may replace the same key: one at a time
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (project_id, name))
                conn.execute("DELETE FROM api_keys WHERE project_id = %s AND name = %s", (project_id, name))
            conn.execute(
                "INSERT INTO api_keys (project_id, name, prefix, key_hash, scopes, created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (project_id, name, prefix, key_hash, scope_text, _now_ms(), expires_at),
            )
            _audit(conn, audit)

        try:
            self._write(run)
        except StorageError as exc:
            if isinstance(exc.__cause__, pgerrors.UniqueViolation):
                raise StorageError(f"a key named {name!r} already exists in this project", hint="pick another --name, or revoke the old key first") from None
            raise
        key = self.key_by_hash(key_hash)
        assert key is not None
        return key

    def key_by_hash(self, key_hash: str) -> KeyInfo | None:
        rows = self._owner_read(
            f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.key_hash = %s", (key_hash,))
        return _key(rows[0]) if rows else None

    def list_keys(self, project_id: int | None = None) -> list[KeyInfo]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys k JOIN projects p ON p.id = k.project_id"
        params: tuple = ()
        if project_id is not None:
            sql += " WHERE k.project_id = %s"
            params = (project_id,)
        return [_key(r) for r in self._owner_read(sql + " ORDER BY k.id", params)]

    def revoke_key(self, project_id: int | None, name_or_prefix: str, audit: AuditEntry | None = None) -> int:
        def run(conn: psycopg.Connection) -> int:
            sql = "UPDATE api_keys SET revoked_at = %s WHERE revoked_at IS NULL AND (name = %s OR prefix = %s)"
            params: list = [_now_ms(), name_or_prefix, name_or_prefix]
            if project_id is not None:
                sql += " AND project_id = %s"
                params.append(project_id)
            n = conn.execute(sql, params).rowcount
            if n:
                _audit(conn, audit)
            return n

        return self._write(run)

    def touch_keys(self, last_used: dict[int, int]) -> None:
        if last_used:
            ids, stamps = zip(*sorted(last_used.items()))
            self._write(lambda conn: conn.execute(
                "UPDATE api_keys k SET last_used_at = greatest(k.last_used_at, u.ts) "
                "FROM unnest(%b::bigint[], %b::bigint[]) AS u(id, ts) WHERE k.id = u.id",
                (list(ids), list(stamps))))

    # ---- events ---------------------------------------------------------------------

    def _ensure_partitions(self, days: set[int]) -> None:
        missing = days - self._known_days
        if missing:
            self._known_days = self._write(partitions.create, missing, _now_ms())

    def ingest(self, groups: Sequence[tuple[int, Sequence[tuple]]],
               stored_rows: dict[int, list[tuple]] | None = None) -> list[IngestResult]:
        received = _now_ms()
        width = len(ROW_FIELDS)
        for _, rows in groups:
            for row in rows:
                if len(row) != width:
                    raise StorageError(f"an event row has {len(row)} fields, expected {width}", hint="this is a bug in the caller")
        days = {partitions.day_of(row[2]) for _, rows in groups for row in rows}
        for attempt in range(2):
            self._ensure_partitions(days)
            try:
                results, stored = self._write(self._ingest, groups, received)
            except StorageError as exc:  # a partition dropped meanwhile (retention): create it and retry once
                if attempt or not isinstance(exc.__cause__, pgerrors.CheckViolation):
                    raise
                self._known_days.clear()
                continue
            if stored_rows is not None:  # committed: hand the new rows to the caller (collector metrics)
                for project_id, rows in stored.items():
                    stored_rows.setdefault(project_id, []).extend(rows)
            return results
        raise AssertionError("unreachable")

    @staticmethod
    def _ingest(conn: psycopg.Connection, groups: Sequence[tuple[int, Sequence[tuple]]],
                received: int) -> tuple[list[IngestResult], dict[int, list[tuple]]]:
        projects, ids, stamps, order = [], [], [], []
        n = 0
        for project_id, rows in groups:
            for row in rows:
                projects.append(project_id)
                ids.append(row[0])
                stamps.append(row[2])
                order.append(n)
                n += 1
        # Number the calling users first: the only lock it may take must come before any row lock.
        numbers = postgres_rollups.number_users(conn, _calling_users(groups))
        new = set(conn.execute(_NEW_IDS, (projects, ids, stamps, order)).fetchall()) if n else set()
        results = []
        stored: dict[int, list[tuple]] = {}  # project -> rows really inserted, in order
        for project_id, rows in groups:
            kept = []
            for row in rows:
                key = (project_id, row[0])
                if key in new:  # the first occurrence of a new id is the one stored
                    new.discard(key)
                    kept.append(row)
            results.append(IngestResult(len(kept), len(rows) - len(kept)))
            if kept:
                stored.setdefault(project_id, []).extend(kept)
        if stored:
            with conn.cursor().copy(_COPY_EVENTS) as copy:
                write = copy.write_row
                for project_id, rows in stored.items():
                    for row in rows:
                        write((project_id, *row, received))
            # One rollup delta per project for the whole group (rollups are additive).
            postgres_rollups.apply(conn, {p: aggregate(rows) for p, rows in stored.items()}, numbers=numbers)
        return results, stored

    # ---- reads ----------------------------------------------------------------------

    @staticmethod
    def _where(f: EventFilter, kind: str | None = "tool_call") -> tuple[str, list]:
        sql = "project_id = %s AND ts >= %s AND ts < %s"
        params: list = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("kind", kind), ("server", f.server), ("tool", f.tool), ("client_name", f.client)):
            if value is not None:
                sql += f" AND {column} = %s"
                params.append(value)
        return sql, params

    def count_events(self, f: EventFilter, kind: str | None = "tool_call") -> int:
        where, params = self._where(f, kind)
        return self._read(f.project_id, f"SELECT count(*) FROM events WHERE {where}", params)[0][0]

    def distinct_users(self, f: EventFilter) -> int:
        where, params = self._where(f)
        return self._read(f.project_id, f"SELECT count(DISTINCT user_hash) FROM events WHERE {where}", params)[0][0]

    @staticmethod
    def _dims(f: EventFilter, client_column: str = "client") -> tuple[str, list]:
        sql, params = "", []
        for column, value in (("server", f.server), ("tool", f.tool), (client_column, f.client)):
            if value is not None:
                sql += f" AND {column} = %s"
                params.append(value)
        return sql, params

    def cells(self, f: EventFilter, grain: str, kinds: Sequence[str] = ("tool_call",)) -> list[tuple]:
        """Rollup cells in the window: (bucket, kind, server, tool, client, calls, errors,
        dur_count, dur_sum, dur_min, dur_max, hist) with ``hist`` a msgpack blob, as SQLite's."""
        table = "rollup_hour" if grain == "hour" else "rollup_day"
        dims, params = self._dims(f)
        rows = self._read(
            f.project_id,
            f"SELECT bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist::text "
            f"FROM {table} WHERE project_id = %s AND bucket >= %s AND bucket < %s AND kind = ANY(%s){dims}",
            [f.project_id, f.start_ms, f.end_ms, list(kinds), *params],
        )
        encode = histogram.encode
        return [(*r[:11], encode(_hist_json(r[11])) if r[11] else None) for r in rows]

    def tool_cells(self, f: EventFilter, grain: str) -> list[tuple]:
        """Tool-call cells with every client together, in the shape of ``cells`` (client ''):
        read from the per-tool daily rollup when it can answer (day grain, no client filter)."""
        if grain != "day" or f.client is not None:
            return self.cells(f, grain)
        dims, params = self._dims(f)
        rows = self._read(
            f.project_id,
            "SELECT bucket, 'tool_call', server, tool, '', calls, errors, dur_count, dur_sum, dur_min, dur_max, hist::text "
            f"FROM rollup_tool_day WHERE project_id = %s AND bucket >= %s AND bucket < %s{dims}",
            [f.project_id, f.start_ms, f.end_ms, *params],
        )
        encode = histogram.encode
        return [(*r[:11], encode(_hist_json(r[11])) if r[11] else None) for r in rows]

    def _user_sets(self, f: EventFilter) -> list[tuple]:
        """(bucket, server, tool, users as an int) per day and tool of the window (no client filter)."""
        dims, params = self._dims(f)
        from_bits = postgres_rollups.from_bits
        return [(bucket, server, tool, from_bits(users)) for bucket, server, tool, users in self._read(
            f.project_id,
            f"SELECT bucket, server, tool, users::text FROM rollup_tool_day WHERE project_id = %s AND bucket >= %s AND bucket < %s{dims}",
            [f.project_id, f.start_ms, f.end_ms, *params])]

    def _user_source(self, f: EventFilter, grain: str, need_dims: bool = False) -> tuple[str, list]:
        """A subquery of (bucket, server, tool, client, user_hash) rows for the window."""
        filtered = need_dims or f.server is not None or f.tool is not None or f.client is not None
        if grain == "day":
            dims, params = self._dims(f)
            return (f"SELECT day AS bucket, server, tool, client, user_hash FROM user_day "
                    f"WHERE project_id = %s AND day >= %s AND day < %s{dims}", [f.project_id, f.start_ms, f.end_ms, *params])
        if not filtered:
            return ("SELECT hour AS bucket, NULL AS server, NULL AS tool, NULL AS client, user_hash FROM user_hour "
                    "WHERE project_id = %s AND hour >= %s AND hour < %s", [f.project_id, f.start_ms, f.end_ms])
        # Hour grain with filters: raw events (hour windows span at most two days).
        dims, params = self._dims(f, client_column="client_name")
        return (f"SELECT ts - mod(ts, 3600000) AS bucket, server, coalesce(tool, '') AS tool, "
                f"coalesce(client_name, '') AS client, user_hash FROM events "  # '' = none, as in the rollups
                f"WHERE project_id = %s AND ts >= %s AND ts < %s AND kind = 'tool_call' AND user_hash IS NOT NULL{dims}",
                [f.project_id, f.start_ms, f.end_ms, *params])

    def users(self, f: EventFilter, grain: str, group: Sequence[str] = ()) -> list[tuple]:
        """Distinct users in the window, grouped by any of bucket, server, tool, client: rows (*group, count)."""
        if grain == "day" and f.client is None and "client" not in group:  # unions of exact user sets
            return usersets.count_grouped(self._user_sets(f), group)
        source, params = self._user_source(f, grain, need_dims=bool(set(group) & {"server", "tool", "client"}))
        cols = ", ".join(group)
        sql = f"SELECT {cols + ', ' if cols else ''}count(DISTINCT user_hash) FROM ({source}) AS s"
        if cols:
            sql += f" GROUP BY {cols}"
        return self._read(f.project_id, sql, params)

    def new_users(self, f: EventFilter, grain: str) -> int:
        """Users active in the window whose first call (on the filtered server, or anywhere) falls in it."""
        if f.tool is None and f.client is None:
            # A user whose first call (there) falls in the window was active in it: count those.
            if f.server is None:
                sql, params = "SELECT count(*) FROM user_number WHERE project_id = %s AND first_seen >= %s AND first_seen < %s", []
            else:
                sql, params = ("SELECT count(*) FROM user_first WHERE project_id = %s AND first_seen >= %s AND first_seen < %s "
                               "AND server = %s", [f.server])
            return self._read(f.project_id, sql, [f.project_id, f.start_ms, f.end_ms, *params])[0][0]
        if grain == "day" and f.client is None:
            active = 0
            for row in self._user_sets(f):
                active |= row[3]
            if f.server is None:  # first call anywhere
                first = "SELECT number FROM user_number WHERE project_id = %s AND first_seen >= %s AND first_seen < %s"
                params = []
            else:
                first = ("SELECT n.number FROM user_first u JOIN user_number n ON n.project_id = u.project_id "
                         "AND n.user_hash = u.user_hash WHERE u.project_id = %s AND u.first_seen >= %s AND u.first_seen < %s "
                         "AND u.server = %s")
                params = [f.server]
            rows = self._read(f.project_id, first, [f.project_id, f.start_ms, f.end_ms, *params])
            return sum(1 for (n,) in rows if active >> n & 1)
        source, params = self._user_source(f, grain)
        first = "SELECT user_hash, min(first_seen) AS first_seen FROM user_first WHERE project_id = %s"
        first_params: list = [f.project_id]
        if f.server is not None:
            first += " AND server = %s"
            first_params.append(f.server)
        first += " GROUP BY user_hash"
        sql = (f"SELECT count(*) FROM (SELECT DISTINCT user_hash FROM ({source}) AS s) a JOIN ({first}) b USING (user_hash) "
               f"WHERE b.first_seen >= %s")
        return self._read(f.project_id, sql, [*params, *first_params, f.start_ms])[0][0]

    def error_groups(self, f: EventFilter) -> list[tuple]:
        """(server, tool, error_type, count, last_ts), most frequent first."""
        dims, params = self._dims(f)
        return self._read(
            f.project_id,
            f"SELECT server, tool, error_type, sum(count)::bigint, max(last_ts) FROM error_hour "
            f"WHERE project_id = %s AND bucket >= %s AND bucket < %s{dims} GROUP BY server, tool, error_type "
            f"ORDER BY sum(count) DESC, server, tool, error_type",
            [f.project_id, f.start_ms, f.end_ms, *params],
        )

    def recent_errors(self, f: EventFilter, limit: int = 20) -> list[tuple]:
        """Newest failed events: (ts, kind, server, tool, error_type, error_message, client_name, session_id)."""
        dims, params = self._dims(f, client_column="client_name")
        return self._read(
            f.project_id,
            f"SELECT ts, kind, server, tool, error_type, error_message, client_name, session_id FROM events "
            f"WHERE project_id = %s AND ok = 0 AND ts >= %s AND ts < %s{dims} ORDER BY ts DESC, seq DESC LIMIT %s",
            [f.project_id, f.start_ms, f.end_ms, *params, limit],
        )

    def sessions(self, f: EventFilter, limit: int = 200_000) -> list[tuple]:
        """Sessions that started in the window: (session_id, server, client, client_version,
        protocol_version, transport, first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts, tools)."""
        sql = ("SELECT s.session_id, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.first_ts, "
               "s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts, "
               "(SELECT count(*) FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id) "
               "FROM sessions s WHERE s.project_id = %s AND s.first_ts >= %s AND s.first_ts < %s")
        params: list = [f.project_id, f.start_ms, f.end_ms]
        for column, value in (("s.server", f.server), ("s.client", f.client)):
            if value is not None:
                sql += f" AND {column} = %s"
                params.append(value)
        if f.tool is not None:
            sql += " AND EXISTS (SELECT 1 FROM session_tools t WHERE t.project_id = s.project_id AND t.session_id = s.session_id AND t.tool = %s)"
            params.append(f.tool)
        return self._read(f.project_id, sql + " ORDER BY s.first_ts, s.session_id LIMIT %s", [*params, limit])

    def catalog(self, project_id: int, server: str | None = None) -> list[tuple]:
        """Tools servers listed or were called with: (server, tool, first_seen, last_seen)."""
        sql, params = "SELECT server, tool, first_seen, last_seen FROM tool_catalog WHERE project_id = %s", [project_id]
        if server is not None:
            sql += " AND server = %s"
            params.append(server)
        return self._read(project_id, sql + " ORDER BY server, tool", params)

    def last_calls(self, project_id: int, server: str | None = None) -> list[tuple]:
        """When each tool was last called (listings aside): (server, tool, last_called)."""
        sql = "SELECT server, tool, last_called FROM tool_catalog WHERE project_id = %s AND last_called IS NOT NULL"
        params: list = [project_id]
        if server is not None:
            sql += " AND server = %s"
            params.append(server)
        return self._read(project_id, sql, params)

    def export_events(self, project_id: int, after: int = 0, limit: int = 5000) -> list[tuple]:
        """Stored events in insertion order as (cursor, *ROW_FIELDS); pass the last cursor as ``after``."""
        return self._read(
            project_id,
            f"SELECT seq, {', '.join(ROW_FIELDS)} FROM events WHERE project_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (project_id, after, limit),
        )

    # ---- measurements and server events ------------------------------------------------

    def ingest_measurements(self, project_id: int, rows: Sequence[tuple]) -> IngestResult:
        """Rows (measurement_id, server, name, type, tags, ts, value); new ones fold into daily aggregates."""

        def run(conn: psycopg.Connection) -> IngestResult:
            columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(7)]
            columns[6] = [float(v) for v in columns[6]]  # a binary float8[] holds floats only
            new = {m for (m,) in conn.execute(_NEW_MEASUREMENTS, (project_id, *columns, list(range(len(rows))))).fetchall()}
            days: dict[tuple, list] = {}  # (day, server, name, type, tags) -> [count, sum, min, max, last_ts, last_value]
            for mid, server, name, kind, tags, ts, value in rows:  # in the order given, as SQLite applies them
                if mid not in new:
                    continue
                new.discard(mid)
                key = (ts - ts % 86_400_000, server, name, kind, tags)
                agg = days.get(key)
                if agg is None:
                    days[key] = [1, value, value, value, ts, value]
                    continue
                agg[0] += 1
                agg[1] += value
                agg[2] = min(agg[2], value)
                agg[3] = max(agg[3], value)
                if ts >= agg[4]:
                    agg[4], agg[5] = ts, value
            stored = sum(a[0] for a in days.values())
            ordered = sorted((k[2], k[0], k[1], k[3], k[4], *a) for k, a in days.items())  # key order: name, day, server, type, tags
            if ordered:
                name, day, server, kind, tags, count, total, lo, hi, last_ts, last_value = (list(c) for c in zip(*ordered))
                floats = [[float(v) for v in column] for column in (total, lo, hi, last_value)]
                conn.execute(_MEASUREMENT_DAY, (project_id, day, server, name, kind, tags, count, *floats[:3], last_ts, floats[3]))
            return IngestResult(stored, len(rows) - stored)

        return self._write(run)

    def measurement_days(self, f: EventFilter, name: str | None = None) -> list[tuple]:
        """(day, server, name, type, tags, count, sum, min, max, last_value) for whole UTC days in the window."""
        sql = ("SELECT day, server, name, type, tags, count, sum, min, max, last_value FROM measurement_day "
               "WHERE project_id = %s AND day >= %s AND day < %s")
        params: list = [f.project_id, f.start_ms - f.start_ms % 86_400_000, f.end_ms]
        for column, value in (("name", name), ("server", f.server)):
            if value is not None:
                sql += f" AND {column} = %s"
                params.append(value)
        return self._read(f.project_id, sql + " ORDER BY name, day, server, tags", params)

    def ingest_server_events(self, project_id: int, rows: Sequence[tuple]) -> IngestResult:
        """Rows (event_id, server, type, ts, version, message, attributes)."""

        def run(conn: psycopg.Connection) -> IngestResult:
            columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(7)]
            n = conn.execute(_NEW_SERVER_EVENTS, (project_id, *columns, list(range(len(rows))))).rowcount
            return IngestResult(n, len(rows) - n)

        return self._write(run)

    def server_events(self, f: EventFilter, limit: int = 1000) -> list[tuple]:
        """(ts, server, type, version, message, attributes) in the window, oldest first."""
        sql = "SELECT ts, server, type, version, message, attributes FROM server_events WHERE project_id = %s AND ts >= %s AND ts < %s"
        params: list = [f.project_id, f.start_ms, f.end_ms]
        if f.server is not None:
            sql += " AND server = %s"
            params.append(f.server)
        return self._read(f.project_id, sql + " ORDER BY ts, event_id LIMIT %s", [*params, limit])

    # ---- retention ------------------------------------------------------------------------

    def prune(self, raw_before_ms: int, rollups_before_ms: int, chunk: int = 20_000) -> dict[str, int]:
        """Delete raw data older than ``raw_before_ms`` and rollups older than ``rollups_before_ms``.

        Days of raw events wholly before the cut are dropped as partitions; a cut inside a
        day deletes the older part of that day in small transactions, as SQLite does.
        """
        removed = {"events": self._prune_events(raw_before_ms, chunk)}
        statements = {
            "measurements": ("DELETE FROM measurements WHERE ts < %s", raw_before_ms),
            "user_hour": ("DELETE FROM user_hour WHERE hour < %s", rollups_before_ms),
            "rollup_hour": ("DELETE FROM rollup_hour WHERE bucket < %s", rollups_before_ms),
            "rollup_day": ("DELETE FROM rollup_day WHERE bucket < %s", rollups_before_ms),
            "rollup_tool_day": ("DELETE FROM rollup_tool_day WHERE bucket < %s", rollups_before_ms),
            "user_day": ("DELETE FROM user_day WHERE day < %s", rollups_before_ms),
            "error_hour": ("DELETE FROM error_hour WHERE bucket < %s", rollups_before_ms),
            "session_tools": ("DELETE FROM session_tools WHERE (project_id, session_id) IN "
                              "(SELECT project_id, session_id FROM sessions WHERE last_ts < %s)", rollups_before_ms),
            "sessions": ("DELETE FROM sessions WHERE last_ts < %s", rollups_before_ms),
            "measurement_day": ("DELETE FROM measurement_day WHERE day < %s", rollups_before_ms),
            "server_events": ("DELETE FROM server_events WHERE ts < %s", rollups_before_ms),
        }
        for table, (sql, cutoff) in statements.items():
            removed[table] = self._write(lambda conn: conn.execute(sql, (cutoff,)).rowcount)
        return removed

    def _prune_events(self, cut: int, chunk: int) -> int:
        removed = 0
        with self._connection() as conn:
            whole = sorted(day for day in partitions.existing(conn) if day + partitions.DAY_MS <= cut)
        for day in whole:
            removed += self._write(self._drop_partition, day)
        self._known_days -= set(whole)
        while True:  # the part of a day before a cut inside it
            n = self._write(lambda conn: conn.execute(
                "DELETE FROM events WHERE ts < %s AND (tableoid, ctid) IN (SELECT tableoid, ctid FROM events WHERE ts < %s LIMIT %s)",
                (cut, cut, chunk)).rowcount)
            removed += n
            if n < chunk:
                break
        while True:  # their ids, so a later event with the same id is new again (as in SQLite)
            n = self._write(lambda conn: conn.execute(
                "DELETE FROM event_ids WHERE ctid IN (SELECT ctid FROM event_ids WHERE ts < %s LIMIT %s)", (cut, chunk)).rowcount)
            if n < chunk:
                break
        return removed

    @staticmethod
    def _drop_partition(conn: psycopg.Connection, day: int) -> int:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (partitions.LOCK_KEY,))
        name = partitions.existing(conn).get(day)
        if name is None:  # another collector pruned it
            return 0
        conn.execute("SET LOCAL lock_timeout = '10s'")  # a long read must not stall ingest behind our lock queue
        n = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        conn.execute(f"DROP TABLE {name}")
        return n

    def close(self) -> None:
        self._pool.close()


_KIND, _USER = ROW_FIELDS.index("kind"), ROW_FIELDS.index("user_hash")


def _calling_users(groups: Sequence[tuple[int, Sequence[tuple]]]) -> dict[int, dict[str, int]]:
    """Per project, the users of the tool calls in ``groups`` with their first call's time."""
    users: dict[int, dict[str, int]] = {}
    for project_id, rows in groups:
        first = None
        for row in rows:
            user = row[_USER]
            if user is not None and row[_KIND] == "tool_call":
                if first is None:
                    first = users.setdefault(project_id, {})
                ts = row[2]
                if ts < first.get(user, ts + 1):
                    first[user] = ts
    return users


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _key(row: tuple) -> KeyInfo:
    (key_id, project_id, project, name, prefix, scopes, created, used, revoked, expires) = row
    return KeyInfo(key_id, project_id, project, name, prefix, frozenset(scopes.split(",")), created, used, revoked, expires)
