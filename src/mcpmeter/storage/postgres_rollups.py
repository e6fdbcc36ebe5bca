"""Applying rollup deltas to PostgreSQL with additive upserts (inside the ingest transaction).

Several collectors may add to the same cells at once, so every update is relative
(``calls = calls + excluded.calls``; the histogram merge is a SQL function that adds bin
counts), never a read-modify-write in Python. One statement per table carries the deltas
of every project of the transaction as arrays, in ascending key order, and the tables are
always visited in the same order: two transactions wanting the same rows lock them in the
same order, so they queue instead of deadlocking.

Most users and sessions of a group were in the previous groups too: ``Known`` holds the rows
a store's own committed ingests stored, and ingest skips the rows that would change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .postgres_migrations import MIGRATIONS
from .rollup import (
    DAILY_VERSION,
    OUTCOMES_VERSION,
    Cell,
    Deltas,
    activation_moves,
    client_user_sets,
    session_after,
    session_moves,
    session_stays,
)

if TYPE_CHECKING:
    import psycopg

LATEST = MIGRATIONS[-1].version

_json = msgspec.json.Encoder().encode


# Schema 10 on, the cells also count the calls of each outcome class apart (rollup.Cell).
_OUTCOME_COLUMNS = ", caller_errors, server_errors, cancelled"
_OUTCOME_TYPES = ", %b::bigint[], %b::bigint[], %b::bigint[]"
_OUTCOME_SET = """,
    caller_errors = r.caller_errors + excluded.caller_errors,
    server_errors = r.server_errors + excluded.server_errors,
    cancelled = r.cancelled + excluded.cancelled"""


def _cell_upsert(table: str, outcomes: bool = False) -> str:
    return f"""
INSERT INTO {table} AS r (project_id, bucket, kind, server, tool, client, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist{
    _OUTCOME_COLUMNS if outcomes else ""})
SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
                     %b::bigint[], %b::float8[], %b::float8[], %b::float8[], %b::jsonb[]{_OUTCOME_TYPES if outcomes else ""})
ON CONFLICT (project_id, bucket, kind, server, tool, client) DO UPDATE SET
    calls = r.calls + excluded.calls,
    errors = r.errors + excluded.errors,
    dur_count = r.dur_count + excluded.dur_count,
    dur_sum = r.dur_sum + excluded.dur_sum,
    dur_min = least(r.dur_min, excluded.dur_min),
    dur_max = greatest(r.dur_max, excluded.dur_max),
    hist = mcpmeter_hist_merge(r.hist, excluded.hist){_OUTCOME_SET if outcomes else ""}
"""


_HOUR_UPSERT = _cell_upsert("rollup_hour")
_DAY_UPSERT = _cell_upsert("rollup_day")
_HOUR_UPSERT_V10 = _cell_upsert("rollup_hour", outcomes=True)
_DAY_UPSERT_V10 = _cell_upsert("rollup_day", outcomes=True)

_USER_DAY = """
INSERT INTO user_day SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[])
ON CONFLICT DO NOTHING
"""
_USER_HOUR = "INSERT INTO user_hour SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[]) ON CONFLICT DO NOTHING"
_USER_FIRST = """
INSERT INTO user_first AS r SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[])
ON CONFLICT (project_id, server, user_hash) DO UPDATE SET first_seen = least(r.first_seen, excluded.first_seen)
"""
_ERRORS = """
INSERT INTO error_hour AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
                                                 %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, bucket, server, tool, client, error_type) DO UPDATE SET
    count = r.count + excluded.count, last_ts = greatest(r.last_ts, excluded.last_ts)
"""
_ERRORS_V10 = """
INSERT INTO error_hour AS r (project_id, bucket, server, tool, client, error_type, outcome, count, last_ts)
SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
                                                 %b::text[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, bucket, server, tool, client, error_type, outcome) DO UPDATE SET
    count = r.count + excluded.count, last_ts = greatest(r.last_ts, excluded.last_ts)
