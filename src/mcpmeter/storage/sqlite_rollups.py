"""Applying rollup deltas to SQLite with additive upserts (inside the ingest transaction)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any

from .. import histogram, usersets
from .rollup import DAILY_VERSION, OUTCOMES_VERSION, Cell, Deltas, activation_moves, client_user_sets, earliest, session_after, session_moves
from .sqlite_migrations import MIGRATIONS

LATEST = MIGRATIONS[-1].version

_CELL_UPSERT = """
INSERT INTO {table} (project_id, bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, kind, server, tool, client) DO UPDATE SET
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    dur_count = dur_count + excluded.dur_count,
    dur_sum = dur_sum + excluded.dur_sum,
    dur_min = min(coalesce(dur_min, excluded.dur_min), coalesce(excluded.dur_min, dur_min)),
    dur_max = max(coalesce(dur_max, excluded.dur_max), coalesce(excluded.dur_max, dur_max)),
    hist = hist_merge(hist, excluded.hist)
"""
_HOUR_UPSERT = _CELL_UPSERT.format(table="rollup_hour")
_DAY_UPSERT = _CELL_UPSERT.format(table="rollup_day")
# Schema 10 on: the cells count the calls of each outcome class apart (rollup.Cell).
_OUTCOME_COLUMNS = "caller_errors, server_errors, cancelled"
_OUTCOME_SET = """,
    caller_errors = caller_errors + excluded.caller_errors,
    server_errors = server_errors + excluded.server_errors,
    cancelled = cancelled + excluded.cancelled
"""


def _with_outcomes(upsert: str) -> str:
    head, rest = upsert.split(")\nVALUES (", 1)
    values, update = rest.split(")\nON CONFLICT", 1)
    return f"{head}, {_OUTCOME_COLUMNS})\nVALUES ({values}, ?, ?, ?)\nON CONFLICT{update.rstrip()}{_OUTCOME_SET}"


_HOUR_UPSERT_V10 = _with_outcomes(_HOUR_UPSERT)
_DAY_UPSERT_V10 = _with_outcomes(_DAY_UPSERT)


_ERROR_UPSERT = """
INSERT INTO error_hour (project_id, bucket, server, tool, client, error_type, count, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, tool, client, error_type) DO UPDATE SET
    count = count + excluded.count, last_ts = max(last_ts, excluded.last_ts)
"""

_ERROR_UPSERT_V10 = """
INSERT INTO error_hour (project_id, bucket, server, tool, client, error_type, outcome, count, last_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, tool, client, error_type, outcome) DO UPDATE SET
    count = count + excluded.count, last_ts = max(last_ts, excluded.last_ts)
"""

_EARLIEST = "min(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
_SESSION_UPSERT = f"""
INSERT INTO sessions (project_id, session_id, server, client, client_version, protocol_version, transport, user_hash,
                      first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, session_id) DO UPDATE SET
    client = coalesce(client, excluded.client),
    client_version = coalesce(client_version, excluded.client_version),
    protocol_version = coalesce(protocol_version, excluded.protocol_version),
    transport = coalesce(transport, excluded.transport),
    user_hash = coalesce(user_hash, excluded.user_hash),
    first_ts = min(first_ts, excluded.first_ts),
    last_ts = max(last_ts, excluded.last_ts),
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    init_ts = {_EARLIEST.format(c="init_ts")},
    list_ts = {_EARLIEST.format(c="list_ts")},
    first_call_ts = {_EARLIEST.format(c="first_call_ts")}
"""

_CATALOG_UPSERT = """
INSERT INTO tool_catalog (project_id, server, tool, first_seen, last_seen, last_called) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen),
    last_called = max(coalesce(last_called, excluded.last_called), coalesce(excluded.last_called, last_called))
