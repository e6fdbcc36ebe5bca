"""The full report: every answer in one document (CLI report, exports, `/v1/usage/report`)."""

from __future__ import annotations

from typing import Any

from ..storage.base import Store
from . import queries
from .queries import Query


def build_report(store: Store, q: Query) -> dict[str, Any]:
    s = queries.summary(store, q)
    t = queries.tools(store, q)
    ts = queries.timeseries(store, q, by_tool=0)
    e = queries.errors(store, q, samples=10)
    c = queries.clients(store, q)
    return {
        **{k: s[k] for k in ("from", "to", "grain", "filters", "users", "new_users", "returning_users", "calls",
                             "errors", "success_rate", "latency_ms", "calls_last_7d", "previous", "change")},
        "tools": [
            {"server": r["server"], "tool": r["tool"], "calls": r["calls"], "share": r["share"], "errors": r["errors"],
             "success_rate": r["success_rate"], "users": r["users"], "p50_ms": r["latency_ms"]["p50"],
             "p95_ms": r["latency_ms"]["p95"], "p99_ms": r["latency_ms"]["p99"], "last_used": r["last_used"]}
            for r in t["tools"]
        ],
        "never_called": t["never_called"],
        "timeseries": [{k: p[k] for k in ("t", "calls", "errors", "users", "p95_ms")} for p in ts["points"]],
        "error_types": e["types"],
        "recent_errors": e["recent"],
        "clients": c["clients"],
        "protocol_versions": c["protocol_versions"],
    }