"""
_SESSIONS = """
INSERT INTO sessions AS r (project_id, session_id, server, client, client_version, protocol_version, transport, user_hash,
                           first_ts, last_ts, calls, errors, init_ts, list_ts, first_call_ts)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                     %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, session_id) DO UPDATE SET
    client = coalesce(r.client, excluded.client),
    client_version = coalesce(r.client_version, excluded.client_version),
    protocol_version = coalesce(r.protocol_version, excluded.protocol_version),
    transport = coalesce(r.transport, excluded.transport),
    user_hash = coalesce(r.user_hash, excluded.user_hash),
    first_ts = least(r.first_ts, excluded.first_ts),
    last_ts = greatest(r.last_ts, excluded.last_ts),
    calls = r.calls + excluded.calls,
    errors = r.errors + excluded.errors,
    init_ts = least(r.init_ts, excluded.init_ts),
    list_ts = least(r.list_ts, excluded.list_ts),
    first_call_ts = least(r.first_call_ts, excluded.first_call_ts)
"""
_SESSION_TOOLS = "INSERT INTO session_tools SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[]) ON CONFLICT DO NOTHING"
_CATALOG = """
INSERT INTO tool_catalog AS r (project_id, server, tool, first_seen, last_seen, last_called)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = least(r.first_seen, excluded.first_seen), last_seen = greatest(r.last_seen, excluded.last_seen),
    last_called = greatest(r.last_called, excluded.last_called)
"""
# Schema 10 on: listings, the definition's size at the last one, the latest category (ties:
# the larger value, so the order of arrival does not matter; as rollup._seen).
_CATALOG_V10 = """
INSERT INTO tool_catalog AS r (project_id, server, tool, first_seen, last_seen, last_called, listed_first, listed_last,
                               def_bytes, category, category_ts)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
                     %b::bigint[], %b::bigint[], %b::text[], %b::bigint[])
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = least(r.first_seen, excluded.first_seen), last_seen = greatest(r.last_seen, excluded.last_seen),
    last_called = greatest(r.last_called, excluded.last_called),
    listed_first = least(r.listed_first, excluded.listed_first),
    listed_last = greatest(r.listed_last, excluded.listed_last),
    def_bytes = CASE WHEN r.listed_last IS NULL OR excluded.listed_last > r.listed_last THEN excluded.def_bytes
                     WHEN excluded.listed_last = r.listed_last THEN greatest(r.def_bytes, excluded.def_bytes)
                     ELSE r.def_bytes END,
    category = CASE WHEN r.category_ts IS NULL OR excluded.category_ts > r.category_ts THEN coalesce(excluded.category, r.category)
                    WHEN excluded.category_ts = r.category_ts THEN greatest(r.category, excluded.category)
                    ELSE r.category END,
    category_ts = greatest(r.category_ts, excluded.category_ts)
"""
_ACTION_DAY = """
INSERT INTO action_user_day SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[])
ON CONFLICT DO NOTHING
"""
_ACTION_HOUR = """
INSERT INTO action_user_hour SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[])
ON CONFLICT DO NOTHING
"""
_ACTIVATION = """
INSERT INTO activation AS r (project_id, server, subject, client, first_ts, handshake_ts, list_ts, call_ts)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, server, subject) DO UPDATE SET
    client = least(r.client, excluded.client),
    first_ts = least(r.first_ts, excluded.first_ts),
    handshake_ts = least(r.handshake_ts, excluded.handshake_ts),
    list_ts = least(r.list_ts, excluded.list_ts),
    call_ts = least(r.call_ts, excluded.call_ts)
"""
# Schema 2 and 3 (a rebuild during an upgrade that has not reached schema 4; its migration fills last_called).
_CATALOG_V2 = """
INSERT INTO tool_catalog AS r (project_id, server, tool, first_seen, last_seen)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, server, tool) DO UPDATE SET
    first_seen = least(r.first_seen, excluded.first_seen), last_seen = greatest(r.last_seen, excluded.last_seen)
"""


_USER_NUMBER_FIRST = """
INSERT INTO user_number AS r (project_id, user_hash, number, first_seen)
SELECT * FROM unnest(%b::bigint[], %b::text[], %b::int[], %b::bigint[])
ON CONFLICT (project_id, user_hash) DO UPDATE SET first_seen = least(r.first_seen, excluded.first_seen)
"""
def _tool_day_upsert(outcomes: bool = False) -> str:
    return f"""
INSERT INTO rollup_tool_day AS r (project_id, bucket, server, tool, calls, errors, dur_count, dur_sum, dur_min, dur_max, hist, users{
    _OUTCOME_COLUMNS if outcomes else ""})
SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                     %b::float8[], %b::float8[], %b::float8[], %b::jsonb[], %b::varbit[]{_OUTCOME_TYPES if outcomes else ""})
ON CONFLICT (project_id, bucket, server, tool) DO UPDATE SET
    calls = r.calls + excluded.calls,
    errors = r.errors + excluded.errors,
    dur_count = r.dur_count + excluded.dur_count,
    dur_sum = r.dur_sum + excluded.dur_sum,
    dur_min = least(r.dur_min, excluded.dur_min),
    dur_max = greatest(r.dur_max, excluded.dur_max),
    hist = mcpmeter_hist_merge(r.hist, excluded.hist),
    users = mcpmeter_users_union(r.users, excluded.users){_OUTCOME_SET if outcomes else ""}
"""


# Schema 11: the daily session, activation and per-client user cells. A stored session or
# funnel subject may move between cells (rollup.session_moves), so its stored row is read
# before the upsert, locked: new rows go in first (ON CONFLICT DO NOTHING RETURNING: a row
# another collector is inserting makes this one wait, then counts as stored), the stored
# rows are then read FOR UPDATE, and only then upserted. Every collector changes a session's
# cells while it holds that session's row lock, so their moves never cross. (Inside ingest's
# pipeline these reads are the two points where it waits for answers; a transaction whose
# sessions are all known not to move skips both: _session_days.)
_NEW_SESSIONS = _SESSIONS.split("ON CONFLICT")[0] + "ON CONFLICT DO NOTHING RETURNING project_id, session_id"
_NEW_SUBJECTS = _ACTIVATION.split("ON CONFLICT")[0] + "ON CONFLICT DO NOTHING RETURNING project_id, server, subject"
# The stored sessions of a transaction are locked in one statement, in key order; only those of
# the second list are read (the others are known: _session_days).
_STORED_SESSIONS = ("WITH locked AS MATERIALIZED (SELECT session_id, server, first_ts, client, client_version, protocol_version "
                    "FROM sessions WHERE project_id = %s AND session_id = ANY(%b::text[]) ORDER BY session_id FOR UPDATE) "
                    "SELECT * FROM locked WHERE session_id = ANY(%b::text[])")
_STORED_TOOLS = "SELECT session_id, tool FROM session_tools WHERE project_id = %s AND session_id = ANY(%b)"
_STORED_SUBJECTS = ("SELECT server, subject, client, first_ts, handshake_ts, list_ts, call_ts FROM activation "
                    "WHERE project_id = %s AND (server, subject) IN (SELECT * FROM unnest(%b::text[], %b::text[])) "
                    "ORDER BY server, subject FOR UPDATE")
_SESSION_DAY = """
INSERT INTO session_day AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
                                                  %b::bigint[])
ON CONFLICT (project_id, day, server, client, client_version, protocol_version) DO UPDATE SET sessions = r.sessions + excluded.sessions
"""
_SESSION_TOOL_DAY = """
INSERT INTO session_tool_day AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[],
                                                       %b::text[], %b::bigint[])
ON CONFLICT (project_id, day, server, tool, client, client_version, protocol_version) DO UPDATE SET
    sessions = r.sessions + excluded.sessions
"""
_ACTIVATION_DAY = """
INSERT INTO activation_day AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
                                                     %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[])
ON CONFLICT (project_id, day, server, client) DO UPDATE SET
    followed = r.followed + excluded.followed, sessions = r.sessions + excluded.sessions,
    handshake = r.handshake + excluded.handshake, listed = r.listed + excluded.listed, called = r.called + excluded.called,
    listed_only = r.listed_only + excluded.listed_only
