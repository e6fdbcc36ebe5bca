"""What THIS collector process stored, aggregated for ``/metrics`` and OTLP export.

A writer subscriber (``MetricsState.committed``) receives each commit with the rows it
really inserted (duplicates already removed by the store), so every event is counted by
exactly one collector process, once: with several collectors writing one store, ``sum()``
over them is the number of distinct events. Counters start at zero when the process starts;
Prometheus' ``rate()`` and ``increase()`` handle the reset.

The rows are not aggregated here: the commit's cells (``server.commits``, keyed by kind,
server, tool, client, ok and error type, shared with the live feed) are merged under the
lock, a few dictionary updates per cell, so a scrape never waits for more than that; what
the cells do not hold (handshake timestamps, ``auth`` and ``sdk.dropped`` rows) is picked
from the rows before the lock is taken. Histograms are kept non-cumulative in
milliseconds and cumulated when rendered.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import msgspec

from ...events import Row
from ...protocol import GATEWAY_KINDS, kind_for_method
from ..commits import GATEWAY_BOUNDS_MS, SEMCONV_BOUNDS_MS, UNION_BOUNDS_MS, Cell, Commit, ProjectBatch

__all__ = ["COMMIT_BOUNDS_MS", "GATEWAY_BOUNDS_MS", "METHOD_FOR_KIND", "SEMCONV_BOUNDS_MS", "MetricsState",
           "ProjectMetrics", "new_hist", "observe"]

OTHER = "__other__"  # a (server, tool) beyond the series cap
OTHER_VALUE = "_OTHER"  # an error type, auth method or drop reason beyond SMALL_CAP (the semconv's spelling)
SMALL_CAP = 100  # distinct error types / auth methods / drop reasons per project
MAX_SESSIONS = 100_000  # sessions whose handshake timestamps are remembered for mcp_protocol_latency_seconds
COMMIT_BOUNDS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


def _projection(bounds: Sequence[float]) -> tuple[int, ...]:
    """Union bucket index -> bucket index in ``bounds`` (a subset of the union)."""
    return (*(bisect_left(bounds, u) for u in UNION_BOUNDS_MS), len(bounds))


_TO_GATEWAY = _projection(GATEWAY_BOUNDS_MS)
_TO_SEMCONV = _projection(SEMCONV_BOUNDS_MS)

# MCP methods (client requests a server answers) by the event kind they are stored as.
MCP_METHODS = (
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover", "tasks/get", "tasks/list",
    "tasks/result", "tasks/cancel",
)
METHOD_FOR_KIND: dict[str, str] = {kind_for_method(m): m for m in reversed(MCP_METHODS)}  # type: ignore[misc]
METHOD_FOR_KIND["server_discover"] = "server/discover"

_INIT, _LIST, _CALL = 0, 1, 2
_STEP_CLASS = {"initialize": _INIT, "server_discover": _INIT, "list_tools": _LIST, "tool_call": _CALL}
STEPS = ((_INIT, _LIST, "initialize_to_tools_list"), (_LIST, _CALL, "tools_list_to_tools_call"),
         (_INIT, _CALL, "initialize_to_tools_call"))
_HANDSHAKE = frozenset({"initialize", "server_discover", "list_tools"})
_SPECIAL_KINDS = frozenset({"auth", "sdk.dropped"})

_session_kind_of = attrgetter("session_id", "kind")
_ts_server_of = attrgetter("ts", "server")
_decode_attrs = msgspec.json.Decoder(dict).decode


def new_hist(bounds: Sequence[float]) -> list:
    """[sum_ms, count, bucket_0 .. bucket_n] with one bucket more than bounds (+Inf), non-cumulative."""
    return [0.0, 0] + [0] * (len(bounds) + 1)


def observe(hist: list, bounds: Sequence[float], value_ms: float) -> None:
    hist[0] += value_ms
    hist[1] += 1
    hist[2 + bisect_left(bounds, value_ms)] += 1


def _merge_union(target: list, source: Cell, projection: tuple[int, ...]) -> None:
    """Add a cell's duration sum, timed count and union buckets into a family histogram."""
    target[0] += source.sum_ms
    target[1] += source.timed
    for i, n in source.buckets.items():
        target[2 + projection[i]] += n


