"""The JSON-RPC tracker, fed real bytes, recording through a real Meter into a real store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from proxy_helpers import recorded

from mcpmeter import Meter
from mcpmeter.proxy.tracker import Connection, Tracker, id_key


@pytest.fixture
def meter(isolated_env: Path):
    m = Meter(server="unused-default", flush_interval=0.05)
    yield m
    m.shutdown()


def line(message) -> bytes:
    return json.dumps(message).encode()


def call(msg_id, tool, arguments=None) -> bytes:
    params = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    return line({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params})


def ok(msg_id, text="fine") -> bytes:
    return line({"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": text}]}})


def events_of(meter, home: Path, kind: str | None = "tool_call") -> list[dict]:
    assert meter.flush(10)
    return recorded(home, kind)


def test_ids_of_any_type_are_matched_exactly(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="ids")
    conn = Connection("s1")
    t = time.perf_counter()
    tracker.from_client(conn, call(1, "int-one"), t)
    tracker.from_client(conn, call("1", "string-one"), t)
    tracker.from_client(conn, call(0, "zero"), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": "1", "error": {"code": -32602, "message": "bad"}}), t + 0.5)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 0, "result": {
        "content": [{"type": "image", "data": ""}, {"type": "text", "text": "zero broke"}], "isError": True}}), t + 0.2)
    tracker.from_server(conn, ok(1), t + 0.3)
    events = {e["tool"]: e for e in events_of(meter, isolated_env)}
    assert set(events) == {"int-one", "string-one", "zero"}
    assert (events["int-one"]["ok"], events["int-one"]["duration_ms"]) == (1, pytest.approx(300, abs=1))
    assert (events["string-one"]["ok"], events["string-one"]["error_type"], events["string-one"]["error_message"]) == (0, "invalid_params", "bad")
    assert events["string-one"]["attributes"] == {"error_code": -32602, "mcp.outcome": "caller_error"}
    assert events["string-one"]["duration_ms"] == pytest.approx(500, abs=1)
    assert (events["zero"]["ok"], events["zero"]["error_type"], events["zero"]["error_message"]) == (0, "tool_error", "zero broke")
    assert not conn.pending


def test_id_keys():
    assert id_key(1) != id_key("1")
    assert id_key(0) == ("n", 0)
    assert id_key(None) is None and id_key(True) is None and id_key({"a": 1}) is None


def test_batches_and_unknown_or_unreadable_messages(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="batch")
    conn = Connection("s1")
    t = time.perf_counter()
    batch = b"[" + call(7, "a", {"x": 1}) + b"," + call(8, "b") + b',{"jsonrpc":"2.0","method":"notifications/progress"}]'
    assert len(tracker.from_client(conn, batch, t)) == 2
    tracker.from_server(conn, b"not json at all {{", t)
    tracker.from_server(conn, ok(99), t)  # an id nobody asked for
    tracker.from_server(conn, b"[" + ok(8) + b"," + ok(7) + b"]", t + 0.1)
    events = events_of(meter, isolated_env)
    assert sorted(e["tool"] for e in events) == ["a", "b"]
    assert {e["tool"]: e["args_bytes"] for e in events} == {"a": len(b'{"x": 1}'), "b": None}


def test_a_cancelled_call_is_neither_ok_nor_failed_and_a_late_answer_is_ignored(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="cancel")
    conn = Connection("s1")
    t = time.perf_counter()
    tracker.from_client(conn, call("req-5", "slow"), t)
    tracker.from_client(conn, line({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                    "params": {"requestId": "req-5", "reason": "user pressed stop"}}), t + 1)
    tracker.from_server(conn, ok("req-5"), t + 2)
    (event,) = events_of(meter, isolated_env)
    assert (event["tool"], event["ok"], event["error_type"], event["error_message"]) == ("slow", None, "cancelled", "user pressed stop")
    assert event["attributes"] == {"mcp.outcome": "cancelled"}
    assert event["duration_ms"] == pytest.approx(1000, abs=1)


def test_sizes_of_a_5mb_result_are_exact(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="big")
    conn = Connection("s1")
    arguments = {"blob": "y" * 3000}
    result = {"content": [{"type": "text", "text": "x" * 5_000_000}], "isError": False}
    t = time.perf_counter()
    tracker.from_client(conn, call(1, "big", arguments), t)
    tracker.from_server(conn, b'{"jsonrpc":"2.0","id":1,"result":' + json.dumps(result).encode() + b"}", t)
    (event,) = events_of(meter, isolated_env)
    assert event["args_bytes"] == len(json.dumps(arguments))
    assert event["result_bytes"] == len(json.dumps(result))


def test_server_name_comes_from_the_handshake_and_events_wait_for_it(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", fallback_server="python")
    conn = Connection("s1")
    t = time.perf_counter()
    tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "claude-code", "version": "2.1"}}}), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 1, "result": {
        "protocolVersion": "2025-06-18", "serverInfo": {"name": "weather", "version": "2.0"}}}), t + 0.1)
    tracker.from_client(conn, call(2, "forecast"), t + 0.2)
    tracker.from_server(conn, ok(2), t + 0.3)
    tracker.close(conn, "server_exited", t + 1, {"exit_code": 0})
    events = events_of(meter, isolated_env, None)
    assert [e["kind"] for e in events] == ["session_start", "initialize", "tool_call", "session_end"]
    assert {(e["server"], e["server_version"], e["session_id"], e["client_name"], e["client_version"], e["protocol_version"])
            for e in events} == {("weather", "2.0", "s1", "claude-code", "2.1", "2025-06-18")}
    assert events[-1]["attributes"] == {"reason": "server_exited", "exit_code": 0}


def test_server_name_falls_back_without_server_info_and_an_explicit_name_wins(meter, isolated_env: Path):
    for explicit, expected in ((None, "my-command"), ("chosen", "chosen")):
        tracker = Tracker(meter, transport="stdio", fallback_server="my-command", server=explicit)
        conn = Connection(f"s-{expected}")
        t = time.perf_counter()
        tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}), t)
        tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-11-25"}}), t)
        tracker.from_client(conn, call(2, "x"), t)
        tracker.from_server(conn, ok(2), t)
    events = events_of(meter, isolated_env)
    assert sorted(e["server"] for e in events) == ["chosen", "my-command"]


def test_discover_refused_then_initialize(meter, isolated_env: Path):
    """A 2026 client probing a legacy server: the failed probe and the handshake both count."""
    tracker = Tracker(meter, transport="stdio", fallback_server="node")
    conn = Connection("s1")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "mcp", "version": "0.1.0"}}
    t = time.perf_counter()
    tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}}), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "Method not found"}}), t)
    tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "clientInfo": {"name": "mcp", "version": "0.1.0"}}}), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 2, "result": {
        "protocolVersion": "2025-11-25", "serverInfo": {"name": "everything", "version": "2.0.0"}}}), t)
    tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 3, "result": {"tools": []}}), t)
    events = {e["kind"]: e for e in events_of(meter, isolated_env, None)}
    discover = events["server_discover"]
    assert (discover["ok"], discover["error_type"], discover["protocol_version"]) == (0, "method_not_found", "2026-07-28")
    assert (events["initialize"]["ok"], events["initialize"]["protocol_version"]) == (1, "2025-11-25")
    assert events["list_tools"]["protocol_version"] == "2025-11-25"
    assert {e["server"] for e in events.values()} == {"everything"}


def test_modern_requests_carry_their_client_and_results_their_server(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="streamable-http", fallback_server="host:1")
    conn = Connection(None, is_session=False, user="bob")
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "cursor", "version": "3"}}
    t = time.perf_counter()
    tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                                    "params": {"name": "forecast", "arguments": {}, "_meta": meta}}), t)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "id": 9, "result": {
        "content": [], "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "weather", "version": "3.1"}}}}), t)
    (event,) = events_of(meter, isolated_env, None)
    assert (event["server"], event["server_version"], event["client_name"], event["protocol_version"],
            event["transport"], event["session_id"]) == ("weather", "3.1", "cursor", "2026-07-28", "streamable-http", None)
    assert event["user_hash"] is not None


def test_close_fails_pending_calls(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="dies")
    conn = Connection("s1")
    t = time.perf_counter()
    tracker.from_client(conn, call(1, "slow"), t)
    tracker.close(conn, "server_exited", t + 2, {"reason": "server_exited", "exit_code": -9})
    events = events_of(meter, isolated_env, None)
    assert [(e["kind"], e["tool"], e["ok"], e["error_type"]) for e in events] == [
        ("session_start", None, None, None), ("tool_call", "slow", 0, "server_exited"), ("session_end", None, None, None)]


def test_a_fallback_name_gives_way_to_server_info_seen_later(meter, isolated_env: Path):
    """An HTTP proxy started mid-session names the server by its host until a handshake says."""
    tracker = Tracker(meter, transport="streamable-http", fallback_server="127.0.0.1:8000")
    old, new = Connection("running-before-us"), Connection("new")
    t = time.perf_counter()
    tracker.from_client(old, call(1, "a"), t)
    tracker.from_server(old, ok(1), t)
    tracker.from_client(new, line({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}), t)
    tracker.from_server(new, line({"jsonrpc": "2.0", "id": 1, "result": {"serverInfo": {"name": "weather"}}}), t)
    tracker.from_client(new, call(2, "b"), t)
    tracker.from_server(new, ok(2), t)
    assert [(e["tool"], e["server"]) for e in events_of(meter, isolated_env)] == [("a", "127.0.0.1:8000"), ("b", "weather")]


# ---- one logical call: input rounds, tasks; the catalog; outcome classes -------------------------


def result(msg_id, value: dict) -> bytes:
    return line({"jsonrpc": "2.0", "id": msg_id, "result": value})


def retry(msg_id, tool, state=None, responses=None) -> bytes:
    params: dict = {"name": tool, "arguments": {"path": "/tmp/x"}}
    if state is not None:
        params["requestState"] = state
    if responses is not None:
        params["inputResponses"] = responses
    return line({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params})


def test_input_required_rounds_are_one_call_with_rounds_and_input_time(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="rounds")
    conn = Connection("s1")
    t = time.perf_counter()
    asked = {"resultType": "input_required", "inputRequests": {"q": {"method": "elicitation/create", "params": {}}}}
    tracker.from_client(conn, retry(1, "delete_file"), t)
    tracker.from_server(conn, result(1, {**asked, "requestState": "st-1"}), t + 0.1)
    tracker.from_client(conn, retry(2, "delete_file", "st-1", {"q": {"action": "accept"}}), t + 2.1)  # 2 s answering
    tracker.from_server(conn, result(2, {**asked, "requestState": "st-2"}), t + 2.2)
    tracker.from_client(conn, retry(3, "delete_file", "st-2", {"q": {"action": "accept"}}), t + 3.2)  # 1 s answering
    tracker.from_server(conn, result(3, {"content": [{"type": "text", "text": "deleted"}]}), t + 3.5)
    # a retry without requestState is matched by client and tool
    tracker.from_client(conn, retry(4, "other"), t + 4)
    tracker.from_server(conn, result(4, {"resultType": "input_required", "inputRequests": {"q": {}}}), t + 4.1)
    tracker.from_client(conn, retry(5, "other", None, {"q": {"action": "decline"}}), t + 4.6)
    tracker.from_server(conn, result(5, {"content": [], "isError": True}), t + 4.7)
    events = events_of(meter, isolated_env)
    assert [(e["tool"], e["ok"], e["attributes"]) for e in events] == [
        ("delete_file", 1, {"mcp.rounds": 3, "mcp.input_ms": pytest.approx(3000, abs=1), "mcp.outcome": "ok"}),
        ("other", 0, {"mcp.rounds": 2, "mcp.input_ms": pytest.approx(500, abs=1), "mcp.outcome": "tool_error"}),
    ]
    assert events[0]["duration_ms"] == pytest.approx(3500, abs=1)
    assert events[0]["args_bytes"] == len(json.dumps({"path": "/tmp/x"}))
    assert not tracker.calls


def test_a_call_left_waiting_for_input_is_cancelled_when_the_conversation_ends(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="rounds")
    conn = Connection("s1")
    t = time.perf_counter()
    tracker.from_client(conn, retry(1, "delete_file"), t)
    tracker.from_server(conn, result(1, {"resultType": "input_required", "requestState": "s"}), t + 0.1)
    tracker.close(conn, "client_closed", t + 5)
    (event,) = events_of(meter, isolated_env)
    assert (event["ok"], event["error_type"], event["attributes"]) == (
        None, "cancelled", {"reason": "client_closed", "mcp.outcome": "cancelled"})


def task(task_id, status, **more) -> dict:
    return {"taskId": task_id, "status": status, "createdAt": "x", "lastUpdatedAt": "x", "ttl": None, **more}


def poll(msg_id, task_id, method="tasks/get") -> bytes:
    return line({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": {"taskId": task_id}})


def test_a_task_is_one_call_with_the_tasks_outcome_and_duration(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="tasks")
    conn = Connection("s1")
    t = time.perf_counter()
    # the 2026-07-28 extension: resultType task; tasks/get carries the final result
    tracker.from_client(conn, call(1, "long_job"), t)
    tracker.from_server(conn, result(1, {"resultType": "task", "task": task("A", "working")}), t + 0.1)
    tracker.from_client(conn, poll(2, "A"), t + 1)
    tracker.from_server(conn, result(2, {"task": task("A", "working")}), t + 1.1)
    tracker.from_client(conn, poll(3, "A"), t + 2)
    tracker.from_server(conn, result(3, {"task": task("A", "completed"), "result": {"content": [], "isError": True}}), t + 2.5)
    # 2025-11-25: CreateTaskResult, then tasks/get (flat) and tasks/result
    tracker.from_client(conn, call(4, "long_job"), t + 3)
    tracker.from_server(conn, result(4, {"task": task("B", "working")}), t + 3.1)
    tracker.from_client(conn, poll(5, "B"), t + 4)
    tracker.from_server(conn, result(5, task("B", "completed")), t + 4.2)
    # a status notification; a cancelled one; tasks/result after the end is no second event
    tracker.from_client(conn, call(6, "long_job"), t + 5)
    tracker.from_server(conn, result(6, {"task": task("C", "working")}), t + 5.1)
    tracker.from_server(conn, line({"jsonrpc": "2.0", "method": "notifications/tasks/status",
                                    "params": task("C", "failed", statusMessage="disk full")}), t + 6)
    tracker.from_client(conn, poll(7, "B", "tasks/result"), t + 7)
    tracker.from_server(conn, result(7, {"content": []}), t + 7.1)
    tracker.from_client(conn, call(8, "long_job"), t + 8)
    tracker.from_server(conn, result(8, {"resultType": "task", "task": task("D", "working")}), t + 8.1)
    tracker.from_client(conn, poll(9, "D", "tasks/cancel"), t + 9)
    tracker.from_server(conn, result(9, task("D", "cancelled")), t + 9.1)
    events = events_of(meter, isolated_env, None)
    assert [(e["kind"], e["ok"], e["error_type"], e["error_message"], e["duration_ms"], e["attributes"]) for e in events] == [
        ("tool_call", 0, "tool_error", None, pytest.approx(2500, abs=1), {"mcp.task_polls": 2, "mcp.outcome": "tool_error"}),
        ("tool_call", 1, None, None, pytest.approx(1200, abs=1), {"mcp.task_polls": 1, "mcp.outcome": "ok"}),
        ("tool_call", 0, "tool_error", "disk full", pytest.approx(1000, abs=1), {"mcp.task_polls": 0, "mcp.outcome": "tool_error"}),
        ("tool_call", None, "cancelled", None, pytest.approx(1100, abs=1), {"mcp.task_polls": 0, "mcp.outcome": "cancelled"}),
    ]
    assert not tracker.calls and not conn.pending


def test_tools_list_records_the_catalog_once_a_day_per_definition(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="catalog")
    conn = Connection("s1")
    tools = [{"name": "a", "inputSchema": {"type": "object"}}, {"name": "b", "description": "x" * 300, "inputSchema": {}}]
    t = time.perf_counter()
    for msg_id in (1, 2):
        tracker.from_client(conn, line({"jsonrpc": "2.0", "id": msg_id, "method": "tools/list"}), t)
        tracker.from_server(conn, result(msg_id, {"tools": tools}), t)
    events = events_of(meter, isolated_env, None)
    listed = recorded(isolated_env, "tool_listed")
    assert sorted((e["tool"], e["result_bytes"]) for e in listed) == [
        ("a", len(json.dumps(tools[0]))), ("b", len(json.dumps(tools[1])))]
    assert {e["session_id"] for e in listed} == {None} and all(e["event_id"].startswith("cat-") for e in listed)
    assert [e["attributes"]["tools"] for e in events if e["kind"] == "list_tools"] == [2, 2]


def test_a_retried_catalog_is_stored_once(isolated_env: Path):
    """Two proxies (or a restarted one) listing the same tools the same day: one catalog row each."""
    for _ in range(2):
        m = Meter(server="unused", flush_interval=0.05)
        tracker = Tracker(m, transport="stdio", server="catalog")
        conn = Connection("s1")
        t = time.perf_counter()
        tracker.from_client(conn, line({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}), t)
        tracker.from_server(conn, result(1, {"tools": [{"name": "a", "inputSchema": {}}]}), t)
        m.shutdown()
    assert len(recorded(isolated_env, "tool_listed")) == 1


def test_outcome_classes_of_errors(meter, isolated_env: Path):
    tracker = Tracker(meter, transport="stdio", server="errors")
    conn = Connection("s1")
    t = time.perf_counter()
    answers = [
        ({"code": -32602, "message": "Unknown tool: nope"}, "caller_error"),
        ({"code": -32601, "message": "no"}, "caller_error"),
        ({"code": -32002, "message": "no such resource"}, "caller_error"),
        ({"code": -32603, "message": "boom"}, "server_error"),
        ({"code": -31000, "message": "custom"}, "server_error"),
    ]
    for i, (error, _) in enumerate(answers):
        tracker.from_client(conn, call(i, "nope"), t)
        tracker.from_server(conn, line({"jsonrpc": "2.0", "id": i, "error": error}), t)
    events = events_of(meter, isolated_env)
    assert [(e["tool"], e["ok"], e["attributes"]["mcp.outcome"]) for e in events] == [
        ("nope", 0, expected) for _, expected in answers]
