"""Realistic sample data: several servers, tools, clients and users over 90 days.

Generated events go through the same validation and ingest path as real ones.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Iterator

import msgspec

from .events import Limits, decode_batch
from .ingest import rows_for
from .sdk.ids import event_id
from .storage.base import Store

SERVERS = {
    "weblab": [("weblab_details", "lookup", 0.30, 120), ("weblab_allocations", "lookup", 0.18, 250),
               ("weblab_user_experiments", "lookup", 0.12, 400), ("weblab_search", "rag", 0.10, 800)],
    "archon": [("rag_query", "rag", 0.12, 650), ("create_task", "task", 0.06, 90),
               ("list_projects", "project", 0.05, 60), ("get_document", "document", 0.04, 140)],
    "time": [("get_current_time", "time", 0.02, 3), ("convert_time", "time", 0.01, 4)],
}
CLIENTS = [("claude-code", "2.1.0", 0.45), ("cursor", "1.7.2", 0.25), ("vscode-copilot", "1.104.0", 0.18), ("mcp-inspector", "0.17.0", 0.12)]
ERRORS = [("TimeoutError", "upstream did not answer within 30s"), ("ValidationError", "experiment id must be numeric"),
          ("PermissionError", "user lacks access to this weblab"), ("HTTPError", "502 Bad Gateway from backend")]
PROTOCOLS = ["2025-06-18", "2025-11-25", "2026-07-28"]


def generate(days: int = 90, users: int = 40, calls_per_day: int = 300, seed: int = 7, now_ms: int | None = None) -> Iterator[dict]:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    tools = [(server, *t) for server, ts in SERVERS.items() for t in ts]
    weights = [t[3] for t in tools]
    people = [f"user{i:03d}@example.com" for i in range(users)]
    deploy_day = days // 3
    for day in range(days, 0, -1):
        growth = 0.4 + 0.6 * (days - day) / days  # adoption grows over the period
        weekday = ((now_ms // 86_400_000) - day) % 7 < 5
        count = int(calls_per_day * growth * (1.0 if weekday else 0.35))
        active = people[: max(3, int(users * growth))]
        for _ in range(count):
            server, tool, category, _, base_ms = rng.choices(tools, weights)[0]
            ts = now_ms - day * 86_400_000 + int(rng.random() * 86_400_000)
            client, version, _ = rng.choices(CLIENTS, [c[2] for c in CLIENTS])[0]
            error_rate = 0.03 + (0.08 if day < deploy_day and tool == "weblab_search" else 0.0)
            failed = rng.random() < error_rate
            duration = base_ms * math.exp(rng.gauss(0, 0.5)) * (3 if failed else 1)
            event = {
                "id": event_id(ts), "kind": "tool_call", "ts": ts, "server": server, "server_version": "1.4.0" if day < deploy_day else "1.3.2",
                "tool": tool, "category": category, "duration_ms": round(duration, 2), "ok": not failed,
                "session_id": f"s{rng.randrange(10**9):09d}", "client_name": client, "client_version": version,
                "protocol_version": rng.choice(PROTOCOLS), "transport": rng.choice(["stdio", "streamable-http"]),
                "user": rng.choice(active), "args_bytes": rng.randrange(20, 400), "result_bytes": rng.randrange(100, 20000),
            }
            if failed:
                event["error_type"], event["error_message"] = rng.choice(ERRORS)
            yield event


def fill(store: Store, project_name: str = "default", progress: Callable[[int], None] | None = None, **kwargs) -> int:
    project = store.ensure_project(project_name)
    encoder = msgspec.json.Encoder()
    batch: list[dict] = []
    total = 0
    limits = Limits(max_events=100_000)
    for event in generate(**kwargs):
        batch.append(event)
        if len(batch) == 5000:
            total += _store(store, project, encoder.encode(batch), limits)
            batch.clear()
            if progress:
                progress(total)
    if batch:
        total += _store(store, project, encoder.encode(batch), limits)
        if progress:
            progress(total)
    return total


def _store(store: Store, project, body: bytes, limits: Limits) -> int:
    events, rejected = decode_batch(body, limits)
    assert not rejected, rejected[:3]
    return store.ingest([(project.id, rows_for(project, events))])[0].accepted
