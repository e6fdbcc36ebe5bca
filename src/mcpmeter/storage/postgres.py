"""The shared store: PostgreSQL behind any number of stateless collectors.

Same Store protocol and the same answers as the SQLite store; what differs is how:
- a connection pool (psycopg 3) instead of one writer and per-thread readers; many
  collectors write at once, so every write is safe to run concurrently with itself;
- ingest: the ids go into ``event_ids`` (ON CONFLICT DO NOTHING RETURNING tells which
  rows are new, and a concurrent collector inserting the same id waits for ours to
  commit, then skips it), the new rows are COPYed into ``events``, and the rollup deltas
  are added with relative upserts in key order, sent in one pipeline, skipping the rows
  the store knows would change nothing (``postgres_rollups``, ``Known``); all in one
  transaction, so a 2xx means every part of it is durable;
- raw events are partitioned by day (``postgres_partitions``); retention drops partitions;
- reads of a project's data run as the ``mcpmeter_reader`` role with the project id set
  for the transaction, so row-level security limits them to that project even if a query
  forgot its ``project_id = ...`` condition.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec
import psycopg
import psycopg_pool
from psycopg import errors as pgerrors

from ..events import ROW_FIELDS, Row
from ..exceptions import StorageError, Unstorable
from . import postgres_partitions as partitions
from . import postgres_rollups
from .base import IngestResult
from .core import SQLStore
from .dialect import Dialect, T
from .dialect import now_ms as _now_ms
from .postgres_migrations import MIGRATIONS, MIGRATIONS_TABLE, READER_ROLE
from .rollup import Deltas, aggregate, calling_users

MIGRATION_LOCK = 0x6D63706D_6D69  # "mcpmmi": one migrator at a time per database
POOL_SIZE = 8
_RETRIES = 5  # deadlocks and serialization failures are retried (the transaction was rolled back)
_RETRYABLE = (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable)
# A value the database cannot hold (NUL in text, a number out of range, an index row over the
# btree limit): the fault of the request that carried it, not of the store.
_UNSTORABLE = (psycopg.DataError, pgerrors.ProgramLimitExceeded, UnicodeError, OverflowError)

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
_MEASUREMENT_UPSERT = """
INSERT INTO measurement_{grain} AS r (project_id, {grain}, server, name, type, tags, count, sum, min, max, last_ts, last_value)
SELECT %s, * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::float8[],
                         %b::float8[], %b::float8[], %b::bigint[], %b::float8[])
ON CONFLICT (project_id, name, {grain}, server, type, tags) DO UPDATE SET
    count = r.count + excluded.count, sum = r.sum + excluded.sum,
    min = least(r.min, excluded.min), max = greatest(r.max, excluded.max),
    last_value = CASE WHEN excluded.last_ts >= r.last_ts THEN excluded.last_value ELSE r.last_value END,
    last_ts = greatest(r.last_ts, excluded.last_ts)
"""
_MEASUREMENT_GRAINS = (("day", 86_400_000), ("hour", 3_600_000))  # the aggregates new measurements fold into
_NEW_SERVER_EVENTS = """
INSERT INTO server_events (project_id, event_id, server, type, ts, version, message, attributes)
SELECT %s, e, s, k, t, v, m, a
FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::int[])
    AS u(e, s, k, t, v, m, a, o)