"""
# Schema 10 on: when each tool was first and last listed, its definition's size at the last
# listing, its latest category (ties: the larger value, so the order of arrival does not matter).
_CATALOG_UPSERT_V10 = """
INSERT INTO tool_catalog (project_id, server, tool, first_seen, last_seen, last_called, listed_first, listed_last, def_bytes,
                          category, category_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen),
    last_called = max(coalesce(last_called, excluded.last_called), coalesce(excluded.last_called, last_called)),
    listed_first = min(coalesce(listed_first, excluded.listed_first), coalesce(excluded.listed_first, listed_first)),
    listed_last = max(coalesce(listed_last, excluded.listed_last), coalesce(excluded.listed_last, listed_last)),
    def_bytes = CASE WHEN listed_last IS NULL OR excluded.listed_last > listed_last THEN excluded.def_bytes
                     WHEN excluded.listed_last = listed_last THEN max(coalesce(def_bytes, excluded.def_bytes),
                                                                      coalesce(excluded.def_bytes, def_bytes))
                     ELSE def_bytes END,
    category = CASE WHEN category_ts IS NULL OR excluded.category_ts > category_ts THEN coalesce(excluded.category, category)
                    WHEN excluded.category_ts = category_ts THEN max(category, excluded.category)
                    ELSE category END,
    category_ts = max(coalesce(category_ts, excluded.category_ts), coalesce(excluded.category_ts, category_ts))
"""
_ACTIVATION_UPSERT = f"""
INSERT INTO activation (project_id, server, subject, client, first_ts, handshake_ts, list_ts, call_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, server, subject) DO UPDATE SET
    client = {_EARLIEST.format(c="client")},
    first_ts = min(first_ts, excluded.first_ts),
    handshake_ts = {_EARLIEST.format(c="handshake_ts")},
    list_ts = {_EARLIEST.format(c="list_ts")},
    call_ts = {_EARLIEST.format(c="call_ts")}
"""
# Schemas 2 and 3 (a rebuild during an upgrade, before schema 4; its migration fills last_called).
_CATALOG_UPSERT_V2 = """
INSERT INTO tool_catalog (project_id, server, tool, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)
"""

_USER_FIRST_UPSERT = """
INSERT INTO user_first (project_id, server, user_hash, first_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (project_id, server, user_hash) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)
"""

_USER_NUMBER_UPSERT = """
INSERT INTO user_number (project_id, user_hash, number, first_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (project_id, user_hash) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen)
"""

_TOOL_DAY_UPSERT = """
INSERT INTO rollup_tool_day (project_id, bucket, server, tool, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist, users)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, tool) DO UPDATE SET
    calls = calls + excluded.calls,
    errors = errors + excluded.errors,
    dur_count = dur_count + excluded.dur_count,
    dur_sum = dur_sum + excluded.dur_sum,
    dur_min = min(coalesce(dur_min, excluded.dur_min), coalesce(excluded.dur_min, dur_min)),
    dur_max = max(coalesce(dur_max, excluded.dur_max), coalesce(excluded.dur_max, dur_max)),
    hist = hist_add(hist, excluded.hist),
    users = users_union(users, excluded.users)
"""
_TOOL_DAY_UPSERT_V10 = _with_outcomes(_TOOL_DAY_UPSERT)

# Schema 11: the daily session, activation and per-client user cells (rollup.session_moves).
_SESSION_DAY_UPSERT = """
INSERT INTO session_day (project_id, day, server, client, client_version, protocol_version, sessions) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, day, server, client, client_version, protocol_version) DO UPDATE SET sessions = sessions + excluded.sessions
"""
_SESSION_TOOL_DAY_UPSERT = """
INSERT INTO session_tool_day (project_id, day, server, tool, client, client_version, protocol_version, sessions)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, day, server, tool, client, client_version, protocol_version) DO UPDATE SET
    sessions = sessions + excluded.sessions
"""
_ACTIVATION_DAY_UPSERT = """
INSERT INTO activation_day (project_id, day, server, client, followed, sessions, handshake, listed, called, listed_only)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, day, server, client) DO UPDATE SET
    followed = followed + excluded.followed, sessions = sessions + excluded.sessions, handshake = handshake + excluded.handshake,
    listed = listed + excluded.listed, called = called + excluded.called, listed_only = listed_only + excluded.listed_only