class Summary:
    """One commit's rows of one project, reduced to a few keys (built without the lock)."""

    __slots__ = ("first_seen", "gateway_rows", "keys", "special")  # keys: the commit's cells, by (kind, server, tool, client, ok, error)

    def __init__(self, batch: ProjectBatch, sessions_open: bool = False, compat: bool = False) -> None:
        self.keys = keys = batch.cells()  # read only: the live feed reads the same cells
        kinds = {key[0] for key in keys}
        rows = batch.rows
        # First arrival per (session, kind): a dict built from the reversed rows keeps the first.
        # Only needed when a handshake is in this batch or one seen before still waits for its steps.
        if kinds & _HANDSHAKE or (sessions_open and "tool_call" in kinds):
            self.first_seen = dict(zip(map(_session_kind_of, reversed(rows)), map(_ts_server_of, reversed(rows))))
        else:
            self.first_seen = {}
        self.special = [r for r in rows if r.kind in _SPECIAL_KINDS] if kinds & _SPECIAL_KINDS else []
        # the rows the gateway-named series read (gateway_series.py): all of them with its labels
        self.gateway_rows = rows if compat else [r for r in rows if r.kind in GATEWAY_KINDS] if kinds & GATEWAY_KINDS else []


class _Bounded:
    """Admits at most ``cap`` distinct values; the rest become ``other``."""

    __slots__ = ("cap", "other", "seen")

    def __init__(self, cap: int, other: str) -> None:
        self.cap, self.other = cap, other
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.cap:
            self.seen.add(value)
            return value
        return self.other


