"""The oracle for the answers beyond the calls: categories, usage actions, the activation
funnel with the catalog's context cost, and custom measurements per hour or day.

Plain Python over the raw events (``analytics_oracle.Oracle``) and the raw measurements,
sharing no code with ``mcpmeter.analytics`` or the rollups: only the answers' shape.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

from analytics_oracle import (
    ACTIONS,
    DAY,
    HOUR,
    Filters,
    Oracle,
    Pct,
    Window,
    _durations,
    _group,
    _outcome_figures,
    _pct,
    _users,
    iso,
)

FUNNEL = ("initialize", "server_discover", "list_tools", "tool_call")


def describe(w: Window, f: Filters) -> dict:
    return {"from": iso(w.start), "to": iso(w.end), "grain": "hour" if w.grain_ms == HOUR else "day", "filters": f._asdict()}


def categories(o: Oracle, w: Window, f: Filters) -> dict:
    calls = o.calls_in(w, f)
    per = _group(calls, lambda e: o.category_of.get((e.server, e.tool)))
    rows = []
    for c, es in sorted(per.items(), key=lambda kv: (-len(kv[1]), kv[0] is None, kv[0] or "")):
        d = _durations(es)
        rows.append({"category": c, "calls": len(es), "share": round(len(es) / len(calls), 4), **_outcome_figures(es),
                     "users": _users(es), "tools": len({(e.server, e.tool) for e in es}),
                     "p50_ms": Pct(_pct(d, 50)), "p95_ms": Pct(_pct(d, 95))})
    return {**describe(w, f), "calls": len(calls), "categories": rows}


def actions(o: Oracle, w: Window, f: Filters) -> dict:
    events = [e for e in o.between(w.start, w.end) if e.kind in ACTIONS and o.match(e, f)]
    per = _group(events, lambda e: (e.server, e.kind))
    per_action = _group(events, lambda e: e.kind)
    per_bucket = _group(events, lambda e: e.ts - e.ts % w.grain_ms)
    return {
        **describe(w, f), "total": len(events),
        "actions": [{"action": k, "count": len(es)} for k, es in sorted(per_action.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
        "by_server": [{"server": s, "action": k, "count": len(es), "users": _users(es)}
                      for (s, k), es in sorted(per.items(), key=lambda kv: (-len(kv[1]), kv[0]))],
        "points": [{"t": iso(b), "by_action": {k: len(es) for k, es in _group(per_bucket.get(b, []), lambda e: e.kind).items()}}
                   for b in range(w.start, w.end, w.grain_ms)],
    }


def activation(o: Oracle, w: Window, f: Filters) -> dict:
    subjects: dict[tuple, dict] = {}
    for e in o.events:
        if e.kind not in FUNNEL:
            continue
        who = ("s", e.session) if e.session else ("u", e.user) if e.user else None
        if who is None:
            continue
        s = subjects.setdefault((e.server, who), {"client": None, "first": e.ts, "handshake": None, "list": None, "call": None})
        if e.client is not None and (s["client"] is None or e.client < s["client"]):
            s["client"] = e.client
        step = "call" if e.kind == "tool_call" else "list" if e.kind == "list_tools" else "handshake"
        s["first"] = min(s["first"], e.ts)
        s[step] = e.ts if s[step] is None else min(s[step], e.ts)
    funnel: dict[str, dict] = {}
    probes: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    for (server, who), s in subjects.items():
        if not w.start <= s["first"] < w.end or (f.server and server != f.server) or (f.client and s["client"] != f.client):
            continue
        row = funnel.setdefault(server, {"server": server, "followed": 0, "sessions": 0, "handshake": 0, "listed_tools": 0,
                                         "called": 0, "listed_not_called": 0})
        row["followed"] += 1
        row["sessions"] += who[0] == "s"
        row["handshake"] += s["handshake"] is not None
        row["listed_tools"] += s["list"] is not None
        row["called"] += s["call"] is not None
        row["listed_not_called"] += s["list"] is not None and s["call"] is None
        if s["call"] is None:
            probes[server][s["client"] or "unknown"] += 1
    calls = _group(o.calls_in(w, f), lambda e: (e.server, e.tool))
    definitions = {k: v for k, v in o.definitions().items() if f.server is None or k[0] == f.server}
    latest: dict[str, int] = {}
    for (server, _), (ts, _) in definitions.items():
        latest[server] = max(latest.get(server, ts), ts)
    tools, cost = [], {}
    for (server, tool), (ts, size) in definitions.items():
        category = o.category_of.get((server, tool))
        if (f.tool and tool != f.tool) or (f.category and category != f.category):
            continue
        current = ts >= latest[server] - latest[server] % DAY
        es = calls.get((server, tool), [])
        tokens = None if size is None else math.ceil(size / 4)
        tools.append({"server": server, "tool": tool, "category": category, "listed_now": current, "last_listed": iso(ts),
                      "definition_bytes": size, "definition_tokens": tokens, "calls": len(es), "users": _users(es)})
        if current:
            c = cost.setdefault(server, {"tools": 0, "definition_bytes": 0, "definition_tokens": 0, "never_called": 0,
                                         "never_called_tokens": 0})
            c["tools"] += 1
            c["definition_bytes"] += size or 0
            c["definition_tokens"] += tokens or 0
            c["never_called"] += not es
            c["never_called_tokens"] += 0 if es else tokens or 0
    tools.sort(key=lambda r: (r["calls"] > 0, -(r["definition_bytes"] or 0), r["server"], r["tool"]))
    servers = []
    for server in sorted(set(funnel) | set(cost)):
        row = funnel.get(server) or {"server": server, "followed": 0, "sessions": 0, "handshake": 0, "listed_tools": 0,
                                     "called": 0, "listed_not_called": 0}
        servers.append({**row, "probes": row["followed"] - row["called"],
                        "activation_rate": round(row["called"] / row["followed"], 4) if row["followed"] else None,
                        "probe_clients": [{"client": c, "probes": n}
                                          for c, n in sorted(probes[server].items(), key=lambda kv: (-kv[1], kv[0]))[:5]],
                        "context": cost.get(server)})
    return {**describe(w, f), "servers": servers, "tools": tools}


# ---- custom measurements ---------------------------------------------------------------------

METRICS = (("latency", "timer"), ("queue_depth", "gauge"), ("builds", "counter"))


def generate_measurements(seed: int, now_ms: int, n: int = 3000) -> list[tuple]:
    """Store rows (measurement_id, server, name, type, tags, ts, value) over the last ten days,
    denser in the last day; values are quarters, so sums are exact in any order."""
    rng = random.Random(seed)
    rows, used = [], set()
    for i in range(n):
        name, kind = rng.choice(METRICS)
        ts = now_ms - (rng.randrange(DAY) if rng.random() < 0.5 else rng.randrange(10 * DAY))
        while ts in used:
            ts += 1
        used.add(ts)
        tags = json.dumps({"region": rng.choice(["eu", "us"])} if rng.random() < 0.5 else {}, separators=(",", ":"))
        rows.append((f"m{seed}-{i}", rng.choice(["weblab", "archon"]), name, kind, tags, ts, rng.randrange(-40, 4000) / 4))
    return rows


def measurements(rows: list[tuple], w: Window, server: str | None, names: list[str], f: Filters) -> dict:
    inside = [r for r in rows if w.start <= r[5] < w.end and (server is None or r[1] == server) and (not names or r[2] in names)]
    buckets = _group(inside, lambda r: (r[2], r[5] - r[5] % w.grain_ms, r[1], r[4], r[3]))
    series: dict[tuple, dict] = {}
    for (name, bucket, srv, tags, kind), rs in sorted(buckets.items()):
        entry = series.setdefault((name, srv, kind, tags), {
            "name": name, "server": srv, "type": kind, "tags": json.loads(tags), "points": [],
            "count": 0, "sum": 0.0, "min": None, "max": None, "avg": None, "last": None})
        values = [r[6] for r in rs]
        last = max(rs, key=lambda r: r[5])[6]
        entry["points"].append({"t": iso(bucket), "count": len(rs), "sum": sum(values), "min": min(values),
                                "max": max(values), "avg": sum(values) / len(rs), "last": last})
        entry["count"] += len(rs)
        entry["sum"] += sum(values)
        entry["min"] = min(values) if entry["min"] is None else min(entry["min"], min(values))
        entry["max"] = max(values) if entry["max"] is None else max(entry["max"], max(values))
        entry["last"] = last
    for entry in series.values():
        entry["avg"] = entry["sum"] / entry["count"]
    return {**describe(w, f), "names": sorted(set(names)), "series": list(series.values()), "markers": []}


def report(o: Oracle, w: Window, f: Filters) -> dict:
    """What ``build_report`` answers (GET /v1/usage/report), computed by hand."""
    s, t, ts = o.summary(w, f), o.tools(w, f), o.timeseries(w, f, by_tool=0)
    e, c = o.errors(w, f, samples=10), o.clients(w, f)
    return {
        **{k: s[k] for k in ("from", "to", "grain", "filters", "users", "new_users", "returning_users", "calls",
                             "errors", "failures", "success_rate", "outcomes", "latency_ms", "calls_last_7d", "previous",
                             "change")},
        "tools": [
            {"server": r["server"], "tool": r["tool"], "category": r["category"], "calls": r["calls"], "share": r["share"],
             "errors": r["errors"], "failures": r["failures"], "success_rate": r["success_rate"], "users": r["users"],
             "p50_ms": r["latency_ms"]["p50"], "p95_ms": r["latency_ms"]["p95"], "p99_ms": r["latency_ms"]["p99"],
             "last_used": r["last_used"], "definition_tokens": r["definition_tokens"]}
            for r in t["tools"]
        ],
        "never_called": t["never_called"],
        "timeseries": [{k: p[k] for k in ("t", "calls", "errors", "users", "p95_ms")} for p in ts["points"]],
        "error_types": e["types"],
        "unknown_tools": e["unknown_tools"],
        "recent_errors": e["recent"],
        "clients": c["clients"],
        "protocol_versions": c["protocol_versions"],
        "categories": categories(o, w, f)["categories"],
        "actions": actions(o, w, f)["by_server"],
        "activation": activation(o, w, f)["servers"],
    }
