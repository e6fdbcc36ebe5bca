"""The hooks through which the shared SQL (``core``, ``core_security``) reaches a backend.

A backend subclasses ``core.SQLStore`` and fills in ``SQLBase``'s hooks: how a statement
reaches its connection (``_sql``: placeholders; ``_fetch``: which connection and, for
PostgreSQL, which row-level security context; ``_write``: one transaction), and a
``Dialect``: the few places where the SQL text or the stored values really differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from .base import AuditEntry, EventFilter, KeyInfo, Migration
from .rollup import DAY_MS, Deltas

T = TypeVar("T")

_AUDIT_INSERT = ("INSERT INTO audit_log (ts, project_id, project, actor, action, target, detail, source) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


class Dialect(NamedTuple):
    """What differs in the SQL text and in stored values between the two backends."""

    seq: str  # the column that numbers events in insertion order
    greatest: str  # the two-argument maximum that ignores no argument: max (SQLite), greatest (PostgreSQL)
    collate: str  # appended to text ORDER BY terms: byte-wise order on both
    hist_column: str  # how to select a stored histogram
    decode_hist: Callable[[Any], Any] | None  # stored histogram -> what ``rollup.Cell.add_cell`` takes (None: as stored)
    users_column: str  # how to select a stored user set
    users_of: Callable[[Any], int]  # stored user set -> int (bit n = user number n)
    users_value: Callable[[int], Any]  # int -> stored user set
    users_param: str  # the placeholder a stored user set is written through
    users_union: str  # an aggregate of user sets ({} the column) into one, selected as ``users_column`` selects one
    users_count: str  # an aggregate of user sets ({} the column) into the number of users in their union
    for_update: str  # row lock of a read-modify-write inside a transaction ('' where the writer is single)


# Tools of a category (the latest category recorded for each: ``tool_catalog.category``).
_IN_CATEGORY = "({prefix}server, {prefix}tool) IN (SELECT server, tool FROM tool_catalog WHERE project_id = ? AND category = ?)"


def whole_days(f: EventFilter) -> bool:
    """Whether the filter's window is whole UTC days: then the daily cells can answer it."""
    return f.start_ms % DAY_MS == 0 and f.end_ms % DAY_MS == 0


def dims(f: EventFilter, client_column: str = "client", prefix: str = "") -> tuple[str, list[Any]]:
    """`` AND server = ? ...`` for the filter's dimensions that are set (a table with server and tool columns)."""
    sql, params = "", list[Any]()
    for column, value in (("server", f.server), ("tool", f.tool), (client_column, f.client)):
        if value is not None:
            sql += f" AND {prefix}{column} = ?"
            params.append(value)
    if f.category is not None:
        sql += " AND " + _IN_CATEGORY.format(prefix=prefix)
        params += [f.project_id, f.category]
    return sql, params


def now_ms() -> int:
    return int(time.time() * 1000)


def write_audit(store: SQLBase, conn: Any, entry: AuditEntry | None) -> None:
    """Write ``entry`` (if any) in the transaction of ``conn``."""
    if entry is not None:
        conn.execute(store._sql(_AUDIT_INSERT), tuple(entry))


class SQLBase:
    """The hooks every backend provides (``NotImplementedError`` where it must)."""

    _dialect: Dialect
    _migrations: Sequence[Migration]
    _migrations_table: str  # CREATE TABLE IF NOT EXISTS schema_migrations in the backend's types
    shared_counters: bool = False  # several collector processes share the store (PostgreSQL)

    @property
    def location(self) -> str:
        raise NotImplementedError

    def schema_version(self) -> int:
        raise NotImplementedError

    def _lock_migrations(self, conn: Any) -> None:
        """One migrator at a time (PostgreSQL: collectors starting together)."""

    def _run_migration(self, conn: Any, script: str) -> None:
        raise NotImplementedError


    def _schema_changed(self) -> None:
        """Forget what was cached about the schema (PostgreSQL: which partitions exist)."""

    def _sql(self, sql: str) -> str:
        """A statement written with ``?`` placeholders in the backend's own paramstyle."""
        raise NotImplementedError

    def _fetch(self, project_id: int | None, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read (``?`` placeholders): of one project's data, or (None) of the store's own tables."""
        raise NotImplementedError

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one write transaction."""
        raise NotImplementedError

    def _executemany(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _insert_returning_id(self, conn: Any, sql: str, params: Sequence[Any]) -> int:
        raise NotImplementedError

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values``."""
        raise NotImplementedError

    def _is_unique_violation(self, exc: BaseException | None) -> bool:
        raise NotImplementedError

    def _lock_key_name(self, conn: Any, project_id: int, name: str) -> None:
        """Serialise replacing one key name (PostgreSQL: several collectors may at once)."""

    def _prune_events(self, cut: int, chunk: int) -> int:
        raise NotImplementedError

    def _apply_rollups(self, conn: Any, by_project: dict[int, Deltas], version: int | None = None) -> None:
        """Add rollup deltas per project inside the transaction of ``conn``, to a store at schema
        ``version`` (older only while upgrading; None: the newest)."""
        raise NotImplementedError

    def _lock_users(self, conn: Any, project_id: int) -> None:
        """Keep the project's user numbering still for the rest of the transaction (if it can move)."""

    def list_keys(self, project_id: int | None = None) -> list[KeyInfo]:
        raise NotImplementedError
