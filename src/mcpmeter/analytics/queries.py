"""Every usage question, answered from rollups.

Each function takes a store and a ``Query`` (project, aligned window, filters) and returns
plain JSON-ready data; the API, the CLI, the dashboard and the MCP server all call these.
Latency percentiles come from merged histograms (within ±2.2 %, see histogram.py); counts
and distinct users are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..protocol import OUTCOME_CALLER_ERROR, OUTCOME_SERVER_ERROR, OUTCOME_TOOL_ERROR, UNKNOWN_TOOL
from ..storage.base import EventFilter, Store
from ..storage.rollup import Cell, outcome_class
from .periods import DAY_MS, Window, align, iso

TOP_TOOLS = 10


class Query(NamedTuple):
    project_id: int
    window: Window
    server: str | None = None
    tool: str | None = None
    client: str | None = None
    category: str | None = None

    @property
    def dimensions(self) -> dict[str, str | None]:
        """The filters beyond the window (``analytics/questions.py`` declares them), by name."""
        return {name: getattr(self, name) for name in self._fields[2:]}

    @property
    def filter(self) -> EventFilter:
        return EventFilter(self.project_id, self.window.start_ms, self.window.end_ms, **self.dimensions)

    def previous(self) -> Query:
        return self._replace(window=self.window.previous())

    def describe(self) -> dict[str, Any]:
        return {"from": iso(self.window.start_ms), "to": iso(self.window.end_ms), "grain": self.window.grain,
                "filters": self.dimensions}


Agg = Cell  # one aggregate for rollups and answers: storage.rollup.Cell


def _change(now: float | None, before: float | None) -> float | None:
    """Relative change (0.25 = +25 %); None when there is nothing to compare with."""
    if now is None or before is None or before == 0:
        return None
    return round((now - before) / before, 4)


def aggregate_cells(cells: Sequence[tuple], key: Sequence[int] = (), latency: bool = True) -> dict[tuple, Agg]:
    """Fold rollup cells into one Agg per key (indexes into the cell tuple; () = one total);
    without ``latency`` the histograms are left out (counts only: merging them is most of the cost)."""
    out: dict[tuple, Agg] = {}
    for cell in cells:
        k = tuple(cell[i] for i in key)
        agg = out.get(k)
        if agg is None:
            agg = out[k] = Agg()
        calls, errors, dur_count, dur_sum, dur_min, dur_max, hist, caller, server, cancelled = cell[5:15]
        agg.add_cell(calls, errors, dur_count, dur_sum, dur_min, dur_max, hist if latency else None, caller, server, cancelled)
    return out


def outcome_figures(a: Agg) -> dict[str, Any]:
    """What every answer says of a set of calls' outcomes: errors (tool, server and caller
    errors), failures (tool and server errors: what the success rate counts against), the
    success rate, and the calls per outcome class."""
    return {"errors": a.errors, "failures": a.failures, "success_rate": a.success_rate, "outcomes": a.outcomes()}


def tokens(size: int | None) -> int | None:
    """An estimate of the tokens a text of ``size`` bytes costs a model: bytes / 4, rounded up
    (the usual rule of thumb for English and JSON; no tokenizer is applied)."""
    return None if size is None else -(-size // 4)


# Positions in a cell row: (bucket, kind, server, tool, client, ...)
BUCKET, KIND, SERVER, TOOL, CLIENT = range(5)


def _totals(store: Store, q: Query, new_users: bool = True) -> tuple[Agg, dict[tuple, Agg], int, int, list[tuple]]:
    cells = store.tool_cells(q.filter, q.window.grain)
    per_tool = aggregate_cells(cells, (SERVER, TOOL))
    total = Agg()
    for agg in per_tool.values():
        total.merge(agg)
    users = store.users(q.filter, q.window.grain)[0][0]
    new = store.new_users(q.filter, q.window.grain) if users and new_users else 0
    return total, per_tool, users, new, cells


def summary(store: Store, q: Query) -> dict[str, Any]:
    """Users (new/returning), calls, success rate, latency, top tools, change vs the previous window."""
    total, per_tool, users, new, cells = _totals(store, q)
    prev_total, _, prev_users, _, _ = _totals(store, q.previous(), new_users=False)
    latency = total.latency()
    prev_latency = prev_total.latency()
    tool_users = {(s, t): n for s, t, n in store.users(q.filter, q.window.grain, ("server", "tool"))}
    ranked = sorted(per_tool.items(), key=lambda kv: (-kv[1].calls, kv[0]))
    day_end = align(q.window.end_ms - 1, q.window.end_ms, "day").end_ms  # the end of the window's last UTC day
    week = q._replace(window=Window(day_end - 7 * DAY_MS, day_end, "day"))  # seven whole days, as period=7d
    if week.window == q.window:
        calls_7d = total.calls
    elif q.window.grain == "day" and q.window.start_ms <= week.window.start_ms:  # inside this window's cells
        calls_7d = sum(c[5] for c in cells if c[BUCKET] >= week.window.start_ms)
    else:
        calls_7d = sum(c[5] for c in store.tool_cells(week.filter, "day"))
    return {
        **q.describe(),
        "users": users,
        "new_users": new,
        "returning_users": users - new,
        "calls": total.calls,
        **outcome_figures(total),
        "latency_ms": latency,
        "calls_last_7d": calls_7d,
        "tools": [  # the top tools
            {"server": s, "tool": t, "calls": a.calls, "share": round(a.calls / total.calls, 4) if total.calls else 0.0,
             "errors": a.errors, "failures": a.failures, "success_rate": a.success_rate, "users": tool_users.get((s, t), 0),
             **{f"{k}_ms": v for k, v in a.latency().items() if k in ("p50", "p95", "p99")}}
            for (s, t), a in ranked[:TOP_TOOLS]
        ],
        "previous": {"from": iso(q.window.previous().start_ms), "to": iso(q.window.previous().end_ms),
                     "users": prev_users, "calls": prev_total.calls, "errors": prev_total.errors,
                     "failures": prev_total.failures, "success_rate": prev_total.success_rate, "latency_ms": prev_latency},
        "change": {
            "users": _change(users, prev_users),
            "calls": _change(total.calls, prev_total.calls),
            "success_rate": None if total.success_rate is None or prev_total.success_rate is None
            else round(total.success_rate - prev_total.success_rate, 4),
            "p95_ms": _change(latency["p95"], prev_latency["p95"]),
        },
    }


def tools(store: Store, q: Query) -> dict[str, Any]:
    """Per tool: calls, share, errors, error rate, latency, users, last used; and tools never called."""
    per_tool = aggregate_cells(store.tool_cells(q.filter, q.window.grain), (SERVER, TOOL))
    total = sum(a.calls for a in per_tool.values())
    tool_users = {(s, t): n for s, t, n in store.users(q.filter, q.window.grain, ("server", "tool"))}
    catalog = {(r[0], r[1]): r for r in store.tool_catalog(q.project_id, q.server)}
    rows = []
    for (s, t), a in sorted(per_tool.items(), key=lambda kv: (-kv[1].calls, kv[0])):
        entry = catalog.get((s, t))
        rows.append({
            "server": s, "tool": t, "category": entry[8] if entry else None, "calls": a.calls,
            "share": round(a.calls / total, 4) if total else 0.0, **outcome_figures(a),
            "error_rate": round(a.errors / a.calls, 4) if a.calls else None,
            "users": tool_users.get((s, t), 0), "latency_ms": a.latency(),
            "last_used": iso(entry[4]) if entry and entry[4] is not None else None,
            **_definition(entry),
        })
    never = [{"server": s, "tool": t, "category": entry[8], "first_seen": iso(entry[2]), "last_seen": iso(entry[3]),
              "listed": entry[6] is not None, **_definition(entry)}
             for (s, t), entry in sorted(catalog.items())
             if (s, t) not in per_tool and (q.tool is None or t == q.tool) and (q.category is None or entry[8] == q.category)]
    return {**q.describe(), "calls": total, "tools": rows, "never_called": never}


def _definition(entry: Sequence[Any] | None) -> dict[str, Any]:
    """A catalog entry's context cost: its definition's size at the last tools/list, and the tokens that is."""
    size = entry[7] if entry else None
    return {"definition_bytes": size, "definition_tokens": tokens(size)}


def timeseries(store: Store, q: Query, by_tool: int = 8) -> dict[str, Any]:
    """Per bucket: calls, errors, success rate, users, latency percentiles; calls per top tool."""
    grain_ms = q.window.grain_ms
    cells = store.tool_cells(q.filter, q.window.grain)
    per_bucket = aggregate_cells(cells, (BUCKET,))
    per_bucket_tool = aggregate_cells(cells, (BUCKET, TOOL), latency=False)  # calls only
    users = {b: n for b, n in store.users(q.filter, q.window.grain, ("bucket",))}
    totals = aggregate_cells(cells, (TOOL,), latency=False)
    top = [t for (t,), _ in sorted(totals.items(), key=lambda kv: (-kv[1].calls, kv[0]))[:by_tool]]
    points = []
    for bucket in range(q.window.start_ms, q.window.end_ms, grain_ms):
        a = per_bucket.get((bucket,), Agg())
        lat = a.latency()
        points.append({
            "t": iso(bucket), "calls": a.calls, "errors": a.errors, "failures": a.failures,
            "caller_errors": a.caller_errors, "cancelled": a.cancelled, "success_rate": a.success_rate,
            "users": users.get(bucket, 0), "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"],
            "by_tool": {t: per_bucket_tool[(bucket, t)].calls for t in top if (bucket, t) in per_bucket_tool},
        })
    markers = [{"ts": iso(ts), "server": server, "type": kind, "version": version, "message": message}
               for ts, server, kind, version, message, _ in store.server_events(q.filter)]
    return {**q.describe(), "tools": top, "points": points, "markers": markers}


def users(store: Store, q: Query) -> dict[str, Any]:
    """Distinct users per bucket, split into new (their first call ever falls in the bucket) and returning."""
    grain_ms = q.window.grain_ms
    active = dict(store.users(q.filter, q.window.grain, ("bucket",)))
    new_by_bucket = store.new_users_by_bucket(q.filter, q.window.grain)
    points = []
    for bucket in range(q.window.start_ms, q.window.end_ms, grain_ms):
        n = active.get(bucket, 0)
        new = new_by_bucket.get(bucket, 0)
        points.append({"t": iso(bucket), "users": n, "new_users": new, "returning_users": n - new})
    total = store.users(q.filter, q.window.grain)[0][0]
    new_total = store.new_users(q.filter, q.window.grain) if total else 0
    return {**q.describe(), "users": total, "new_users": new_total, "returning_users": total - new_total, "points": points}


def errors(store: Store, q: Query, samples: int = 20) -> dict[str, Any]:
    """Top error types per tool with counts, and the most recent failures with their messages."""
    groups = store.error_groups(q.filter)
    total = sum(g[4] for g in groups)
    by_outcome = {o: 0 for o in (OUTCOME_TOOL_ERROR, OUTCOME_SERVER_ERROR, OUTCOME_CALLER_ERROR)}
    for g in groups:
        by_outcome[g[3]] = by_outcome.get(g[3], 0) + g[4]
    recent = store.recent_errors(q.filter, samples)
    return {
        **q.describe(),
        "errors": total,
        "outcomes": by_outcome,
        "types": [{"server": s, "tool": t or None, "error_type": e, "outcome": o, "count": n,
                   "share": round(n / total, 4) if total else 0.0, "last_seen": iso(last)} for s, t, e, o, n, last in groups],
        "unknown_tools": unknown_tools(store, q, groups),
        "recent": [{"ts": iso(ts), "kind": kind, "server": s, "tool": t, "error_type": e,
                    "outcome": outcome_class(0, e, attrs), "error_message": m, "client": c, "session_id": sid}
                   for ts, kind, s, t, e, m, c, sid, attrs in recent],
    }


def unknown_tools(store: Store, q: Query, groups: Sequence[tuple]) -> list[dict[str, Any]]:
    """The tool names clients tried that the server does not have: calls refused as invalid
    params (-32602, what a call to a missing tool is recorded as) naming a tool the server's
    catalog never listed, on servers whose catalog is known (a tools/list was recorded)."""
    listed: dict[str, set[str]] = {}
    for row in store.tool_catalog(q.project_id, q.server):
        if row[6] is not None:
            listed.setdefault(row[0], set()).add(row[1])
    tried: dict[tuple[str, str], list[int]] = {}
    for s, t, e, o, n, last in groups:
        if o == OUTCOME_CALLER_ERROR and e == UNKNOWN_TOOL and t and s in listed and t not in listed[s]:
            entry = tried.setdefault((s, t), [0, last])
            entry[0] += n
            entry[1] = max(entry[1], last)
    return [{"server": s, "tool": t, "calls": n, "last_seen": iso(last)}
            for (s, t), (n, last) in sorted(tried.items(), key=lambda kv: (-kv[1][0], kv[0]))]


def _session_counts(store: Store, q: Query) -> list[tuple]:
    """Sessions that started in the window per (client, client_version, protocol_version)."""
    return store.session_counts(q.filter)


def clients(store: Store, q: Query) -> dict[str, Any]:
    """Which clients call, in which versions, over which protocol versions."""
    per_client: dict[tuple, Agg] = {}
    for client, calls, errors, caller, server, cancelled in store.client_counts(q.filter, q.window.grain):  # counts only
        per_client[(client,)] = a = Agg()
        a.add_cell(calls, errors, 0, 0.0, None, None, None, caller, server, cancelled)
    client_users = {c: n for c, n in store.users(q.filter, q.window.grain, ("client",))}
    total = sum(a.calls for a in per_client.values())
    versions: dict[tuple, int] = {}
    protocols: dict[str, int] = {}
    for client, version, protocol, n in _session_counts(store, q):
        versions[(client or "", version or "")] = versions.get((client or "", version or ""), 0) + n
        protocols[protocol or "unknown"] = protocols.get(protocol or "unknown", 0) + n
    return {
        **q.describe(),
        "clients": [{"client": c or "unknown", "calls": a.calls, "share": round(a.calls / total, 4) if total else 0.0,
                     "errors": a.errors, "failures": a.failures, "success_rate": a.success_rate,
                     "users": client_users.get(c, 0)}
                    for (c,), a in sorted(per_client.items(), key=lambda kv: (-kv[1].calls, kv[0]))],
        "versions": [{"client": c or "unknown", "version": v or None, "sessions": n}
                     for (c, v), n in sorted(versions.items(), key=lambda kv: (-kv[1], kv[0]))],
        "protocol_versions": [{"protocol_version": p, "sessions": n} for p, n in sorted(protocols.items(), key=lambda kv: (-kv[1], kv[0]))],
    }


def _dist(values: list[float]) -> dict[str, float | None]:
    values.sort()
    def pct(q: float) -> float | None:
        return round(values[max(1, math.ceil(q / 100 * len(values))) - 1], 3) if values else None
    return {"count": len(values), "avg": round(sum(values) / len(values), 3) if values else None,
            "p50": pct(50), "p95": pct(95), "max": values[-1] if values else None}


def sessions(store: Store, q: Query) -> dict[str, Any]:
    """Session length, calls and tools per session, and handshake latencies (initialize → tools/list → tools/call)."""
    rows = store.sessions(q.filter)
    length, calls, tools_used, init_list, list_call, init_call = [], [], [], [], [], []
    for (_, _, _, _, _, _, first, last, n_calls, _, init_ts, list_ts, call_ts, n_tools) in rows:
        length.append((last - first) / 1000)
        calls.append(n_calls)
        tools_used.append(n_tools)
        if init_ts is not None and list_ts is not None and list_ts >= init_ts:
            init_list.append(float(list_ts - init_ts))
        if list_ts is not None and call_ts is not None and call_ts >= list_ts:
            list_call.append(float(call_ts - list_ts))
        if init_ts is not None and call_ts is not None and call_ts >= init_ts:
            init_call.append(float(call_ts - init_ts))
    return {
        **q.describe(),
        "sessions": len(rows),
        "length_seconds": _dist(length),
        "calls_per_session": _dist([float(c) for c in calls]),
        "tools_per_session": _dist([float(t) for t in tools_used]),
        "handshake_ms": {"initialize_to_list_tools": _dist(init_list), "list_tools_to_call_tool": _dist(list_call),
                         "initialize_to_call_tool": _dist(init_call)},
    }
