"""Random realistic events and a straightforward oracle for every usage answer.

``generate`` builds a seeded event list (wire format v1 dicts) for several servers, tools,
clients, users and sessions (handshakes, tools/list, catalog listings, calls with failures,
durations from 1 µs to 10 s, timestamps over ~100 days, denser near ``now``). The
``expect_*`` functions compute each answer from that list with plain Python over the raw
events, the way a person would check it by hand, for the window the answer reports. They
share no code with ``mcpmeter.analytics`` or the rollups: only the answer's shape.

``same(actual, expected)`` compares an answer with an expectation; ``Pct`` marks a latency
percentile (the histogram's bound applies) and ``Near`` a mean (float summation order).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from mcpmeter.events import MAX_ERROR_MESSAGE, Limits, decode_batch
from mcpmeter.histogram import RELATIVE_ERROR
from mcpmeter.ingest import rows_for

HOUR = 3_600_000
DAY = 86_400_000

SERVERS = {
    "weblab": ["search", "details", "allocations", "experiments", "weblab_admin"],
    "archon": ["search", "rag_query", "create_task", "get_document"],
    "time": ["get_current_time", "convert_time"],
}
NEVER_CALLED = {"weblab": "weblab_admin"}  # listed in the catalog, never called
CLIENTS = [("claude-code", "2.1.0"), ("claude-code", "2.2.0"), ("cursor", "1.7.2"), ("vscode-copilot", None), (None, None)]
PROTOCOLS = ["2025-06-18", "2025-11-25", None]
ERRORS = ["TimeoutError", "ValidationError", "PermissionError", None]


# ---- the events --------------------------------------------------------------------------


def _duration(rng: random.Random) -> float | None:
    """1 µs … 10 s, log-uniform, some missing."""
    if rng.random() < 0.05:
        return None
    return round(10 ** rng.uniform(-3, 4), 6)


def generate(seed: int, now_ms: int, sessions: int = 900, users: int = 60) -> list[dict]:
    """Events of ``sessions`` sessions plus some session-less calls, all with distinct ids and ts."""
    rng = random.Random(seed)
    used_ts: set[int] = set()
    events: list[dict] = []
    people = [f"user{i:03d}@example.com" for i in range(users)]

    def at(ts: int) -> int:
        while ts in used_ts:
            ts += 1
        used_ts.add(ts)
        return ts

    def emit(**fields: Any) -> None:
        if fields["ts"] > now_ms:  # a session still going on: what comes later has not happened yet
            return
        fields["id"] = f"e{seed}-{len(events)}"
        events.append({k: v for k, v in fields.items() if v is not None})

    def listing(server: str, ts: int) -> None:
        for tool in SERVERS[server]:
            emit(kind="tool_listed", ts=at(ts), server=server, tool=tool)

    def start_time() -> int:
        r = rng.random()
        if r < 0.04:  # long ago: these users are not "new" in any window below
            return now_ms - 175 * DAY + rng.randrange(20 * DAY)
        if r < 0.40:
            return now_ms - 100 * DAY + rng.randrange(100 * DAY)
        if r < 0.70:
            return now_ms - 8 * DAY + rng.randrange(8 * DAY)
        return now_ms - 36 * HOUR + rng.randrange(36 * HOUR)

    for s in range(sessions):
        server = rng.choice(list(SERVERS))
        client, version = rng.choice(CLIENTS)
        protocol = rng.choice(PROTOCOLS)
        user = rng.choice(people) if rng.random() < 0.9 else None
        sid = f"s{seed}-{s}"
        t = start_time()
        common = dict(server=server, session_id=sid, server_version="1.0")

        def who(always: bool = False, client=client, version=version, protocol=protocol, user=user) -> dict:  # the session's attributes, each present or absent
            keep = always or rng.random() < 0.7
            return dict(client_name=client if keep else None, client_version=version if keep else None,
                        protocol_version=protocol if rng.random() < 0.6 else None, user=user if keep else None)

        if rng.random() < 0.8:
            kind = "initialize" if rng.random() < 0.75 else "server_discover"
            emit(kind=kind, ts=at(t), duration_ms=_duration(rng), ok=True, transport="stdio", **common,
                 client_name=client, client_version=version, protocol_version=protocol)
        t += rng.randrange(1, 3000)
        if rng.random() < 0.7:
            failed = rng.random() < 0.05
            emit(kind="list_tools", ts=at(t), duration_ms=_duration(rng), ok=not failed,
                 error_type="ListFailed" if failed else None, **common, **who())
            if rng.random() < 0.15:
                listing(server, t)
        for _ in range(rng.choice([0, 1, 2, 3, 5, 8, 13])):
            t += rng.randrange(50, 600_000)
            tool = rng.choice([x for x in SERVERS[server] if x != NEVER_CALLED.get(server)])
            call = dict(kind="tool_call", ts=at(t), tool=tool, duration_ms=_duration(rng), **common, **who(),
                        args_bytes=rng.randrange(2, 500))
            r = rng.random()
            if r < 0.06:  # failed, with a type
                call.update(ok=False, error_type=rng.choice(ERRORS[:3]), error_message="boom " * rng.choice([1, 3, 300]))
            elif r < 0.08:  # failed without a type: grouped as "error"
                call.update(ok=False)
            elif r < 0.10:  # error_type without `ok`: counted as failed
                call.update(error_type="TimeoutError")
            elif r < 0.12:
                pass  # no `ok`, no error: a success
            else:
                call.update(ok=True)
            emit(**call)
        if rng.random() < 0.1:  # listed again late: the catalog's last sighting is not a call
            listing(server, t + rng.randrange(1, 5000))
        if rng.random() < 0.3:
            emit(kind="session_end", ts=at(t + rng.randrange(1, 5000)), **common)
    for _ in range(sessions // 6):  # calls without a session (e.g. the SDK without session ids)
        server = rng.choice(list(SERVERS))
        client, version = rng.choice(CLIENTS)
        failed = rng.random() < 0.1
        emit(kind="tool_call", ts=at(start_time()), server=server,
             tool=rng.choice([x for x in SERVERS[server] if x != NEVER_CALLED.get(server)]),
             duration_ms=_duration(rng), ok=not failed, error_type=rng.choice(ERRORS) if failed else None,
             client_name=client, client_version=version, user=rng.choice(people))
    return events


def batches(events: list[dict], seed: int, overlap: bool = False) -> list[list[dict]]:
    """The events shuffled into batches of random sizes; with ``overlap``, neighbours share events."""
    rng = random.Random(seed)
    order = events[:]
    rng.shuffle(order)
    out, i = [], 0
    while i < len(order):
        size = rng.randrange(1, 900)
        start = max(0, i - rng.randrange(0, 200)) if overlap and i else i
        out.append(order[start:i + size])
        i += size
    return out


_encode = msgspec.json.Encoder().encode


def ingest(store, project, events: list[dict], now_ms: int, seed: int = 0, overlap: bool = False) -> tuple[int, int]:
    """The real path: decode_batch -> rows_for -> store.ingest, batch by batch. (accepted, duplicates)"""
    accepted = duplicates = 0
    for batch in batches(events, seed, overlap):
        good, rejected = decode_batch(_encode(batch), Limits(max_events=100_000), now_ms=now_ms)
        assert not rejected, rejected[:3]
        result = store.ingest([(project.id, rows_for(project, good))])[0]
        accepted += result.accepted
        duplicates += result.duplicates
    return accepted, duplicates


# ---- the oracle --------------------------------------------------------------------------


class Ev(NamedTuple):
    kind: str
    ts: int
    server: str
    tool: str | None
    client: str | None
    client_version: str | None
    protocol: str | None
    duration: float | None
    ok: bool | None
    error_type: str | None
    error_message: str | None
    session: str | None
    user: str | None


def normalise(event: dict) -> Ev:
    ok = event.get("ok")
    if ok is None and event["kind"] == "tool_call":
        ok = event.get("error_type") is None
    message = event.get("error_message")
    if message is not None and len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 1] + "…"
    return Ev(event["kind"], event["ts"], event["server"], event.get("tool"), event.get("client_name"),
              event.get("client_version"), event.get("protocol_version"), event.get("duration_ms"), ok,
              event.get("error_type"), message, event.get("session_id"), event.get("user"))


class Window(NamedTuple):
    start: int
    end: int
    grain_ms: int

    def previous(self) -> Window:
        return Window(2 * self.start - self.end, self.start, self.grain_ms)


def parse_iso(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def window_of(answer: dict) -> Window:
    """The aligned window an answer says it covers."""
    return Window(parse_iso(answer["from"]), parse_iso(answer["to"]), HOUR if answer["grain"] == "hour" else DAY)


class Filters(NamedTuple):
    server: str | None = None
    tool: str | None = None
    client: str | None = None

    def match(self, e: Ev) -> bool:
        return ((self.server is None or e.server == self.server) and (self.tool is None or e.tool == self.tool)
                and (self.client is None or e.client == self.client))


class Oracle:
    """The raw event list, indexed by time, with every answer computed by hand."""

    def __init__(self, events: Iterable[dict]) -> None:
        self.events = sorted((normalise(e) for e in events), key=lambda e: e.ts)
        self.times = [e.ts for e in self.events]
        self.calls = [e for e in self.events if e.kind == "tool_call"]
        self.first_call: dict[str, int] = {}
        self.first_call_on: dict[tuple[str, str], int] = {}
        for e in self.calls:
            if e.user is not None:
                self.first_call.setdefault(e.user, e.ts)
                self.first_call_on.setdefault((e.server, e.user), e.ts)
        self.sessions: dict[str, list[Ev]] = defaultdict(list)
        for e in self.events:
            if e.session and e.kind != "tool_listed":
                self.sessions[e.session].append(e)

    def between(self, start: int, end: int) -> list[Ev]:
        return self.events[bisect.bisect_left(self.times, start):bisect.bisect_left(self.times, end)]

    def calls_in(self, w: Window, f: Filters) -> list[Ev]:
        return [e for e in self.between(w.start, w.end) if e.kind == "tool_call" and f.match(e)]

    # -- summary --

    def summary(self, w: Window, f: Filters) -> dict:
        calls = self.calls_in(w, f)
        users = {e.user for e in calls if e.user is not None}
        first = (lambda u: self.first_call_on[(f.server, u)]) if f.server else (lambda u: self.first_call[u])
        new = sum(1 for u in users if first(u) >= w.start)
        prev = self.calls_in(w.previous(), f)
        prev_users = {e.user for e in prev if e.user is not None}
        week_end = -(-w.end // DAY) * DAY
        per_tool = _group(calls, lambda e: (e.server, e.tool))
        ranked = sorted(per_tool.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        sr, prev_sr = _success_rate(calls), _success_rate(prev)
        return {
            "from": iso(w.start), "to": iso(w.end), "grain": "hour" if w.grain_ms == HOUR else "day",
            "filters": f._asdict(),
            "users": len(users), "new_users": new, "returning_users": len(users) - new,
            "calls": len(calls), "errors": _errors(calls), "success_rate": sr, "latency_ms": _latency(calls),
            "calls_last_7d": len(self.calls_in(Window(week_end - 7 * DAY, week_end, DAY), f)),
            "tools": [  # the top ten
                {"server": s, "tool": t, "calls": len(es), "share": round(len(es) / len(calls), 4), "errors": _errors(es),
                 "success_rate": _success_rate(es), "users": _users(es),
                 **{f"p{q}_ms": Pct(_pct(_durations(es), q)) for q in (50, 95, 99)}}
                for (s, t), es in ranked[:10]
            ],
            "previous": {"from": iso(w.previous().start), "to": iso(w.previous().end), "users": len(prev_users),
                         "calls": len(prev), "errors": _errors(prev), "success_rate": prev_sr,
                         "latency_ms": _latency(prev)},
            "change": {"users": _change(len(users), len(prev_users)), "calls": _change(len(calls), len(prev)),
                       "success_rate": None if sr is None or prev_sr is None else round(sr - prev_sr, 4),
                       "p95_ms": CHANGE_OF_REPORTED_P95},
        }

    # -- tools --

    def tools(self, w: Window, f: Filters) -> dict:
        calls = self.calls_in(w, f)
        per_tool = _group(calls, lambda e: (e.server, e.tool))
        last_call: dict[tuple, int] = {}
        catalog: dict[tuple, list[int]] = {}
        for e in self.events:
            if e.kind == "tool_call":
                last_call[(e.server, e.tool)] = e.ts
            if e.kind in ("tool_call", "tool_listed") and e.tool and (f.server is None or e.server == f.server):
                span = catalog.setdefault((e.server, e.tool), [e.ts, e.ts])
                span[1] = e.ts
        rows = [
            {"server": s, "tool": t, "calls": len(es), "share": round(len(es) / len(calls), 4), "errors": _errors(es),
             "error_rate": round(_errors(es) / len(es), 4), "success_rate": _success_rate(es), "users": _users(es),
             "latency_ms": _latency(es), "last_used": iso(last_call[(s, t)])}
            for (s, t), es in sorted(per_tool.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        ]
        never = [{"server": s, "tool": t, "first_seen": iso(a), "last_seen": iso(b)}
                 for (s, t), (a, b) in sorted(catalog.items())
                 if (s, t) not in per_tool and (f.tool is None or t == f.tool)]
        return {**self._describe(w, f), "calls": len(calls), "tools": rows, "never_called": never}

    # -- timeseries --

    def timeseries(self, w: Window, f: Filters, by_tool: int = 8) -> dict:
        calls = self.calls_in(w, f)
        by_name = _group(calls, lambda e: e.tool)
        top = [t for t, _ in sorted(by_name.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:by_tool]]
        per_bucket = _group(calls, lambda e: e.ts - e.ts % w.grain_ms)
        points = []
        for bucket in range(w.start, w.end, w.grain_ms):
            es = per_bucket.get(bucket, [])
            durations = _durations(es)
            points.append({
                "t": iso(bucket), "calls": len(es), "errors": _errors(es), "success_rate": _success_rate(es),
                "users": _users(es), "p50_ms": Pct(_pct(durations, 50)), "p95_ms": Pct(_pct(durations, 95)),
                "p99_ms": Pct(_pct(durations, 99)),
                "by_tool": {t: n for t in top if (n := sum(1 for e in es if e.tool == t))},
            })
        return {**self._describe(w, f), "tools": top, "points": points, "markers": []}

    # -- users --

    def _new(self, calls: list[Ev], start: int, f: Filters) -> tuple[int, int]:
        """(distinct users, those whose first call - on the filtered server, or anywhere - is at or after start)."""
        users = {e.user for e in calls if e.user is not None}
        first = (lambda u: self.first_call_on[(f.server, u)]) if f.server else (lambda u: self.first_call[u])
        return len(users), sum(1 for u in users if first(u) >= start)

    def users_answer(self, w: Window, f: Filters) -> dict:
        calls = self.calls_in(w, f)
        per_bucket = _group(calls, lambda e: e.ts - e.ts % w.grain_ms)
        points = []
        for bucket in range(w.start, w.end, w.grain_ms):
            n, new = self._new(per_bucket.get(bucket, []), bucket, f)
            points.append({"t": iso(bucket), "users": n, "new_users": new, "returning_users": n - new})
        n, new = self._new(calls, w.start, f)
        return {**self._describe(w, f), "users": n, "new_users": new, "returning_users": n - new, "points": points}

    # -- errors --

    def errors(self, w: Window, f: Filters, samples: int = 20) -> dict:
        failed = [e for e in self.between(w.start, w.end) if e.ok is False and e.kind != "tool_listed" and f.match(e)]
        groups = _group(failed, lambda e: (e.server, e.tool or "", e.error_type or "error"))
        ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        recent = sorted(failed, key=lambda e: -e.ts)[:samples]
        return {
            **self._describe(w, f), "errors": len(failed),
            "types": [{"server": s, "tool": t or None, "error_type": et, "count": len(es),
                       "share": round(len(es) / len(failed), 4), "last_seen": iso(max(e.ts for e in es))}
                      for (s, t, et), es in ranked],
            "recent": [{"ts": iso(e.ts), "kind": e.kind, "server": e.server, "tool": e.tool, "error_type": e.error_type,
                        "error_message": e.error_message, "client": e.client, "session_id": e.session} for e in recent],
        }

    # -- sessions and clients --

    def session_rows(self, w: Window, f: Filters) -> list[dict]:
        """Sessions that started in the window (their first event), matching the filters."""
        out = []
        for es in self.sessions.values():
            first = min(e.ts for e in es)
            if not w.start <= first < w.end:
                continue
            s = {"server": es[0].server, "client": _first(e.client for e in es),
                 "version": _first(e.client_version for e in es), "protocol": _first(e.protocol for e in es),
                 "first": first, "last": max(e.ts for e in es),
                 "calls": sum(1 for e in es if e.kind == "tool_call"),
                 "tools": {e.tool for e in es if e.kind == "tool_call"},
                 "init": min((e.ts for e in es if e.kind in ("initialize", "server_discover")), default=None),
                 "list": min((e.ts for e in es if e.kind == "list_tools"), default=None),
                 "call": min((e.ts for e in es if e.kind == "tool_call"), default=None)}
            if ((f.server is None or s["server"] == f.server) and (f.client is None or s["client"] == f.client)
                    and (f.tool is None or f.tool in s["tools"])):
                out.append(s)
        return out

    def clients(self, w: Window, f: Filters) -> dict:
        calls = self.calls_in(w, f)
        per_client = _group(calls, lambda e: e.client or "")
        versions: dict[tuple, int] = defaultdict(int)
        protocols: dict[str, int] = defaultdict(int)
        for s in self.session_rows(w, f):
            versions[(s["client"] or "", s["version"] or "")] += 1
            protocols[s["protocol"] or "unknown"] += 1
        return {
            **self._describe(w, f),
            "clients": [{"client": c or "unknown", "calls": len(es), "share": round(len(es) / len(calls), 4),
                         "errors": _errors(es), "users": _users(es)}
                        for c, es in sorted(per_client.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
            "versions": [{"client": c or "unknown", "version": v or None, "sessions": n}
                         for (c, v), n in sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))],
            "protocol_versions": [{"protocol_version": p, "sessions": n}
                                  for p, n in sorted(protocols.items(), key=lambda kv: (-kv[1], kv[0]))],
        }

    def sessions_answer(self, w: Window, f: Filters) -> dict:
        rows = self.session_rows(w, f)

        def gaps(a: str, b: str) -> list[float]:
            return [float(s[b] - s[a]) for s in rows if s[a] is not None and s[b] is not None and s[b] >= s[a]]

        return {
            **self._describe(w, f), "sessions": len(rows),
            "length_seconds": _dist([(s["last"] - s["first"]) / 1000 for s in rows]),
            "calls_per_session": _dist([float(s["calls"]) for s in rows]),
            "tools_per_session": _dist([float(len(s["tools"])) for s in rows]),
            "handshake_ms": {"initialize_to_list_tools": _dist(gaps("init", "list")),
                             "list_tools_to_call_tool": _dist(gaps("list", "call")),
                             "initialize_to_call_tool": _dist(gaps("init", "call"))},
        }

    @staticmethod
    def _describe(w: Window, f: Filters) -> dict:
        return {"from": iso(w.start), "to": iso(w.end), "grain": "hour" if w.grain_ms == HOUR else "day",
                "filters": f._asdict()}


# ---- plain arithmetic ----------------------------------------------------------------------


def _group(events: Iterable[Ev], key) -> dict:
    out: dict = defaultdict(list)
    for e in events:
        out[key(e)].append(e)
    return dict(out)


def _first(values: Iterable[Any]) -> Any:
    return next((v for v in values if v is not None), None)


def _errors(events: list[Ev]) -> int:
    return sum(1 for e in events if e.ok is False)


def _users(events: list[Ev]) -> int:
    return len({e.user for e in events if e.user is not None})


def _success_rate(events: list[Ev]) -> float | None:
    return round((len(events) - _errors(events)) / len(events), 4) if events else None


def _change(now: float, before: float) -> float | None:
    return None if before == 0 else round((now - before) / before, 4)


def _durations(events: list[Ev]) -> list[float]:
    return sorted(e.duration for e in events if e.duration is not None)


def _pct(ordered: list[float], q: float) -> float | None:
    """Exact nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _latency(events: list[Ev]) -> dict:
    d = _durations(events)
    return {"p50": Pct(_pct(d, 50)), "p95": Pct(_pct(d, 95)), "p99": Pct(_pct(d, 99)),
            "avg": duration(sum(d) / len(d) if d else None, summed=True), "min": duration(min(d) if d else None),
            "max": duration(max(d) if d else None)}


