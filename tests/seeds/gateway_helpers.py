"""The MCP gateway's emitters, as they really send: its ``MetricsClient`` (the registry's and the
auth server's client, copied unchanged into ``gateway_fixture/``), and the exact requests its auth
server middleware (``auth_server/metrics_middleware.py``) and nginx flusher
(``docker/lua/flush_metrics.lua``) build by hand - with the numbers mcpmeter must answer."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

FIXTURE = Path(__file__).resolve().parent / "gateway_fixture"
DASHBOARD = FIXTURE / "mcp-analytics-comprehensive.json"
sys.path.insert(0, str(FIXTURE))

from metrics_client import MetricsClient  # noqa: E402  (the gateway's own code)

TOOLS = {"weblab": ["search", "fetch_page"], "currenttime": ["current_time_by_timezone"]}


@dataclass
class Sent:
    calls: Counter = field(default_factory=Counter)  # (server, tool, ok) tools/call
    methods: Counter = field(default_factory=Counter)  # (method, client, ok) through the gateway proxy
    auth: Counter = field(default_factory=Counter)  # (server, method, ok)
    steps: Counter = field(default_factory=Counter)  # flow_step
    health: int = 0
    registry: int = 0
    discovery: int = 0
    custom: int = 0


def emit_with_client(url: str, registry_key: str, auth_key: str) -> Sent:
    """What the registry and the auth server send with ``MetricsClient``; every call must succeed."""
    sent = Sent()

    async def run() -> None:
        async with MetricsClient(metrics_url=url, api_key=registry_key, service_name="registry", instance_id="registry-1") as reg:
            for server, tools in TOOLS.items():
                for i, tool in enumerate(tools):
                    for ok in (True, True, i == 0):  # every tool but the first fails once
                        assert await reg.emit_tool_execution_metric(
                            tool_name=tool, server_path=f"/{server}", server_name=server, success=ok,
                            duration_ms=20.0 + 10 * i, input_size_bytes=120, output_size_bytes=900,
                            error_code=None if ok else "tool_error")
                        sent.calls[(server, tool, ok)] += 1
            assert await reg.emit_discovery_metric(query="weather in paris", results_count=3, duration_ms=45.0,
                                                   top_k_services=3, top_n_tools=5, embedding_time_ms=12.0)
            sent.discovery += 1
            assert await reg.emit_registry_metric(operation="create", resource_type="server", success=True,
                                                  duration_ms=8.0, resource_id="weblab", user_id="admin")
            assert await reg.emit_registry_metric(operation="delete", resource_type="server", success=False,
                                                  duration_ms=3.0, resource_id="old", error_code="not_found")
            sent.registry += 2
            assert await reg.emit_health_metric(endpoint="/weblab/health", status_code=200, duration_ms=4.0, healthy=True)
            sent.health += 1
            assert await reg.emit_custom_metric("servers_registered", 7.0, dimensions={"region": "eu"})
            sent.custom += 1
            assert await reg.emit_metrics_batch([
                {"type": "tool_execution", "duration_ms": 15.0, "dimensions": {
                    "tool_name": "search", "server_name": "weblab", "server_path": "/weblab", "success": True}},
            ])
            sent.calls[("weblab", "search", True)] += 1
        async with MetricsClient(metrics_url=url, api_key=auth_key, service_name="auth-server") as auth:
            for method, ok in (("oauth2", True), ("oauth2", True), ("api_key", False)):
                assert await auth.emit_auth_metric(success=ok, method=method, duration_ms=30.0, server_name="weblab",
                                                   user_hash="u-1f2e", error_code=None if ok else "invalid_token")
                sent.auth[("weblab", method, ok)] += 1

    asyncio.run(run())
    return sent


def emit_like_the_gateway_proxy(url: str, auth_key: str, sent: Sent) -> None:
    """The auth server middleware's per-request metrics (every MCP method as a tool execution,
    then protocol latencies) and nginx's batched flush: the exact bodies they build."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat()  # they send datetime.utcnow().isoformat()
    metrics = []
    for client in ("claude-code", "cursor"):
        for method, tool in (("initialize", None), ("tools/list", None), ("tools/call", "search")):
            metrics.append({"type": "tool_execution", "timestamp": now, "value": 1.0, "duration_ms": 12.0, "dimensions": {
                "tool_name": tool or method, "server_name": "weblab", "success": True, "method": method,
                "user_hash": "u-1f2e", "server_path": "/weblab/", "client_name": client, "client_version": "1.2.0"},
                "metadata": {"error_code": None, "auth_method": "oauth2", "request_id": f"req_{client}_{method}",
                             "protocol_version": "2025-06-18", "jsonrpc_id": 1, "actual_tool_name": tool,
                             "method_type": method, "input_size_bytes": 2, "output_size_bytes": 0}})
            sent.methods[(method, client, True)] += 1
            if method == "tools/call":
                sent.calls[("weblab", "search", True)] += 1
    for step, seconds in (("initialize_to_tools_list", 0.2), ("tools_list_to_tools_call", 1.5), ("full_protocol_flow", 1.7)):
        metrics.append({"type": "protocol_latency", "timestamp": now, "value": seconds, "dimensions": {
            "flow_step": step, "server_name": "weblab", "user_hash": "u-1f2e", "session_key": "weblab:u-1f2e"},
            "metadata": {"request_id": "req_1", "latency_seconds": seconds}})
        sent.steps[step] += 1
    post(url, auth_key, {"service": "auth-server", "version": "1.0.0", "metrics": metrics})
    nginx = [{"type": "tool_execution", "value": 1.0, "duration_ms": 9.0, "metadata": {}, "dimensions": {
        "method": "tools/call", "server_name": "currenttime", "tool_name": "current_time_by_timezone",
        "client_name": "claude-code", "success": ok}} for ok in ("true", "false")]
    post(url, auth_key, {"service": "nginx", "version": "1.0.0", "metrics": nginx})
    for ok in (True, False):
        sent.calls[("currenttime", "current_time_by_timezone", ok)] += 1
        sent.methods[("tools/call", "claude-code", ok)] += 1


def post(url: str, key: str, body: dict) -> dict:
    r = httpx.post(url + "/metrics", content=json.dumps(body), headers={"X-API-Key": key, "Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "success" and answer["rejected"] == 0 and answer["errors"] == [], answer
    return answer
