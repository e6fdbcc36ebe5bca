"""POST /v1/traces: OTLP spans of MCP servers become events; everything else is counted."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from google.protobuf import json_format
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.testclient import TestClient

from conftest import make_keys
from foundation_helpers import stored_count, stored_events
from mcpmeter.server.collector import create_app
from mcpmeter.storage import open_store

LOOPBACK = ("127.0.0.1", 5000)
REMOTE = ("203.0.113.9", 5000)
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def client(store):
    with TestClient(create_app(store), client=LOOPBACK, base_url="http://127.0.0.1") as c:
        yield c


def _attr(key, value):
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def span(name, attrs=None, *, kind=2, start_ms=None, duration_ms=12.5, error=False, message="",
         trace_id=None, span_id=None):
    """One span in OTLP JSON form (hex ids, strings for 64-bit numbers)."""
    start = int((start_ms if start_ms is not None else time.time() * 1000 - 5000) * 1_000_000)
    out = {
        "traceId": trace_id or os.urandom(16).hex(),
        "spanId": span_id or os.urandom(8).hex(),
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + int(duration_ms * 1_000_000)),
        "attributes": [_attr(k, v) for k, v in (attrs or {}).items()],
    }
    if error:
        out["status"] = {"code": 2, "message": message}
    return out


def mcp_span(method, tool=None, **kw):
    attrs = {"mcp.method.name": method, "mcp.protocol.version": "2025-11-25",
             "mcp.session.id": "sess-1", "jsonrpc.request.id": "7", "network.transport": "pipe"}
    if tool:
        attrs["gen_ai.tool.name"] = tool
        attrs["gen_ai.operation.name"] = "execute_tool"
    attrs.update(kw.pop("attrs", {}))
    return span(f"{method} {tool}" if tool else method, attrs, **kw)


def export(spans, service="weather", version="1.4.0"):
    resource = [_attr("service.name", service)] + ([_attr("service.version", version)] if version else [])
    return {"resourceSpans": [{"resource": {"attributes": resource},
                               "scopeSpans": [{"scope": {"name": "mcp-python-sdk"}, "spans": spans}]}]}


def as_protobuf(payload) -> bytes:
    """The same export as protobuf (the JSON mapping's hex ids turned into bytes)."""
    message = ExportTraceServiceRequest()
    data = json.loads(json.dumps(payload))
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId"):
                    s[key] = base64.b64encode(bytes.fromhex(s[key])).decode()
    json_format.ParseDict(data, message)
    return message.SerializeToString()


def post_json(c, payload, **kw):
    return c.post("/v1/traces", content=json.dumps(payload).encode(), headers={**JSON, **kw.pop("headers", {})}, **kw)


def post_protobuf(c, payload, **kw):
    return c.post("/v1/traces", content=as_protobuf(payload), headers={**PROTOBUF, **kw.pop("headers", {})}, **kw)


def by_kind(store):
    out: dict[str, list[dict]] = {}
    for row in stored_events(store):
        out.setdefault(row["kind"], []).append(row)
    return out


def mixed_export():
    return export([
        mcp_span("tools/call", "forecast", duration_ms=20),
        mcp_span("tools/call", "forecast", duration_ms=40, error=True, attrs={"error.type": "tool_error"}),
        mcp_span("tools/call", "alerts", error=True, message="upstream timed out",
                 attrs={"error.type": "TimeoutError"}),
        mcp_span("tools/list"),
        mcp_span("initialize"),
        mcp_span("resources/read", attrs={"mcp.resource.uri": "file:///x"}),
        span("GET /v1/forecast", {"http.request.method": "GET"}),  # not MCP
        mcp_span("tools/call", "forecast", kind=3),  # the client's side of a call: not the server's work
        mcp_span("notifications/initialized"),  # a notification: no request, no usage
    ])


# ---- what is accepted ----------------------------------------------------------------------


def test_protobuf_mcp_spans_become_events_and_other_spans_are_ignored(client, store):
    r = post_protobuf(client, mixed_export())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert not answer.HasField("partial_success")
    assert (r.headers["x-mcpmeter-accepted"], r.headers["x-mcpmeter-ignored-spans"]) == ("6", "3")
    kinds = by_kind(store)
    assert {k: len(v) for k, v in kinds.items()} == {"tool_call": 3, "list_tools": 1, "initialize": 1, "resources/read": 1}
    calls = sorted(kinds["tool_call"], key=lambda e: (e["tool"], e["duration_ms"]))
    assert [(e["tool"], e["ok"], e["error_type"], e["duration_ms"]) for e in calls] == [
        ("alerts", 0, "TimeoutError", 12.5), ("forecast", 1, None, 20.0), ("forecast", 0, "tool_error", 40.0)]
    assert calls[0]["error_message"] == "upstream timed out"
    first = calls[1]
    assert (first["server"], first["server_version"], first["session_id"], first["protocol_version"], first["transport"]) == (
        "weather", "1.4.0", "sess-1", "2025-11-25", "stdio")
    assert first["event_id"].startswith("otel-")


def test_otlp_json_is_accepted_with_the_same_result(client, store):
    r = post_json(client, mixed_export())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {}  # an ExportTraceServiceResponse with nothing rejected
    assert (r.headers["x-mcpmeter-accepted"], r.headers["x-mcpmeter-ignored-spans"]) == ("6", "3")
    assert sorted(e["tool"] for e in by_kind(store)["tool_call"]) == ["alerts", "forecast", "forecast"]


def test_json_enum_names_and_gzip_are_understood(client, store):
    payload = export([mcp_span("tools/call", "forecast")])
    payload["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = "SPAN_KIND_SERVER"
    r = client.post("/v1/traces", content=gzip.compress(json.dumps(payload).encode()),
                    headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert [e["tool"] for e in stored_events(store)] == ["forecast"]


def test_a_retried_export_is_counted_once(client, store):
    payload = export([mcp_span("tools/call", "forecast"), mcp_span("tools/list")])
    first = post_protobuf(client, payload)
    again = post_protobuf(client, payload)
    assert (first.headers["x-mcpmeter-accepted"], first.headers["x-mcpmeter-duplicates"]) == ("2", "0")
    assert (again.headers["x-mcpmeter-accepted"], again.headers["x-mcpmeter-duplicates"]) == ("0", "2")
    assert post_json(client, payload).headers["x-mcpmeter-duplicates"] == "2"  # same spans, other encoding
    assert stored_count(store) == 2


def test_the_tool_name_falls_back_to_the_span_name(client, store):
    s = span("tools/call lookup", {"mcp.method.name": "tools/call"})
    assert post_json(client, export([s])).status_code == 200
    assert [e["tool"] for e in stored_events(store)] == ["lookup"]


def test_json_rpc_error_codes_get_the_names_instrument_uses(client, store):
    spans = [mcp_span("tools/call", "forecast", error=True, message="Invalid request parameters",
                      attrs={"error.type": "-32602", "rpc.response.status_code": "-32602"}),
             mcp_span("tools/call", "forecast", error=True)]  # ERROR status, no error.type
    assert post_json(client, export(spans)).status_code == 200
    assert sorted(e["error_type"] for e in stored_events(store)) == ["_OTHER", "invalid_params"]


def test_every_event_carries_its_outcome_class(client, store):
    """Caller errors (the semconv's list) apart from the server failing and from the tool failing."""
    cases = {
        "ok": {}, "unknown": {"error.type": "-32602"}, "method": {"error.type": "-32601"},
        "missing": {"error.type": "-32002"}, "internal": {"error.type": "-32603"},
        "raised": {"error.type": "RuntimeError"}, "tool": {"error.type": "tool_error"},
    }
    spans = [mcp_span("tools/call", name, error=bool(attrs), attrs=attrs) for name, attrs in cases.items()]
    assert post_json(client, export(spans)).status_code == 200
    outcomes = {e["tool"]: json.loads(e["attributes"])["mcp.outcome"] for e in stored_events(store)}
    assert outcomes == {"ok": "ok", "unknown": "caller_error", "method": "caller_error", "missing": "caller_error",
                        "internal": "server_error", "raised": "server_error", "tool": "tool_error"}


def test_the_exception_event_gives_the_message_when_the_status_has_none(client, store):
    s = mcp_span("tools/call", "forecast", error=True, attrs={"error.type": "KeyError"})
    s["events"] = [{"name": "exception", "timeUnixNano": s["startTimeUnixNano"],
                    "attributes": [_attr("exception.type", "KeyError"), _attr("exception.message", "'north'")]}]
    assert post_json(client, export([s])).status_code == 200
    (e,) = stored_events(store)
    assert (e["ok"], e["error_type"], e["error_message"]) == (0, "KeyError", "'north'")


def test_server_discover_is_an_initialize_and_http_transport_is_named(client, store):
    s = mcp_span("server/discover", attrs={"network.transport": "tcp", "network.protocol.name": "http",
                                          "user.id": "alice"})
    assert post_json(client, export([s], version=None)).status_code == 200
    (e,) = stored_events(store)
    assert (e["kind"], e["transport"], e["server_version"]) == ("initialize", "streamable-http", None)
    assert json.loads(e["attributes"]) == {"mcp.method.name": "server/discover", "mcp.outcome": "ok"}
    assert e["user_hash"] and e["user_hash"] != "alice"  # hashed like every user


def test_no_service_name_still_records_under_unknown_service(client, store):
    payload = {"resourceSpans": [{"scopeSpans": [{"spans": [mcp_span("tools/call", "x")]}]}]}
    assert post_json(client, payload).status_code == 200
    assert [e["server"] for e in stored_events(store)] == ["unknown_service"]


# ---- what is rejected ----------------------------------------------------------------------


def test_invalid_mcp_spans_are_rejected_and_the_rest_stored(client, store):
    now = time.time() * 1000
    spans = [
        mcp_span("tools/call", "forecast"),
        span("tools/call", {"mcp.method.name": "tools/call"}),  # no tool anywhere
        mcp_span("tools/list", start_ms=now - 400 * 86_400_000),  # older than the store keeps
        {**mcp_span("initialize"), "endTimeUnixNano": "1"},  # ends before it starts
        span("GET /", {}),  # not MCP: ignored, not rejected
    ]
    r = post_protobuf(client, export(spans))
    assert r.status_code == 200, r.text
    partial = ExportTraceServiceResponse.FromString(r.content).partial_success
    assert partial.rejected_spans == 3
    assert "gen_ai.tool.name" in partial.error_message and "2 more" in partial.error_message
    assert r.headers["x-mcpmeter-ignored-spans"] == "1"
    assert [e["tool"] for e in stored_events(store)] == ["forecast"]

    j = post_json(client, export(spans[1:2]))
    assert j.json()["partialSuccess"]["rejectedSpans"] == "1"


def test_a_malformed_protobuf_body_is_a_400_status(client, store):
    r = client.post("/v1/traces", content=b"\xff\xff\xff not protobuf", headers=PROTOBUF)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/x-protobuf"
    assert b"not a protobuf ExportTraceServiceRequest" in r.content
    assert stored_count(store) == 0


@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "not JSON"),
    (b"[]", "an object"),
    (json.dumps({"resourceSpans": {"oops": 1}}).encode(), "expected an array"),
    (json.dumps(export([{**mcp_span("tools/list"), "traceId": "zz" * 16}])).encode(), "not a hex string"),
    (json.dumps(export([{**mcp_span("tools/list"), "startTimeUnixNano": "soon"}])).encode(), "not an OTLP JSON"),
])
def test_malformed_json_is_a_400_with_a_reason(client, store, body, fragment):
    r = client.post("/v1/traces", content=body, headers=JSON)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"] and r.json()["hint"]
    assert stored_count(store) == 0


