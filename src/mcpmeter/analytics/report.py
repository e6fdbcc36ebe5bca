"""The full report: every answer in one document (CLI report, exports, `/v1/usage/report`)."""

from __future__ import annotations

from typing import Any

from ..storage.base import Store
from . import breakdowns, queries
from .queries import Query


def build_report(store: Store, q: Query) -> dict[str, Any]:
    s = queries.summary(store, q)
    t = queries.tools(store, q)
    ts = queries.timeseries(store, q, by_tool=0)
    e = queries.errors(store, q, samples=10)
    c = queries.clients(store, q)
    a = breakdowns.activation(store, q)
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
        "categories": breakdowns.categories(store, q)["categories"],
        "actions": breakdowns.actions(store, q)["by_server"],
        "activation": a["servers"],
    }
