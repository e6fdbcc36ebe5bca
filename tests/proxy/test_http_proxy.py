"""`mcpmeter proxy --upstream`: a real MCPServer under uvicorn, the real MCP client, the real store."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import Implementation
from proxy_helpers import by_tool, recorded, report, start_http_proxy, start_http_server, stop, user_hash

from mcpmeter.exceptions import ConfigError
from mcpmeter.proxy.http import jwt_claim, parse_listen, parse_user_source

CLIENT = Implementation(name="pytest-http-client", version="4.5.6")


@pytest.fixture
def upstream(tmp_path: Path):
    server = start_http_server(tmp_path)
    yield server
    stop(server)


def unsigned_jwt(claims: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


async def http_calls(url: str, mode: str, calls: list[tuple[str, dict]], headers: dict[str, str] | None = None) -> list[bool]:
    failed = []
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, client_info=CLIENT) as client:
            await client.list_tools()
            for name, arguments in calls:
                failed.append(bool((await client.call_tool(name, arguments)).is_error))
    return failed


CALLS = [
    ("forecast", {"city": "Paris"}),
    ("forecast", {"city": "Oslo"}),
    ("forecast", {"city": "Atlantis"}),  # ToolError: isError
    ("forecast", {}),  # bad arguments: isError
    ("no_such_tool", {}),  # MCPServer answers an unknown tool with isError
]


@pytest.mark.parametrize("mode, protocol", [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
def test_sdk_client_through_the_http_proxy(isolated_env: Path, upstream, mode: str, protocol: str):
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env, "--user-from", "header:X-User-Id")
    try:
        failed = anyio.run(http_calls, proxy.url + "/mcp", mode, CALLS, {"X-User-Id": "carol"})
    finally:
        assert stop(proxy) in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert failed == [False, False, True, True, True]
    summary = report(isolated_env)
    assert (summary["calls"], summary["errors"], summary["users"]) == (5, 3, 1)
    assert by_tool(summary) == {"forecast": (4, 2), "no_such_tool": (1, 1)}
    events = recorded(isolated_env)
    calls = [e for e in events if e["kind"] == "tool_call"]
    assert [e["error_type"] for e in calls] == [None, None, "tool_error", "tool_error", "invalid_params"]
    assert calls[2]["error_message"] == "Error executing tool forecast: no such city"
    assert {(e["server"], e["server_version"], e["client_name"], e["client_version"], e["transport"], e["user_hash"])
            for e in events} == {("weather-http", "1.2.3", "pytest-http-client", "4.5.6", "streamable-http",
                                  user_hash(isolated_env, "carol"))}
    assert {e["protocol_version"] for e in calls} == {protocol}
    kinds = [e["kind"] for e in events]
    if mode == "auto":  # 2026-07-28 is sessionless
        assert kinds == ["server_discover", "list_tools", *["tool_call"] * 5]
        assert {e["session_id"] for e in events} == {None}
    else:  # the session starts with its initialize request (the same millisecond)
        assert sorted(kinds[:2]) == ["initialize", "session_start"]
        assert kinds[2:] == ["list_tools", *["tool_call"] * 5, "session_end"]
        sessions = {e["session_id"] for e in events}
        assert len(sessions) == 1 and None not in sessions
        assert events[-1]["attributes"] == {"reason": "client_closed"}


def test_user_from_jwt_and_authorization_passes_through(isolated_env: Path, upstream):
    token = unsigned_jwt({"sub": "dave", "iss": "test"})
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env, "--user-from", "jwt:sub")
    try:
        seen = dict(httpx.get(proxy.url + "/echo-headers", headers={"Authorization": f"Bearer {token}"}).json())
        assert seen["authorization"] == f"Bearer {token}"
        anyio.run(http_calls, proxy.url + "/mcp", "auto", [("forecast", {"city": "Rome"})],
                  {"Authorization": f"Bearer {token}"})
    finally:
        stop(proxy)
    assert {e["user_hash"] for e in recorded(isolated_env)} == {user_hash(isolated_env, "dave")}


def test_no_user_source_means_no_user(isolated_env: Path, upstream):
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env)
    try:
        anyio.run(http_calls, proxy.url + "/mcp", "legacy", [("forecast", {"city": "Rome"})])
    finally:
        stop(proxy)
    events = recorded(isolated_env)
    assert events and {e["user_hash"] for e in events} == {None}  # the session id is not a user


def test_headers_hop_by_hop_dropped_and_forwarded_added(isolated_env: Path, upstream):
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env)
    try:
        response = httpx.get(proxy.url + "/echo-headers", headers={
            "X-Custom": "kept", "Connection": "keep-alive, X-Hop", "X-Hop": "dropped", "Keep-Alive": "timeout=5",
            "TE": "trailers", "Proxy-Authorization": "Basic secret", "Mcp-Session-Id": "abc"})
    finally:
        stop(proxy)
    seen = dict(response.json())
    assert seen["x-custom"] == "kept" and seen["mcp-session-id"] == "abc"
    for name in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert name not in seen
    assert seen["host"] == upstream.url.removeprefix("http://")
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == proxy.url.removeprefix("http://")


def raw_exchange(base: str) -> list[tuple[int, str, bytes]]:
    """A scripted 2026-07-28 exchange in raw HTTP: (status, content type, body bytes) per request."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "Mcp-Protocol-Version": "2026-07-28"}
    bodies = [
        {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}},
        {"jsonrpc": "2.0", "id": "two", "method": "tools/list", "params": {"_meta": meta}},
        {"jsonrpc": "2.0", "id": 0, "method": "tools/call", "params": {"name": "forecast", "arguments": {"city": "Zürich ✓"}, "_meta": meta}},
        {"jsonrpc": "2.0", "id": "0", "method": "tools/call", "params": {"name": "forecast", "arguments": {}, "_meta": meta}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "forecast", "arguments": {"city": "Atlantis"}, "_meta": meta}},
    ]
    out = []
    with httpx.Client(base_url=base) as http:
        for body in bodies:
            name = {"Mcp-Name": body["params"]["name"]} if body["method"] == "tools/call" else {}
            r = http.post("/mcp", content=json.dumps(body, ensure_ascii=False).encode(),
                          headers={**headers, "Mcp-Method": body["method"], **name})
            out.append((r.status_code, r.headers.get("content-type"), r.content))
        r = http.get("/not-there")
        out.append((r.status_code, r.headers.get("content-type"), r.content))
        # 2025-11-25: a session (its id is random, so only its presence is compared)
        legacy = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        r = http.post("/mcp", headers=legacy, json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        out.append((r.status_code, r.headers.get("content-type"), r.content))
        session = {**legacy, "Mcp-Session-Id": r.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-11-25"}
        for body in ({"jsonrpc": "2.0", "method": "notifications/initialized"},
                     {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "forecast", "arguments": {"city": "Kyiv"}}}):
            r = http.post("/mcp", headers=session, json=body)
            out.append((r.status_code, r.headers.get("content-type"), r.content))
        r = http.delete("/mcp", headers=session)
        out.append((r.status_code, r.headers.get("content-type"), r.content))
    return out


@pytest.mark.parametrize("json_response", [False, True])
def test_responses_pass_through_byte_for_byte(isolated_env: Path, tmp_path: Path, json_response: bool):
    server = start_http_server(tmp_path, *(["--json-response"] if json_response else []))
    proxy = start_http_proxy(server.url + "/mcp", isolated_env)
    try:
        direct = raw_exchange(server.url)
        through = raw_exchange(proxy.url)
    finally:
        stop(proxy)
        stop(server)
    assert through == direct
    assert [status for status, _, _ in direct] == [200, 200, 200, 200, 200, 404, 200, 202, 200, 200]
    assert direct[8][1] == ("application/json" if json_response else "text/event-stream")
    calls = recorded(isolated_env, "tool_call")
    assert [(e["tool"], e["ok"], e["error_type"]) for e in calls] == [
        ("forecast", 1, None), ("forecast", 0, "tool_error"), ("forecast", 0, "tool_error"), ("forecast", 1, None)]
    assert [e["kind"] for e in recorded(isolated_env, None) if e["kind"].startswith("session")] == ["session_start", "session_end"]
    assert "Zürich ✓" in json.loads(direct[2][2])["result"]["content"][0]["text"]


def test_sse_is_streamed_not_buffered(isolated_env: Path, upstream):
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env)
    try:
        with httpx.Client(timeout=10) as http, http.stream("GET", proxy.url + "/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = response.iter_raw()
            received = b""
            while b"first" not in received:
                received += next(chunks)  # arrives while the upstream still holds the stream open
            assert b"second" not in received
            httpx.post(upstream.url + "/release")
            received += b"".join(chunks)
        assert received == b"data: first\n\ndata: second\n\n"
    finally:
        stop(proxy)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_cancelled_calls(isolated_env: Path, upstream, mode: str):
    """2026-07-28 cancels by closing the POST stream; older clients send notifications/cancelled."""
    async def main() -> None:
        async with create_mcp_http_client() as http:
            async with Client(streamable_http_client(proxy.url + "/mcp", http_client=http), mode=mode) as client:
                with anyio.move_on_after(1):
                    await client.call_tool("slow", {"seconds": 30})
                assert not (await client.call_tool("forecast", {"city": "Lima"})).is_error

    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env)
    try:
        anyio.run(main)
    finally:
        stop(proxy)
    calls = recorded(isolated_env, "tool_call")
    assert [(e["tool"], e["ok"], e["error_type"]) for e in calls] == [("slow", None, "cancelled"), ("forecast", 1, None)]
    assert calls[0]["duration_ms"] == pytest.approx(1000, abs=500)