class ProjectMetrics:
    """The series of one project. Keys are label values in family order (project comes first at render)."""

    def __init__(self, max_series: int, compat: bool = False) -> None:
        from .gateway_series import GatewaySeries  # (it builds on this module)

        self.max_series = max_series
        self.gateway = GatewaySeries(compat)  # the gateway metrics-service's series (MCPMETER_METRICS_LABELS)
        self.pairs: dict[tuple[str, str], tuple[str, str]] = {}  # admitted (server, tool) -> labels
        self.servers: set[str] = set()
        self.overflow = 0
        self.error_type = _Bounded(SMALL_CAP, OTHER_VALUE)
        self.auth_method = _Bounded(SMALL_CAP, OTHER_VALUE)
        self.drop_reason = _Bounded(SMALL_CAP, OTHER_VALUE)
        self.tool_calls: dict[tuple, int] = {}  # (server, tool, success)
        self.tool_duration: dict[tuple, list] = {}  # (server, tool) gateway bounds
        self.discovery: dict[tuple, int] = {}  # (server, success)
        self.discovery_duration: dict[tuple, list] = {}  # (server,)
        self.auth: dict[tuple, int] = {}  # (server, method, success)
        self.auth_duration: dict[tuple, list] = {}  # (server, method)
        self.protocol: dict[tuple, list] = {}  # (server, step)
        self.operation: dict[tuple, list] = {}  # (server, method, tool, error_type) semconv bounds
        self.dropped: dict[tuple, int] = {}  # (server, reason)

    # ---- labels under the cap ---------------------------------------------------------------

    def labels(self, server: str, tool: str, n: int) -> tuple[str, str]:
        got = self.pairs.get((server, tool))
        if got is not None:
            return got
        if len(self.pairs) < self.max_series:
            got = self.pairs[(server, tool)] = (server, tool)
            self.servers.add(server)
            return got
        self.overflow += n
        return (server, OTHER) if server in self.servers else (OTHER, OTHER)

    def server_label(self, server: str, n: int) -> str:
        return self.labels(server, "", n)[0]

    # ---- merging one commit -------------------------------------------------------------------

    def merge(self, summary: Summary, sessions: Sessions, project_id: int) -> None:
        for (kind, server, tool, _client, ok, error), agg in summary.keys.items():  # clients add up
            n = agg.events
            timed = agg.timed > 0
            error_label = "" if ok != 0 else self.error_type(error or OTHER_VALUE)
            success = "false" if ok == 0 else "true"
            if kind == "tool_call":
                s, t = self.labels(server, tool or "", n)
                if (s, t, "true") not in self.tool_calls:  # both outcomes exist from the first call
                    self.tool_calls[(s, t, "true")] = 0
                    self.tool_calls[(s, t, "false")] = 0
                    self.tool_duration[(s, t)] = new_hist(GATEWAY_BOUNDS_MS)
                self.tool_calls[(s, t, success)] += n
                if timed:
                    _merge_union(self.tool_duration[(s, t)], agg, _TO_GATEWAY)
                    self._operation((s, "tools/call", t, error_label), agg)
            elif kind == "list_tools":
                s = self.server_label(server, n)
                if (s, "true") not in self.discovery:
                    self.discovery[(s, "true")] = 0
                    self.discovery[(s, "false")] = 0
                    self.discovery_duration[(s,)] = new_hist(GATEWAY_BOUNDS_MS)
                self.discovery[(s, success)] += n
                if timed:
                    _merge_union(self.discovery_duration[(s,)], agg, _TO_GATEWAY)
                    self._operation((s, "tools/list", "", error_label), agg)
            elif timed:
                method = METHOD_FOR_KIND.get(kind)
                if method is None and "/" in kind:
                    method = OTHER_VALUE  # an MCP method we do not know: one series for all of them
                if method is not None:
                    self._operation((self.server_label(server, n), method, "", error_label), agg)
        for row in summary.special:
            if row.kind == "auth":
                self._auth(row)
            else:
                self._dropped(row)
        if summary.gateway_rows:
            self.gateway.add(summary.gateway_rows, self)
        if summary.first_seen:
            sessions.update(self, project_id, summary.first_seen)

    def _operation(self, key: tuple, agg: Cell) -> None:
        hist = self.operation.get(key)
        if hist is None:
            hist = self.operation[key] = new_hist(SEMCONV_BOUNDS_MS)
        _merge_union(hist, agg, _TO_SEMCONV)

    def _auth(self, row: Row) -> None:
        attrs = _attributes(row.attributes)
        method = attrs.get("method") or attrs.get("auth.method") or row.tool or "unknown"
        s = self.server_label(row.server, 1)
        m = self.auth_method(str(method)[:64])
        if (s, m, "true") not in self.auth:
            self.auth[(s, m, "true")] = 0
            self.auth[(s, m, "false")] = 0
            self.auth_duration[(s, m)] = new_hist(GATEWAY_BOUNDS_MS)
        self.auth[(s, m, "false" if row.ok == 0 else "true")] += 1
        if row.duration_ms is not None:
            observe(self.auth_duration[(s, m)], GATEWAY_BOUNDS_MS, row.duration_ms)

    def _dropped(self, row: Row) -> None:
        s = self.server_label(row.server, 1)
        for reason, count in _attributes(row.attributes).items():
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                key = (s, self.drop_reason(str(reason)[:64]))
                self.dropped[key] = self.dropped.get(key, 0) + count

    def protocol_step(self, server: str, step: str, seconds_ms: float) -> None:
        key = (self.server_label(server, 1), step)
        hist = self.protocol.get(key)
        if hist is None:
            hist = self.protocol[key] = new_hist(GATEWAY_BOUNDS_MS)
        observe(hist, GATEWAY_BOUNDS_MS, seconds_ms)

    def snapshot(self) -> ProjectMetrics:
        copy = ProjectMetrics.__new__(ProjectMetrics)
        copy.max_series = self.max_series
        copy.overflow = self.overflow
        copy.pairs = self.pairs  # read only by render, never mutated there
        copy.servers = set()
        copy.gateway = self.gateway.snapshot()
        for name in ("tool_calls", "discovery", "auth", "dropped"):
            setattr(copy, name, dict(getattr(self, name)))
        for name in ("tool_duration", "discovery_duration", "auth_duration", "protocol", "operation"):
            setattr(copy, name, {k: v[:] for k, v in getattr(self, name).items()})
        return copy


