"""Aggregating newly stored events into rollup deltas, independent of the backend.

The writer calls ``aggregate`` with the rows that were really inserted (duplicates already
removed), so rollups stay exact under retried batches. Backends apply the deltas with
additive upserts in the same transaction as the raw rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from math import ceil, log2
from operator import itemgetter, mul, truediv
from typing import Any

from .. import histogram
from ..events import Row
from ..histogram import bin_of

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HANDSHAKE_KINDS = ("initialize", "server_discover")

# Fields taken from a row (a ``Row`` or a plain tuple read back from a store) in one C call;
# positions from ``Row._fields``, so the field order lives in events.py only.
_calling = itemgetter(Row._fields.index("kind"), Row._fields.index("ts"), Row._fields.index("user_hash"))


class Cell:
    """The additive aggregate of calls, errors and latency: one rollup key as events arrive
    (``add``), or any set of stored rollup cells as they are read back (``add_cell``).

    ``hist`` sums histograms in any stored form (see ``histogram.Sum``); ``latency()`` and
    ``success_rate`` are what the usage questions report.
    """

    __slots__ = ("calls", "dur_count", "dur_max", "dur_min", "dur_sum", "errors", "hist")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.dur_count = 0
        self.dur_sum = 0.0
        self.dur_min: float | None = None
        self.dur_max: float | None = None
        self.hist = histogram.Sum()

    def add(self, ok: int | None, duration: float | None) -> None:
        """One event."""
        self.calls += 1
        if ok == 0:
            self.errors += 1
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
                 dur_max: float | None, hist: Any) -> None:
        """One stored cell; ``hist`` a stored histogram blob, a ``{bin: count}`` map, or None."""
        self.calls += calls
        self.errors += errors
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
        self.add_cell(other.calls, other.errors, other.dur_count, other.dur_sum, other.dur_min, other.dur_max, None)
        self.hist.add_sum(other.hist)

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
        return round((self.calls - self.errors) / self.calls, 4) if self.calls else None


def _round(value: float | None) -> float | None:
    return None if value is None else histogram.round_ms(value)


def calling_users(groups: Sequence[tuple[int, Sequence[tuple[Any, ...]]]]) -> dict[int, dict[str, int]]:
    """Per project, the users of the tool calls in ``groups`` with their first call's time."""
    users: dict[int, dict[str, int]] = {}
    for project_id, rows in groups:
        first = None
        for row in rows:
            kind, ts, user = _calling(row)
            if user is not None and kind == "tool_call":
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
    errors: dict[tuple[int, str, str, str, str], list[int]] = field(default_factory=dict)  # (hour, server, tool, client, error_type) -> [count, last_ts]
    sessions: dict[str, SessionDelta] = field(default_factory=dict)
    catalog: dict[tuple[str, str], list[Any]] = field(default_factory=dict)  # (server, tool) -> [first seen, last seen, last called or None]
    # Tool calls per (day, server, tool), every client together: what most reads need.
    tool_day: dict[tuple[int, str, str], Cell] = field(default_factory=dict)
    tool_day_users: dict[tuple[int, str, str], set[str]] = field(default_factory=dict)  # (day, server, tool) -> user hashes


def _span(catalog: dict[tuple[str, str], list[Any]], key: tuple[str, str], first: int, last: int, called: int | None) -> None:
    """Widen a catalog entry to [first, last] seen, and last called at ``called`` (None: not called)."""
    span = catalog.get(key)
    if span is None:
        catalog[key] = [first, last, called]
        return
    span[0] = min(span[0], first)
    span[1] = max(span[1], last)
    if called is not None and (span[2] is None or called > span[2]):
        span[2] = called


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
_error = itemgetter(Row._fields.index("ok"), Row._fields.index("error_type"), Row._fields.index("ts"))
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
        if kind == "tool_listed":  # the catalog of tools a server offers
            _span(d.catalog, (server, tool or ""), ts, ts, None)
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
        if kind == "tool_call":
            target = d.tool_day.get((day, server, tool))
            if target is None:
                target = d.tool_day[(day, server, tool)] = Cell()
            target.merge(cell)
    for day, server, tool, _, user in d.user_day:
        d.tool_day_users.setdefault((day, server, tool), set()).add(user)
    return d


_grouping = itemgetter(*(Row._fields.index(name) for name in ("kind", "ts", "server", "tool", "session_id", "client_name")))


def _cell(d: Deltas, key: tuple[int, str, str, str, str], group: list[tuple[Any, ...]]) -> None:
    """Add one hourly cell's rows (in arrival order) to the deltas."""
    hour, kind, server, tool, client = key
    cell = d.hour[key] = Cell()
    cell.calls = len(group)
    oks = list(map(_ok, group))
    cell.errors = errors = oks.count(0)
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
        for ok, error_type, ts in map(_error, group):
            if ok == 0:
                ekey = (hour, server, tool, client, error_type or "error")
                entry = d.errors.get(ekey)
                if entry is None:
                    d.errors[ekey] = [1, ts]
                else:
                    entry[0] += 1
                    entry[1] = max(entry[1], ts)
    if kind != "tool_call":
        return
    stamps = list(map(_ts, group))
    if tool:
        last = max(stamps)
        _span(d.catalog, (server, tool), min(stamps), last, last)
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
        if kind == "tool_call":
            s.calls, s.errors, s.first_call_ts = 1, int(_ok(first) == 0), ts
            if tool := _tool(first):
                s.tools = {tool}
        elif kind in HANDSHAKE_KINDS:
            s.init_ts = ts
        elif kind == "list_tools":
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
