"""`mcpmeter proxy -- CMD`: real reference servers, the real MCP client, the real store."""

from __future__ import annotations

import json
import os
import signal
import time
from importlib.metadata import version
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp_types import Implementation
from proxy_helpers import FAKE_SERVER, MCPMETER, TIME_SERVER, by_tool, proxy_env, recorded, report, user_hash, wait_for_stderr

from conftest import free_port, start_collector, stop_collector

pytest_plugins = ["proxy_helpers"]  # its fixtures: everything_server, raw_proxies
CLIENT = Implementation(name="pytest-client", version="1.2.3")


def proxied(command: list[str], home: Path, *proxy_args: str, **env: str) -> StdioServerParameters:
    # A stdio server does not inherit our environment: everything it needs goes in env=.
    return StdioServerParameters(command=MCPMETER[0], args=[*MCPMETER[1:], "proxy", *proxy_args, "--", *command],
                                 env=proxy_env(home, **env))


async def make_calls(params: StdioServerParameters, mode: str, calls: list[tuple[str, dict]]) -> list[tuple[bool, str]]:
    """Connect, list tools, make the calls; returns (failed, first text or error) per call."""
    outcomes = []
    async with Client(params, mode=mode, client_info=CLIENT) as client:
        await client.list_tools()
        for name, arguments in calls:
            try:
                result = await client.call_tool(name, arguments)
            except MCPError as exc:
                outcomes.append((True, f"jsonrpc: {exc}"))
                continue
            text = next((c.text for c in result.content if c.type == "text"), "")
            outcomes.append((bool(result.is_error), text))
    return outcomes


def check_session(home: Path, *, server: str, server_version: str, protocol: str, handshake: list[tuple[str, int]]) -> None:
    """One session, every event naming the same server, client, protocol, user and session."""
    events = recorded(home)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end", kinds
    assert [(e["kind"], e["ok"]) for e in events if e["kind"] in ("initialize", "server_discover")] == handshake
    assert kinds.count("list_tools") == 1
    assert len({e["session_id"] for e in events}) == 1 and events[0]["session_id"]
    assert {(e["server"], e["server_version"], e["client_name"], e["client_version"], e["transport"]) for e in events} == {
        (server, server_version, "pytest-client", "1.2.3", "stdio")}
    assert {e["protocol_version"] for e in events if e["kind"] in ("tool_call", "list_tools")} == {protocol}
    assert {e["user_hash"] for e in events} == {user_hash(home, "alice")}
    assert events[-1]["attributes"] == {"reason": "client_closed", "exit_code": 0}


