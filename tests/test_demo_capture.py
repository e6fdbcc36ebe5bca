"""`demo.fill` on SQLite and PostgreSQL: what it stores is what the real capture paths recorded
from real MCP servers and clients - compared with what each client saw - moved into the past
whole conversations at a time; and every kind of figure the analytics know about is there."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from foundation_helpers import stored_events
from mcpmeter import demo
from mcpmeter.protocol import outcome_of
from mcpmeter.storage.base import EventFilter

pytestmark = pytest.mark.slow
DAYS = 4


@pytest.fixture
def filled(store):
    ledger: list[tuple[str, str, str]] = []
    started = int(time.time() * 1000)
    total = demo.fill(store, days=DAYS, users=8, calls_per_day=16, seed=5, ledger=ledger)
    events = stored_events(store)
    for e in events:
        e["attributes"] = json.loads(e["attributes"]) if e["attributes"] else {}
    return store, ledger, events, total, started


def test_stored_calls_are_the_calls_the_clients_made(filled):
    _, ledger, events, total, _ = filled
    calls = [e for e in events if e["kind"] == "tool_call"]
    stored = Counter((e["server"], e["tool"], outcome_of(e["ok"], e["error_type"], e["attributes"])) for e in calls)
    assert stored == Counter(ledger)  # one event per logical call, with the outcome its client saw
    assert total == len(events)
    outcomes = Counter(o for _, _, o in ledger)
    assert set(outcomes) == {"ok", "tool_error", "caller_error", "server_error", "cancelled"}
    assert {e["server"] for e in calls} == {"weblab", "archon", "kb", "time"}


def test_every_capture_path_and_protocol_generation_left_its_mark(filled):
    _, _, events, _, _ = filled
    calls = [e for e in events if e["kind"] == "tool_call"]
    by = {(e["server"], e["transport"]) for e in calls}
    assert {("weblab", "stdio"), ("archon", "streamable-http"), ("time", "stdio"), ("kb", "stdio")} <= by
    assert {e["protocol_version"] for e in calls if e["server"] != "kb"} == {"2025-11-25", "2026-07-28"}
    assert len({(e["client_name"], e["client_version"]) for e in calls if e["client_name"]}) >= 3
    assert all(e["user_hash"] for e in calls)
    # input rounds (2026-07-28), a task with its polls, the call a user stopped, a tool that does not exist
    assert any(e["attributes"].get("mcp.rounds", 1) > 1 and e["protocol_version"] == "2026-07-28" for e in calls)
    assert {(e["ok"], e["attributes"]["mcp.outcome"]) for e in calls if "mcp.task_polls" in e["attributes"]} == {
        (1, "ok"), (0, "tool_error")}
    assert any(e["ok"] is None and e["error_type"] == "cancelled" for e in calls)
    assert {e["tool"] for e in calls if e["error_type"] == "invalid_params"} == {"weblab_delete", "search"}
    # categories come from @meter.tool; the catalog from tools/list; actions from meter.record
    assert {e["category"] for e in calls if e["server"] == "kb"} == {"search", "read", "write"}
    listed = {(e["server"], e["tool"]) for e in events if e["kind"] == "tool_listed"}
    called = {(e["server"], e["tool"]) for e in calls}
    assert {("weblab", "weblab_export"), ("weblab", "weblab_clone"), ("archon", "archive_project")} <= listed - called
    assert all(e["result_bytes"] > 0 for e in events if e["kind"] == "tool_listed")
    # crawlers list the tools and call none (legacy ones have a session to show it)
    crawled = {e["server"] for e in events if e["kind"] == "list_tools" and e["client_name"] == demo.CRAWLER[0]}
    assert crawled == {"weblab", "archon"} and not any(e["client_name"] == demo.CRAWLER[0] for e in calls)
    assert Counter(e["kind"] for e in events if e["server"] == "kb" and e["kind"] != "tool_call") == {
        "installation": len({e["user_hash"] for e in calls if e["server"] == "kb"})}


def test_conversations_are_moved_whole_into_the_past(filled):
    _, _, events, _, started = filled
    ts = [e["ts"] for e in events]
    assert max(ts) < started and min(ts) > started - (DAYS + 1) * demo.DAY_MS
    days = {t // demo.DAY_MS for t in ts}
    assert len(days) >= DAYS  # spread over the period, not all at the moment of capture
    assert any(t > started - demo.HOUR_MS for t in ts)  # and the last hour has its share
    sessions: dict[str, list[int]] = {}
    for e in events:
        if e["session_id"]:
            sessions.setdefault(e["session_id"], []).append(e["ts"])
    assert sessions and all(max(v) - min(v) < 60_000 for v in sessions.values())  # a conversation stays together
    # the catalog: once per server, tool and day, with the id the capture paths give it
    listed = Counter((e["server"], e["tool"], e["ts"] // demo.DAY_MS) for e in events if e["kind"] == "tool_listed")
    assert set(listed.values()) == {1} and all(e["event_id"].startswith("cat-") for e in events if e["kind"] == "tool_listed")


def test_measurements_and_server_events_are_stored(filled):
    store, _, events, _, started = filled
    project = store.project_by_name("default")
    f = EventFilter(project.id, started - (DAYS + 1) * demo.DAY_MS, started + demo.HOUR_MS)
    names = {row[2] for row in store.measurement_days(f)}
    assert names == {"cache.size_mb", "rag.retrieval_ms"}
    rag = [e["duration_ms"] for e in events if e["kind"] == "tool_call" and e["tool"] == "rag_query"]
    timer = [row for row in store.measurement_days(f, "rag.retrieval_ms")]
    assert sum(row[5] for row in timer) == len(rag)  # the timer is the captured rag_query durations
    assert sum(row[6] for row in timer) == pytest.approx(sum(rag))
    assert {(row[1], row[2]) for row in store.server_events(f)} == {
        ("weblab", "deploy"), ("weblab", "restart"), ("archon", "config_change"), ("time", "deploy"), ("kb", "restart")}


def test_the_daily_rollups_answer_as_the_captured_sessions_and_users_do(filled):
    """Real traffic on each backend: the long views' daily cells (sessions by client, version and
    protocol; users per client) give what the stored sessions and raw events give."""
    store, _, events, _, started = filled
    project = store.project_by_name("default")
    end = started - started % demo.DAY_MS + demo.DAY_MS
    whole = EventFilter(project.id, end - (DAYS + 2) * demo.DAY_MS, end)  # whole UTC days: the daily cells answer

    def by_session_rows(f: EventFilter) -> Counter:
        return Counter((r[2], r[3], r[4]) for r in store.sessions(f))

    counts = store.session_counts(whole)
    assert sum(n for *_, n in counts) >= 5  # the legacy generation's sessions (2026-07-28 has none)
    assert Counter({(c, v, p): n for c, v, p, n in counts}) == by_session_rows(whole)
    tool = Counter(e["tool"] for e in events if e["kind"] == "tool_call" and e["session_id"]).most_common(1)[0][0]
    with_tool = whole._replace(tool=tool)
    assert Counter({(c, v, p): n for c, v, p, n in store.session_counts(with_tool)}) == by_session_rows(with_tool)

    calls = [e for e in events if e["kind"] == "tool_call" and e["user_hash"] and whole.start_ms <= e["ts"] < end]
    per_client: dict[str, set[str]] = {}
    for e in calls:
        per_client.setdefault(e["client_name"] or "", set()).add(e["user_hash"])
    assert dict(store.users(whole, "day", ("client",))) == {c: len(u) for c, u in per_client.items()}
    client = max(per_client, key=lambda c: len(per_client[c]))
    assert store.users(whole._replace(client=client), "day")[0][0] == len(per_client[client])
