"""meter.instrument() on mcp 2.x MCPServer and low-level Server, driven by the real client."""

from __future__ import annotations

import anyio
import mcp_types as types
import pytest
from instrument_helpers import attributes, kinds, new_meter, recorded, report_tools, tool_calls, wire
from mcp import Client
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from mcpmeter.exceptions import ConfigError

MODES = ["auto", "legacy"]  # 2026-07-28 (server/discover, per-request envelope) and the handshake era


def weather_server() -> MCPServer:
    server = MCPServer("weather", version="3.1.0")

    @server.tool()
    def forecast(city: str, days: int = 1) -> str:
        """The forecast for a city."""
        return f"{city}: sunny for {days} days"

    @server.tool()
    async def alerts(region: str) -> dict:
        raise ConnectionError(f"feed for {region} unreachable")

    @server.tool()
    def login(user: str, password: str, api_key: str = "") -> str:
        raise ToolError("account locked")

    return server


async def drive(server, mode: str) -> dict:
    """One client session: list tools, three good calls, a raising tool, a ToolError, an unknown tool."""
    out = {}
    async with Client(server, mode=mode, cache=None) as c:
        out["tools"] = wire(await c.list_tools())
        out["results"] = [wire(await c.call_tool("forecast", {"city": city, "days": 2})) for city in ("Oslo", "Lima", "Pune")]
        out["errors"] = [
            wire(await c.call_tool("alerts", {"region": "north"})),
            wire(await c.call_tool("login", {"user": "ann", "password": "hunter2", "api_key": "k-123"})),
            wire(await c.call_tool("no_such_tool", {})),
        ]
    return out


@pytest.mark.parametrize("mode", MODES)
def test_every_call_is_recorded_exactly_with_failures_and_their_types(tmp_path, mode, monkeypatch):
    monkeypatch.setenv("MCPMETER_USER", "ann@example.com")
    meter = new_meter(tmp_path)
    server = meter.instrument(weather_server())
    anyio.run(drive, server, mode)
    events = recorded(meter)

    assert tool_calls(events) == [
        ("forecast", True, None), ("forecast", True, None), ("forecast", True, None),
        ("alerts", False, "ConnectionError"),  # the tool's exception, not just "tool_error"
        ("login", False, "ToolError"),
        ("no_such_tool", False, "invalid_params"),  # MCPServer answers isError: still the caller's mistake
    ]
    assert kinds(events) == {"initialize": 1, "list_tools": 1, "tool_call": 6}
    assert report_tools(meter._db) == {"forecast": (3, 0), "alerts": (1, 1), "login": (1, 1), "no_such_tool": (1, 1)}

    by_tool = {e["tool"]: e for e in events if e["kind"] == "tool_call"}
    login = by_tool["login"]
    assert "account locked" in login["error_message"]
    call = by_tool["forecast"]
    assert (call["server"], call["server_version"]) == ("weather", "3.1.0")  # taken from the MCPServer
    assert (call["client_name"], call["client_version"]) == ("mcp", "0.1.0")
    assert call["protocol_version"] == ("2026-07-28" if mode == "auto" else "2025-11-25")
    assert call["transport"] == "stdio" and call["user_hash"] and call["user_hash"] != "ann@example.com"
    assert call["args_bytes"] == len('{"city":"Oslo","days":2}') and call["result_bytes"] > 0
    assert call["duration_ms"] > 0
    # Contents are not captured unless asked for.
    assert all(not attributes(e).keys() & {"arguments", "result"} for e in events)

    opening = next(e for e in events if e["kind"] == "initialize")
    expected = "server/discover" if mode == "auto" else "initialize"
    assert attributes(opening)["mcp.method.name"] == expected
    assert opening["client_name"] == "mcp"
    listing = next(e for e in events if e["kind"] == "list_tools")
    assert attributes(listing) == {"tools": 3, "mcp.outcome": "ok"}
    assert [attributes(e)["mcp.outcome"] for e in events if e["kind"] == "tool_call"] == [
        "ok", "ok", "ok", "tool_error", "tool_error", "caller_error"]
    catalog = [e for e in recorded(meter, catalog=True) if e["kind"] == "tool_listed"]
    assert sorted(e["tool"] for e in catalog) == ["alerts", "forecast", "login"]
    assert all(e["result_bytes"] > 50 and e["session_id"] is None and e["user_hash"] is None for e in catalog)


def test_bad_arguments_are_a_validation_error_that_does_not_echo_them(tmp_path):
    meter = new_meter(tmp_path)
    server = meter.instrument(weather_server())

    async def bad_call():
        async with Client(server, cache=None) as c:
            return await c.call_tool("forecast", {"city": "Oslo", "days": "secret-value"})

    assert anyio.run(bad_call).is_error is True
    (call,) = [e for e in recorded(meter) if e["kind"] == "tool_call"]
    assert (call["ok"], call["error_type"], call["error_message"]) == (0, "ValidationError", "invalid arguments: days")


def test_a_handshake_connection_is_one_session(tmp_path):
    meter = new_meter(tmp_path)
    server = meter.instrument(weather_server())
    anyio.run(drive, server, "legacy")
    anyio.run(drive, server, "legacy")
    events = recorded(meter)
    sessions = {e["session_id"] for e in events}
    assert len(sessions) == 2 and None not in sessions  # one per connection, on every event of it


