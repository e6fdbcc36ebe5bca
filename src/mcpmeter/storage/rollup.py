"""Aggregating newly stored events into rollup deltas, independent of the backend.

The writer calls ``aggregate`` with the rows that were really inserted (duplicates already
removed), so rollups stay exact under retried batches. Backends apply the deltas with
additive upserts in the same transaction as the raw rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..events import ROW_FIELDS
from ..histogram import bin_of

HOUR_MS = 3_600_000
DAY_MS = 86_400_000

_I = {name: i for i, name in enumerate(ROW_FIELDS)}
_KIND, _TS, _SERVER, _TOOL, _DUR, _OK = _I["kind"], _I["ts"], _I["server"], _I["tool"], _I["duration_ms"], _I["ok"]
_ERR, _SESSION, _CLIENT, _CLIENT_V = _I["error_type"], _I["session_id"], _I["client_name"], _I["client_version"]
_PROTO, _TRANSPORT, _USER = _I["protocol_version"], _I["transport"], _I["user_hash"]

HANDSHAKE_KINDS = ("initialize", "server_discover")


class Cell:
    """Additive aggregate of one rollup key."""

    __slots__ = ("calls", "errors", "dur_count", "dur_sum", "dur_min", "dur_max", "hist")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.dur_count = 0
        self.dur_sum = 0.0
        self.dur_min: float | None = None
        self.dur_max: float | None = None
        self.hist: dict[int, int] = {}

    def add(self, ok: int | None, duration: float | None) -> None:
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
            self.hist[b] = self.hist.get(b, 0) + 1

    def merge(self, other: "Cell") -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.dur_count += other.dur_count
        self.dur_sum += other.dur_sum
        for value in (other.dur_min,):
            if value is not None and (self.dur_min is None or value < self.dur_min):
                self.dur_min = value
        for value in (other.dur_max,):
            if value is not None and (self.dur_max is None or value > self.dur_max):
                self.dur_max = value
        hist = self.hist
        for b, n in other.hist.items():
            hist[b] = hist.get(b, 0) + n


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
    tools: set = field(default_factory=set)


@dataclass
class Deltas:
    hour: dict[tuple, Cell] = field(default_factory=dict)  # (bucket, kind, server, tool, client)
    day: dict[tuple, Cell] = field(default_factory=dict)
    user_day: set = field(default_factory=set)  # (day, server, tool, client, user)
    user_hour: set = field(default_factory=set)  # (hour, user)
    user_first: dict[tuple, int] = field(default_factory=dict)  # (server, user) -> ts
    errors: dict[tuple, list] = field(default_factory=dict)  # (hour, server, tool, client, error_type) -> [count, last_ts]
    sessions: dict[str, SessionDelta] = field(default_factory=dict)
    catalog: dict[tuple, list] = field(default_factory=dict)  # (server, tool) -> [first seen, last seen, last called]
    # Tool calls per (day, server, tool), every client together: what most reads need.
    tool_day: dict[tuple, Cell] = field(default_factory=dict)
    tool_day_users: dict[tuple, set] = field(default_factory=dict)  # (day, server, tool) -> user hashes


def _min(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


def _seen(catalog: dict[tuple, list], key: tuple, ts: int, called: bool) -> None:
    span = catalog.get(key)
    if span is None:
        catalog[key] = [ts, ts, ts if called else None]
        return
    span[0] = min(span[0], ts)
    span[1] = max(span[1], ts)
    if called and (span[2] is None or ts > span[2]):
        span[2] = ts


def aggregate(rows: Sequence[tuple]) -> Deltas:
    d = Deltas()
    hour_cells = d.hour
    for row in rows:
        kind = row[_KIND]
        ts = row[_TS]
        server = row[_SERVER]
        tool = row[_TOOL] or ""
        client = row[_CLIENT] or ""
        user = row[_USER]
        hour = ts - ts % HOUR_MS
        day = ts - ts % DAY_MS
        if kind == "tool_listed":  # the catalog of tools a server offers
            _seen(d.catalog, (server, tool), ts, called=False)
            continue
        key = (hour, kind, server, tool, client)
        cell = hour_cells.get(key)
        if cell is None:
            cell = hour_cells[key] = Cell()
        ok = row[_OK]
        cell.add(ok, row[_DUR])
        if ok == 0:
            ekey = (hour, server, tool, client, row[_ERR] or "error")
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
        session_id = row[_SESSION]
        if session_id:
            s = d.sessions.get(session_id)
            if s is None:
                s = d.sessions[session_id] = SessionDelta(server, row[_CLIENT], row[_CLIENT_V], row[_PROTO], row[_TRANSPORT], user, ts, ts)
            else:
                s.first_ts = min(s.first_ts, ts)
                s.last_ts = max(s.last_ts, ts)
                s.client = s.client or row[_CLIENT]
                s.client_version = s.client_version or row[_CLIENT_V]
                s.protocol_version = s.protocol_version or row[_PROTO]
                s.transport = s.transport or row[_TRANSPORT]
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