"""
_ERROR_DAY_UPSERT = _ERROR_UPSERT_V10.replace("error_hour", "error_day").replace("bucket", "day")
_USER_CLIENT_DAY_UPSERT = """
INSERT INTO user_client_day (project_id, bucket, server, client, users) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, client) DO UPDATE SET users = users_union(users, excluded.users)
"""
_USER_TOOL_CLIENT_DAY_UPSERT = """
INSERT INTO user_tool_client_day (project_id, bucket, server, tool, client, users) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, bucket, server, tool, client) DO UPDATE SET users = users_union(users, excluded.users)
"""
_EMPTIED = {  # cells a move may leave at zero, deleted so the tables hold what a rebuild would
    "session_day": "DELETE FROM session_day WHERE project_id = ? AND day = ? AND server = ? AND client = ? "
                   "AND client_version = ? AND protocol_version = ? AND sessions = 0",
    "session_tool_day": "DELETE FROM session_tool_day WHERE project_id = ? AND day = ? AND server = ? AND tool = ? "
                        "AND client = ? AND client_version = ? AND protocol_version = ? AND sessions = 0",
    "activation_day": "DELETE FROM activation_day WHERE project_id = ? AND day = ? AND server = ? AND client = ? "
                      "AND followed = 0",
}
_CHUNK = 500  # ids per IN (…) read


# Rows go in with multi-row VALUES statements of these many rows (largest first): executemany()
# releases and takes back the GIL once per row, and each time the event loop holds it (decoding
# the next requests) the writer waits; a chunk is one step. Measured at 8 concurrent requests
# of 500 events, per-row statements made the upserts cost more than the events' insert.
CHUNKS = (256, 64, 16, 4, 1)


@functools.lru_cache(maxsize=128)
def _statement(sql: str, rows: int) -> tuple[str, int]:
    """``sql`` (one ``VALUES (?, …)`` row) for ``rows`` rows, and its row width."""
    head, _, rest = sql.partition("VALUES (")
    one, _, tail = rest.partition(")")
    width = one.count("?")
    return f"{head}VALUES {', '.join(['(' + one + ')'] * rows)}{tail}", width


def execute_rows(conn: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run ``sql`` (``INSERT … VALUES (?, …) [ON CONFLICT …]``) once per row of ``rows``, in
    order, as few multi-row statements."""
    start, total = 0, len(rows)
    width = _statement(sql, 1)[1]
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    for size in CHUNKS:
        if size * width > limit and size > 1:
            continue
        while total - start >= size:
            conn.execute(_statement(sql, size)[0], list(chain.from_iterable(rows[start:start + size])))
            start += size


def _hist_merge(a: bytes | None, b: bytes | None) -> bytes | None:
    if not a:
        return b
    if not b:
        return a
    merged = histogram.decode(a)
    histogram.add_into(merged, histogram.decode(b))
    return histogram.encode(merged)


def _hist_add(a: bytes | None, b: bytes | None) -> bytes | None:
    """Merge into the dense form (rollup_tool_day)."""
    return histogram.encode_dense(histogram.packed(a) + histogram.packed(b))


