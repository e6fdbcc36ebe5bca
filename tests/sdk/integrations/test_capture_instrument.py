"""Issue 13, items 1-5, through ``meter.instrument()``: the real MCP SDK client against the real
``MCPServer`` (in memory and over streamable HTTP), on both protocol generations, sent to a real
collector on SQLite and PostgreSQL - and what was stored compared with what the client saw."""

from __future__ import annotations

import time
from collections import Counter

import anyio
import pytest

from capture_helpers import CLIENT, SCRIPT, TASK_SCRIPT, build_server, calls, drive, stored
from mcpmeter import Meter

MODES = [("auto", "2026-07-28"), ("legacy", "2025-11-25")]


@pytest.mark.parametrize("mode, protocol", MODES)
def test_instrument_records_what_the_client_saw(collector, mode: str, protocol: str, monkeypatch):
    monkeypatch.setenv("MCPMETER_USER", "dana")
    meter = Meter(url=collector.url, flush_interval=0.1)
    server = meter.instrument(build_server())
    tasks = mode == "auto"
    try:
        seen, sizes = anyio.run(lambda: drive(server, mode, tasks=tasks))
    finally:
        meter.shutdown(10)
    deadline = time.monotonic() + 20
    while calls(events := stored(str(collector.db))) != Counter(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    # 2, 3, 4: one event per logical call, with the outcome class the client saw
    assert calls(events) == Counter(seen)
    tool_calls = [e for e in events if e["kind"] == "tool_call"]
    assert len(tool_calls) == len(SCRIPT) + (len(TASK_SCRIPT) if tasks else 0) + 2
    rounds = sorted((e["tool"], e["attributes"].get("mcp.rounds", 1)) for e in tool_calls
                    if e["tool"] in ("delete_file", "transfer"))
    if protocol == "2026-07-28":
        assert rounds == [("delete_file", 2)] * 3 + [("transfer", 3)]
    else:
        assert rounds == [("delete_file", 1)] * 3 + [("transfer", 1)]
    if tasks:
        jobs = sorted((e["ok"], e["attributes"]["mcp.task_polls"]) for e in tool_calls if e["tool"] == "long_job")
        assert jobs == [(0, 2), (1, 3)]
    (stopped,) = [e for e in tool_calls if e["tool"] == "slow"]
    assert (stopped["ok"], stopped["error_type"]) == (None, "cancelled")
    (unknown,) = [e for e in tool_calls if e["tool"] == "no_such_tool"]
    assert (unknown["ok"], unknown["error_type"]) == (0, "invalid_params")
    # 5: client and protocol on every request event, per request on 2026-07-28
    requests = [e for e in events if e["kind"] in ("tool_call", "list_tools", "initialize")]
    assert {(e["client_name"], e["client_version"], e["protocol_version"]) for e in requests} == {
        (CLIENT.name, CLIENT.version, protocol)}
    assert all(e["user_hash"] for e in tool_calls)
    # 1: the catalog, definition sizes as the client received them
    listed = {e["tool"]: e["result_bytes"] for e in events if e["kind"] == "tool_listed"}
    assert listed == sizes and sum(1 for e in events if e["kind"] == "tool_listed") == 18