TIME_CALLS = [
    ("get_current_time", {"timezone": "Etc/UTC"}),
    ("get_current_time", {"timezone": "Asia/Tokyo"}),
    ("convert_time", {"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
    ("get_current_time", {}),  # bad arguments: an isError result
    ("get_current_time", {"timezone": "Mars/Olympus_Mons"}),  # the tool refuses: isError
    ("no_such_tool", {}),  # unknown tool: a JSON-RPC error
]


@pytest.mark.parametrize("mode, protocol, handshake", [
    ("auto", "2026-07-28", [("server_discover", 1)]),
    ("legacy", "2025-11-25", [("initialize", 1)]),
])
def test_time_server(isolated_env: Path, mode: str, protocol: str, handshake):
    outcomes = anyio.run(make_calls, proxied(TIME_SERVER, isolated_env), mode, TIME_CALLS)
    assert [failed for failed, _ in outcomes] == [False, False, False, True, True, True]
    summary = report(isolated_env)
    assert (summary["calls"], summary["errors"], summary["users"]) == (6, 3, 1)
    assert by_tool(summary) == {"get_current_time": (4, 2), "convert_time": (1, 0), "no_such_tool": (1, 1)}
    calls = recorded(isolated_env, "tool_call")
    assert [(e["tool"], e["ok"], e["error_type"]) for e in calls] == [
        ("get_current_time", 1, None), ("get_current_time", 1, None), ("convert_time", 1, None),
        ("get_current_time", 0, "tool_error"), ("get_current_time", 0, "tool_error"), ("no_such_tool", 0, "invalid_params")]
    assert "Mars/Olympus_Mons" in calls[4]["error_message"]
    assert calls[5]["error_message"] == "Unknown tool: no_such_tool"
    assert [e["attributes"]["mcp.outcome"] for e in calls] == [
        "ok", "ok", "ok", "tool_error", "tool_error", "caller_error"]  # -32602: the caller asked for a tool that is not there
    catalog = {e["tool"]: e["result_bytes"] for e in recorded(isolated_env, "tool_listed")}
    assert set(catalog) == {"get_current_time", "convert_time"} and all(size > 100 for size in catalog.values())
    assert all(e["duration_ms"] > 0 and e["result_bytes"] > 0 and e["args_bytes"] >= 2 for e in calls)
    check_session(isolated_env, server="mcp-time", server_version=version("mcp-server-time"), protocol=protocol,
                  handshake=handshake)


EVERYTHING_CALLS = [
    ("echo", {"message": "hello"}),
    ("get-sum", {"a": 2, "b": 3}),
    ("echo", {}),  # bad arguments: the TypeScript SDK answers isError
    ("no-such-tool", {}),  # ... and so for an unknown tool
]


@pytest.mark.parametrize("mode, protocol, handshake", [
    # The TypeScript server predates 2026-07-28: the probe fails and the client falls back.
    ("auto", "2025-11-25", [("server_discover", 0), ("initialize", 1)]),
    ("legacy", "2025-11-25", [("initialize", 1)]),
])
def test_everything_server(isolated_env: Path, everything_server, mode: str, protocol: str, handshake):
    outcomes = anyio.run(make_calls, proxied(everything_server, isolated_env), mode, EVERYTHING_CALLS)
    assert outcomes[0] == (False, "Echo: hello")
    assert [failed for failed, _ in outcomes] == [False, False, True, True]
    summary = report(isolated_env)
    assert (summary["calls"], summary["errors"], summary["users"]) == (4, 2, 1)
    assert by_tool(summary) == {"echo": (2, 1), "get-sum": (1, 0), "no-such-tool": (1, 1)}
    calls = recorded(isolated_env, "tool_call")
    # The TypeScript SDK answers an unknown tool with isError; the proxy knows the tools it listed.
    assert [e["error_type"] for e in calls] == [None, None, "tool_error", "invalid_params"]
    assert [e["attributes"]["mcp.outcome"] for e in calls] == ["ok", "ok", "tool_error", "caller_error"]
    assert "no-such-tool" in calls[3]["error_message"]
    catalog = {e["tool"] for e in recorded(isolated_env, "tool_listed")}
    assert {"echo", "get-sum"} <= catalog and len(catalog) >= 10
    if mode == "auto":
        (probe,) = recorded(isolated_env, "server_discover")
        assert (probe["error_type"], probe["protocol_version"]) == ("method_not_found", "2026-07-28")
    check_session(isolated_env, server="mcp-servers/everything", server_version="2.0.0", protocol=protocol,
                  handshake=handshake)


def test_server_name_flag_and_environment(isolated_env: Path):
    calls = [("get_current_time", {"timezone": "Etc/UTC"})]
    anyio.run(make_calls, proxied(TIME_SERVER, isolated_env, "--server-name", "clock"), "legacy", calls)
    anyio.run(make_calls, proxied(TIME_SERVER, isolated_env, MCPMETER_SERVER_NAME="clock-env"), "legacy", calls)
    assert {e["server"] for e in recorded(isolated_env)} == {"clock", "clock-env"}


def test_calls_reach_a_collector(isolated_env: Path, collector):
    calls = [("get_current_time", {"timezone": "Etc/UTC"}), ("nope", {})]
    anyio.run(make_calls, proxied(TIME_SERVER, isolated_env, MCPMETER_URL=collector.url), "auto", calls)
    assert recorded(isolated_env) == []  # nothing went to the local store
    assert [(e["tool"], e["ok"]) for e in recorded(collector.db, "tool_call")] == [("get_current_time", 1), ("nope", 0)]


def test_spooled_while_the_collector_is_down_then_delivered(isolated_env: Path, raw_proxies, tmp_path: Path):
    port = free_port()
    env = proxy_env(isolated_env, MCPMETER_URL=f"http://127.0.0.1:{port}")
    first = raw_proxies(FAKE_SERVER, env)
    first.initialize()
    first.call("tools/call", {"name": "echo", "arguments": {"run": 1}})
    first.close_stdin()
    assert first.wait() == 0
    assert (isolated_env / "spool.db").exists()
    collector = start_collector(tmp_path / "late.db", port=port)
    try:
        second = raw_proxies(FAKE_SERVER, env)
        second.initialize()
        second.call("tools/call", {"name": "fail", "arguments": {}})
        second.close_stdin()
        assert second.wait() == 0
        calls = recorded(collector.db, "tool_call")
        assert sorted((e["tool"], e["ok"]) for e in calls) == [("echo", 1), ("fail", 0)]
        assert len(recorded(collector.db, "session_start")) == 2
    finally:
        stop_collector(collector)


# ---- byte for byte ------------------------------------------------------------------------------

FAKE_SCRIPT = [
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},'
    b'"clientInfo":{"name":"script","version":"1"}}}\n',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
    b'{"jsonrpc": "2.0", "id": "1", "method": "tools/list"}\n',
    '{"jsonrpc":"2.0","id":0,"method":"tools/call","params":{"name":"echo","arguments":{"text":"héllo ✓ 🚀","n":[1,2.5,null,true]}}}\n'.encode(),
    b'{"jsonrpc":"2.0","id":"crlf","method":"tools/call","params":{"name":"echo","arguments":{"x":1}}}\r\n',
    b'[{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{}}},'
    b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"fail"}}]\n',
    b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"garbage"}}\n',
    b'{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"unknown"}}\n',
    b'{"jsonrpc":"2.0","id":14,"method":"tools/call","params":{"name":"big","arguments":{"size":300000}}}\n',
]