class _HistSum:
    """Aggregate: the dense merge of stored histograms of either form."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, blob: bytes | None) -> None:
        self.total += histogram.packed(blob)

    def finalize(self) -> bytes | None:
        return histogram.encode_dense(self.total)


class _UserSet:
    """Aggregate: the set of user numbers."""

    def __init__(self) -> None:
        self.numbers: list[int] = []

    def step(self, number: int | None) -> None:
        if number is not None:
            self.numbers.append(number)

    def finalize(self) -> bytes | None:
        return usersets.encode(usersets.from_numbers(self.numbers))


class _UsersUnion:
    """Aggregate: the union of stored user sets."""

    def __init__(self) -> None:
        self.users = 0

    def step(self, blob: bytes | None) -> None:
        self.users |= usersets.as_int(blob)

    def finalize(self) -> bytes | None:
        return usersets.encode(self.users)


class _UsersCount(_UsersUnion):
    """Aggregate: how many users the union of stored user sets holds."""

    def finalize(self) -> int:  # type: ignore[override]
        return self.users.bit_count()


def register_functions(conn: sqlite3.Connection) -> None:
    conn.create_function("hist_merge", 2, _hist_merge, deterministic=True)
    conn.create_function("hist_add", 2, _hist_add, deterministic=True)
    conn.create_function("users_union", 2, usersets.union, deterministic=True)
    # typeshed types an aggregate as int -> int; SQLite passes and takes any of its values (here blobs and NULL)
    conn.create_aggregate("hist_sum", 1, _HistSum)  # type: ignore[arg-type]
    conn.create_aggregate("user_set", 1, _UserSet)  # type: ignore[arg-type]
    conn.create_aggregate("users_agg", 1, _UsersUnion)  # type: ignore[arg-type]
    conn.create_aggregate("users_count", 1, _UsersCount)  # type: ignore[arg-type]


def _hist_blob(c: Cell) -> bytes | None:
    """A cell's histogram as stored here: msgpack ``{bin: count}``."""
    hist = c.histogram()
    return histogram.encode(hist) if hist else None


def _cells(project_id: int, cells: dict[tuple[int, str, str, str, str], Cell], outcomes: bool) -> list[tuple[Any, ...]]:
    if outcomes:
        return [(project_id, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max, _hist_blob(c),
                 c.caller_errors, c.server_errors, c.cancelled) for key, c in cells.items()]
    return [
        (project_id, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max, _hist_blob(c))
        for key, c in cells.items()
    ]



class Known:
    """Rollup rows the writer connection knows are stored, so ingest skips re-inserting them.

    Which (day, server, tool, client, user), (hour, user) and (session, tool) rows exist, and
    each user's number and first call: most of a group's users and sessions were in the
    previous groups too, and skipping them saves most of the upserts. Only facts committed
    by this connection are added (``merge`` after COMMIT); the store clears it on any other
    write of its own and whenever ``PRAGMA data_version`` shows another connection committed
    (another worker process, a CLI prune or erasure), so it never holds a row that is gone.
    Bounded: cleared when it reaches ``limit`` entries.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.data_version: int | None = None
        self.user_day: set[tuple[Any, ...]] = set()
        self.user_hour: set[tuple[Any, ...]] = set()
        self.session_tools: set[tuple[Any, ...]] = set()
        self.user_first: dict[tuple[int, str, str], int] = {}  # (project, server, user) -> stored first_seen
        self.numbers: dict[tuple[int, str], tuple[int, int]] = {}  # (project, user) -> (number, stored first_seen)
        # Schema 11: what a stored session and funnel subject hold (rollup.session_moves, activation_moves).
        self.sessions: dict[tuple[int, str], tuple[tuple[Any, ...], frozenset[str]]] = {}  # (project, id) -> (row, tools)
        self.activation: dict[tuple[int, str, str], tuple[Any, ...]] = {}  # (project, server, subject) -> row

    def _parts(self) -> tuple[Any, ...]:
        return (self.user_day, self.user_hour, self.session_tools, self.user_first, self.numbers, self.sessions, self.activation)

    def __len__(self) -> int:
        return sum(map(len, self._parts()))

    def clear(self) -> None:
        self.data_version = None
        for part in self._parts():
            part.clear()

    def merge(self, other: Known) -> None:
        """Add what ``other`` learned in a transaction that committed after this one's last."""
        if len(self) + len(other) > self.limit:
            self.clear()
        self.data_version = other.data_version
        self.user_day |= other.user_day
        self.user_hour |= other.user_hour
        self.session_tools |= other.session_tools
        self.user_first.update(other.user_first)  # values already the stored minimum
        self.numbers.update(other.numbers)
        self.sessions.update(other.sessions)  # what this connection stored last
        self.activation.update(other.activation)