"""
_EMPTIED = """
DELETE FROM {table} t USING unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[]) AS c(project_id, day, server, client)
WHERE t.project_id = c.project_id AND t.day = c.day AND t.server = c.server AND t.client = c.client AND t.{count} = 0
"""  # cells a move left at zero (a superset of keys is fine: only empty cells go), as a rebuild would hold
_ERROR_DAY = _ERRORS_V10.replace("error_hour", "error_day").replace("bucket", "day")
_USER_CLIENT_DAY = """
INSERT INTO user_client_day AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::varbit[])
ON CONFLICT (project_id, bucket, server, client) DO UPDATE SET users = mcpmeter_users_union(r.users, excluded.users)
"""
_USER_TOOL_CLIENT_DAY = """
INSERT INTO user_tool_client_day AS r SELECT * FROM unnest(%b::bigint[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::varbit[])
ON CONFLICT (project_id, bucket, server, tool, client) DO UPDATE SET users = mcpmeter_users_union(r.users, excluded.users)
"""

_TOOL_DAY = _tool_day_upsert()
_TOOL_DAY_V10 = _tool_day_upsert(outcomes=True)
USERS_LOCK = 0x6D63_7075  # with the project id: numbering a project's new users, one transaction at a time
FORGET_LOCK = 0x6D63_6667  # shared by ingest; exclusive by a transaction that deletes rollup rows (Known)
_DELETIONS = "rollup_deletions"  # the security_state row counting those transactions


class Known:
    """Rollup rows a store knows are stored, so ingest skips the rows that would change nothing.

    Which (day, server, tool, client, user), (hour, user) and (session, tool) rows exist, and
    for first-seen and activation rows an upper bound of each stored time (they only ever go
    down: ``least``). Only what a committed ingest of this store sent is added (``merge``).

    Other collectors only add rows, which leaves every fact true; only deleting rows (prune,
    erasure, migrations) can make one false. Such a transaction takes ``FORGET_LOCK``
    exclusively and counts itself in ``security_state`` (``forget``); every ingest takes the
    lock shared and reads the count first (``generation``) and uses the facts only if they were
    learned at that count. So no deletion runs while an ingest relies on them, and any that
    ran before makes it forget them all. Bounded: cleared at ``limit`` entries.
    """

    def __init__(self, limit: int = 100_000) -> None:  # as SQLite's: about 20 MiB at most
        self.limit = limit
        self.generation: int | None = None
        self.user_day: set[tuple[Any, ...]] = set()
        self.user_hour: set[tuple[Any, ...]] = set()
        self.session_tools: set[tuple[Any, ...]] = set()
        self.user_first: dict[tuple[int, str, str], int] = {}  # (project, server, user) -> stored first_seen is <= this
        self.numbers: dict[tuple[int, str], tuple[int, int]] = {}  # (project, user) -> (number, stored first_seen <= this)
        # (project, server, subject) -> bounds of (client, first_ts, handshake_ts, list_ts, call_ts); None: may be unset
        self.activation: dict[tuple[int, str, str], tuple[Any, ...]] = {}
        # (project, session) -> bounds of what picks its daily cells (rollup.session_stays): stored first_ts is <= this;
        # whether client, client_version, protocol_version are set (True: set for good; False: may be unset); tools it has
        self.sessions: dict[tuple[int, str], tuple[int, tuple[bool, ...], frozenset[str]]] = {}

    def _parts(self) -> tuple[Any, ...]:
        return (self.user_day, self.user_hour, self.session_tools, self.user_first, self.numbers, self.activation, self.sessions)

    def __len__(self) -> int:
        return sum(map(len, self._parts()))

    def clear(self) -> None:
        self.generation = None
        for part in self._parts():
            part.clear()

    def merge(self, learned: Known) -> None:
        """Add what a committed ingest learned (at ``learned.generation``; facts of an older
        generation than held may be void: dropped)."""
        if learned.generation is None or (self.generation is not None and learned.generation < self.generation):
            return
        if learned.generation != self.generation or len(self) + len(learned) > self.limit:
            self.clear()
            self.generation = learned.generation
        self.user_day |= learned.user_day
        self.user_hour |= learned.user_hour
        self.session_tools |= learned.session_tools
        for first_key, ts in learned.user_first.items():
            self.user_first[first_key] = min(ts, self.user_first.get(first_key, ts))
        for user_key, (number, ts) in learned.numbers.items():
            self.numbers[user_key] = (number, min(ts, self.numbers.get(user_key, (number, ts))[1]))
        for subject_key, bounds in learned.activation.items():
            old = self.activation.get(subject_key)
            self.activation[subject_key] = bounds if old is None else tuple(
                b if a is None else a if b is None else min(a, b) for a, b in zip(old, bounds))
        for session_key, (first, named, tools) in learned.sessions.items():
            held = self.sessions.get(session_key)
            self.sessions[session_key] = (first, named, tools) if held is None else (
                min(first, held[0]), tuple(a or b for a, b in zip(named, held[1])), tools | held[2])


def generation(conn: psycopg.Connection) -> int:
    """Ingest's first statement: no rollup row is deleted until it commits; how many
    deleting transactions committed so far (``Known``)."""
    row = conn.execute("SELECT pg_advisory_xact_lock_shared(%s), (SELECT value FROM security_state WHERE name = %s)",
                       (FORGET_LOCK, _DELETIONS)).fetchone()
    return int(row[1]) if row and row[1] is not None else 0


def forget(conn: psycopg.Connection) -> None:
    """In a transaction that may delete rollup rows, before it does: every store's ``Known`` is void."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (FORGET_LOCK,))
    conn.execute("INSERT INTO security_state AS s VALUES (%s, 1) ON CONFLICT (name) DO UPDATE SET value = s.value + 1",
                 (_DELETIONS,))


def _no_change(entry: Sequence[Any], bounds: Sequence[Any]) -> bool:
    """Whether ``least`` of stored values under ``bounds`` and ``entry`` leaves them as they are."""
    return all(v is None or (b is not None and v >= b) for v, b in zip(entry, bounds))


def bits(users: int) -> str | None:
    """A user set (bit n = user number n) as a PostgreSQL bit string, user 0 first."""
    return format(users, "b")[::-1] if users else None


def from_bits(text: str | None) -> int:
    return int(text[::-1], 2) if text else 0


def first_calls(by_project: dict[int, Deltas]) -> dict[int, dict[str, int]]:
    """Per project, each calling user's first call in the deltas (any server)."""
    out: dict[int, dict[str, int]] = {}
    for p, d in by_project.items():
        first = out.setdefault(p, {})
        for (_, user), ts in d.user_first.items():
            if ts < first.get(user, ts + 1):
                first[user] = ts
    return out


def number_users(conn: psycopg.Connection, users: dict[int, dict[str, int]],
                 known: Known | None = None) -> dict[int, dict[str, int]]:
    """Each user's number in its project, numbering new users 0, 1, 2 … in order of first call.

    Runs first in the ingest transaction. Only a transaction that meets a user never seen
    takes the project's advisory lock (the numbers must be dense per project, so two
    collectors must not hand out the same next number); it holds no row locks yet then, so
    it cannot be part of a deadlock.
    """
    numbers: dict[int, dict[str, int]] = {}
    cached = known.numbers if known is not None else {}
    for p in sorted(users):
        mine: dict[str, int] = {}
        wanted = []
        for u in sorted(users[p]):
            entry = cached.get((p, u))
            if entry is None:
                wanted.append(u)
            else:
                mine[u] = entry[0]
        if wanted:
            select = "SELECT user_hash, number FROM user_number WHERE project_id = %s AND user_hash = ANY(%b)"
            stored: dict[str, int] = dict(conn.execute(select, (p, wanted)).fetchall())
            if len(stored) < len(wanted):
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (USERS_LOCK, p))
                stored = dict(conn.execute(select, (p, wanted)).fetchall())
                new = sorted((u for u in wanted if u not in stored), key=lambda u: (users[p][u], u))
                if new:
                    row = conn.execute("SELECT coalesce(max(number), -1) FROM user_number WHERE project_id = %s", (p,)).fetchone()
                    top = int(row[0]) if row else -1
                    stored.update((u, top + 1 + i) for i, u in enumerate(new))
                    conn.execute("INSERT INTO user_number (project_id, user_hash, number, first_seen) "
                                 "SELECT %s, * FROM unnest(%b::text[], %b::int[], %b::bigint[])",
                                 (p, new, [stored[u] for u in new], [users[p][u] for u in new]))
            mine.update(stored)
        numbers[p] = mine
    return numbers