def _attributes(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = _decode_attrs(text)
    except msgspec.DecodeError:
        return {}
    return value


class Sessions:
    """Handshake timestamps per session, to time initialize -> tools/list -> tools/call.

    A session is remembered from its first initialize or tools/list; a step is observed once
    per session, as soon as both of its ends have arrived at this collector (the first of each
    kind). Bounded: the oldest sessions are forgotten first. Used by the writer thread only.
    """

    def __init__(self, limit: int = MAX_SESSIONS) -> None:
        self.limit = limit
        self.known: dict[tuple[int, str], list] = {}  # -> [ts_init, ts_list, ts_call, observed steps bitmask]

    def update(self, project: ProjectMetrics, project_id: int, first_seen: dict) -> None:
        known = self.known
        touched: dict[tuple[int, str], tuple[list, str]] = {}
        calls = []
        for (session_id, kind), (ts, server) in first_seen.items():
            cls = _STEP_CLASS.get(kind)
            if session_id is None or cls is None:
                continue
            if cls == _CALL:
                calls.append((session_id, ts, server))
                continue
            key = (project_id, session_id)
            state = known.get(key)
            if state is None:
                if len(known) >= self.limit:
                    del known[next(iter(known))]
                state = known[key] = [None, None, None, 0]
            if state[cls] is None or ts < state[cls]:
                state[cls] = ts
            touched[key] = (state, server)
        for session_id, ts, server in calls:
            key = (project_id, session_id)
            state = known.get(key)
            if state is None or state[3] == 7:
                continue  # no handshake seen for it (yet), or every step already timed
            if state[_CALL] is None or ts < state[_CALL]:
                state[_CALL] = ts
            touched[key] = (state, server)
        for state, server in touched.values():
            for bit, (a, b, step) in enumerate(STEPS):
                if not state[3] & (1 << bit) and state[a] is not None and state[b] is not None and state[b] >= state[a]:
                    state[3] |= 1 << bit
                    project.protocol_step(server, step, float(state[b] - state[a]))


class MetricsState:
    """Everything /metrics and the OTLP exporter read, for one collector process."""

    def __init__(self, max_series: int = 2000, labels: str = "mcpmeter") -> None:
        self.max_series = max_series
        self.compat = labels == "gateway"  # the MCP series with the gateway metrics-service's labels
        self.started = time.time()
        self._lock = threading.Lock()
        self._projects: dict[int, ProjectMetrics] = {}
        self._sessions = Sessions()
        self.ingested = 0
        self.duplicates = 0
        self.commits = 0
        self.commit_duration = new_hist(COMMIT_BOUNDS_MS)

    def committed(self, commit: Commit) -> None:
        """A writer subscriber (its thread): count what one commit really inserted."""
        open_sessions = bool(self._sessions.known)
        summaries = [(project_id, Summary(batch, open_sessions, self.compat)) for project_id, batch in commit.projects.items()
                     if batch.rows]
        with self._lock:
            self.ingested += commit.stored
            self.duplicates += commit.submitted - commit.stored
            self.commits += 1
            observe(self.commit_duration, COMMIT_BOUNDS_MS, commit.seconds * 1000)
            for project_id, summary in summaries:
                project = self._projects.get(project_id)
                if project is None:
                    project = self._projects[project_id] = ProjectMetrics(self.max_series, self.compat)
                project.merge(summary, self._sessions, project_id)

    def project(self, project_id: int) -> ProjectMetrics | None:
        with self._lock:
            project = self._projects.get(project_id)
            return project.snapshot() if project is not None else None

    def projects(self) -> dict[int, ProjectMetrics]:
        with self._lock:
            return {pid: p.snapshot() for pid, p in self._projects.items()}

    def process(self) -> dict[str, Any]:
        with self._lock:
            return {"ingested": self.ingested, "duplicates": self.duplicates, "commits": self.commits,
                    "commit_duration": self.commit_duration[:]}
