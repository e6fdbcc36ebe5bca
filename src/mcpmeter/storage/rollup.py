"""Aggregating newly stored events into rollup deltas, independent of the backend.

The writer calls ``aggregate`` with the rows that were really inserted (duplicates already
removed), so rollups stay exact under retried batches. Backends apply the deltas with
additive upserts in the same transaction as the raw rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from math import ceil, log2
from operator import itemgetter, mul, truediv
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
OUTCOMES_VERSION = 10  # the schema that brought outcome classes, listings, categories, actions and activation
DAILY_VERSION = 11  # the schema that brought the daily session, activation, error and per-client user rollups
# The daily user-set tables by their key, narrowest first (a read takes the first that has the columns it needs).
USER_SETS = {("bucket", "server", "tool"): "rollup_tool_day", ("bucket", "server", "client"): "user_client_day",
             ("bucket", "server", "tool", "client"): "user_tool_client_day"}
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


_RECORDED = f'"{OUTCOME_ATTRIBUTE}":"'  # how the attribute reads in the stored (compact) JSON
_CLASSES = frozenset(OUTCOMES)


def outcome_class(ok: int | None, error_type: str | None, attributes: str | None) -> str:
    """The outcome class of a stored event (``protocol.OUTCOMES``): its ``mcp.outcome``
    attribute when a capture path recorded one, else ``protocol.outcome_of`` of ``ok`` and
    ``error_type``. Neither a success without attributes nor a recorded class needs the
    attributes decoded (the stored JSON is compact: the class follows the key's text)."""
    if attributes is None:
        if ok == 1 and error_type is None:
            return OUTCOME_OK
        return outcome_of(None if ok is None else bool(ok), error_type)
    at = attributes.find(_RECORDED)
    if at >= 0:
        start = at + len(_RECORDED)
        recorded = attributes[start:attributes.find('"', start)]
        if recorded in _CLASSES:
            return recorded
    attrs = None
    if OUTCOME_ATTRIBUTE in attributes:
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
    """SQL that fills the outcome counts of the rollups from the raw events (schema 10): every
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


# Fields taken from a row (a ``Row`` or a plain tuple read back from a store) in one C call;
# positions from ``Row._fields``, so the field order lives in events.py only.
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
    # (day, server, tool, client) -> user hashes: the per-client daily user sets (schema 11), and per (day, server, client).
    # (day, server, tool, client, error_type, outcome) -> [count, last_ts]: ``errors`` per day (schema 11).
    error_day: dict[tuple[int, str, str, str, str, str], list[int]] = field(default_factory=dict)
    tool_client_day_users: dict[tuple[int, str, str, str], set[str]] = field(default_factory=dict)
    client_day_users: dict[tuple[int, str, str], set[str]] = field(default_factory=dict)  # (day, server, client), any tool


def _span(catalog: dict[tuple[str, str], list[Any]], key: tuple[str, str], first: int, last: int,
          called: int | None) -> list[Any]:
    """Widen a catalog entry to [first, last] seen, and last called at ``called`` (None: not called)."""
    span = catalog.get(key)
    if span is None:
        span = catalog[key] = [first, last, called, None, None, None, None, None]
        return span
    span[0] = min(span[0], first)
    span[1] = max(span[1], last)
    if called is not None and (span[2] is None or called > span[2]):
        span[2] = called
    return span


def _listed(span: list[Any], ts: int, size: int | None) -> None:
    """A tools/list named the tool at ``ts`` with a definition of ``size`` bytes: the size at the
    last listing is kept (on a tie, the larger)."""
    span[3] = ts if span[3] is None else min(span[3], ts)
    if span[4] is None or ts > span[4]:
        span[4], span[5] = ts, size
    elif ts == span[4] and size is not None and (span[5] is None or size > span[5]):
        span[5] = size


def _categorised(span: list[Any], ts: int, category: str | None) -> None:
    """The tool's category at ``ts``: the latest is kept (on a tie, the larger name), so the
    rollup is the same whatever order the events arrive in."""
    if category is not None and (span[7] is None or ts > span[7] or (ts == span[7] and category > span[6])):
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


_FLOOR = histogram.FLOOR_MS


def _bins(durations: list[float]) -> dict[int, int]:
    """``{bin_of(d): count}`` over ``durations``, computed in C (the same operations as ``bin_of``)."""
    if min(durations) <= _FLOOR:
        return dict(Counter(map(bin_of, durations)))
    return dict(Counter(map(ceil, map(mul, map(log2, map(truediv, durations, repeat(_FLOOR))), repeat(histogram.SUB_BUCKETS)))))


_kind = itemgetter(Row._fields.index("kind"))
_ts = itemgetter(Row._fields.index("ts"))
_server = itemgetter(Row._fields.index("server"))
_tool = itemgetter(Row._fields.index("tool"))
_duration = itemgetter(Row._fields.index("duration_ms"))
_ok = itemgetter(Row._fields.index("ok"))
_user_ts = itemgetter(Row._fields.index("user_hash"), Row._fields.index("ts"))
_error_type = itemgetter(Row._fields.index("error_type"))
_attributes = itemgetter(Row._fields.index("attributes"))
_listing = itemgetter(Row._fields.index("ts"), Row._fields.index("result_bytes"), Row._fields.index("category"))
_category = itemgetter(Row._fields.index("ts"), Row._fields.index("category"))
_follow = itemgetter(Row._fields.index("session_id"), Row._fields.index("user_hash"), Row._fields.index("client_name"),
                     Row._fields.index("ts"))
_who = itemgetter(*(Row._fields.index(name) for name in
                    ("client_name", "client_version", "protocol_version", "transport", "user_hash")))


def aggregate(rows: Sequence[tuple[Any, ...]]) -> Deltas:
    """The rollup deltas of ``rows`` (each counted once; pass only rows really stored).

    One pass sorts the rows into their hourly cells and their sessions; each cell and each
    session is then summed with C-level builtins (``map``, ``min``, ``Counter``…) over its
    rows, so the per-row Python work is two dictionary lookups.
    """
    d = Deltas()
    cells: dict[tuple[int, str, str, str, str], list[tuple[Any, ...]]] = {}
    sessions: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        kind, ts, server, tool, session_id, client = _grouping(row)
        if kind == TOOL_LISTED:  # the catalog of tools a server offers, with each definition's size
            listed_ts, size, category = _listing(row)
            span = _span(d.catalog, (server, tool or ""), ts, ts, None)
            _listed(span, listed_ts, size)
            _categorised(span, listed_ts, category)
            continue
        key = (ts - ts % HOUR_MS, kind, server, tool or "", client or "")
        group = cells.get(key)
        if group is None:
            cells[key] = [row]
        else:
            group.append(row)
        if session_id:
            srows = sessions.get(session_id)
            if srows is None:
                sessions[session_id] = [row]
            else:
                srows.append(row)
    for key, group in cells.items():
        _cell(d, key, group)
    for session_id, srows in sessions.items():
        d.sessions[session_id] = _session(srows)
    for (hour, kind, server, tool, client), cell in d.hour.items():
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
    for (hour, server, tool, client, error_type, outcome), (n, last) in d.errors.items():
        ekey = (hour - hour % DAY_MS, server, tool, client, error_type, outcome)
        entry = d.error_day.get(ekey)
        if entry is None:
            d.error_day[ekey] = [n, last]
        else:
            entry[0] += n
            entry[1] = max(entry[1], last)
    return d


_grouping = itemgetter(*(Row._fields.index(name) for name in ("kind", "ts", "server", "tool", "session_id", "client_name")))


def _cell(d: Deltas, key: tuple[int, str, str, str, str], group: list[tuple[Any, ...]]) -> None:
    """Add one hourly cell's rows (in arrival order) to the deltas."""
    hour, kind, server, tool, client = key
    cell = d.hour[key] = Cell()
    cell.calls = len(group)
    outcomes = list(map(outcome_class, map(_ok, group), map(_error_type, group), map(_attributes, group)))
    ok_count = outcomes.count(OUTCOME_OK)
    errors = 0
    if ok_count < len(outcomes):
        cell.caller_errors = outcomes.count(OUTCOME_CALLER_ERROR)
        cell.server_errors = outcomes.count(OUTCOME_SERVER_ERROR)
        cell.cancelled = outcomes.count(OUTCOME_CANCELLED)
        cell.errors = errors = len(outcomes) - ok_count - cell.cancelled
    durations = [v for v in map(_duration, group) if v is not None]
    if durations:
        cell.dur_count = len(durations)
        total = 0.0
        for v in durations:  # in arrival order, as Cell.add sums
            total += v
        cell.dur_sum = total
        cell.dur_min = min(durations)
        cell.dur_max = max(durations)
        cell.hist.sparse = _bins(durations)
    if errors:
        for row, outcome in zip(group, outcomes):
            if outcome in ERROR_OUTCOMES:
                ts = _ts(row)
                ekey = (hour, server, tool, client, _error_type(row) or "error", outcome)
                entry = d.errors.get(ekey)
                if entry is None:
                    d.errors[ekey] = [1, ts]
                else:
                    entry[0] += 1
                    entry[1] = max(entry[1], ts)
    if kind in FUNNEL_KINDS:
        for session_id, user, client_name, ts in map(_follow, group):
            subject = activation_subject(session_id, user)
            if subject is not None:
                _funnel(d, server, subject, client_name, kind, ts)
    elif is_action(kind):
        day = hour - hour % DAY_MS
        for user, _ in map(_user_ts, group):
            if user is not None:
                d.action_day.add((day, server, kind, user))
                d.action_hour.add((hour, server, kind, user))
    if kind != TOOL_CALL:
        return
    stamps = list(map(_ts, group))
    if tool:
        last = max(stamps)
        span = _span(d.catalog, (server, tool), min(stamps), last, last)
        for ts, category in map(_category, group):
            _categorised(span, ts, category)
    calling = [pair for pair in map(_user_ts, group) if pair[0] is not None]
    if calling:
        day = hour - hour % DAY_MS
        firsts = dict(sorted(calling, reverse=True))  # each user's earliest call in the cell
        user_first = d.user_first
        for user, ts in firsts.items():
            d.user_day.add((day, server, tool, client, user))
            d.user_hour.add((hour, user))
            seen = user_first.get((server, user))
            if seen is None or ts < seen:
                user_first[(server, user)] = ts


def _session(srows: list[tuple[Any, ...]]) -> SessionDelta:
    """One session's rows (in arrival order) as its delta."""
    first = srows[0]
    who = _who(first)
    if len(srows) == 1:
        kind, ts = _kind(first), _ts(first)
        client, version, protocol, transport, user = who
        s = SessionDelta(_server(first), client, version, protocol, transport, user, ts, ts)
        if kind == TOOL_CALL:
            s.calls, s.errors, s.first_call_ts = 1, int(_ok(first) == 0), ts
            if tool := _tool(first):
                s.tools = {tool}
        elif kind in HANDSHAKE_KINDS:
            s.init_ts = ts
        elif kind == LIST_TOOLS:
            s.list_ts = ts
        return s
    if not all(who):  # the first truthy value of each, else the last one (as ``a or b or …``)
        last = _who(srows[-1])
        who = tuple(next(filter(None, map(itemgetter(i), map(_who, srows))), last[i]) for i in range(len(who)))
    stamps = list(map(_ts, srows))
    kinds = list(map(_kind, srows))
    client, version, protocol, transport, user = who
    s = SessionDelta(_server(first), client, version, protocol, transport, user, min(stamps), max(stamps))
    calls = kinds.count("tool_call")
    if calls:
        call_rows = [row for row, kind in zip(srows, kinds) if kind == "tool_call"]
        s.calls = calls
        s.errors = list(map(_ok, call_rows)).count(0)
        s.first_call_ts = min(map(_ts, call_rows))
        s.tools = set(filter(None, map(_tool, call_rows)))
    if calls < len(kinds):
        s.init_ts = min((ts for ts, kind in zip(stamps, kinds) if kind in HANDSHAKE_KINDS), default=None)
        s.list_ts = min((ts for ts, kind in zip(stamps, kinds) if kind == "list_tools"), default=None)
    return s


# ---- the daily session and activation counts (schema 11) ----------------------------------
#
# A stored session (and an activation subject) can still change when an event arrives late:
# an earlier first event moves its start day, a first client name fills a missing one, a new
# tool joins it. So its daily counts are not additive deltas of the new events alone: the
# writer reads the stored rows of the sessions (subjects) a transaction touches before it
# upserts them, and ``session_moves`` / ``activation_moves`` take each one out of the cells it
# counted in and add it to the cells it counts in now (the same merge as the upserts).

SessionKey = tuple[int, str, str, str, str]  # (day of first_ts, server, client, client_version, protocol_version)


def session_key(server: str, first_ts: int, client: str | None, version: str | None, protocol: str | None) -> SessionKey:
    """The cell of ``session_day`` a session counts in ('' for a missing name, as the other rollups)."""
    return (first_ts - first_ts % DAY_MS, server, client or "", version or "", protocol or "")


def earliest(a: Any, b: Any) -> Any:
    """The smaller of two values, None only when both are (SQL ``least`` / the upserts' ``_EARLIEST``)."""
    if a is None:
        return b
    return a if b is None or a <= b else b


def _move(cells: dict[Any, list[int]], before: dict[Any, tuple[int, ...]], after: dict[Any, tuple[int, ...]]) -> None:
    """Take ``before`` out of ``cells`` and add ``after`` (cell key -> counts)."""
    if before == after:
        return
    for sign, part in ((-1, before), (1, after)):
        for key, counts in part.items():
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = [0] * len(counts)
            for i, n in enumerate(counts):
                cell[i] += sign * n


def _changed(cells: dict[Any, list[int]]) -> dict[Any, tuple[int, ...]]:
    return {key: tuple(counts) for key, counts in cells.items() if any(counts)}


def session_after(old: Sequence[Any] | None, s: SessionDelta) -> tuple[Any, ...]:
    """What a stored session holds once ``s`` is upserted over ``old`` (None: not stored yet):
    (server, first_ts, client, client_version, protocol_version), by the sessions upsert's rules
    (the earliest first_ts; a client, version or protocol once set is kept)."""
    if old is None:
        return (s.server, s.first_ts, s.client, s.client_version, s.protocol_version)
    return (old[0], min(old[1], s.first_ts),
            *(a if a is not None else b for a, b in zip(old[2:], (s.client, s.client_version, s.protocol_version))))


def session_moves(sessions: dict[str, SessionDelta], stored: dict[str, tuple[Any, ...]],
                  stored_tools: dict[str, set[str]]) -> tuple[dict[SessionKey, int], dict[tuple[Any, ...], int]]:
    """How ``session_day`` and ``session_tool_day`` change when ``sessions`` (one transaction's
    deltas) are upserted: ``stored`` holds the sessions already stored, session id -> (server,
    first_ts, client, client_version, protocol_version), and ``stored_tools`` their tools.
    Rows (day, server, client, version, protocol) -> sessions and (day, server, tool, client,
    version, protocol) -> sessions, each a change to add (negative: sessions that moved away)."""
    cells: dict[Any, list[int]] = {}

    def parts(key: SessionKey, tools: set[str]) -> dict[Any, tuple[int, ...]]:
        out: dict[Any, tuple[int, ...]] = {("s", *key): (1,)}
        for tool in tools:
            out[("t", key[0], key[1], tool, *key[2:])] = (1,)
        return out

    for sid, s in sessions.items():
        old = stored.get(sid)
        if old is None:
            _move(cells, {}, parts(session_key(*session_after(None, s)), s.tools))
            continue
        tools = stored_tools.get(sid, set())
        _move(cells, parts(session_key(*old), tools), parts(session_key(*session_after(old, s)), tools | s.tools))
    changed = _changed(cells)
    return ({key[1:]: n for key, (n,) in changed.items() if key[0] == "s"},
            {key[1:]: n for key, (n,) in changed.items() if key[0] == "t"})


def session_stays(s: SessionDelta, first_ts: int, named: Sequence[bool], tools: Container[str]) -> bool:
    """Whether upserting ``s`` over a stored session leaves it in the cells it counts in, knowing
    only bounds of that session: its ``first_ts`` is at most this, its client, client version
    and protocol are set where ``named`` says so, and it has at least ``tools``. Each of those
    only moves one way in the upsert (``least`` / ``coalesce`` of a set value keeps it / tools
    are only added), so the bounds stay true whatever else is stored meanwhile; then ``s``
    changes the cell only if it starts earlier, names what may be unset, or brings a tool."""
    return (s.first_ts >= first_ts and all(set_ or v is None for set_, v in zip(named, (s.client, s.client_version, s.protocol_version)))
            and all(t in tools for t in s.tools))


def client_user_sets(user_day: Iterable[tuple[Any, ...]]) -> tuple[dict[tuple[Any, ...], set[str]], dict[tuple[Any, ...], set[str]]]:
    """The users to add to ``user_client_day`` and ``user_tool_client_day`` for the ``user_day``
    rows (project, day, server, tool, client, user) a transaction stores: each user goes into the
    sets of its rows' cells (a row already stored means its user is in both sets already, so
    the writers pass only the rows they do not know are stored)."""
    by_client: dict[tuple[Any, ...], set[str]] = {}
    by_tool: dict[tuple[Any, ...], set[str]] = {}
    for p, day, server, tool, client, user in user_day:
        by_client.setdefault((p, day, server, client), set()).add(user)
        by_tool.setdefault((p, day, server, tool, client), set()).add(user)
    return by_client, by_tool


ActivationKey = tuple[int, str, str]  # (day of first_ts, server, client)


def _funnel_cell(server: str, subject: str, entry: Sequence[Any]) -> dict[Any, tuple[int, ...]]:
    """The ``activation_day`` cell one subject counts in and what it adds there: (followed,
    sessions, handshake, listed, called, listed but not called)."""
    client, first_ts, handshake, listed, called = entry
    return {(first_ts - first_ts % DAY_MS, server, client or ""): (
        1, int(subject.startswith("s:")), int(handshake is not None), int(listed is not None), int(called is not None),
        int(listed is not None and called is None))}


def activation_moves(activation: dict[tuple[str, str], list[Any]],
                     stored: dict[tuple[str, str], tuple[Any, ...]]) -> dict[ActivationKey, tuple[int, ...]]:
    """How ``activation_day`` changes when the funnel deltas ``activation`` ((server, subject) ->
    [client, first_ts, handshake_ts, list_ts, call_ts]) are upserted over the ``stored`` rows of
    those subjects (the same five values): cell -> counts to add, as ``_funnel_cell``."""
    cells: dict[Any, list[int]] = {}
    for (server, subject), entry in activation.items():
        old = stored.get((server, subject))
        if old is None:
            _move(cells, {}, _funnel_cell(server, subject, entry))
            continue
        merged = [earliest(a, b) for a, b in zip(old, entry)]
        _move(cells, _funnel_cell(server, subject, old), _funnel_cell(server, subject, merged))
    return _changed(cells)