def _columns(rows: list[tuple[Any, ...]], width: int, floats: tuple[int, ...] = ()) -> list[list[Any]]:
    """Rows (already in key order) as one list per column: the unnest() parameters, sent
    in binary. ``floats`` are the double precision columns (a binary array is of one type)."""
    if not rows:
        return [[] for _ in range(width)]
    columns = [list(column) for column in zip(*rows)]
    for i in floats:
        columns[i] = [None if v is None else float(v) for v in columns[i]]
    return columns


def _run(conn: psycopg.Connection, sql: str, rows: Iterable[tuple[Any, ...]], width: int, floats: tuple[int, ...] = ()) -> None:
    ordered = sorted(rows)  # ascending key order (the key leads each row); str order is "C" collation order
    if ordered:
        conn.execute(sql, _columns(ordered, width, floats))


def _hist_json(c: Cell) -> str | None:
    """A cell's histogram as stored here: a JSONB ``{bin: count}`` object."""
    hist = c.histogram()
    return _json(hist).decode() if hist else None


def _cells(by_project: dict[int, Deltas], grain: str, outcomes: bool) -> list[tuple[Any, ...]]:
    return [
        (p, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max, _hist_json(c),
         *((c.caller_errors, c.server_errors, c.cancelled) if outcomes else ()))
        for p, d in by_project.items() for key, c in getattr(d, grain).items()
    ]


