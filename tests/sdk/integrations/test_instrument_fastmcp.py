"""meter.instrument() on a FastMCP server, driven by FastMCP's own in-memory client."""

from __future__ import annotations

import anyio
import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.tools.base import ToolResult
from instrument_helpers import attributes, kinds, new_meter, recorded, report_tools, tool_calls, wire


def notes_server() -> FastMCP:
    server = FastMCP("notes", version="1.2.0")

    @server.tool
    def search(query: str, limit: int = 5) -> list[str]:
        """Search the notes."""
        return [f"{query} #{i}" for i in range(min(limit, 3))]

    @server.tool
    def sync(token: str) -> str:
        raise TimeoutError("upstream did not answer")

    @server.tool
    def archive(note_id: int) -> str:
        raise ToolError(f"note {note_id} is locked")

    @server.tool
    def soft_fail() -> ToolResult:
        return ToolResult(content="quota exceeded", is_error=True)

    return server


async def drive(server: FastMCP) -> dict:
    out: dict = {}
    async with Client(server) as c:
        out["tools"] = wire(await c.list_tools_mcp())
        out["results"] = [wire(await c.call_tool_mcp("search", {"query": q})) for q in ("tea", "jam")]
        out["errors"] = [
            wire(await c.call_tool_mcp("sync", {"token": "s3cr3t"})),
            wire(await c.call_tool_mcp("archive", {"note_id": 7})),
            wire(await c.call_tool_mcp("soft_fail", {})),
            wire(await c.call_tool_mcp("missing", {})),
        ]
    return out


def test_every_call_is_recorded_exactly_with_failures_and_their_types(tmp_path, monkeypatch):
    monkeypatch.setenv("MCPMETER_USER", "bo")
    meter = new_meter(tmp_path)
    anyio.run(drive, meter.instrument(notes_server()))
    events = recorded(meter)

    assert tool_calls(events) == [
        ("search", True, None), ("search", True, None),
        ("sync", False, "TimeoutError"),  # FastMCP's ToolError wraps it; the cause is what failed
        ("archive", False, "ToolError"),
        ("soft_fail", False, "tool_error"),  # a result with isError, no exception
        ("missing", False, "NotFoundError"),
    ]
    assert kinds(events)["tool_call"] == 6 and kinds(events)["initialize"] == 1
    assert kinds(events).get("list_tools", 0) >= 1
    assert report_tools(meter._db) == {"search": (2, 0), "sync": (1, 1), "archive": (1, 1),
                                       "soft_fail": (1, 1), "missing": (1, 1)}
    by_tool = {e["tool"]: e for e in events if e["kind"] == "tool_call"}
    assert "locked" in by_tool["archive"]["error_message"]
    assert by_tool["soft_fail"]["error_message"] == "quota exceeded"
    search = by_tool["search"]
    assert (search["server"], search["server_version"]) == ("notes", "1.2.0")
    assert search["client_name"] and search["protocol_version"]
    assert search["args_bytes"] > 0 and search["result_bytes"] > 0
    assert search["user_hash"] and search["user_hash"] != "bo"
    assert all(not attributes(e).keys() & {"arguments", "result"} for e in events)


def test_bad_arguments_are_a_validation_error_that_does_not_echo_them(tmp_path):
    meter = new_meter(tmp_path)
    server = meter.instrument(notes_server())

    async def bad_call():
        async with Client(server) as c:
            return await c.call_tool_mcp("search", {"query": "tea", "limit": "secret-value"})

    assert anyio.run(bad_call).is_error is True
    (call,) = [e for e in recorded(meter) if e["kind"] == "tool_call"]
    assert (call["ok"], call["error_type"]) == (0, "ValidationError")
    assert "secret-value" not in call["error_message"] and "limit" in call["error_message"]


def test_tools_list_and_results_are_byte_identical_with_and_without(tmp_path):
    plain = anyio.run(drive, notes_server())
    meter = new_meter(tmp_path, capture_arguments=True, capture_results=True)
    assert anyio.run(drive, meter.instrument(notes_server())) == plain
    recorded(meter)


def test_captured_arguments_are_redacted(tmp_path):
    meter = new_meter(tmp_path, capture_arguments=True)
    anyio.run(drive, meter.instrument(notes_server()))
    captured = {e["tool"]: attributes(e).get("arguments") for e in recorded(meter) if e["kind"] == "tool_call"}
    assert captured["sync"] == '{"token":"[redacted]"}'
    assert captured["search"] == '{"query":"jam"}' or captured["search"] == '{"query":"tea"}'


def test_a_fastmcp_servers_own_version_is_not_taken_for_the_servers(tmp_path):
    import fastmcp

    meter = new_meter(tmp_path)
    server = FastMCP("bare")
    assert server.version == fastmcp.__version__
    meter.instrument(server)
    assert (meter.server, meter.server_version) == ("bare", None)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_mcp_client_sees_the_same_through_the_lowlevel_server(tmp_path, mode):
    """The mcp SDK's client against FastMCP's mcp Server: both protocol eras are recorded."""
    from mcp import Client as McpClient

    meter = new_meter(tmp_path)
    server = meter.instrument(notes_server())

    async def session():
        async with McpClient(server._mcp_server, mode=mode, cache=None) as c:
            await c.list_tools()
            await c.call_tool("search", {"query": "tea"})
            await c.call_tool("sync", {"token": "x"})

    anyio.run(session)
    events = recorded(meter)
    assert tool_calls(events) == [("search", True, None), ("sync", False, "TimeoutError")]
    opening = next(e for e in events if e["kind"] == "initialize")
    assert attributes(opening)["mcp.method.name"] == ("server/discover" if mode == "auto" else "initialize")
    assert {e["client_name"] for e in events} == {"mcp"}
    assert {e["protocol_version"] for e in events} == {"2026-07-28" if mode == "auto" else "2025-11-25"}
