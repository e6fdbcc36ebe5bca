"""Issue 13, items 1-5, through `mcpmeter proxy` (stdio and streamable HTTP): the real MCP SDK
client against a real ``MCPServer`` with tools that ask for input and run as tasks, on both
protocol generations, stored by a real collector on SQLite and PostgreSQL - and what was
stored compared with what the client saw."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from mcp.client.stdio import StdioServerParameters
from proxy_helpers import MCPMETER, Process, _wait_ready, proxy_env, start_http_proxy, stop

from capture_helpers import CLIENT, SCRIPT, SERVER, TASK_SCRIPT, calls, drive, stored
from conftest import free_port

pytestmark = pytest.mark.slow

MODES = [("auto", "2026-07-28"), ("legacy", "2025-11-25")]


def wait_for(where: str, expected: Counter, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        events = stored(where)
        if calls(events) == expected or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def by_tool_of(events: list[dict], tool: str) -> list[dict]:
    return [e for e in events if e["tool"] == tool]


def check(events: list[dict], seen: list[tuple[str, str]], sizes: dict[str, int], protocol: str, transport: str,
          tasks: bool) -> None:
    # 2: one event per logical call, whatever the rounds; 3: task calls are the task's; 4: outcome classes
    assert calls(events) == Counter(seen)
    tool_calls = [e for e in events if e["kind"] == "tool_call"]
    assert len(tool_calls) == len(SCRIPT) + (len(TASK_SCRIPT) if tasks else 0) + 2
    # 3: the call the user stopped is neither a success nor an error
    (stopped,) = by_tool_of(tool_calls, "slow")
    assert (stopped["ok"], stopped["error_type"]) == (None, "cancelled")
    by_tool = {}
    for e in tool_calls:
        by_tool.setdefault(e["tool"], []).append(e)
    rounds = {tool: sorted(e["attributes"].get("mcp.rounds", 1) for e in es) for tool, es in by_tool.items()}
    if protocol == "2026-07-28":  # input comes by input_required and a retry: one call, its rounds kept
        assert rounds["delete_file"] == [2, 2, 2] and rounds["transfer"] == [3]
        assert all(e["attributes"]["mcp.input_ms"] >= 0 for e in by_tool["delete_file"])
        assert all(e["duration_ms"] >= e["attributes"]["mcp.input_ms"] for e in by_tool["delete_file"])
    else:  # elicitation/create within the one request
        assert rounds["delete_file"] == [1, 1, 1] and rounds["transfer"] == [1]
    if tasks:
        jobs = sorted((e["ok"], e["attributes"]["mcp.task_polls"]) for e in by_tool["long_job"])
        assert jobs == [(0, 2), (1, 3)]  # polls are not calls; the outcome is the task's
    # 4: the tool the client tried keeps its name; the server failing is not the caller's mistake
    (unknown,) = by_tool["no_such_tool"]
    assert (unknown["ok"], unknown["error_type"]) == (0, "invalid_params")
    assert by_tool["explode"][0]["error_type"] == "internal_error"
    # 5: who and which protocol, on every request event (2026-07-28: from each request's _meta)
    requests = [e for e in events if e["kind"] in ("tool_call", "list_tools", "initialize")]
    assert {(e["client_name"], e["client_version"], e["protocol_version"], e["transport"]) for e in requests} == {
        (CLIENT.name, CLIENT.version, protocol, transport)}
    # 1: the catalog - every tool listed, with its definition's size, once
    listed = {e["tool"]: e["result_bytes"] for e in events if e["kind"] == "tool_listed"}
    assert sum(1 for e in events if e["kind"] == "tool_listed") == 18
    assert listed == sizes

@pytest.mark.parametrize("mode, protocol", MODES)
def test_stdio_proxy_records_what_the_client_saw(collector, tmp_path: Path, mode: str, protocol: str):
    home = tmp_path / "home"
    params = StdioServerParameters(command=MCPMETER[0], args=[*MCPMETER[1:], "proxy", "--", *SERVER, "stdio"],
                                   env=proxy_env(home, MCPMETER_URL=collector.url))
    tasks = mode == "auto"  # the tasks extension's result shape exists on 2026-07-28 only
    seen, sizes = anyio.run(lambda: drive(params, mode, tasks=tasks))
    events = wait_for(str(collector.db), Counter(seen))
    check(events, seen, sizes, protocol, "stdio", tasks)
    sessions = {e["session_id"] for e in events if e["kind"] == "tool_call"}
    assert len(sessions) == 1 and None not in sessions  # a stdio child's lifetime is one conversation


@pytest.mark.parametrize("mode, protocol", MODES)
def test_http_proxy_records_what_the_client_saw(collector, tmp_path: Path, mode: str, protocol: str):
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        server = subprocess.Popen([*SERVER, "http", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    upstream = Process(f"http://127.0.0.1:{port}", server, log)
    try:
        _wait_ready(server, upstream.url, log)
        home = tmp_path / "home"
        proxy = start_http_proxy(upstream.url + "/mcp", home, "--url", collector.url)
        try:
            tasks = mode == "auto"
            seen, sizes = anyio.run(lambda: drive(proxy.url + "/mcp", mode, tasks=tasks))
        finally:
            stop(proxy)
    finally:
        stop(upstream)
    events = wait_for(str(collector.db), Counter(seen))
    check(events, seen, sizes, protocol, "streamable-http", tasks)
    sessions = {e["session_id"] for e in events if e["kind"] == "tool_call"}
    if protocol == "2026-07-28":
        assert sessions == {None}  # no sessions on this protocol: nothing pretends otherwise