def apply(conn: psycopg.Connection, by_project: dict[int, Deltas], version: int = LATEST, numbers: dict[int, dict[str, int]] | None = None,
          known: Known | None = None, learned: Known | None = None) -> None:
    """Add the deltas of every project to the rollups of a store at schema ``version``
    (older only while upgrading), table by table, in key order. From schema 5 on,
    ``numbers`` (``number_users``) must hold every calling user's number.

    With ``known``, the rows it says would change nothing are skipped; the rows of those
    tables that are sent go into ``learned``, for the caller to merge once committed."""
    items = by_project.items()
    skip = known if known is not None else Known()  # empty: nothing skipped
    out = learned if learned is not None else Known()
    v10 = version >= OUTCOMES_VERSION
    width = 16 if v10 else 13
    _run(conn, _HOUR_UPSERT_V10 if v10 else _HOUR_UPSERT, _cells(by_project, "hour", v10), width, (9, 10, 11))
    _run(conn, _DAY_UPSERT_V10 if v10 else _DAY_UPSERT, _cells(by_project, "day", v10), width, (9, 10, 11))
    user_day = [r for r in ((p, *key) for p, d in items for key in d.user_day) if r not in skip.user_day]
    user_hour = [r for r in ((p, *key) for p, d in items for key in d.user_hour) if r not in skip.user_hour]
    user_first = [(p, server, user, ts) for p, d in items for (server, user), ts in d.user_first.items()
                  if ts < skip.user_first.get((p, server, user), ts + 1)]
    _run(conn, _USER_DAY, user_day, 6)
    _run(conn, _USER_HOUR, user_hour, 3)
    _run(conn, _USER_FIRST, user_first, 4)
    out.user_day.update(user_day)
    out.user_hour.update(user_hour)
    out.user_first.update(((p, server, user), ts) for p, server, user, ts in user_first)
    if v10:
        _run(conn, _ERRORS_V10, [(p, *k, n, last) for p, d in items for k, (n, last) in d.errors.items()], 9)
        if version >= DAILY_VERSION:
            _run(conn, _ERROR_DAY, [(p, *k, n, last) for p, d in items for k, (n, last) in d.error_day.items()], 9)
    else:  # before schema 10 error_hour had no outcome column
        merged: dict[tuple[Any, ...], list[int]] = {}
        for p, d in items:
            for k, (n, last) in d.errors.items():
                entry = merged.setdefault((p, *k[:5]), [0, last])
                entry[0] += n
                entry[1] = max(entry[1], last)
        _run(conn, _ERRORS, [(*k, n, last) for k, (n, last) in merged.items()], 8)
    sessions = [(p, sid, s.server, s.client, s.client_version, s.protocol_version, s.transport, s.user_hash,
                 s.first_ts, s.last_ts, s.calls, s.errors, s.init_ts, s.list_ts, s.first_call_ts)
                for p, d in items for sid, s in d.sessions.items()]
    daily = version >= DAILY_VERSION
    if daily:  # the new sessions go in here; the stored ones are read, locked, and moved in the daily cells
        sessions = _session_days(conn, by_project, sessions, skip, out)
    _run(conn, _SESSIONS, sessions, 15)
    session_tools = [r for r in ((p, sid, tool) for p, d in items for sid, s in d.sessions.items() for tool in s.tools)
                     if r not in skip.session_tools]
    _run(conn, _SESSION_TOOLS, session_tools, 3)
    out.session_tools.update(session_tools)
    if v10:
        _run(conn, _CATALOG_V10, [(p, server, tool, *span) for p, d in items for (server, tool), span in d.catalog.items()], 11)
    elif version >= 4:
        _run(conn, _CATALOG, [(p, server, tool, *span[:3]) for p, d in items for (server, tool), span in d.catalog.items()], 6)
    else:
        _run(conn, _CATALOG_V2, [(p, server, tool, *span[:2]) for p, d in items for (server, tool), span in d.catalog.items()], 5)
    if version >= 5:
        assert numbers is not None, "schema 5 rollups need the users' numbers"
        firsts = first_calls(by_project)
        first_rows = [(p, user, numbers[p][user], ts) for p, users in firsts.items() for user, ts in users.items()
                      if ts < skip.numbers.get((p, user), (0, ts + 1))[1]]
        _run(conn, _USER_NUMBER_FIRST, first_rows, 4)
        out.numbers.update(((p, user), (number, ts)) for p, user, number, ts in first_rows)
        rows = []
        for p, d in items:
            number = numbers.get(p, {})
            for key, c in d.tool_day.items():
                users = 0
                for user in d.tool_day_users.get(key, ()):
                    users |= 1 << number[user]
                rows.append((p, *key, c.calls, c.errors, c.dur_count, c.dur_sum, c.dur_min, c.dur_max,
                             _hist_json(c), bits(users), *((c.caller_errors, c.server_errors, c.cancelled) if v10 else ())))
        _run(conn, _TOOL_DAY_V10 if v10 else _TOOL_DAY, rows, 15 if v10 else 12, (7, 8, 9))
        if version >= DAILY_VERSION:
            for sql, width, sets in zip((_USER_CLIENT_DAY, _USER_TOOL_CLIENT_DAY), (5, 6), client_user_sets(user_day)):
                _run(conn, sql, [(*key, bits(sum(1 << numbers[key[0]][u] for u in users))) for key, users in sets.items()], width)
    if v10:
        _run(conn, _ACTION_DAY, [(p, *k) for p, d in items for k in d.action_day], 5)
        _run(conn, _ACTION_HOUR, [(p, *k) for p, d in items for k in d.action_hour], 5)
        activation = [(p, server, subject, *entry) for p, d in items for (server, subject), entry in d.activation.items()
                      if (bounds := skip.activation.get((p, server, subject))) is None or not _no_change(entry, bounds)]
        stored = _activation_days(conn, activation) if daily else activation  # as the sessions
        _run(conn, _ACTIVATION, stored, 8)
        out.activation.update(((p, server, subject), tuple(entry)) for p, server, subject, *entry in activation)