def _dist(values: list[float]) -> dict:
    values = sorted(values)
    return {"count": len(values), "avg": Near(sum(values) / len(values) if values else None, absolute=5e-4 + 1e-9),
            "p50": _round3(_pct(values, 50)), "p95": _round3(_pct(values, 95)), "max": values[-1] if values else None}


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- comparing answers -----------------------------------------------------------------------


class Pct(NamedTuple):
    """A latency percentile: within the histogram's relative error of the exact value."""

    exact: float | None


class Near(NamedTuple):
    """A figure the answer rounds: equal within ``relative`` or ``absolute`` tolerance."""

    value: float | None
    relative: float = 0.0
    absolute: float = 0.0


CHANGE_OF_REPORTED_P95 = object()  # checked against the answer's own p95 figures

# Durations in answers keep six significant digits (relative rounding ≤ 5e-6); the
# percentile bound allows for that rounding on top of the histogram's own error.
ROUNDING = 5e-6


def duration(value: float | None, summed: bool = False) -> Near:
    """A duration figure (min, max exactly; avg up to float summation order)."""
    return Near(value, ROUNDING * (1 + 1e-9) + (1e-12 if summed else 0.0))


def pct_ok(actual: float | None, exact: float | None) -> bool:
    if exact is None or actual is None:
        return actual is None and exact is None
    return abs(actual - exact) <= (RELATIVE_ERROR * (1 + 1e-9) + ROUNDING) * exact