def _user_numbers(conn: sqlite3.Connection, p: int, d: Deltas, known: Known | None = None,
                  learned: Known | None = None) -> dict[str, int]:
    """Each calling user's number in this project (numbering new ones), keeping their first call."""
    first: dict[str, int] = {}
    for (_, user), ts in d.user_first.items():
        if ts < first.get(user, ts + 1):
            first[user] = ts
    numbers: dict[str, int] = {}
    stored: dict[str, int] = {}  # user -> first_seen as stored before this transaction
    users = []  # not known, or called earlier than known: read and upsert
    cached = known.numbers if known is not None else {}
    for user, ts in first.items():
        entry = cached.get((p, user))
        if entry is not None and entry[1] <= ts:
            numbers[user] = entry[0]
        else:
            users.append(user)
    for i in range(0, len(users), 500):
        chunk = users[i:i + 500]
        for user, number, seen in conn.execute(
                f"SELECT user_hash, number, first_seen FROM user_number WHERE project_id = ? AND user_hash IN ({', '.join('?' * len(chunk))})",
                (p, *chunk)):
            numbers[user] = number
            stored[user] = seen
    new = sorted((u for u in users if u not in numbers), key=lambda u: (first[u], u))
    if new:
        top = conn.execute("SELECT coalesce(max(number), -1) FROM user_number WHERE project_id = ?", (p,)).fetchone()[0]
        numbers.update((u, top + 1 + i) for i, u in enumerate(new))
    execute_rows(conn, _USER_NUMBER_UPSERT, [(p, u, numbers[u], first[u]) for u in users])
    if learned is not None:
        learned.numbers.update(((p, u), (numbers[u], min(first[u], stored.get(u, first[u])))) for u in users)
    return numbers