EVERYTHING_SCRIPT = [
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},'
    b'"clientInfo":{"name":"script","version":"1"}}}\n',
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n',
    b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}\n',
    '{"jsonrpc":"2.0","id":"3","method":"tools/call","params":{"name":"echo","arguments":{"message":"héllo ✓"}}}\n'.encode(),
    b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1,"b":41}}}\n',
    b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"nope","arguments":{}}}\n',
]


@pytest.mark.parametrize("server", ["fake", "everything"])
def test_client_receives_exactly_what_the_server_sent(isolated_env: Path, raw_proxies, request, server: str):
    command, script = (FAKE_SERVER, FAKE_SCRIPT) if server == "fake" else (request.getfixturevalue("everything_server"), EVERYTHING_SCRIPT)
    received = {}
    for path in ("direct", "proxied"):
        p = raw_proxies(command, proxy_env(isolated_env), ("--log-level", "debug"), direct=path == "direct")
        p.exchange(script)
        p.close_stdin()
        assert p.wait() == 0
        received[path] = bytes(p.stdout)
    assert received["proxied"] == received["direct"]
    assert len(received["direct"]) > 1000
    calls = [(e["tool"], e["ok"]) for e in recorded(isolated_env, "tool_call")]
    if server == "fake":
        assert calls == [("echo", 1), ("echo", 1), ("echo", 1), ("fail", 0), ("garbage", 1), ("unknown", 0), ("big", 1)]
    else:
        assert calls == [("echo", 1), ("get-sum", 1), ("nope", 0)]


# ---- faults -----------------------------------------------------------------------------------


def test_child_killed_mid_call(isolated_env: Path, raw_proxies, tmp_path: Path):
    pid_file = tmp_path / "server.pid"
    p = raw_proxies([*FAKE_SERVER, "--pid-file", str(pid_file)], proxy_env(isolated_env))
    p.initialize()
    assert p.call("tools/call", {"name": "echo", "arguments": {"a": 1}})["result"]["isError"] is False
    p.send({"jsonrpc": "2.0", "id": "slow-1", "method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": 60}}})
    wait_for_stderr(p, b"slow call started")
    started = time.monotonic()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert p.wait() == 128 + signal.SIGKILL
    assert time.monotonic() - started < 10
    calls = recorded(isolated_env, "tool_call")
    assert [(e["tool"], e["ok"], e["error_type"]) for e in calls] == [("echo", 1, None), ("slow", 0, "server_exited")]
    (end,) = recorded(isolated_env, "session_end")
    assert end["attributes"] == {"reason": "server_exited", "exit_code": -signal.SIGKILL}


def test_child_crashing_by_itself(isolated_env: Path, raw_proxies):
    p = raw_proxies(FAKE_SERVER, proxy_env(isolated_env))
    p.initialize()
    p.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "crash", "arguments": {"code": 3}}})
    assert p.wait() == 3
    assert [(e["tool"], e["error_type"]) for e in recorded(isolated_env, "tool_call")] == [("crash", "server_exited")]


def test_garbage_on_stdout_passes_through_and_tracking_goes_on(isolated_env: Path, raw_proxies):
    p = raw_proxies(FAKE_SERVER, proxy_env(isolated_env))
    p.initialize()
    answer = p.call("tools/call", {"name": "garbage", "arguments": {}})
    assert answer["result"]["content"][0]["text"] == "after the garbage"
    assert b"\nthis is not JSON {{{\n\n  \nplain text from a misbehaving server\n" in bytes(p.stdout)
    assert p.call("tools/call", {"name": "fail", "arguments": {}})["result"]["isError"] is True
    p.close_stdin()
    assert p.wait() == 0
    assert [(e["tool"], e["ok"]) for e in recorded(isolated_env, "tool_call")] == [("garbage", 1), ("fail", 0)]