ORDER BY e COLLATE "C", o
ON CONFLICT DO NOTHING
"""
DIALECT = Dialect(
    seq="seq", greatest="greatest", collate=' COLLATE "C"',
    hist_column="hist::text", decode_hist=msgspec.json.Decoder(dict[int, int]).decode,  # JSONB {bin: count}
    users_column="users::text", users_of=postgres_rollups.from_bits, users_value=postgres_rollups.bits,  # varbit
    users_param="?::varbit", for_update=" FOR UPDATE",
    users_union="mcpmeter_users_agg({})::text", users_count="bit_count(mcpmeter_users_agg({}))",
)


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """A statement written with ``?`` placeholders in psycopg's ``%s`` style."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """The URL without its password, for messages and ``store.url``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class PostgresStore(SQLStore):  # every query is in core.py / core_security.py
    def __init__(self, url: str, durable: bool = True, pool_size: int = POOL_SIZE) -> None:
        self.url = redact(url)
        self._known_days: set[int] = set()
        self._known = postgres_rollups.Known()  # rollup rows ingest may skip (see Known)
        self._known_lock = threading.Lock()
        self._pruning = threading.local()  # this thread is in prune: its transactions void every Known
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

    _dialect = DIALECT
    shared_counters = True  # every collector on the database counts a project's requests in it

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

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction; deadlocks and serialization failures are retried."""
        for attempt in range(_RETRIES):
            try:
                with self._connection() as conn, conn.transaction():
                    if getattr(self._pruning, "active", False):
                        postgres_rollups.forget(conn)
                    return fn(conn, *args)
            except _RETRYABLE as exc:
                if attempt == _RETRIES - 1:
                    raise StorageError(f"write to {self.url} failed: {_first_line(exc)}", hint="retry later") from exc
                time.sleep(0.01 * 2 ** attempt * (1 + secrets.randbelow(100) / 100))  # jittered back-off
            except _UNSTORABLE as exc:  # the data's fault, not the store's: the caller answers 4xx
                raise Unstorable(f"the store cannot hold a value of this request: {_first_line(exc)}",
                                 hint="nothing of it was stored; correct the value (a bug in validation: please report it)") from exc
            except psycopg.Error as exc:
                raise StorageError(f"write to {self.url} failed: {_first_line(exc)}",
                                   hint="is the database reachable, the disk full, or the schema out of date (`mcpmeter db upgrade`)?") from exc
        raise AssertionError("unreachable")

    def _owner_read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
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

    def _read(self, project_id: int, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self.reading(project_id) as conn:
            return conn.execute(sql, params).fetchall()

    # ---- the hooks of core.SQLStore ----------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return _pyformat(sql)

    def _fetch(self, project_id: int | None, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if project_id is None:
            return self._owner_read(_pyformat(sql), params)
        return self._read(project_id, _pyformat(sql), params)

    def _executemany(self, conn: psycopg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        conn.cursor().executemany(sql, rows)

    def _insert_returning_id(self, conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> int:
        row = conn.execute(_pyformat(sql + " RETURNING id"), params).fetchone()
        assert row is not None
        return int(row[0])

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _is_unique_violation(self, exc: BaseException | None) -> bool:
        return isinstance(exc, pgerrors.UniqueViolation)

    def _lock_key_name(self, conn: psycopg.Connection, project_id: int, name: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (project_id, name))  # collectors starting together

    def _lock_users(self, conn: psycopg.Connection, project_id: int) -> None:  # erasure: it deletes rollup rows
        postgres_rollups.forget(conn)
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (postgres_rollups.USERS_LOCK, project_id))

    def _apply_rollups(self, conn: psycopg.Connection, by_project: dict[int, Deltas], version: int | None = None) -> None:
        version = postgres_rollups.LATEST if version is None else version
        numbers = postgres_rollups.number_users(conn, postgres_rollups.first_calls(by_project)) if version >= 5 else None
        postgres_rollups.apply(conn, by_project, version, numbers)

    # ---- schema ---------------------------------------------------------------------

    def schema_version(self) -> int:
        try:
            with self._connection() as conn:
                table = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
                if table is None or table[0] is None:
                    return 0
                row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error as exc:
            raise StorageError(f"read from {self.url} failed: {_first_line(exc)}", hint="is the database reachable?") from exc

    _migrations = MIGRATIONS
    _migrations_table = MIGRATIONS_TABLE

    def _lock_migrations(self, conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        row = conn.execute("SELECT to_regclass('security_state')").fetchone()
        if row and row[0] is not None:  # a migration may delete rollup rows (a store without the table has no ingest yet)
            postgres_rollups.forget(conn)

    def _run_migration(self, conn: psycopg.Connection, script: str) -> None:
        conn.execute(script)

    def _schema_changed(self) -> None:
        self._known_days.clear()

    # ---- events ---------------------------------------------------------------------

    def _ensure_partitions(self, days: set[int]) -> None:
        missing = days - self._known_days
        if missing:
            self._known_days = self._write(partitions.create, missing, _now_ms())

    def ingest(self, groups: Sequence[tuple[int, Sequence[Row]]],
               stored_rows: dict[int, list[Row]] | None = None) -> list[IngestResult]:
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
                results, stored, learned = self._write(self._ingest, groups, received, self._known)
            except StorageError as exc:  # a partition dropped meanwhile (retention): create it and retry once
                if attempt or not isinstance(exc.__cause__, pgerrors.CheckViolation):
                    raise
                self._known_days.clear()
                continue
            with self._known_lock:
                self._known.merge(learned)
            if stored_rows is not None:  # committed: hand the new rows to the caller (collector metrics)
                for project_id, rows in stored.items():
                    stored_rows.setdefault(project_id, []).extend(rows)
            return results
        raise AssertionError("unreachable")

    @staticmethod
    def _ingest(conn: psycopg.Connection, groups: Sequence[tuple[int, Sequence[Row]]], received: int,
                known: postgres_rollups.Known) -> tuple[list[IngestResult], dict[int, list[Row]], postgres_rollups.Known]:
        learned = postgres_rollups.Known()
        learned.generation = postgres_rollups.generation(conn)  # first: no rollup row is deleted until we commit
        usable = known if known.generation == learned.generation else None
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
        numbers = postgres_rollups.number_users(conn, calling_users(groups), usable)
        new = set(conn.execute(_NEW_IDS, (projects, ids, stamps, order)).fetchall()) if n else set()
        results = []
        stored: dict[int, list[Row]] = {}  # project -> rows really inserted, in order
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
            deltas = {p: aggregate(rows) for p, rows in stored.items()}
            with conn.pipeline():  # the upserts need no answer: sent at once, row locks held for less time
                postgres_rollups.apply(conn, deltas, numbers=numbers, known=usable, learned=learned)
        return results, stored, learned

    # ---- measurements and server events ------------------------------------------------

    def ingest_measurements(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        """Rows (measurement_id, server, name, type, tags, ts, value); new ones fold into daily aggregates."""

        def run(conn: psycopg.Connection) -> IngestResult:
            columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(7)]
            columns[6] = [float(v) for v in columns[6]]  # a binary float8[] holds floats only
            new = {m for (m,) in conn.execute(_NEW_MEASUREMENTS, (project_id, *columns, list(range(len(rows))))).fetchall()}
            fresh = []
            for row in rows:  # in the order given, as SQLite applies them
                if row[0] in new:
                    new.discard(row[0])
                    fresh.append(row)
            for grain, size in _MEASUREMENT_GRAINS:
                _upsert_measurements(conn, project_id, grain, size, fresh)
            stored = len(fresh)
            return IngestResult(stored, len(rows) - stored)

        return self._write(run)

    def ingest_server_events(self, project_id: int, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        """Rows (event_id, server, type, ts, version, message, attributes)."""

        def run(conn: psycopg.Connection) -> IngestResult:
            columns = [list(c) for c in zip(*rows)] if rows else [[] for _ in range(7)]
            n = conn.execute(_NEW_SERVER_EVENTS, (project_id, *columns, list(range(len(rows))))).rowcount
            return IngestResult(n, len(rows) - n)

        return self._write(run)

    def prune(self, raw_before_ms: int, rollups_before_ms: int, chunk: int = 20_000) -> dict[str, int]:
        self._pruning.active = True  # each of its transactions voids every store's Known first
        try:
            return super().prune(raw_before_ms, rollups_before_ms, chunk)
        finally:
            self._pruning.active = False

    def _prune_events(self, cut: int, chunk: int) -> int:
        removed = 0
        with self._connection() as conn:
            whole = sorted(day for day in partitions.existing(conn) if day + partitions.DAY_MS <= cut)
        for day in whole:
            removed += self._write(self._drop_partition, day)
        self._known_days -= set(whole)
        removed += self._delete_in_chunks(  # the part of a day before a cut inside it
            "DELETE FROM events WHERE ts < ? AND (tableoid, ctid) IN (SELECT tableoid, ctid FROM events WHERE ts < ? LIMIT ?)",
            (cut, cut), chunk)
        self._delete_in_chunks(  # their ids, so a later event with the same id is new again (as in SQLite)
            "DELETE FROM event_ids WHERE ctid IN (SELECT ctid FROM event_ids WHERE ts < ? LIMIT ?)", (cut,), chunk)
        return removed

    @staticmethod
    def _drop_partition(conn: psycopg.Connection, day: int) -> int:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (partitions.LOCK_KEY,))
        name = partitions.existing(conn).get(day)
        if name is None:  # another collector pruned it
            return 0
        conn.execute("SET LOCAL lock_timeout = '10s'")  # a long read must not stall ingest behind our lock queue
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
        conn.execute(f"DROP TABLE {name}")
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._pool.close()



def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _upsert_measurements(conn: psycopg.Connection, project_id: int, grain: str, size: int,
                         rows: Sequence[tuple[Any, ...]]) -> None:
    """Fold new measurement rows into ``measurement_<grain>`` (buckets of ``size`` ms), one statement in key order."""
    buckets: dict[tuple[int, str, str, str, str], list[Any]] = {}  # (bucket, server, name, type, tags) -> [count, sum, min, max, last_ts, last_value]
    for _, server, name, kind, tags, ts, value in rows:
        key = (ts - ts % size, server, name, kind, tags)
        agg = buckets.get(key)
        if agg is None:
            buckets[key] = [1, value, value, value, ts, value]
            continue
        agg[0] += 1
        agg[1] += value
        agg[2] = min(agg[2], value)
        agg[3] = max(agg[3], value)
        if ts >= agg[4]:
            agg[4], agg[5] = ts, value
    ordered = sorted((k[2], k[0], k[1], k[3], k[4], *a) for k, a in buckets.items())  # key order: name, bucket, server, type, tags
    if ordered:
        name, bucket, server, kind, tags, count, total, lo, hi, last_ts, last_value = (list(c) for c in zip(*ordered))
        floats = [[float(v) for v in column] for column in (total, lo, hi, last_value)]
        conn.execute(_MEASUREMENT_UPSERT.format(grain=grain),
                     (project_id, bucket, server, name, kind, tags, count, *floats[:3], last_ts, floats[3]))