def same(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Every difference between an answer and its expectation, as readable lines."""
    if isinstance(expected, Pct):
        return [] if pct_ok(actual, expected.exact) else [f"{path}: {actual} is not within ±{RELATIVE_ERROR:.2%} of {expected.exact}"]
    if isinstance(expected, Near):
        e = expected.value
        if e is None or actual is None:
            return [] if e is None and actual is None else [f"{path}: {actual} != {e}"]
        ok = abs(actual - e) <= max(expected.relative * abs(e), expected.absolute)
        return [] if ok else [f"{path}: {actual} != {e}"]
    if expected is CHANGE_OF_REPORTED_P95:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r} is not an object"]
        out = [f"{path}: unexpected key {k!r}" for k in actual.keys() - expected.keys()]
        out += [f"{path}: missing key {k!r}" for k in expected.keys() - actual.keys()]
        for k in expected.keys() & actual.keys():
            out += same(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: {actual!r} is not a list"]
        out = [] if len(actual) == len(expected) else [f"{path}: {len(actual)} items, expected {len(expected)}"]
        for i, (a, e) in enumerate(zip(actual, expected)):
            out += same(a, e, f"{path}[{i}]")
        return out
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]
    return [] if actual == expected and type(actual) is type(expected) else [f"{path}: {actual!r} != {expected!r}"]
