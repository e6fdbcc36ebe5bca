"""The MCP gateway's metrics-service API on a real `mcpmeter serve`, on SQLite and PostgreSQL.

Its own ``MetricsClient`` and the exact requests of its auth server and nginx post to
``POST /metrics`` with ``X-API-Key`` keys registered from ``METRICS_API_KEY_<SERVICE>``; the usage
API and `mcpmeter report` then answer from what they sent. Errors come back shaped as the
service shapes them.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from gateway_helpers import TOOLS, emit_like_the_gateway_proxy, emit_with_client

from conftest import MCPMETER, make_keys, start_collector, stop_collector
from mcpmeter.storage import open_store
from store_backends import store_location

pytestmark = pytest.mark.slow
REGISTRY_KEY, AUTH_KEY = "workshop-metrics-key-2026", "auth-server-preshared-key"


@pytest.fixture(params=["sqlite", "postgres"])
def gateway_collector(request, tmp_path):
    with store_location(request.param, tmp_path) as db:
        store = open_store(db)
        keys = make_keys(store)
        store.close()
        env = {"MCPMETER_LOCAL_TRUST": "false", "METRICS_API_KEY_REGISTRY": REGISTRY_KEY,
               "METRICS_API_KEY_AUTH_SERVER": AUTH_KEY}
        c = start_collector(db, env=env, log=tmp_path / "collector.log")
        try:
            yield c, keys, db
        finally:
            stop_collector(c)


def _get(c, keys, path: str, **params) -> dict:
    r = httpx.get(c.url + path, params=params, headers={"Authorization": f"Bearer {keys.read}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_gateways_clients_are_stored_and_answered(gateway_collector):
    c, keys, db = gateway_collector
    sent = emit_with_client(c.url, REGISTRY_KEY, AUTH_KEY)
    emit_like_the_gateway_proxy(c.url, AUTH_KEY, sent)

    tools = _get(c, keys, "/v1/usage/tools", period="1d")
    got = {(t["server"], t["tool"]): (t["calls"], t["errors"]) for t in tools["tools"]}
    want = {(s, t): (sent.calls[(s, t, True)] + sent.calls[(s, t, False)], sent.calls[(s, t, False)])
            for s, ts in TOOLS.items() for t in ts}
    assert got == want
    clients = {row["client"]: row["calls"] for row in _get(c, keys, "/v1/usage/clients", period="1d")["clients"]}
    assert clients["claude-code"] == sent.methods[("tools/call", "claude-code", True)] + sent.methods[("tools/call", "claude-code", False)]
    assert clients["cursor"] == sent.methods[("tools/call", "cursor", True)]

    # the CLI report reads the same store: the top tool and the failing one are there
    env = {**os.environ, "MCPMETER_DB": str(db)}
    done = subprocess.run([*MCPMETER, "report", "--period", "1d", "--format", "json"], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    text = json.dumps(report)
    for server, names in TOOLS.items():
        for tool in names:
            assert tool in text and server in text

    # a retried MetricsClient request (same timestamp, same content) is stored once
    stamp = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    body = {"service": "registry", "version": "1.0.0", "instance_id": "registry-1", "metrics": [
        {"type": "tool_execution", "timestamp": stamp, "value": 1.0, "duration_ms": 5.0, "dimensions": {
            "tool_name": "get_page", "server_path": "/docs", "server_name": "docs", "success": True}, "metadata": {}}]}
    for _ in range(3):
        r = httpx.post(c.url + "/metrics", json=body, headers={"X-API-Key": REGISTRY_KEY}, timeout=30)
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    docs = _get(c, keys, "/v1/usage/tools", period="1d", server="docs")["tools"]
    assert [(t["tool"], t["calls"]) for t in docs] == [("get_page", 1)]


def test_errors_are_answered_as_the_metrics_service_answers(gateway_collector):
    c, keys, _ = gateway_collector
    url = c.url + "/metrics"
    ok = {"service": "registry", "metrics": [{"type": "health_check", "value": 1.0}]}

    r = httpx.post(url, json=ok, timeout=10)
    assert (r.status_code, r.json()) == (401, {"detail": "API key required in X-API-Key header"})
    r = httpx.post(url, json=ok, headers={"X-API-Key": "not-a-key"}, timeout=10)
    assert (r.status_code, r.json()) == (401, {"detail": "Invalid API key"})
    r = httpx.post(url, json=ok, headers={"X-API-Key": REGISTRY_KEY}, timeout=10)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert r.headers["X-RateLimit-Limit"] == "1000" and int(r.headers["X-RateLimit-Remaining"]) < 1000

    # FastAPI's 422 for what does not fit the service's models
    bad = {"service": "x" * 51, "metrics": [{"type": "bogus", "value": "many"}, {"value": 1}]}
    r = httpx.post(url, json=bad, headers={"X-API-Key": REGISTRY_KEY}, timeout=10)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["type"], d["loc"]) for d in detail] == [
        ("string_too_long", ["body", "service"]), ("enum", ["body", "metrics", 0, "type"]),
        ("float_parsing", ["body", "metrics", 0, "value"]), ("missing", ["body", "metrics", 1, "type"])]
    assert detail[0]["msg"] == "String should have at most 50 characters"
    r = httpx.post(url, content=b'{"service": ', headers={"X-API-Key": REGISTRY_KEY}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"

    # the service's rules: 200, every metric rejected with the service's messages, nothing stored
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    broken = {"service": "bad service", "metrics": [
        {"type": "tool_execution", "timestamp": future, "value": 1.0, "duration_ms": -1,
         "dimensions": {"tool_name": "search", "server_name": "weblab", "success": True}}]}
    r = httpx.post(url, json=broken, headers={"X-API-Key": REGISTRY_KEY}, timeout=10)
    assert r.status_code == 200
    answer = r.json()
    assert (answer["status"], answer["accepted"], answer["rejected"]) == ("success", 0, 1)
    assert answer["errors"] == [
        "service: Service name must contain only alphanumeric characters, underscores, and hyphens",
        f"metrics[0].timestamp: Timestamp is too far in the future: {datetime.fromisoformat(future).isoformat()}",
        "metrics[0].duration_ms: Duration cannot be negative: -1.0"]
    assert answer["request_id"].startswith("req_")
    # one metric mcpmeter cannot store (a tool call without a tool) is rejected, the others kept
    mixed = {"service": "registry", "metrics": [
        {"type": "tool_execution", "value": 1.0, "dimensions": {"server_name": "weblab"}},
        {"type": "tool_execution", "value": 1.0, "dimensions": {"server_name": "weblab", "tool_name": "search", "success": True}}]}
    answer = httpx.post(url, json=mixed, headers={"X-API-Key": REGISTRY_KEY}, timeout=10).json()
    assert (answer["accepted"], answer["rejected"]) == (1, 1)
    assert answer["errors"] == ["metrics[0]: dimensions.tool_name is required for a tool execution"]
    assert sum(t["calls"] for t in _get(c, keys, "/v1/usage/tools", period="1d")["tools"]) == 1
    # GET /metrics is still mcpmeter's Prometheus endpoint
    r = httpx.get(url, headers={"Authorization": f"Bearer {keys.read}"}, timeout=10)
    assert r.status_code == 200 and "mcp_health_checks_total" in r.text


def test_the_rate_limit_is_read_from_metrics_rate_limit(tmp_path):
    db = tmp_path / "c.db"
    c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", "METRICS_API_KEY_REGISTRY": REGISTRY_KEY,
                                 "METRICS_RATE_LIMIT": "3"})
    try:
        body = {"service": "registry", "metrics": [{"type": "health_check", "value": 1.0}]}
        codes = [httpx.post(c.url + "/metrics", json=body, headers={"X-API-Key": REGISTRY_KEY}, timeout=10) for _ in range(4)]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert codes[3].json() == {"detail": "Rate limit exceeded. Limit: 3 requests/minute"}
        assert codes[3].headers["X-RateLimit-Remaining"] == "0" and int(codes[3].headers["Retry-After"]) >= 1
    finally:
        stop_collector(c)

