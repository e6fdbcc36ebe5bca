"""One vocabulary: every capture path names kinds and JSON-RPC error codes the same way."""

from __future__ import annotations

import json
import os
import time

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from mcpmeter import Meter, protocol
from mcpmeter.proxy.tracker import Connection, Tracker
from mcpmeter.sdk.sinks import MemorySink
from mcpmeter.server.collector.otlp import JSON, convert, parse_request

# JSON-RPC 2.0, MCP's own codes (one of them retired), and one nobody named.
CODES = (-32602, -32601, -32002, -32020, -32021, -32022, -32042, -31999)


def test_the_table_names_what_mcp_types_names():
    from mcp_types import jsonrpc

    for name in ("HEADER_MISMATCH", "MISSING_REQUIRED_CLIENT_CAPABILITY", "UNSUPPORTED_PROTOCOL_VERSION",
                 "URL_ELICITATION_REQUIRED", "INVALID_PARAMS", "METHOD_NOT_FOUND"):
        assert protocol.error_type_for_code(getattr(jsonrpc, name)) == name.lower()
    assert protocol.error_type_for_code(-31999) == "-31999"
    assert protocol.error_type_for_code("-32022") == "unsupported_protocol_version"
    assert protocol.error_type_for_code(None) == protocol.JSONRPC_ERROR


def test_methods_and_kinds_map_both_ways():
    assert protocol.kind_for_method("tools/call") == protocol.TOOL_CALL
    assert protocol.kind_for_method("server/discover") == protocol.INITIALIZE
    assert protocol.kind_for_method("logging/setLevel") == "logging/set_level"
    assert protocol.METHOD_FOR_KIND[protocol.INITIALIZE] == "initialize"
    assert protocol.METHOD_FOR_KIND[protocol.SERVER_DISCOVER] == "server/discover"
    for method in protocol.MCP_METHODS:
        kind = protocol.kind_for_method(method)
        assert kind is not None and protocol.kind_for_method(protocol.METHOD_FOR_KIND[kind]) == kind


# ---- the same code through the three capture paths -----------------------------------------------


def sdk_names() -> dict[int, str]:
    """meter.instrument() on a real mcp server whose tool answers with each JSON-RPC error."""

    async def call_tool(ctx, params):
        raise MCPError(int(params.name), "refused")

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=[])

    sink = MemorySink()
    meter = Meter(server="sdk", sink=sink)
    server = meter.instrument(Server("codes", on_list_tools=list_tools, on_call_tool=call_tool))

    async def drive() -> None:
        async with Client(server, mode="legacy", cache=None) as client:
            for code in CODES:
                with pytest.raises(MCPError):
                    await client.call_tool(str(code), {})

    anyio.run(drive)
    assert meter.flush(10)
    meter.shutdown()
    return {int(e.tool): e.error_type for e in sink.events if e.kind == protocol.TOOL_CALL}


def proxy_names() -> dict[int, str]:
    """The proxy's tracker, fed the same error responses as bytes."""
    sink = MemorySink()
    meter = Meter(server="proxy", sink=sink)
    tracker = Tracker(meter, transport="stdio", server="proxy")
    conn = Connection("s1")
    t = time.perf_counter()
    for n, code in enumerate(CODES):
        request = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": str(code), "arguments": {}}}
        tracker.from_client(conn, json.dumps(request).encode(), t)
        response = {"jsonrpc": "2.0", "id": n, "error": {"code": code, "message": "refused"}}
        tracker.from_server(conn, json.dumps(response).encode(), t + 0.01)
    assert meter.flush(10)
    meter.shutdown()
    return {int(e.tool): e.error_type for e in sink.events if e.kind == protocol.TOOL_CALL}


def otlp_names() -> dict[int, str]:
    """The OTLP receiver, given spans that carry each code (as ``error.type`` or only the status code)."""
    start = int((time.time() - 5) * 1e9)

    def span(code: int, attribute: str) -> dict:
        attrs = {"mcp.method.name": "tools/call", "gen_ai.tool.name": str(code), attribute: str(code)}
        return {"traceId": os.urandom(16).hex(), "spanId": os.urandom(8).hex(), "name": f"tools/call {code}",
                "kind": 2, "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 1_000_000),
                "status": {"code": 2}, "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]}

    out: dict[int, str] = {}
    for attribute in ("error.type", "rpc.response.status_code"):
        body = {"resourceSpans": [{"resource": {"attributes": []},
                                   "scopeSpans": [{"spans": [span(c, attribute) for c in CODES]}]}]}
        for event in convert(parse_request(json.dumps(body).encode(), JSON)).events:
            code = int(event["tool"])
            assert out.setdefault(code, event["error_type"]) == event["error_type"], attribute
    return out


def test_the_three_capture_paths_name_a_json_rpc_code_the_same():
    expected = {code: protocol.error_type_for_code(code) for code in CODES}
    assert expected[-32022] == "unsupported_protocol_version"
    assert expected[-31999] == "-31999"
    assert sdk_names() == expected
    assert proxy_names() == expected
    assert otlp_names() == expected