@pytest.mark.parametrize("mode", MODES)
def test_tools_list_and_results_are_byte_identical_with_and_without(tmp_path, mode):
    plain = anyio.run(drive, weather_server(), mode)
    meter = new_meter(tmp_path, capture_arguments=True, capture_results=True)
    instrumented = anyio.run(drive, meter.instrument(weather_server()), mode)
    assert instrumented["tools"] == plain["tools"]
    assert instrumented["results"] == plain["results"]
    assert instrumented["errors"] == plain["errors"]
    recorded(meter)


def test_arguments_are_captured_only_on_request_redacted_and_capped(tmp_path):
    meter = new_meter(tmp_path, capture_arguments=True, capture_results=True, capture_max_chars=64)
    server = meter.instrument(weather_server())
    anyio.run(drive, server, "auto")
    calls = [(e["tool"], attributes(e)) for e in recorded(meter) if e["kind"] == "tool_call"]
    login = next(a for tool, a in calls if tool == "login")["arguments"]
    assert login == '{"user":"ann","password":"[redacted]","api_key":"[redacted]"}'
    assert [a["arguments"] for tool, a in calls if tool == "forecast"] == [
        f'{{"city":"{city}","days":2}}' for city in ("Oslo", "Lima", "Pune")]
    results = [a["result"] for _, a in calls]
    assert all(len(r) <= 64 for r in results) and any(r.endswith("…") for r in results)
    assert "no_such_tool" in [tool for tool, _ in calls] and "arguments" not in calls[-1][1]  # {} is nothing to keep


def test_redaction_keys_can_be_chosen(tmp_path):
    meter = new_meter(tmp_path, capture_arguments=True, redact_keys=["city"])
    anyio.run(drive, meter.instrument(weather_server()), "auto")
    captured = {attributes(e)["arguments"] for e in recorded(meter) if e["tool"] == "forecast"}
    assert captured == {'{"city":"[redacted]","days":2}'}


def test_instrumenting_twice_records_once(tmp_path):
    meter = new_meter(tmp_path)
    server = weather_server()
    meter.instrument(server)
    meter.instrument(server)

    async def one_call():
        async with Client(server, cache=None) as c:
            await c.call_tool("forecast", {"city": "Oslo"})

    anyio.run(one_call)
    assert tool_calls(recorded(meter)) == [("forecast", True, None)]


def test_a_disabled_meter_leaves_the_server_alone(tmp_path):
    meter = new_meter(tmp_path, disabled=True)
    server = weather_server()
    before = list(server.middleware)
    assert meter.instrument(server) is server
    assert server.middleware == before


def test_an_explicit_server_name_wins_over_the_mcp_servers(tmp_path):
    meter = new_meter(tmp_path, server="weblab")
    anyio.run(drive, meter.instrument(weather_server()), "auto")
    assert {e["server"] for e in recorded(meter)} == {"weblab"}


def test_something_else_is_refused_with_a_hint(tmp_path):
    meter = new_meter(tmp_path)
    with pytest.raises(ConfigError) as err:
        meter.instrument(object())
    assert "@meter.tool" in err.value.hint


def test_a_failing_user_resolver_does_not_fail_the_call(tmp_path):
    from mcpmeter.sdk import internal

    def user(ctx):
        raise LookupError("no directory")

    meter = new_meter(tmp_path)
    server = meter.instrument(weather_server(), user=user)

    async def one_call():
        async with Client(server, cache=None) as c:
            return await c.call_tool("forecast", {"city": "Oslo"})

    assert anyio.run(one_call).is_error is False
    (call,) = [e for e in recorded(meter) if e["kind"] == "tool_call"]
    assert internal.errors and {type(e) for e in internal.errors} == {LookupError}  # reported, not raised
    internal.errors.clear()
    assert call["user_hash"] is None


# ---- the low-level Server ------------------------------------------------------------------


def lowlevel_server() -> Server:
    tool = types.Tool(name="echo", description="Echo", input_schema={"type": "object", "properties": {"text": {"type": "string"}}})

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=[tool])

    async def call_tool(ctx, params):
        text = (params.arguments or {}).get("text", "")
        if text == "fail":
            return types.CallToolResult(content=[types.TextContent(type="text", text="refused")], is_error=True)
        if text == "crash":
            raise ValueError("handler crashed")
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("echo-server", version="0.9", on_list_tools=list_tools, on_call_tool=call_tool)


@pytest.mark.parametrize("mode", MODES)
def test_the_low_level_server_is_recorded_too(tmp_path, mode):
    async def session(server):
        out = []
        async with Client(server, mode=mode, cache=None) as c:
            out.append(wire(await c.list_tools()))
            out.append(wire(await c.call_tool("echo", {"text": "hi"})))
            out.append(wire(await c.call_tool("echo", {"text": "fail"})))
            try:
                await c.call_tool("echo", {"text": "crash"})
            except Exception as exc:  # the SDK answers a crashing handler with a JSON-RPC error
                out.append(type(exc).__name__)
        return out

    plain = anyio.run(session, lowlevel_server())
    meter = new_meter(tmp_path)
    assert anyio.run(session, meter.instrument(lowlevel_server())) == plain
    events = recorded(meter)
    assert tool_calls(events) == [("echo", True, None), ("echo", False, "tool_error"), ("echo", False, "ValueError")]
    assert kinds(events) == {"initialize": 1, "list_tools": 1, "tool_call": 3}
    assert {e["server"] for e in events} == {"echo-server"}
