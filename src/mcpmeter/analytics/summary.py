"""The usage summary: how many people, what is popular, is it working, what happened."""

from __future__ import annotations

import heapq
import math
from typing import Any, Sequence

from ..storage.base import EventFilter, Store
from .periods import Window, iso

WEEK_MS = 7 * 86_400_000


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 3)


def _rate(ok: int, total: int) -> float | None:
    return round(ok / total, 4) if total else None


def summary(store: Store, project_id: int, win: Window, server: str | None = None,
            tool: str | None = None, client: str | None = None) -> dict[str, Any]:
    f = EventFilter(project_id, win.start_ms, win.end_ms, server, tool, client)
    stats = store.tool_stats(f)
    calls = sum(s.calls for s in stats)
    errors = sum(s.errors for s in stats)
    durations = list(heapq.merge(*(s.durations for s in stats)))
    week = f._replace(start_ms=max(win.start_ms, win.end_ms - WEEK_MS))
    tools = [
        {
            "server": s.server,
            "tool": s.tool,
            "calls": s.calls,
            "share": round(s.calls / calls, 4) if calls else 0.0,
            "errors": s.errors,
            "success_rate": _rate(s.calls - s.errors, s.calls),
            "users": s.users,
            "p50_ms": percentile(s.durations, 50),
            "p95_ms": percentile(s.durations, 95),
            "p99_ms": percentile(s.durations, 99),
            "last_used": iso(s.last_ts),
        }
        for s in stats
    ]
    return {
        "from": iso(win.start_ms),
        "to": iso(win.end_ms),
        "filters": {"server": server, "tool": tool, "client": client},
        "users": store.distinct_users(f),
        "calls": calls,
        "errors": errors,
        "success_rate": _rate(calls - errors, calls),
        "latency_ms": {q: percentile(durations, n) for q, n in (("p50", 50), ("p95", 95), ("p99", 99))},
        "calls_last_7d": store.count_events(week),
        "tools": tools,
        "daily": [{"day": day, "calls": n, "errors": e or 0} for day, n, e in store.daily_calls(f)],
    }
