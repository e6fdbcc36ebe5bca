"""Issue 13 through OpenTelemetry: the same ``MCPServer``, unmodified, run under
``opentelemetry-instrument`` and exporting its spans to a real collector (SQLite and
PostgreSQL), driven by the real MCP SDK client on both protocol generations.

Spans say less than the wire (docs/opentelemetry.md, "What spans cannot tell"): this test
pins down what the OTLP path records - outcome classes and the protocol version per
request - and what it cannot: no catalog, and each input round is a span of its own."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from mcp.client.stdio import StdioServerParameters

from capture_helpers import SERVER, drive, stored

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode, protocol", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_spans_of_an_unmodified_server(collector, mode: str, protocol: str):
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    env = {**os.environ, "OTEL_SERVICE_NAME": "rounds-demo", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
           "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    params = StdioServerParameters(command=str(instrument), args=[*SERVER, "stdio"], env=env)
    seen, _ = anyio.run(lambda: drive(params, mode))
    modern = protocol == "2026-07-28"
    delete_spans, transfer_spans = (6, 3) if modern else (3, 1)
    expected_events = len(seen) + (delete_spans - 3) + (transfer_spans - 1)
    deadline = time.monotonic() + 60
    while True:
        events = stored(str(collector.db))
        tool_calls = [e for e in events if e["kind"] == "tool_call"]
        if len(tool_calls) >= expected_events or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    outcomes = Counter((e["tool"], e["attributes"]["mcp.outcome"]) for e in tool_calls)
    # 4: the tool failing, the server failing: told apart. MCPServer answers an unknown tool
    # with isError, and a span does not say the tool is unknown: a tool error here.
    assert outcomes[("forecast", "tool_error")] == 1 and outcomes[("forecast", "ok")] == 2
    assert outcomes[("explode", "server_error")] == 1
    assert outcomes[("no_such_tool", "tool_error")] == 1
    # 2: each round of a multi round-trip call is a span of its own (no resultType on spans)
    assert outcomes[("delete_file", "ok")] == delete_spans and outcomes[("transfer", "ok")] == transfer_spans
    # 3: a cancelled request's span ends without an error: it reads as a success
    assert outcomes[("slow", "ok")] == 1
    # 5: the protocol version comes with every span; the client's name does not
    assert {e["protocol_version"] for e in tool_calls} == {protocol}
    assert {e["client_name"] for e in tool_calls} == {None}
    # 1: spans carry no tools/list result: no catalog from this path
    assert not [e for e in events if e["kind"] == "tool_listed"]
    assert [e["kind"] for e in events].count("list_tools") == 1
