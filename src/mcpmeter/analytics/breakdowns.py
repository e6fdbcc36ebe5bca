"""The usage questions beyond the calls themselves, answered from rollups: tool categories,
other usage actions, the activation funnel with each tool's context cost, and custom
measurements per hour or day.

Like ``queries``, each function takes a store and a ``Query`` and returns JSON-ready data;
the registry (``questions.py``) exposes them on every surface.
"""

from __future__ import annotations

import json
from typing import Any

from ..storage.base import Store
from .periods import DAY_MS, iso
from .queries import SERVER, TOOL, Agg, Query, aggregate_cells, outcome_figures, tokens

PROBE_CLIENTS = 5  # the clients named per server among those that never called a tool


def _rank(items: dict[Any, Agg]) -> list[tuple[Any, Agg]]:
    return sorted(items.items(), key=lambda kv: (-kv[1].calls, kv[0] is None, kv[0] or ""))


def categories(store: Store, q: Query) -> dict[str, Any]:
    """Per tool category: calls, share, outcomes, success rate, users, tools, latency."""
    category = {(r[0], r[1]): r[8] for r in store.tool_catalog(q.project_id, q.server)}
    per: dict[str | None, Agg] = {}
    tools: dict[str | None, set[tuple[str, str]]] = {}
    for cell in store.tool_cells(q.filter, q.window.grain):
        key = category.get((cell[SERVER], cell[TOOL]))
        agg = per.get(key)
        if agg is None:
            agg = per[key] = Agg()
        agg.add_cell(*cell[5:15])
        tools.setdefault(key, set()).add((cell[SERVER], cell[TOOL]))
    users = dict(store.category_users(q.filter, q.window.grain))
    total = sum(a.calls for a in per.values())
    rows = []
    for key, a in _rank(per):
        latency = a.latency()
        rows.append({"category": key, "calls": a.calls, "share": round(a.calls / total, 4) if total else 0.0,
                     **outcome_figures(a), "users": users.get(key, 0), "tools": len(tools[key]),
                     "p50_ms": latency["p50"], "p95_ms": latency["p95"]})
    return {**q.describe(), "calls": total, "categories": rows}


