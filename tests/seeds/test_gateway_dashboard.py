"""The MCP gateway's "MCP Analytics Comprehensive" Grafana dashboard, unchanged, against a real
Prometheus scraping a real `mcpmeter serve` fed by the gateway's own clients.

The collector runs with the gateway's environment (``METRICS_API_KEY_<SERVICE>``,
``OTEL_PROMETHEUS_PORT``) and ``MCPMETER_METRICS_LABELS=gateway``; Prometheus scrapes the metrics
port. Every PromQL expression of the dashboard (and its variables) must return data, and the
ones whose answer is known from what was sent must return exactly that.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import httpx
import pytest
from gateway_helpers import DASHBOARD, TOOLS, Sent, emit_like_the_gateway_proxy, emit_with_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server" / "exporters"))
from metrics_helpers import Prometheus, wait_for

from conftest import free_port, start_collector, stop_collector

pytestmark = pytest.mark.slow
REGISTRY_KEY, AUTH_KEY, SCRAPE_KEY = "workshop-metrics-key-2026", "auth-server-key", "mcpm_gateway-scrape-key"


def _targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def _merge(total: Sent, part: Sent) -> None:
    for name in ("calls", "methods", "auth", "steps"):
        getattr(total, name).update(getattr(part, name))


@pytest.fixture
def scraped(tmp_path):
    metrics_port = free_port()
    env = {"MCPMETER_LOCAL_TRUST": "false", "MCPMETER_METRICS_LABELS": "gateway", "MCPMETER_METRICS_KEY": SCRAPE_KEY,
           "METRICS_API_KEY_REGISTRY": REGISTRY_KEY, "METRICS_API_KEY_AUTH_SERVER": AUTH_KEY,
           "OTEL_PROMETHEUS_ENABLED": "true", "OTEL_PROMETHEUS_PORT": str(metrics_port)}
    c = start_collector(tmp_path / "c.db", env=env)
    try:
        with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{metrics_port}"], SCRAPE_KEY) as prom:
            wait_for(prom.targets_up, "the first successful scrape of the metrics port")
            sent = Sent()
            for _ in range(2):  # two rounds between scrapes, so increase() and rate() have something to measure
                part = emit_with_client(c.url, REGISTRY_KEY, AUTH_KEY)
                emit_like_the_gateway_proxy(c.url, AUTH_KEY, part)
                _merge(sent, part)
                calls = sum(sent.calls.values())
                wait_for(lambda calls=calls: prom.value('sum(mcp_tool_executions_total{method="tools/call"})') == calls,
                         f"prometheus to see {calls} tool calls")
            mark = time.time()
            wait_for(lambda: prom.scrapes_after(mark), "one more scrape")
            # the metrics port is for scrapes: the gateway's API is on the main port only
            r = httpx.post(f"http://127.0.0.1:{metrics_port}/metrics", json={}, headers={"X-API-Key": REGISTRY_KEY}, timeout=10)
            assert r.status_code == 404, r.text
            yield prom, sent
    finally:
        stop_collector(c)


def _values(result: list[dict], *labels: str) -> dict:
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def test_every_query_of_the_gateways_dashboard_answers(scraped):
    prom, sent = scraped
    targets = _targets()
    assert len(targets) == 31
    calls_by_tool: dict = {}
    for (_server, tool, _), n in sent.calls.items():
        calls_by_tool[(tool,)] = calls_by_tool.get((tool,), 0) + n
    auth_ok = sum(n for (_, _, ok), n in sent.auth.items() if ok)
    exact = {
        "sum(mcp_auth_requests_total{success=\"true\"}) / sum(mcp_auth_requests_total) * 100":
            lambda r: _values(r) == {(): pytest.approx(100 * auth_ok / sum(sent.auth.values()))},
        "count(count by (server_name)(mcp_tool_executions_total))": lambda r: _values(r) == {(): len(TOOLS)},
        "sum(mcp_tool_executions_total{method=\"tools/call\"}) by (tool_name)": lambda r: _values(r, "tool_name") == calls_by_tool,
        "sum(mcp_auth_requests_total) by (method)": lambda r: _values(r, "method") == {
            ("oauth2",): sent.auth[("weblab", "oauth2", True)], ("api_key",): sent.auth[("weblab", "api_key", False)]},
        "sum(mcp_tool_executions_total{method=\"initialize\"}) by (client_name)": lambda r: _values(r, "client_name") == {
            (client,): n for (method, client, _), n in sent.methods.items() if method == "initialize"},
    }
    checked = set()
    for title, expr in targets:
        result = prom.query(expr)
        assert result, f"{title!r}: {expr} returned nothing"
        for r in result:
            value = float(r["value"][1])
            assert math.isfinite(value) and value >= 0, f"{title!r}: {expr} gave {value} for {r['metric']}"
        if expr in exact:
            assert exact[expr](result), f"{title!r}: {expr} gave {result}"
            checked.add(expr)
    assert checked == set(exact)


def test_the_dashboard_variables_and_the_gateway_only_series(scraped):
    prom, sent = scraped
    dashboard = json.loads(DASHBOARD.read_text())
    found = {}
    for var in dashboard["templating"]["list"]:
        metric, label = var["query"].removeprefix("label_values(").removesuffix(")").split(", ")
        r = httpx.get(f"{prom.url}/api/v1/label/{label}/values", params={"match[]": metric}, timeout=10).json()
        found[var["name"]] = set(r["data"])
    assert found == {"server": {"weblab"}, "client": {"claude-code", "cursor", "unknown"},
                     "method": {"initialize", "tools/list", "tools/call"}}
    # the series the gateway's health_check, registry_operation and protocol_latency metrics feed
    assert _values(prom.query("sum by (flow_step) (mcp_protocol_latency_seconds_count)"), "flow_step") == dict(
        ((step,), n) for step, n in sent.steps.items())
    assert prom.value('sum(mcp_health_checks_total{service="registry", healthy="true", status_code="200"})') == 2
    assert _values(prom.query("sum by (operation, success) (mcp_registry_operations_total)"), "operation", "success") == {
        ("create", "true"): 2, ("create", "false"): 0, ("delete", "true"): 0, ("delete", "false"): 2}
    assert set(_values(prom.query("sum by (service, metric_type) (mcp_tool_executions_total)"), "service", "metric_type")) == {
        ("registry", "tool_execution"), ("auth-server", "tool_execution"), ("nginx", "tool_execution")}
