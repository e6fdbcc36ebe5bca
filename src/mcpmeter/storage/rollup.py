"""Aggregating newly stored events into rollup deltas, independent of the backend.

The writer calls ``aggregate`` with the rows that were really inserted (duplicates already
removed), so rollups stay exact under retried batches. Backends apply the deltas with
additive upserts in the same transaction as the raw rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from .. import histogram
from ..events import Row
from ..histogram import bin_of

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
HANDSHAKE_KINDS = ("initialize", "server_discover")

# The fields ``aggregate`` reads, taken from a row (a ``Row`` or a plain tuple read back from
# a store) in one C call; positions from ``Row._fields``, so the field order lives in events.py only.
_READ = ("kind", "ts", "server", "tool", "duration_ms", "ok", "error_type", "session_id", "client_name",
         "client_version", "protocol_version", "transport", "user_hash")
_fields = itemgetter(*(Row._fields.index(name) for name in _READ))
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


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _seen(catalog: dict[tuple[str, str], list[Any]], key: tuple[str, str], ts: int, called: bool) -> None:
    span = catalog.get(key)
    if span is None:
        catalog[key] = [ts, ts, ts if called else None]
        return
    span[0] = min(span[0], ts)
    span[1] = max(span[1], ts)
    if called and (span[2] is None or ts > span[2]):
        span[2] = ts


def aggregate(rows: Sequence[tuple[Any, ...]]) -> Deltas:
    d = Deltas()
    hour_cells = d.hour
    for row in rows:
        (kind, ts, server, tool, duration, ok, error_type, session_id, client_name, client_version,
         protocol_version, transport, user) = _fields(row)
        tool = tool or ""
        client = client_name or ""
        hour = ts - ts % HOUR_MS
        day = ts - ts % DAY_MS
        if kind == "tool_listed":  # the catalog of tools a server offers
            _seen(d.catalog, (server, tool), ts, called=False)
            continue
        key = (hour, kind, server, tool, client)
        cell = hour_cells.get(key)
        if cell is None:
            cell = hour_cells[key] = Cell()
        cell.add(ok, duration)
        if ok == 0:
            ekey = (hour, server, tool, client, error_type or "error")
            entry = d.errors.get(ekey)
            if entry is None:
                d.errors[ekey] = [1, ts]
            else:
                entry[0] += 1
                entry[1] = max(entry[1], ts)
        if user is not None and kind == "tool_call":
            d.user_day.add((day, server, tool, client, user))
            d.user_hour.add((hour, user))
            first = d.user_first.get((server, user))
            if first is None or ts < first:
                d.user_first[(server, user)] = ts
        if kind == "tool_call" and tool:
            _seen(d.catalog, (server, tool), ts, called=True)
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
            if kind == "tool_call":
                s.calls += 1
                s.errors += ok == 0
                s.first_call_ts = _min(s.first_call_ts, ts)
                if tool:
                    s.tools.add(tool)
            elif kind in HANDSHAKE_KINDS:
                s.init_ts = _min(s.init_ts, ts)
            elif kind == "list_tools":
                s.list_ts = _min(s.list_ts, ts)
    for (hour, kind, server, tool, client), cell in hour_cells.items():
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