def actions(store: Store, q: Query) -> dict[str, Any]:
    """Other usage actions (events of kinds that are not MCP requests, e.g. ``page_view``):
    counts per server and action, distinct users per action, counts per bucket."""
    counts: dict[tuple[str, str], int] = {}
    per_bucket: dict[int, dict[str, int]] = {}
    for bucket, kind, server, n in store.action_counts(q.filter, q.window.grain):
        counts[(server, kind)] = counts.get((server, kind), 0) + n
        point = per_bucket.setdefault(bucket, {})
        point[kind] = point.get(kind, 0) + n
    users = {(server, kind): n for server, kind, n in store.action_users(q.filter, q.window.grain)}
    per_action: dict[str, int] = {}
    for (_, kind), n in counts.items():
        per_action[kind] = per_action.get(kind, 0) + n
    names = sorted(per_action, key=lambda k: (-per_action[k], k))
    return {
        **q.describe(),
        "total": sum(counts.values()),
        "actions": [{"action": kind, "count": per_action[kind]} for kind in names],
        "by_server": [{"server": s, "action": k, "count": n, "users": users.get((s, k), 0)}
                      for (s, k), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
        "points": [{"t": iso(bucket), "by_action": per_bucket.get(bucket, {})}
                   for bucket in range(q.window.start_ms, q.window.end_ms, q.window.grain_ms)],
    }


def activation(store: Store, q: Query) -> dict[str, Any]:
    """Per server, the funnel handshake (initialize / server/discover) -> tools/list -> first
    tools/call of whom it follows (a session, else a user) first seen in the window, the
    clients of those that never called a tool (probes, crawlers: never counted as users), and
    each listed tool's context cost (its definition in tools/list) beside its calls."""
    funnel: dict[str, dict[str, Any]] = {}
    probes: dict[str, dict[str, int]] = {}
    for server, client, followed, sessions, handshake, listed, called, listed_only in store.activation(q.filter):
        f = funnel.setdefault(server, {"server": server, "followed": 0, "sessions": 0, "handshake": 0, "listed_tools": 0,
                                       "called": 0, "listed_not_called": 0})
        for name, n in (("followed", followed), ("sessions", sessions), ("handshake", handshake), ("listed_tools", listed),
                        ("called", called), ("listed_not_called", listed_only)):
            f[name] += n
        if followed > called:
            per_client = probes.setdefault(server, {})
            per_client[client or "unknown"] = per_client.get(client or "unknown", 0) + followed - called
    per_tool = aggregate_cells(store.tool_cells(q.filter, q.window.grain, latency=False), (SERVER, TOOL), latency=False)
    users = {(s, t): n for s, t, n in store.users(q.filter, q.window.grain, ("server", "tool"))}
    latest: dict[str, int] = {}
    catalog = [r for r in store.tool_catalog(q.project_id, q.server) if r[6] is not None]
    for r in catalog:
        latest[r[0]] = max(latest.get(r[0], r[6]), r[6])
    tools: list[dict[str, Any]] = []
    cost: dict[str, dict[str, int]] = {}
    for server, tool, *_, listed_last, size, category in catalog:
        current = listed_last >= latest[server] - latest[server] % DAY_MS  # in the server's latest day of listings
        if (q.tool is not None and tool != q.tool) or (q.category is not None and category != q.category):
            continue
        a = per_tool.get((server, tool))
        calls = a.calls if a else 0
        tools.append({"server": server, "tool": tool, "category": category, "listed_now": current,
                      "last_listed": iso(listed_last), "definition_bytes": size, "definition_tokens": tokens(size),
                      "calls": calls, "users": users.get((server, tool), 0)})
        if current:
            c = cost.setdefault(server, {"tools": 0, "definition_bytes": 0, "definition_tokens": 0, "never_called": 0,
                                         "never_called_tokens": 0})
            c["tools"] += 1
            c["definition_bytes"] += size or 0
            c["definition_tokens"] += tokens(size) or 0
            if not calls:
                c["never_called"] += 1
                c["never_called_tokens"] += tokens(size) or 0
    tools.sort(key=lambda r: (r["calls"] > 0, -(r["definition_bytes"] or 0), r["server"], r["tool"]))
    servers = []
    for server in sorted(set(funnel) | set(cost)):
        f = funnel.get(server) or {"server": server, "followed": 0, "sessions": 0, "handshake": 0, "listed_tools": 0,
                                   "called": 0, "listed_not_called": 0}
        servers.append({
            **f, "probes": f["followed"] - f["called"],
            "activation_rate": round(f["called"] / f["followed"], 4) if f["followed"] else None,
            "probe_clients": [{"client": c, "probes": n} for c, n in sorted(
                probes.get(server, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:PROBE_CLIENTS]],
            "context": cost.get(server),
        })
    return {**q.describe(), "servers": servers, "tools": tools}


def metric_names(value: str | None) -> list[str]:
    """``name=a,b`` (or the name option repeated, which the surfaces join with commas) -> [a, b]."""
    return sorted({n.strip() for n in (value or "").split(",") if n.strip()})


def measurements(store: Store, q: Query, name: str | None = None) -> dict[str, Any]:
    """Custom measurements per series (name, server, type, tags): count/sum/min/max/avg/last per
    hour or UTC day of the window (its grain: exact for 1h, 6h, 12h as for days), the window's
    totals, and the server events of the window as markers."""
    series: dict[tuple, dict[str, Any]] = {}
    grain = q.window.grain
    for bucket, server, metric, kind, tags, count, total, low, high, last in store.measurement_buckets(
            q.filter, metric_names(name), grain):
        entry = series.setdefault((metric, server, kind, tags), {
            "name": metric, "server": server, "type": kind, "tags": json.loads(tags), "points": [],
            "count": 0, "sum": 0.0, "min": None, "max": None, "avg": None, "last": None})
        entry["points"].append({"t": iso(bucket), "count": count, "sum": total, "min": low, "max": high,
                                "avg": total / count, "last": last})
        entry["count"] += count
        entry["sum"] += total
        entry["min"] = low if entry["min"] is None else min(entry["min"], low)
        entry["max"] = high if entry["max"] is None else max(entry["max"], high)
        entry["last"] = last  # buckets come in time order
    for entry in series.values():
        entry["avg"] = entry["sum"] / entry["count"] if entry["count"] else None
    markers = [{"ts": iso(ts), "server": server, "type": kind, "version": version, "message": message}
               for ts, server, kind, version, message, _ in store.server_events(q.filter)]
    return {**q.describe(), "names": metric_names(name), "series": list(series.values()), "markers": markers}