def test_5mb_messages_both_ways(isolated_env: Path, raw_proxies):
    p = raw_proxies(FAKE_SERVER, proxy_env(isolated_env))
    p.initialize()
    started = time.monotonic()
    answer = p.call("tools/call", {"name": "big", "arguments": {"size": 5_000_000}}, msg_id=7)
    assert len(answer["result"]["content"][0]["text"]) == 5_000_000
    big_line = next(line for line in bytes(p.stdout).split(b"\n") if line.startswith(b'{"jsonrpc":"2.0","id":7,'))
    arguments = {"blob": "é" * 2_500_000}  # 5 MB of UTF-8 the other way
    echoed = p.call("tools/call", {"name": "echo", "arguments": arguments}, msg_id=8)
    assert echoed["result"]["content"][0]["text"] == '{"blob":"' + "é" * 2_500_000 + '"}'
    assert time.monotonic() - started < 15
    p.close_stdin()
    assert p.wait() == 0
    big, echo = recorded(isolated_env, "tool_call")
    prefix = len(b'{"jsonrpc":"2.0","id":7,"result":')
    assert big["result_bytes"] == len(big_line) - prefix - 1
    assert echo["args_bytes"] == len(json.dumps(arguments).encode())


@pytest.mark.parametrize("linger", [False, True])
def test_client_disconnects_mid_call(isolated_env: Path, raw_proxies, linger: bool):
    """stdin closes while a call runs: the child ends (asked nicely, then SIGTERM), nothing hangs."""
    p = raw_proxies([*FAKE_SERVER, *(["--linger"] if linger else [])], proxy_env(isolated_env))
    p.initialize()
    p.call("tools/call", {"name": "echo", "arguments": {}})
    p.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": 60}}})
    wait_for_stderr(p, b"slow call started")
    started = time.monotonic()
    p.close_stdin()
    code = p.wait()
    assert time.monotonic() - started < 10
    assert code == (42 if linger else 0)  # 42: the fake server's answer to SIGTERM
    assert [(e["tool"], e["ok"], e["error_type"]) for e in recorded(isolated_env, "tool_call")] == [
        ("echo", 1, None), ("slow", None, "cancelled")]  # the client left: cancelled, neither ok nor failed
    assert recorded(isolated_env, "tool_call")[1]["attributes"]["reason"] == "client_disconnected"
    (end,) = recorded(isolated_env, "session_end")
    assert end["attributes"]["reason"] == "client_closed"


def test_cancellation_from_the_sdk_client(isolated_env: Path):
    async def main() -> None:
        async with Client(proxied(FAKE_SERVER, isolated_env), mode="legacy", client_info=CLIENT) as client:
            with anyio.move_on_after(1):
                await client.call_tool("slow", {"seconds": 60})
            assert (await client.call_tool("echo", {"after": "cancel"})).is_error is False

    anyio.run(main)
    calls = recorded(isolated_env, "tool_call")
    assert [(e["tool"], e["ok"], e["error_type"]) for e in calls] == [("slow", None, "cancelled"), ("echo", 1, None)]
    assert calls[0]["duration_ms"] == pytest.approx(1000, abs=300)


def test_exit_code_and_stderr_pass_through(isolated_env: Path, raw_proxies):
    p = raw_proxies([*FAKE_SERVER, "--exit-code", "7"], proxy_env(isolated_env))
    p.initialize()
    p.close_stdin()
    assert p.wait() == 7
    assert b"fake-server: ready\n" in p.stderr and b"fake-server: bye\n" in p.stderr


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 42), (signal.SIGINT, 128 + signal.SIGINT)])
def test_signals_are_forwarded(isolated_env: Path, raw_proxies, sig: int, code: int):
    p = raw_proxies(FAKE_SERVER, proxy_env(isolated_env))
    p.initialize()
    p.call("tools/call", {"name": "echo", "arguments": {}})
    p.proc.send_signal(sig)
    assert p.wait() == code
    assert [e["tool"] for e in recorded(isolated_env, "tool_call")] == ["echo"]
    (end,) = recorded(isolated_env, "session_end")
    assert end["attributes"]["reason"] == "signal"


def test_command_that_does_not_exist(isolated_env: Path, raw_proxies):
    p = raw_proxies(["/nonexistent/mcp-server"], proxy_env(isolated_env))
    assert p.wait() == 1
    assert b"cannot start the server" in p.stderr and b"Traceback" not in p.stderr


def test_nothing_to_run_is_a_usage_error(isolated_env: Path, raw_proxies):
    p = raw_proxies([], proxy_env(isolated_env))
    assert p.wait() == 2
    assert b"nothing to run" in p.stderr