def test_other_content_types_are_refused(client):
    r = client.post("/v1/traces", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/x-protobuf" in r.json()["hint"]


def test_bad_gzip_is_a_400(client):
    r = client.post("/v1/traces", content=b"not gzip", headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert r.status_code == 400


# ---- who may send --------------------------------------------------------------------------


def test_keys_are_required_off_loopback_and_checked(store):
    keys = make_keys(store)
    payload = export([mcp_span("tools/call", "forecast")])
    with TestClient(create_app(store), client=REMOTE) as c:
        assert post_protobuf(c, payload).status_code == 401
        wrong = post_protobuf(c, payload, headers={"Authorization": "Bearer mcpm_wrong"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.headers["content-type"] == "application/x-protobuf"
        assert post_json(c, payload, headers={"X-API-Key": "mcpm_wrong"}).json()["error"] == "unknown API key"
        assert post_protobuf(c, payload, headers={"Authorization": f"Bearer {keys.read}"}).status_code == 403
        assert stored_count(store) == 0
        ok = post_protobuf(c, payload, headers={"Authorization": f"Bearer {keys.ingest}"})
        assert ok.status_code == 200 and ok.headers["x-mcpmeter-accepted"] == "1"
    assert stored_count(store) == 1


def test_the_openapi_document_describes_the_endpoint(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/traces"]["post"]["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}


# ---- an unmodified MCP server, exporting through OpenTelemetry's own env configuration -----

SERVER_SCRIPT = '''
from mcp.server.mcpserver import MCPServer

mcp = MCPServer("weather", version="2.0.1")


@mcp.tool()
def forecast(city: str) -> str:
    return f"sunny in {city}"


@mcp.tool()
def alerts(region: str) -> str:
    raise RuntimeError("alert feed unreachable")


if __name__ == "__main__":
    mcp.run()
'''


def _report(url: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "mcpmeter", "report", "--format", "json", "--url", url, "--period", "1d"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _tool_rows(report: dict) -> dict[str, tuple[int, int]]:
    return {t["tool"]: (t["calls"], t["errors"]) for t in report["tools"]}


@pytest.mark.slow
def test_an_otel_instrumented_mcp_server_is_reported_exactly(collector, tmp_path):
    script = tmp_path / "weather_server.py"
    script.write_text(SERVER_SCRIPT)
    instrument = Path(sys.executable).with_name("opentelemetry-instrument")
    assert instrument.exists(), "opentelemetry-distro is part of the test extra (pip install -e '.[test]')"
    env = {
        **os.environ,
        # Only OpenTelemetry's standard variables: nothing mcpmeter-specific runs in the server.
        "OTEL_SERVICE_NAME": "weather",
        "OTEL_RESOURCE_ATTRIBUTES": "service.version=2.0.1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    params = StdioServerParameters(command=str(instrument), args=[sys.executable, str(script)], env=env)

    async def session(mode: str) -> list[bool]:
        errors = []
        async with Client(params, mode=mode, cache=None) as c:
            assert {t.name for t in (await c.list_tools()).tools} == {"forecast", "alerts"}
            for city in ("Oslo", "Lima", "Pune"):
                assert (await c.call_tool("forecast", {"city": city})).is_error is False
            errors.append((await c.call_tool("alerts", {"region": "north"})).is_error)
            errors.append((await c.call_tool("no_such_tool", {})).is_error)
        return errors

    assert anyio.run(session, "auto") == [True, True]  # 2026-07-28: server/discover, no initialize
    assert anyio.run(session, "legacy") == [True, True]  # the initialize handshake

    expected = {"forecast": (6, 0), "alerts": (2, 2), "no_such_tool": (2, 2)}
    deadline = time.monotonic() + 60
    while True:  # the server's exporter sends its last batch as the process exits
        report = _report(collector.url)
        if _tool_rows(report) == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _tool_rows(report) == expected, report
    assert report["calls"] == 10 and report["errors"] == 4, report

    store = open_store(str(collector.db), upgrade=False)
    try:
        events = stored_events(store)
    finally:
        store.close()
    kinds = sorted(e["kind"] for e in events if e["kind"] != "tool_call")
    assert kinds == ["initialize", "initialize", "list_tools", "list_tools"]
    assert {(e["tool"], e["error_type"]) for e in events if e["kind"] == "tool_call" and not e["ok"]} == {
        ("alerts", "tool_error"), ("no_such_tool", "tool_error")}
    assert {(e["server"], e["server_version"]) for e in events} == {("weather", "2.0.1")}
    assert {e["protocol_version"] for e in events} == {"2026-07-28", "2025-11-25"}
