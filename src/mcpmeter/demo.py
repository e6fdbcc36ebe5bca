"""Realistic sample data: several servers, tools, clients and users over 90 days.

Users work in sessions (handshake, discovery, a few tool calls); adoption grows; one tool
is listed but never called; a deploy fixes a failing tool, marked as a server event; a
custom gauge is reported daily. Everything goes through the same validation and ingest
path as real data; the events are built as every sender builds them (``events.new_event``).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from .events import Event, Limits, decode_batch, new_event
from .ingest import rows_for
from .measurements import measurement_rows, server_event_rows
from .protocol import (
    INITIALIZE,
    INITIALIZE_METHOD,
    LIST_TOOLS,
    METHOD_ATTRIBUTE,
    SERVER_DISCOVER_METHOD,
    TOOL_CALL,
    TOOL_LISTED,
)
from .storage.base import Store

DAY_MS = 86_400_000
SERVERS = {
    "weblab": ("1.4.0", [("weblab_details", "lookup", 0.30, 120), ("weblab_allocations", "lookup", 0.18, 250),
                         ("weblab_user_experiments", "lookup", 0.12, 400), ("weblab_search", "rag", 0.10, 800),
                         ("weblab_export", "export", 0.0, 900)]),
    "archon": ("0.2.0", [("rag_query", "rag", 0.12, 650), ("create_task", "task", 0.06, 90),
                         ("list_projects", "project", 0.05, 60), ("get_document", "document", 0.04, 140)]),
    "time": ("2026.10.19", [("get_current_time", "time", 0.02, 3), ("convert_time", "time", 0.01, 4)]),
}
CLIENTS = [("claude-code", ["2.0.14", "2.1.0"], 0.45), ("cursor", ["1.7.2"], 0.25),
           ("vscode-copilot", ["1.104.0", "1.105.1"], 0.18), ("mcp-inspector", ["0.17.0"], 0.12)]
ERRORS = [("TimeoutError", "upstream did not answer within 30s"), ("ValidationError", "experiment id must be numeric"),
          ("PermissionError", "user lacks access to this weblab"), ("HTTPError", "502 Bad Gateway from backend")]
PROTOCOLS = [("2025-06-18", 0.3), ("2025-11-25", 0.5), ("2026-07-28", 0.2)]


def generate(days: int = 90, users: int = 40, calls_per_day: int = 300, seed: int = 7,
             now_ms: int | None = None) -> Iterator[Event]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    people = [f"user{i:03d}@example.com" for i in range(users)]
    deploy_day = days // 3
    for server, (_, tools) in SERVERS.items():
        for tool, _, _, _ in tools:  # the catalog each server advertises
            ts = now_ms - days * DAY_MS + 60_000
            yield new_event(TOOL_LISTED, ts, server, tool=tool)
    for day in range(days, 0, -1):
        growth = 0.4 + 0.6 * (days - day) / days  # adoption grows over the period
        weekday = ((now_ms // DAY_MS) - day) % 7 < 5
        budget = int(calls_per_day * growth * (1.0 if weekday else 0.35))
        active = people[: max(3, int(users * growth))]
        day_start = now_ms - day * DAY_MS
        while budget > 0:
            server = rng.choices(list(SERVERS), [3, 2, 1])[0]
            version, tools = SERVERS[server]
            if server == "weblab" and day > deploy_day:
                version = "1.3.2"
            client, versions, _ = rng.choices(CLIENTS, [c[2] for c in CLIENTS])[0]
            session: dict[str, Any] = {"session_id": f"s{rng.randrange(16**12):012x}", "client_name": client,
                       "client_version": rng.choice(versions), "server_version": version,
                       "protocol_version": rng.choices([p for p, _ in PROTOCOLS], [w for _, w in PROTOCOLS])[0],
                       "transport": rng.choice(["stdio", "stdio", "streamable-http"]), "user": rng.choice(active)}
            ts = day_start + int(rng.random() * (DAY_MS - 3_600_000))
            method = SERVER_DISCOVER_METHOD if session["protocol_version"] == "2026-07-28" else INITIALIZE_METHOD
            yield new_event(INITIALIZE, ts, server, duration_ms=round(rng.uniform(2, 15), 2), ok=True,
                            attributes={METHOD_ATTRIBUTE: method}, **session)
            ts += rng.randrange(50, 400)
            yield new_event(LIST_TOOLS, ts, server, duration_ms=round(rng.uniform(1, 8), 2), ok=True, **session)
            weights = [t[2] for t in tools]
            for _ in range(min(budget, rng.randint(1, 8))):
                budget -= 1
                tool, category, _, base_ms = rng.choices(tools, weights)[0]
                ts += rng.randrange(500, 120_000)
                error_rate = 0.03 + (0.10 if day > deploy_day and tool == "weblab_search" else 0.0)
                failed = rng.random() < error_rate
                duration = base_ms * math.exp(rng.gauss(0, 0.5)) * (3 if failed else 1)
                error_type, error_message = rng.choice(ERRORS) if failed else (None, None)
                yield new_event(TOOL_CALL, ts, server, tool=tool, category=category, duration_ms=round(duration, 2),
                                ok=not failed, error_type=error_type, error_message=error_message,
                                args_bytes=rng.randrange(20, 400), result_bytes=rng.randrange(100, 20000), **session)


def demo_server_events(days: int, now_ms: int) -> list[dict]:
    deploy = now_ms - (days // 3) * DAY_MS
    return [
        {"server": "weblab", "type": "deploy", "ts": deploy, "version": "1.4.0", "message": "fix weblab_search timeouts"},
        {"server": "weblab", "type": "restart", "ts": deploy + 120_000, "version": "1.4.0"},
        {"server": "archon", "type": "config_change", "ts": now_ms - (days // 2) * DAY_MS, "message": "raised RAG top_k to 8"},
    ]


def fill(store: Store, project_name: str = "default", progress: Callable[[int], None] | None = None,
         days: int = 90, now_ms: int | None = None, **kwargs) -> int:
    project = store.ensure_project(project_name)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    encoder = msgspec.json.Encoder()
    limits = Limits(max_events=100_000)
    batch: list[Event] = []
    total = 0
    for event in generate(days=days, now_ms=now_ms, **kwargs):
        batch.append(event)
        if len(batch) == 5000:
            total += _store(store, project, encoder.encode(batch), limits)
            batch.clear()
            if progress:
                progress(total)
    if batch:
        total += _store(store, project, encoder.encode(batch), limits)
    store.ingest_server_events(project.id, server_event_rows(json.dumps(demo_server_events(days, now_ms)).encode(), limits, now_ms))
    gauge = {"server": "weblab", "metrics": [
        {"name": "cache.size_mb", "type": "gauge", "value": 120 + 3 * d, "tags": {"region": "us-west-2"}, "timestamp": now_ms - d * DAY_MS}
        for d in range(days - 1, 0, -1)]}
    store.ingest_measurements(project.id, measurement_rows(json.dumps(gauge).encode(), limits, now_ms))
    if progress:
        progress(total)
    return total


def _store(store: Store, project, body: bytes, limits: Limits) -> int:
    events, rejected = decode_batch(body, limits)
    assert not rejected, rejected[:3]
    return store.ingest([(project.id, rows_for(project, events))])[0].accepted