def apply(conn: sqlite3.Connection, project_id: int, d: Deltas, version: int = LATEST,
          known: Known | None = None, learned: Known | None = None) -> None:
    """Add the deltas to the rollups of a store at schema ``version`` (older only while upgrading).

    With ``known`` (rows the store knows are there), rows it holds are skipped; what this
    transaction stores is added to ``learned``, for the caller to merge once committed.
    """
    p = project_id
    v10 = version >= OUTCOMES_VERSION
    execute_rows(conn, _HOUR_UPSERT_V10 if v10 else _HOUR_UPSERT, _cells(p, d.hour, v10))
    execute_rows(conn, _DAY_UPSERT_V10 if v10 else _DAY_UPSERT, _cells(p, d.day, v10))
    user_day: list[tuple[Any, ...]] = []
    if d.user_day:
        user_day = [(p, *k) for k in d.user_day]
        user_hour = [(p, *k) for k in d.user_hour]
        user_first = [(p, server, user, ts) for (server, user), ts in d.user_first.items()]
        if known is not None:
            user_day = [r for r in user_day if r not in known.user_day]
            user_hour = [r for r in user_hour if r not in known.user_hour]
            firsts = known.user_first
            user_first = [r for r in user_first if r[3] < firsts.get(r[:3], r[3] + 1)]
        execute_rows(conn, "INSERT OR IGNORE INTO user_day VALUES (?, ?, ?, ?, ?, ?)", user_day)
        execute_rows(conn, "INSERT OR IGNORE INTO user_hour VALUES (?, ?, ?)", user_hour)
        execute_rows(conn, _USER_FIRST_UPSERT, user_first)
        if learned is not None:
            learned.user_day.update(user_day)
            learned.user_hour.update(user_hour)
            if user_first:  # the stored minimum: read back what the upsert kept
                keys = [r[:3] for r in user_first]
                for i in range(0, len(keys), 300):
                    chunk = keys[i:i + 300]
                    condition = " OR ".join(["(server = ? AND user_hash = ?)"] * len(chunk))
                    learned.user_first.update(
                        ((p, server, user), seen) for server, user, seen in conn.execute(
                            f"SELECT server, user_hash, first_seen FROM user_first WHERE project_id = ? AND ({condition})",
                            [p, *chain.from_iterable(k[1:] for k in chunk)]))
    if d.errors and v10:
        execute_rows(conn, _ERROR_UPSERT_V10, [(p, *k, n, last) for k, (n, last) in d.errors.items()])
        if version >= DAILY_VERSION:
            execute_rows(conn, _ERROR_DAY_UPSERT, [(p, *k, n, last) for k, (n, last) in d.error_day.items()])
    elif d.errors:  # before schema 10 error_hour had no outcome column
        merged: dict[tuple[Any, ...], list[int]] = {}
        for k, (n, last) in d.errors.items():
            entry = merged.setdefault(k[:5], [0, last])
            entry[0] += n
            entry[1] = max(entry[1], last)
        execute_rows(conn, _ERROR_UPSERT, [(p, *k, n, last) for k, (n, last) in merged.items()])
    daily = version >= DAILY_VERSION
    if d.sessions and daily:  # before the upsert: where each stored session counts now
        _session_days(conn, p, d, known, learned)
    if d.sessions:
        execute_rows(conn, _SESSION_UPSERT, [
            (p, sid, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.user_hash,
             s.first_ts, s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts)
            for sid, s in d.sessions.items()
        ])
        session_tools = [(p, sid, tool) for sid, s in d.sessions.items() for tool in s.tools]
        if known is not None:
            session_tools = [r for r in session_tools if r not in known.session_tools]
        execute_rows(conn, "INSERT OR IGNORE INTO session_tools VALUES (?, ?, ?)", session_tools)
        if learned is not None:
            learned.session_tools.update(session_tools)
    if d.catalog and v10:
        execute_rows(conn, _CATALOG_UPSERT_V10, [(p, server, tool, *span) for (server, tool), span in d.catalog.items()])
    elif d.catalog and version >= 4:
        execute_rows(conn, _CATALOG_UPSERT, [(p, server, tool, *span[:3]) for (server, tool), span in d.catalog.items()])
    elif d.catalog:
        execute_rows(conn, _CATALOG_UPSERT_V2, [(p, server, tool, *span[:2]) for (server, tool), span in d.catalog.items()])
    if d.tool_day and version >= 5:
        numbers = _user_numbers(conn, p, d, known, learned)
        execute_rows(conn, _TOOL_DAY_UPSERT_V10 if v10 else _TOOL_DAY_UPSERT, [
            (p, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max,
             histogram.encode_dense(histogram.pack(c.histogram())),
             usersets.encode(usersets.from_numbers(numbers[u] for u in d.tool_day_users.get(key, ()))),
             *((c.caller_errors, c.server_errors, c.cancelled) if v10 else ()))
            for key, c in d.tool_day.items()
        ])
        if version >= DAILY_VERSION:
            for sql, sets in zip((_USER_CLIENT_DAY_UPSERT, _USER_TOOL_CLIENT_DAY_UPSERT), client_user_sets(user_day)):
                execute_rows(conn, sql, [(*key, usersets.encode(usersets.from_numbers(numbers[u] for u in users)))
                                         for key, users in sets.items()])
    if v10:
        if d.action_day:
            execute_rows(conn, "INSERT OR IGNORE INTO action_user_day VALUES (?, ?, ?, ?, ?)", [(p, *k) for k in d.action_day])
            execute_rows(conn, "INSERT OR IGNORE INTO action_user_hour VALUES (?, ?, ?, ?, ?)", [(p, *k) for k in d.action_hour])
        if d.activation and daily:
            _activation_days(conn, p, d, known, learned)
        if d.activation:
            execute_rows(conn, _ACTIVATION_UPSERT, [(p, server, subject, *entry) for (server, subject), entry in d.activation.items()])


