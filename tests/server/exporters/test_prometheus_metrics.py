"""GET /metrics: what a collector that received known events exposes, checked by promtool and by value."""

from __future__ import annotations

import time
from collections import Counter
from itertools import accumulate

import httpx
import pytest
from metrics_helpers import by, dataset, post, promtool_check, samples, scrape, total, uid
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from conftest import free_port, make_keys, start_collector, stop_collector
from mcpmeter.server.collector import CollectorConfig, create_app
from mcpmeter.server.collector.bootstrap import register_metrics_key
from mcpmeter.server.exporters import MetricsConfig
from mcpmeter.server.exporters.aggregate import GATEWAY_BOUNDS_MS, SEMCONV_BOUNDS_MS
from mcpmeter.server.exporters.prometheus import exposition
from mcpmeter.storage import open_store

LOOPBACK = ("127.0.0.1", 5000)


def _buckets(parsed: dict, name: str, **labels: str) -> list[tuple[float, float]]:
    want = set(labels.items())
    out = []
    for (n, ls), v in parsed.items():
        if n == name + "_bucket" and want <= ls and len(ls) == len(want) + 1:
            out.append((float(dict(ls)["le"]), v))
    return sorted(out)


def _expected_buckets(values_ms: list[float], bounds_ms: tuple) -> list[float]:
    per = [sum(1 for v in values_ms if (i == 0 or v > bounds_ms[i - 1]) and (i == len(bounds_ms) or v <= bounds_ms[i]))
           for i in range(len(bounds_ms) + 1)]
    return list(accumulate(per))


def test_a_real_collector_exposes_exact_counts_that_promtool_accepts(tmp_path):
    c = start_collector(tmp_path / "c.db")
    try:
        events, exp = dataset()
        answer = post(c.url, events)
        assert answer["accepted"] == exp.events and len(answer["rejected"]) == exp.rejected
        retry = post(c.url, events[:10])  # an SDK retrying part of a batch: stored once, counted once
        assert retry["duplicates"] == 10
        text = scrape(c.url)
    finally:
        stop_collector(c)

    promtool_check(text)
    m = samples(text)
    assert by(m, "mcp_tool_executions_total", "server", "tool", "success") == exp.calls
    assert all(dict(ls)["project"] == "default" for (n, ls) in m if n.startswith("mcp_tool_executions"))
    for (server, tool), values in exp.durations.items():
        labels = {"server": server, "tool": tool}
        assert total(m, "mcp_tool_execution_duration_seconds_count", **labels) == len(values)
        assert total(m, "mcp_tool_execution_duration_seconds_sum", **labels) == pytest.approx(sum(values) / 1000)
        buckets = _buckets(m, "mcp_tool_execution_duration_seconds", project="default", **labels)
        assert [b for b, _ in buckets] == [b / 1000 for b in GATEWAY_BOUNDS_MS] + [float("inf")]
        assert [v for _, v in buckets] == _expected_buckets(values, GATEWAY_BOUNDS_MS)
    assert by(m, "mcp_tool_discovery_total", "server", "success") == exp.discovery
    assert by(m, "mcp_auth_requests_total", "server", "method", "success") == exp.auth
    assert by(m, "mcp_protocol_latency_seconds_count", "server", "step") == exp.steps
    for (server, step), values in exp.step_ms.items():
        assert total(m, "mcp_protocol_latency_seconds_sum", server=server, step=step) == pytest.approx(sum(values) / 1000)
    assert by(m, "mcp_server_operation_duration_seconds_count", "server", "mcp_method_name", "gen_ai_tool_name",
              "error_type") == exp.operations
    calls = _buckets(m, "mcp_server_operation_duration_seconds", project="default", server="weblab",
                     mcp_method_name="tools/call", gen_ai_tool_name="summarize", error_type="")
    assert [b for b, _ in calls] == [b / 1000 for b in SEMCONV_BOUNDS_MS] + [float("inf")]
    assert by(m, "mcpmeter_sdk_dropped_events_total", "server", "reason") == exp.drops
    assert total(m, "mcpmeter_events_ingested_total") == exp.events
    assert total(m, "mcpmeter_events_duplicate_total") == 10
    assert total(m, "mcpmeter_events_rejected_total") == exp.rejected
    assert total(m, "mcpmeter_metrics_overflow_events_total") == 0
    assert total(m, "mcpmeter_http_requests_total", route="/v1/events", code="200") == 2
    assert total(m, "mcpmeter_writer_pending_events") == 0
    assert total(m, "mcpmeter_storage_size_bytes") > 0
    assert total(m, "mcpmeter_auth_checks_total", scope="ingest", result="loopback") == 2
    assert total(m, "process_resident_memory_bytes") > 0


