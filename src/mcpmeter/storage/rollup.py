"""Aggregating newly stored events into rollup deltas, independent of the backend.

The writer calls ``aggregate`` with the rows that were really inserted (duplicates already
removed), so rollups stay exact under retried batches. Backends apply the deltas with
additive upserts in the same transaction as the raw rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import msgspec

from .. import histogram
from ..events import Row
from ..histogram import bin_of
from ..protocol import (
    AUTH,
    CALLER_ERROR_TYPES,
    CANCELLED,
    ERROR_NAMES,
    HANDSHAKE_KINDS,
    INITIALIZE,
    JSONRPC_ERROR,
    LIST_TOOLS,
    MCP_METHODS,
    OUTCOME_ATTRIBUTE,
    OUTCOME_CALLER_ERROR,
    OUTCOME_CANCELLED,
    OUTCOME_OK,
    OUTCOME_SERVER_ERROR,
    OUTCOME_TOOL_ERROR,
    OUTCOMES,
    SDK_DROPPED,
    SERVER_DISCOVER,
    SESSION_END,
    SESSION_START,
    TOOL_CALL,
    TOOL_ERROR,
    TOOL_LISTED,
    kind_for_method,
    outcome_of,
)

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
# The error names that are the server's fault (``protocol.outcome_of``: any other JSON-RPC
# name, a code without a name, no type at all); any other name is an exception of the tool's code.
SERVER_ERROR_NAMES = frozenset(set(ERROR_NAMES.values()) - CALLER_ERROR_TYPES | {JSONRPC_ERROR})
ERROR_OUTCOMES = (OUTCOME_TOOL_ERROR, OUTCOME_SERVER_ERROR, OUTCOME_CALLER_ERROR)  # what ``errors`` counts
FUNNEL_KINDS = (*HANDSHAKE_KINDS, LIST_TOOLS, TOOL_CALL)  # what the activation funnel follows
_decode_attributes = msgspec.json.Decoder(dict)
# The kinds the MCP protocol and mcpmeter itself record; any other kind without a "/" (an MCP
# method not named here keeps its slash) is a usage action of the owner's (``page_view``).
PROTOCOL_KINDS = frozenset({TOOL_CALL, LIST_TOOLS, INITIALIZE, SERVER_DISCOVER, SESSION_START, SESSION_END, TOOL_LISTED,
                            SDK_DROPPED, AUTH, *(k for k in map(kind_for_method, MCP_METHODS) if k)})


def is_action(kind: str) -> bool:
    """An event of another usage action (a directory's ``page_view``, ``installation``)."""
    return kind not in PROTOCOL_KINDS and "/" not in kind


def outcome_class(ok: int | None, error_type: str | None, attributes: str | None) -> str:
    """The outcome class of a stored event (``protocol.OUTCOMES``): its ``mcp.outcome``
    attribute when a capture path recorded one, else ``protocol.outcome_of`` of ``ok`` and
    ``error_type``. The common success is decided without reading the attributes."""
    if ok == 1 and error_type is None and (attributes is None or OUTCOME_ATTRIBUTE not in attributes):
        return OUTCOME_OK
    attrs = None
    if attributes is not None and OUTCOME_ATTRIBUTE in attributes:
        try:
            attrs = _decode_attributes.decode(attributes)
        except msgspec.DecodeError:
            attrs = None
    return outcome_of(None if ok is None else bool(ok), error_type, attrs)


def outcome_case(recorded: str, numeric: str) -> str:
    """``outcome_class`` as a SQL expression over an events row (``ok``, ``error_type``), given the
    backend's expressions for its recorded ``mcp.outcome`` attribute and for "error_type is a
    number": for the migration that fills the outcome counts from the raw events."""
    def names(values: Iterable[str]) -> str:
        return ", ".join(f"'{v}'" for v in sorted(values))
    return (f"CASE WHEN {recorded} IN ({names(OUTCOMES)}) THEN {recorded} "
            f"WHEN error_type = '{CANCELLED}' THEN '{OUTCOME_CANCELLED}' "
            f"WHEN ok = 1 OR (ok IS NULL AND error_type IS NULL) THEN '{OUTCOME_OK}' "
            f"WHEN error_type IN ({names(CALLER_ERROR_TYPES)}) THEN '{OUTCOME_CALLER_ERROR}' "
            f"WHEN error_type = '{TOOL_ERROR}' THEN '{OUTCOME_TOOL_ERROR}' "
            f"WHEN error_type IS NULL OR error_type IN ({names(SERVER_ERROR_NAMES)}) OR {numeric} THEN '{OUTCOME_SERVER_ERROR}' "
            f"ELSE '{OUTCOME_TOOL_ERROR}' END")


def outcome_backfill(recorded: str, numeric: str) -> str:
    """SQL that fills the outcome counts of the rollups from the raw events (schema 11): every
    cell whose events are all still stored (its raw count equals its ``calls``) gets its
    errors, caller errors, server errors and cancelled calls counted by ``outcome_case``; the
    error groups of every hour from the project's oldest stored event on are split by outcome
    class. Older rollups keep what they had: every failure a tool error, nothing cancelled."""
    errors = ", ".join(f"'{o}'" for o in ERROR_OUTCOMES)
    events = (f"SELECT project_id, ts, kind, server, coalesce(tool, '') AS tool, coalesce(client_name, '') AS client, "
              f"coalesce(error_type, 'error') AS error_type, {outcome_case(recorded, numeric)} AS o "
              f"FROM events WHERE kind <> '{TOOL_LISTED}'")
    counts = (f"count(*) AS calls, sum(CASE WHEN o IN ({errors}) THEN 1 ELSE 0 END) AS errors, "
              f"sum(CASE WHEN o = '{OUTCOME_CALLER_ERROR}' THEN 1 ELSE 0 END) AS caller, "
              f"sum(CASE WHEN o = '{OUTCOME_SERVER_ERROR}' THEN 1 ELSE 0 END) AS server_, "
              f"sum(CASE WHEN o = '{OUTCOME_CANCELLED}' THEN 1 ELSE 0 END) AS cancelled")

    def update(table: str, size: int, keys: tuple[str, ...], where: str = "") -> str:
        match = " AND ".join(f"c.{k} = {table}.{k}" for k in ("project_id", "bucket", *keys))
        return (f"UPDATE {table} SET errors = c.errors, caller_errors = c.caller, server_errors = c.server_, "
                f"cancelled = c.cancelled FROM (SELECT project_id, ts - ts % {size} AS bucket, {', '.join(keys)}, {counts} "
                f"FROM ({events}) AS e{where} GROUP BY project_id, ts - ts % {size}, {', '.join(keys)}) AS c "
                f"WHERE {match} AND c.calls = {table}.calls;\n")

    first = "SELECT project_id, min(ts) AS first FROM events GROUP BY project_id"
    return (update("rollup_hour", HOUR_MS, ("kind", "server", "tool", "client"))
            + update("rollup_day", DAY_MS, ("kind", "server", "tool", "client"))
            + update("rollup_tool_day", DAY_MS, ("server", "tool"), f" WHERE kind = '{TOOL_CALL}'")
            + f"DELETE FROM error_hour WHERE bucket >= (SELECT m.first FROM ({first}) AS m "
              "WHERE m.project_id = error_hour.project_id);\n"
            + "INSERT INTO error_hour (project_id, bucket, server, tool, client, error_type, outcome, count, last_ts) "
              f"SELECT e.project_id, e.ts - e.ts % {HOUR_MS}, e.server, e.tool, e.client, e.error_type, e.o, count(*), max(e.ts) "
              f"FROM ({events}) AS e JOIN ({first}) AS m ON m.project_id = e.project_id "
              f"WHERE e.o IN ({errors}) AND e.ts - e.ts % {HOUR_MS} >= m.first "
              f"GROUP BY e.project_id, e.ts - e.ts % {HOUR_MS}, e.server, e.tool, e.client, e.error_type, e.o;\n")


def activation_subject(session_id: str | None, user_hash: str | None) -> str | None:
    """Whom the activation funnel follows: the session where the protocol has one, else the
    (hashed) user; None for an anonymous request without a session (it cannot be followed)."""
    if session_id:
        return "s:" + session_id
    if user_hash:
        return "u:" + user_hash
    return None

# The fields ``aggregate`` reads, taken from a row (a ``Row`` or a plain tuple read back from
# a store) in one C call; positions from ``Row._fields``, so the field order lives in events.py only.
_READ = ("kind", "ts", "server", "tool", "duration_ms", "ok", "error_type", "session_id", "client_name",
         "client_version", "protocol_version", "transport", "user_hash", "category", "result_bytes", "attributes")
_fields = itemgetter(*(Row._fields.index(name) for name in _READ))
_calling = itemgetter(Row._fields.index("kind"), Row._fields.index("ts"), Row._fields.index("user_hash"))


class Cell:
    """The additive aggregate of calls, errors and latency: one rollup key as events arrive
    (``add``), or any set of stored rollup cells as they are read back (``add_cell``).

    ``hist`` sums histograms in any stored form (see ``histogram.Sum``); ``latency()`` and
    ``success_rate`` are what the usage questions report.

    By outcome class (``protocol.OUTCOMES``): ``errors`` counts tool, server and caller
    errors; ``caller_errors`` and ``server_errors`` the last two of them (so tool errors are
    ``errors - caller_errors - server_errors``); ``cancelled`` the calls the client gave up,
    which are no error. The rest (``ok``) succeeded.
    """

    __slots__ = ("caller_errors", "calls", "cancelled", "dur_count", "dur_max", "dur_min", "dur_sum", "errors", "hist",
                 "server_errors")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.caller_errors = 0
        self.server_errors = 0
        self.cancelled = 0
        self.dur_count = 0
        self.dur_sum = 0.0
        self.dur_min: float | None = None
        self.dur_max: float | None = None
        self.hist = histogram.Sum()

    def add(self, outcome: str, duration: float | None) -> None:
        """One event of that outcome class."""
        self.calls += 1
        if outcome != OUTCOME_OK:
            if outcome == OUTCOME_CANCELLED:
                self.cancelled += 1
            else:
                self.errors += 1
                if outcome == OUTCOME_CALLER_ERROR:
                    self.caller_errors += 1
                elif outcome == OUTCOME_SERVER_ERROR:
                    self.server_errors += 1
        if duration is not None:
            self.dur_count += 1
            self.dur_sum += duration
            if self.dur_min is None or duration < self.dur_min:
                self.dur_min = duration
            if self.dur_max is None or duration > self.dur_max:
                self.dur_max = duration
            b = bin_of(duration)
            sparse = self.hist.sparse
            sparse[b] = sparse.get(b, 0) + 1

    def add_cell(self, calls: int, errors: int, dur_count: int, dur_sum: float, dur_min: float | None,
                 dur_max: float | None, hist: Any, caller_errors: int = 0, server_errors: int = 0,
                 cancelled: int = 0) -> None:
        """One stored cell; ``hist`` a stored histogram blob, a ``{bin: count}`` map, or None."""
        self.calls += calls
        self.errors += errors
        self.caller_errors += caller_errors
        self.server_errors += server_errors
        self.cancelled += cancelled
        self.dur_count += dur_count
        self.dur_sum += dur_sum
        if dur_min is not None and (self.dur_min is None or dur_min < self.dur_min):
            self.dur_min = dur_min
        if dur_max is not None and (self.dur_max is None or dur_max > self.dur_max):
            self.dur_max = dur_max
        if hist:
            if isinstance(hist, dict):
                histogram.add_into(self.hist.sparse, hist)
            else:
                self.hist.add(hist)

    def merge(self, other: Cell) -> None:
        self.add_cell(other.calls, other.errors, other.dur_count, other.dur_sum, other.dur_min, other.dur_max, None,
                      other.caller_errors, other.server_errors, other.cancelled)
        self.hist.add_sum(other.hist)

    @property
    def tool_errors(self) -> int:
        return self.errors - self.caller_errors - self.server_errors

    @property
    def failures(self) -> int:
        """The calls that count against the success rate: tool and server errors."""
        return self.errors - self.caller_errors

    def outcomes(self) -> dict[str, int]:
        """Calls per outcome class."""
        return {OUTCOME_OK: self.calls - self.errors - self.cancelled, OUTCOME_TOOL_ERROR: self.tool_errors,
                OUTCOME_SERVER_ERROR: self.server_errors, OUTCOME_CALLER_ERROR: self.caller_errors,
                OUTCOME_CANCELLED: self.cancelled}

    def histogram(self) -> dict[int, int]:
        """The merged ``{bin: count}`` map."""
        return self.hist.result()

    def latency(self) -> dict[str, float | None]:
        p50, p95, p99 = histogram.percentiles(self.hist.result(), (50, 95, 99), self.dur_min, self.dur_max)
        avg = histogram.round_ms(self.dur_sum / self.dur_count) if self.dur_count else None
        return {"p50": p50, "p95": p95, "p99": p99, "avg": avg,
                "min": _round(self.dur_min), "max": _round(self.dur_max)}

    @property
    def success_rate(self) -> float | None:
        """ok / (ok + tool errors + server errors): caller errors and cancelled calls are
        neither success nor failure of the server (None when no call counts)."""
        judged = self.calls - self.caller_errors - self.cancelled
        return round((judged - self.failures) / judged, 4) if judged else None


def _round(value: float | None) -> float | None:
    return None if value is None else histogram.round_ms(value)


def calling_users(groups: Sequence[tuple[int, Sequence[tuple[Any, ...]]]]) -> dict[int, dict[str, int]]:
    """Per project, the users of the tool calls in ``groups`` with their first call's time."""
    users: dict[int, dict[str, int]] = {}
    for project_id, rows in groups:
        first = None
        for row in rows:
            kind, ts, user = _calling(row)
            if user is not None and kind == TOOL_CALL:
                if first is None:
                    first = users.setdefault(project_id, {})
                if ts < first.get(user, ts + 1):
                    first[user] = ts
    return users


@dataclass
class SessionDelta:
    server: str
    client: str | None
    client_version: str | None
    protocol_version: str | None
    transport: str | None
    user_hash: str | None
    first_ts: int
    last_ts: int
    calls: int = 0
    errors: int = 0
    init_ts: int | None = None
    list_ts: int | None = None
    first_call_ts: int | None = None
    tools: set[str] = field(default_factory=set)


@dataclass
class Deltas:
    hour: dict[tuple[int, str, str, str, str], Cell] = field(default_factory=dict)  # (bucket, kind, server, tool, client)
    day: dict[tuple[int, str, str, str, str], Cell] = field(default_factory=dict)
    user_day: set[tuple[int, str, str, str, str]] = field(default_factory=set)  # (day, server, tool, client, user)
    user_hour: set[tuple[int, str]] = field(default_factory=set)  # (hour, user)
    user_first: dict[tuple[str, str], int] = field(default_factory=dict)  # (server, user) -> ts
    # (hour, server, tool, client, error_type, outcome) -> [count, last_ts]
    errors: dict[tuple[int, str, str, str, str, str], list[int]] = field(default_factory=dict)
    sessions: dict[str, SessionDelta] = field(default_factory=dict)
    # (server, tool) -> [first seen, last seen, last called, first listed, last listed, definition bytes at the
    # last listing, category, category_ts] (None where unknown); see ``_seen``.
    catalog: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # Other usage actions (``protocol.is_action``): who did them, per (day | hour, server, kind, user).
    action_day: set[tuple[int, str, str, str]] = field(default_factory=set)
    action_hour: set[tuple[int, str, str, str]] = field(default_factory=set)
    # (server, subject) -> [client, first_ts, handshake_ts, list_ts, call_ts]: the activation funnel.
    activation: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    # Tool calls per (day, server, tool), every client together: what most reads need.
    tool_day: dict[tuple[int, str, str], Cell] = field(default_factory=dict)
    tool_day_users: dict[tuple[int, str, str], set[str]] = field(default_factory=dict)  # (day, server, tool) -> user hashes


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _later(ts: int, value: Any, at: int | None, current: Any) -> bool:
    """Whether (ts, value) replaces (at, current) as the latest: the later time, on a tie the
    larger value, so the rollup is the same whatever order the events arrive in."""
    if value is None:
        return False
    return at is None or ts > at or (ts == at and (current is None or value > current))


def _seen(catalog: dict[tuple[str, str], list[Any]], key: tuple[str, str], ts: int, called: bool,
          listed_bytes: int | None = None, listed: bool = False, category: str | None = None) -> None:
    span = catalog.get(key)
    if span is None:
        span = catalog[key] = [ts, ts, None, None, None, None, None, None]
    else:
        span[0] = min(span[0], ts)
        span[1] = max(span[1], ts)
    if called and (span[2] is None or ts > span[2]):
        span[2] = ts
    if listed:  # the definition's size at the last listing (on a tie, the larger)
        span[3] = ts if span[3] is None else min(span[3], ts)
        if span[4] is None or ts > span[4]:
            span[4], span[5] = ts, listed_bytes
        elif ts == span[4] and listed_bytes is not None and (span[5] is None or listed_bytes > span[5]):
            span[5] = listed_bytes
    if _later(ts, category, span[7], span[6]):
        span[6], span[7] = category, ts


def _funnel(d: Deltas, server: str, subject: str, client: str | None, kind: str, ts: int) -> None:
    entry = d.activation.get((server, subject))
    if entry is None:
        entry = d.activation[(server, subject)] = [client, ts, None, None, None]
    else:
        if client is not None and (entry[0] is None or client < entry[0]):
            entry[0] = client
        entry[1] = min(entry[1], ts)
    slot = 4 if kind == TOOL_CALL else 3 if kind == LIST_TOOLS else 2
    if entry[slot] is None or ts < entry[slot]:
        entry[slot] = ts


def aggregate(rows: Sequence[tuple[Any, ...]]) -> Deltas:
    d = Deltas()
    hour_cells = d.hour
    for row in rows:
        (kind, ts, server, tool, duration, ok, error_type, session_id, client_name, client_version,
         protocol_version, transport, user, category, result_bytes, attributes) = _fields(row)
        tool = tool or ""
        client = client_name or ""
        hour = ts - ts % HOUR_MS
        day = ts - ts % DAY_MS
        if kind == TOOL_LISTED:  # the catalog of tools a server offers, with each definition's size
            _seen(d.catalog, (server, tool), ts, called=False, listed_bytes=result_bytes, listed=True, category=category)
            continue
        key = (hour, kind, server, tool, client)
        cell = hour_cells.get(key)
        if cell is None:
            cell = hour_cells[key] = Cell()
        outcome = outcome_class(ok, error_type, attributes)
        cell.add(outcome, duration)
        if outcome in ERROR_OUTCOMES:
            ekey = (hour, server, tool, client, error_type or "error", outcome)
            entry = d.errors.get(ekey)
            if entry is None:
                d.errors[ekey] = [1, ts]
            else:
                entry[0] += 1
                entry[1] = max(entry[1], ts)
        if kind in FUNNEL_KINDS:
            subject = activation_subject(session_id, user)
            if subject is not None:
                _funnel(d, server, subject, client_name, kind, ts)
        elif user is not None and is_action(kind):
            d.action_day.add((day, server, kind, user))
            d.action_hour.add((hour, server, kind, user))
        if user is not None and kind == TOOL_CALL:
            d.user_day.add((day, server, tool, client, user))
            d.user_hour.add((hour, user))
            first = d.user_first.get((server, user))
            if first is None or ts < first:
                d.user_first[(server, user)] = ts
        if kind == TOOL_CALL and tool:
            _seen(d.catalog, (server, tool), ts, called=True, category=category)
        if session_id:
            s = d.sessions.get(session_id)
            if s is None:
                s = d.sessions[session_id] = SessionDelta(server, client_name, client_version, protocol_version, transport, user, ts, ts)
            else:
                s.first_ts = min(s.first_ts, ts)
                s.last_ts = max(s.last_ts, ts)
                s.client = s.client or client_name
                s.client_version = s.client_version or client_version
                s.protocol_version = s.protocol_version or protocol_version
                s.transport = s.transport or transport
                s.user_hash = s.user_hash or user
            if kind == TOOL_CALL:
                s.calls += 1
                s.errors += ok == 0
                s.first_call_ts = _min(s.first_call_ts, ts)
                if tool:
                    s.tools.add(tool)
            elif kind in HANDSHAKE_KINDS:
                s.init_ts = _min(s.init_ts, ts)
            elif kind == LIST_TOOLS:
                s.list_ts = _min(s.list_ts, ts)
    for (hour, kind, server, tool, client), cell in hour_cells.items():
        dkey = (hour - hour % DAY_MS, kind, server, tool, client)
        target = d.day.get(dkey)
        if target is None:
            target = d.day[dkey] = Cell()
        target.merge(cell)
    for (day, kind, server, tool, _), cell in d.day.items():
        if kind == TOOL_CALL:
            target = d.tool_day.get((day, server, tool))
            if target is None:
                target = d.tool_day[(day, server, tool)] = Cell()
            target.merge(cell)
    for day, server, tool, _, user in d.user_day:
        d.tool_day_users.setdefault((day, server, tool), set()).add(user)
    return d