def test_upstream_unreachable(isolated_env: Path):
    from conftest import free_port

    proxy = start_http_proxy(f"http://127.0.0.1:{free_port()}/mcp", isolated_env)
    try:
        r = httpx.post(proxy.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                 "params": {"name": "forecast", "arguments": {}}})
    finally:
        stop(proxy)
    assert r.status_code == 502 and "unreachable" in r.text
    (event,) = recorded(isolated_env, "tool_call")
    assert (event["tool"], event["ok"], event["error_type"]) == ("forecast", 0, "upstream_unavailable")


def test_http_errors_fail_the_calls(isolated_env: Path, upstream):
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env)
    try:
        r = httpx.post(proxy.url + "/mcp", headers={"Mcp-Session-Id": "no-such-session", "Accept": "application/json, text/event-stream"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "forecast", "arguments": {}}})
    finally:
        stop(proxy)
    assert r.status_code == 404
    events = recorded(isolated_env)
    assert [(e["kind"], e["ok"], e["error_type"]) for e in events] == [("tool_call", 0, "http_404")]


def test_configuration_errors():
    assert parse_listen("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("9000", "host:", "host:99999"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    with pytest.raises(ConfigError):
        parse_user_source("cookie:session")
    assert parse_user_source("header:X-User")({"X-User": "erin"}) == "erin"
    assert jwt_claim("Bearer " + unsigned_jwt({"sub": 42}), "sub") == "42"
    assert jwt_claim("Bearer not-a-jwt", "sub") is None
    assert jwt_claim("Basic " + unsigned_jwt({"sub": "x"}), "sub") is None


def nested_jwt(depth: int) -> str:
    """A token whose payload nests ``depth`` levels (its claims are unreadable, not an error)."""
    payload = base64.urlsafe_b64encode(('{"sub": ' + "[" * depth + "]" * depth + "}").encode()).rstrip(b"=").decode()
    return f"{unsigned_jwt({'alg': 'none'}).split('.')[0]}.{payload}.c2lnbmF0dXJl"


def test_a_deeply_nested_token_is_forwarded_with_the_user_unknown(isolated_env: Path, upstream):
    assert jwt_claim("Bearer " + nested_jwt(5_000), "sub") is None
    token = nested_jwt(5_000)
    proxy = start_http_proxy(upstream.url + "/mcp", isolated_env, "--user-from", "jwt:sub")
    try:
        seen = httpx.get(proxy.url + "/echo-headers", headers={"Authorization": f"Bearer {token}"})
        assert seen.status_code == 200, seen.text  # forwarded, not a 500 from the proxy
        assert dict(seen.json())["authorization"] == f"Bearer {token}"
        anyio.run(http_calls, proxy.url + "/mcp", "auto", [("forecast", {"city": "Rome"})], {"Authorization": f"Bearer {token}"})
    finally:
        stop(proxy)
    events = recorded(isolated_env)
    assert events and {e["user_hash"] for e in events} == {None}
