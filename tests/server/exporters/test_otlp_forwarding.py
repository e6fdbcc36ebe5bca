"""MCPMETER_OTLP_EXPORT: a real collector forwards what it stores to a real OTLP/HTTP endpoint."""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from metrics_helpers import dataset, post, wait_for
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from conftest import free_port, start_collector, stop_collector
from mcpmeter.server.exporters.aggregate import GATEWAY_BOUNDS_MS, SEMCONV_BOUNDS_MS

pytestmark = pytest.mark.slow


class Receiver:
    """An OTLP/HTTP endpoint on a real HTTP server thread that decodes what it is sent."""

    def __init__(self) -> None:
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.traces: list[ExportTraceServiceRequest] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/metrics":
                    message, answer = ExportMetricsServiceRequest(), ExportMetricsServiceResponse()
                    target = receiver.metrics
                elif self.path == "/v1/traces":
                    message, answer = ExportTraceServiceRequest(), ExportTraceServiceResponse()
                    target = receiver.traces
                else:
                    self.send_error(404)
                    return
                message.ParseFromString(body)
                with receiver.lock:
                    target.append(message)
                payload = answer.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def latest_metrics(self) -> dict[str, list]:
        """Metric name -> data points of the newest export (cumulative, so the newest has everything)."""
        with self.lock:
            if not self.metrics:
                return {}
            request = self.metrics[-1]
        out: dict[str, list] = {}
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    out.setdefault(m.name, []).extend(getattr(m, kind).data_points)
                    if kind == "sum":
                        assert m.sum.is_monotonic and m.sum.aggregation_temporality == 2  # cumulative
        return out

    def spans(self) -> list[tuple[str, Span]]:
        with self.lock:
            return [(_attrs(rs.resource.attributes)["service.name"], s)
                    for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _attrs(kvs) -> dict:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in kvs}


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _mcp_span(method: str, tool: str | None, trace_id: bytes, span_id: bytes, error: bool = False) -> Span:
    start = time.time_ns() - 5_000_000_000
    attrs = [_kv("mcp.method.name", method), _kv("mcp.session.id", "sess-otlp")]
    if tool:
        attrs.append(_kv("gen_ai.tool.name", tool))
    if error:
        attrs.append(_kv("error.type", "tool_error"))
    return Span(trace_id=trace_id, span_id=span_id, name=f"{method} {tool}" if tool else method,
                kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start, end_time_unix_nano=start + 42_000_000,
                attributes=attrs, status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET))


def test_stored_events_and_spans_are_forwarded_as_otlp(tmp_path):
    with Receiver() as receiver:
        env = {"MCPMETER_OTLP_EXPORT": "metrics,traces", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
               "OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "mcpmeter-under-test"}
        c = start_collector(tmp_path / "c.db", env=env)
        try:
            events, exp = dataset()
            post(c.url, events)
            trace_id = os.urandom(16)
            spans = [_mcp_span("tools/call", "forecast", trace_id, os.urandom(8)),
                     _mcp_span("tools/call", "forecast", trace_id, os.urandom(8), error=True),
                     _mcp_span("initialize", None, trace_id, os.urandom(8))]
            request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
                resource={"attributes": [_kv("service.name", "weather")]}, scope_spans=[ScopeSpans(spans=spans)])])
            for _ in range(2):  # an exporter's retry: stored once, forwarded once
                r = httpx.post(c.url + "/v1/traces", content=request.SerializeToString(),
                               headers={"Content-Type": "application/x-protobuf"})
                assert r.status_code == 200, r.text

            calls = dict(exp.calls)
            calls[("weather", "forecast", "true")] = 1
            calls[("weather", "forecast", "false")] = 1

            def forwarded_calls():
                points = receiver.latest_metrics().get("mcp_tool_executions_total", [])
                got = {(a["server"], a["tool"], a["success"]): p.as_int for p in points for a in [_attrs(p.attributes)] if p.as_int}
                return got if got == calls else None

            wait_for(forwarded_calls, "the forwarded tool call counts")
            metrics = receiver.latest_metrics()
            with receiver.lock:
                resource = _attrs(receiver.metrics[-1].resource_metrics[0].resource.attributes)
            assert resource["service.name"] == "mcpmeter-under-test"

            durations = {(a["server"], a["tool"]): p for p in metrics["mcp_tool_execution_duration_seconds"]
                         for a in [_attrs(p.attributes)]}
            for key, values in exp.durations.items():
                point = durations[key]
                assert point.count == len(values) and point.sum == pytest.approx(sum(values) / 1000)
                assert list(point.explicit_bounds) == [b / 1000 for b in GATEWAY_BOUNDS_MS]
                assert sum(point.bucket_counts) == len(values)

            operations = {}
            for p in metrics["mcp.server.operation.duration"]:
                a = _attrs(p.attributes)
                assert list(p.explicit_bounds) == [b / 1000 for b in SEMCONV_BOUNDS_MS]
                operations[(a["server"], a["mcp.method.name"], a.get("gen_ai.tool.name", ""), a.get("error.type", ""))] = p.count
            want = dict(exp.operations)
            want[("weather", "tools/call", "forecast", "")] = 1
            want[("weather", "tools/call", "forecast", "tool_error")] = 1
            want[("weather", "initialize", "", "")] = 1
            assert operations == want
            drops = {(a["server"], a["reason"]): p.as_int for p in metrics["mcpmeter_sdk_dropped_events_total"]
                     for a in [_attrs(p.attributes)]}
            assert drops == dict(exp.drops)

            def forwarded_spans():
                got = receiver.spans()
                return got if len(got) >= 3 else None

            wait_for(forwarded_spans, "the forwarded spans")
        finally:
            stop_collector(c)
        got = receiver.spans()
    assert len(got) == 3  # the retried export was not forwarded again
    by_id = {s.span_id: (service, s) for service, s in got}
    for original in spans:
        service, span = by_id[original.span_id]
        assert service == "weather" and span.trace_id == trace_id
        assert span.name == original.name and span.kind == Span.SPAN_KIND_SERVER
        assert span.end_time_unix_nano - span.start_time_unix_nano == 42_000_000
        attrs = _attrs(span.attributes)
        assert attrs["mcp.method.name"] == _attrs(original.attributes)["mcp.method.name"]
        assert attrs["mcp.session.id"] == "sess-otlp"
    failed = [s for _, s in got if s.status.code == Status.STATUS_CODE_ERROR]
    assert len(failed) == 1 and _attrs(failed[0].attributes)["error.type"] == "tool_error"


def test_otlp_export_reports_failures_in_metrics(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    c = start_collector(tmp_path / "c.db", env={"MCPMETER_OTLP_EXPORT": "metrics", "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
                                                "OTEL_METRIC_EXPORT_INTERVAL": "100", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
    try:
        post(c.url, dataset()[0][:5])

        def failures() -> float:
            text = httpx.get(c.url + "/metrics").text
            line = next((ln for ln in text.splitlines() if ln.startswith('mcpmeter_otlp_exports_total{signal="metrics",result="failure"}')), "x 0")
            return float(line.split()[-1])

        wait_for(failures, "a failed export to be counted", timeout=60)
        assert httpx.post(c.url + "/v1/events", json=dataset()[0][:2]).status_code == 200  # ingest unaffected
    finally:
        stop_collector(c)