def _stored(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], ids: list[str]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``… WHERE … AND <id column> IN ({})``, ``params`` first) for ``ids``, in chunks."""
    rows: list[tuple[Any, ...]] = []
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        rows += conn.execute(sql.format(", ".join("?" * len(chunk))), (*params, *chunk)).fetchall()
    return rows


def _add_cells(conn: sqlite3.Connection, table: str, upsert: str, p: int, cells: dict[Any, Any]) -> None:
    """Add the changes ``cells`` (key -> count or counts) to ``table``, dropping the cells they empty."""
    execute_rows(conn, upsert, [(p, *key, *(n if isinstance(n, tuple) else (n,))) for key, n in cells.items()])
    emptied = [(p, *key) for key, n in cells.items() if min(n if isinstance(n, tuple) else (n,)) < 0]
    if emptied:
        conn.executemany(_EMPTIED[table], emptied)


def _session_days(conn: sqlite3.Connection, p: int, d: Deltas, known: Known | None, learned: Known | None) -> None:
    """Move the sessions of ``d`` in ``session_day`` / ``session_tool_day`` (before they are upserted).

    What a session holds is read from the store, unless this connection stored it last (``known``);
    what it holds afterwards goes into ``learned``."""
    cached = known.sessions if known is not None else {}
    stored: dict[str, tuple[Any, ...]] = {}
    tools: dict[str, set[str]] = {}
    unknown = []
    for sid in sorted(d.sessions):
        entry = cached.get((p, sid))
        if entry is None:
            unknown.append(sid)
        else:
            stored[sid], tools[sid] = entry[0], set(entry[1])
    if unknown:
        read = {row[0]: row[1:] for row in _stored(
            conn, "SELECT session_id, server, first_ts, client, client_version, protocol_version FROM sessions "
                  "WHERE project_id = ? AND session_id IN ({})", (p,), unknown)}
        stored.update(read)
        if read:
            for sid, tool in _stored(conn, "SELECT session_id, tool FROM session_tools WHERE project_id = ? AND session_id IN ({})",
                                     (p,), sorted(read)):
                tools.setdefault(sid, set()).add(tool)
    days, tool_days = session_moves(d.sessions, stored, tools)
    _add_cells(conn, "session_day", _SESSION_DAY_UPSERT, p, days)
    _add_cells(conn, "session_tool_day", _SESSION_TOOL_DAY_UPSERT, p, tool_days)
    if learned is not None:
        for sid, s in d.sessions.items():
            learned.sessions[(p, sid)] = (session_after(stored.get(sid), s), frozenset(tools.get(sid, set()) | s.tools))


def _activation_days(conn: sqlite3.Connection, p: int, d: Deltas, known: Known | None, learned: Known | None) -> None:
    """Move the funnel subjects of ``d`` in ``activation_day`` (before they are upserted), as ``_session_days``."""
    cached = known.activation if known is not None else {}
    stored: dict[tuple[str, str], tuple[Any, ...]] = {}
    by_server: dict[str, list[str]] = {}
    for server, subject in d.activation:
        entry = cached.get((p, server, subject))
        if entry is None:
            by_server.setdefault(server, []).append(subject)
        else:
            stored[(server, subject)] = entry
    for server, subjects in sorted(by_server.items()):
        for row in _stored(conn, "SELECT subject, client, first_ts, handshake_ts, list_ts, call_ts FROM activation "
                                 "WHERE project_id = ? AND server = ? AND subject IN ({})", (p, server), sorted(subjects)):
            stored[(server, row[0])] = row[1:]
    _add_cells(conn, "activation_day", _ACTIVATION_DAY_UPSERT, p, activation_moves(d.activation, stored))
    if learned is not None:
        for key, funnel in d.activation.items():
            old = stored.get(key)
            learned.activation[(p, *key)] = tuple(funnel) if old is None else tuple(earliest(a, b) for a, b in zip(old, funnel))