def test_metrics_need_a_read_key_and_show_only_that_keys_project(tmp_path):
    db = tmp_path / "c.db"
    store = open_store(str(db))
    default, other = make_keys(store), make_keys(store, "other")
    store.close()
    c = start_collector(db, env={"MCPMETER_LOCAL_TRUST": "false", "MCPMETER_METRICS_KEY": "mcpm_scrape-key-for-tests"})
    try:
        post(c.url, dataset()[0][:5], key=default.ingest)
        post(c.url, [{"id": uid(), "kind": "tool_call", "ts": int(time.time() * 1000), "server": "secret-server",
                      "tool": "secret_tool", "ok": True}], key=other.ingest)
        assert httpx.get(c.url + "/metrics").status_code == 401
        assert httpx.get(c.url + "/metrics", headers={"Authorization": f"Bearer {default.ingest}"}).status_code == 403
        mine = scrape(c.url, default.read)
        assert mine == mine and "secret" not in mine
        assert scrape(c.url, "mcpm_scrape-key-for-tests").count("mcp_tool_executions_total{") >= 2
        theirs = samples(scrape(c.url, other.read))
        assert by(theirs, "mcp_tool_executions_total", "project", "server", "tool", "success") == Counter(
            {("other", "secret-server", "secret_tool", "true"): 1, ("other", "secret-server", "secret_tool", "false"): 0})
        admin = samples(scrape(c.url, default.admin))
        assert total(admin, "mcpmeter_auth_checks_total", scope="read", result="missing_key") == 1
        assert total(admin, "mcpmeter_auth_checks_total", scope="read", result="forbidden") == 1
    finally:
        stop_collector(c)


def test_the_metrics_port_serves_metrics_and_health_only(tmp_path):
    metrics_port = free_port()
    c = start_collector(tmp_path / "c.db", env={"MCPMETER_METRICS_PORT": str(metrics_port)})
    try:
        post(c.url, dataset()[0][:3])
        side = f"http://127.0.0.1:{metrics_port}"
        text = scrape(side)
        assert "mcp_tool_executions_total{" in text
        assert httpx.get(side + "/health").status_code == 200
        refused = httpx.get(side + "/v1/usage/summary")
        assert refused.status_code == 404 and "metrics port" in refused.json()["error"]
        assert httpx.post(side + "/v1/events", content=b"[]").status_code == 404
        assert httpx.get(c.url + "/v1/usage/summary").status_code == 200
    finally:
        stop_collector(c)


def _app(store, **metrics):
    return TestClient(create_app(store, CollectorConfig(metrics=MetricsConfig(**metrics))), client=LOOPBACK, base_url="http://127.0.0.1")


def _tool_calls(server: str, tools: list[str], each: int = 1) -> list[dict]:
    now = int(time.time() * 1000)
    return [{"id": uid(), "kind": "tool_call", "ts": now, "server": server, "tool": t, "ok": True, "duration_ms": 5.0}
            for t in tools for _ in range(each)]


def test_series_beyond_the_cap_are_counted_under_other(store):
    with _app(store, max_series=3, enabled=True, port=None, otlp_export=frozenset()) as client:
        batch = _tool_calls("weblab", [f"tool{i}" for i in range(5)], each=2) + _tool_calls("newcomer", ["x"], each=3)
        assert client.post("/v1/events", json=batch).json()["accepted"] == 13
        m = samples(client.get("/metrics").text)
    calls = by(m, "mcp_tool_executions_total", "server", "tool", success="true")
    assert calls == Counter({("weblab", "tool0"): 2, ("weblab", "tool1"): 2, ("weblab", "tool2"): 2,
                             ("weblab", "__other__"): 4, ("__other__", "__other__"): 3})
    assert total(m, "mcpmeter_metrics_overflow_events_total", project="default") == 7
    assert total(m, "mcpmeter_metrics_series", project="default") == 3
    assert total(m, "mcp_server_operation_duration_seconds_count") == 13  # nothing lost, only folded


def test_the_fast_exposition_says_what_prometheus_client_would(store):
    with _app(store, max_series=2000, enabled=True, port=None, otlp_export=frozenset()) as client:
        events, _ = dataset()
        client.post("/v1/events", json=events)
        metrics = client.app.state.collector.metrics
        registry = metrics.prometheus.registry_for(store.project_by_name("default").id, "default")
        ours = samples(exposition(registry).decode())
        theirs = samples(generate_latest(registry).decode())
    def drop_process(m: dict) -> dict:
        return {k: v for k, v in m.items() if not k[0].startswith("process_")}
    assert drop_process(ours) == drop_process(theirs)
    assert len(drop_process(ours)) > 300


def test_metrics_can_be_turned_off(store):
    with _app(store, max_series=2000, enabled=False, port=None, otlp_export=frozenset()) as client:
        assert client.post("/v1/events", json=_tool_calls("w", ["t"])).json()["accepted"] == 1
        r = client.get("/metrics")
        assert r.status_code == 404 and "MCPMETER_METRICS" in r.json()["hint"]
        assert client.app.state.collector.metrics.state.ingested == 0  # nothing counted, nothing kept


def test_the_metrics_key_can_come_from_a_file(store, tmp_path):
    path = tmp_path / "metrics-key"
    path.write_text("mcpm_from-a-docker-secret\n")
    assert register_metrics_key(store, {"MCPMETER_METRICS_KEY_FILE": str(path)})
    from mcpmeter import keys

    info = store.key_by_hash(keys.hash_key("mcpm_from-a-docker-secret"))
    assert info is not None and info.name == "metrics" and info.scopes == frozenset({"read"})
    assert register_metrics_key(store, {"MCPMETER_METRICS_KEY_FILE": str(path)})  # idempotent across restarts
    assert not register_metrics_key(store, {})