def _new_rows(conn: psycopg.Connection, sql: str, rows: list[tuple[Any, ...]], width: int) -> set[tuple[Any, ...]]:
    """Insert the ``rows`` not stored yet (``sql`` ends in ON CONFLICT DO NOTHING RETURNING their keys)."""
    ordered = sorted(rows)
    if not ordered:
        return set()
    return {tuple(r) for r in conn.execute(sql, _columns(ordered, width)).fetchall()}


def _add_cells(conn: psycopg.Connection, sql: str, table: str, rows: list[tuple[Any, ...]], width: int, key: int) -> None:
    """Add the cell changes ``rows`` ((project, *key, *counts), the counts from position ``key``)
    to ``table``, then drop the cells they emptied (by project, day, server and client: _EMPTIED)."""
    _run(conn, sql, rows, width)
    client = 4 if table == "session_tool_day" else 3
    emptied = sorted({(r[0], r[1], r[2], r[client]) for r in rows if min(r[key:]) < 0})
    if emptied:
        count = "followed" if table == "activation_day" else "sessions"
        conn.execute(_EMPTIED.format(table=table, count=count), _columns(emptied, 4))


def _session_days(conn: psycopg.Connection, by_project: dict[int, Deltas], rows: list[tuple[Any, ...]],
                  known: Known, learned: Known) -> list[tuple[Any, ...]]:
    """Insert the new sessions of ``rows``, lock and read the stored ones, and move every one
    in ``session_day`` / ``session_tool_day``; returns the rows still to upsert (the stored ones).

    A session ``known`` holds and whose delta cannot move it (``rollup.session_stays``) is
    neither inserted nor read, only locked with the others (no answer awaited). Exact with
    other collectors writing: what ``known`` holds came from this store's committed ingests at
    the current generation, so the session is stored (no deletion since; none until we commit)
    and its first_ts, names and tools are bounds that only other writes can make tighter;
    if the delta stays within them, the upsert leaves the session in the cells it is in,
    whoever put it there. Why still lock it: every session's row lock comes before the daily
    cells' locks (see ``_NEW_SESSIONS``); its upsert after them could deadlock with a
    collector that moves it. When no session of the transaction may move, no daily cell is
    touched and the upsert alone locks them."""
    cached = known.sessions
    held: set[tuple[int, str]] = set()  # known to be stored: not inserted
    stays: set[tuple[int, str]] = set()  # … and not moved: not read
    for p, d in by_project.items():
        for sid, s in d.sessions.items():
            entry = cached.get((p, sid))
            if entry is not None:
                held.add((p, sid))
                if session_stays(s, *entry):
                    stays.add((p, sid))
    if len(stays) == len(rows):
        return rows
    new = _new_rows(conn, _NEW_SESSIONS, [r for r in rows if (r[0], r[1]) not in held], 15)
    days: list[tuple[Any, ...]] = []
    tool_days: list[tuple[Any, ...]] = []
    for p, d in sorted(by_project.items()):
        if not d.sessions:
            continue
        ids = sorted(sid for sid in d.sessions if (p, sid) not in new)
        wanted = [sid for sid in ids if (p, sid) not in stays]
        stored: dict[str, tuple[Any, ...]] = {}
        tools: dict[str, set[str]] = {}
        if ids:
            locked = conn.execute(_STORED_SESSIONS, (p, ids, wanted))
            if wanted:
                stored = {r[0]: tuple(r[1:]) for r in locked.fetchall()}
                for sid, tool in conn.execute(_STORED_TOOLS, (p, wanted)).fetchall():
                    tools.setdefault(sid, set()).add(tool)
        moving = {sid: s for sid, s in d.sessions.items() if (p, sid) not in stays}
        day, tool_day = session_moves(moving, stored, tools)
        days += [(p, *key, n) for key, n in day.items()]
        tool_days += [(p, *key, n) for key, n in tool_day.items()]
        for sid, s in moving.items():  # bounds of what the session holds once this commits
            after = session_after(stored.get(sid), s)
            named = tuple(v is not None for v in after[2:])
            learned.sessions[(p, sid)] = (after[1], named, frozenset(tools.get(sid, set()) | s.tools))
            learned.session_tools.update((p, sid, tool) for tool in tools.get(sid, ()))
    _add_cells(conn, _SESSION_DAY, "session_day", days, 7, 6)
    _add_cells(conn, _SESSION_TOOL_DAY, "session_tool_day", tool_days, 8, 7)
    return [r for r in rows if (r[0], r[1]) not in new]


def _activation_days(conn: psycopg.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """As ``_session_days``, for the funnel rows ``rows`` (project, server, subject, *entry) and ``activation_day``."""
    new = _new_rows(conn, _NEW_SUBJECTS, rows, 8)
    by_project: dict[int, dict[tuple[str, str], list[Any]]] = {}
    for p, server, subject, *entry in rows:
        by_project.setdefault(p, {})[(server, subject)] = entry
    cells: list[tuple[Any, ...]] = []
    for p, activation in sorted(by_project.items()):
        keys = sorted(k for k in activation if (p, *k) not in new)
        stored: dict[tuple[str, str], tuple[Any, ...]] = {}
        if keys:
            servers, subjects = [k[0] for k in keys], [k[1] for k in keys]
            stored = {(r[0], r[1]): tuple(r[2:]) for r in conn.execute(_STORED_SUBJECTS, (p, servers, subjects)).fetchall()}
        cells += [(p, *key, *counts) for key, counts in activation_moves(activation, stored).items()]
    _add_cells(conn, _ACTIVATION_DAY, "activation_day", cells, 10, 4)
    return [r for r in rows if (r[0], r[1], r[2]) not in new]
