"""Forward what the collector stores as OTLP/HTTP: metrics and, for events that came as spans, spans.

Turned on with ``MCPMETER_OTLP_EXPORT`` (``metrics``, ``traces`` or both); where to send is
the standard OpenTelemetry configuration, read by the OTLP/HTTP exporters themselves:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal ``..._METRICS_ENDPOINT`` /
``..._TRACES_ENDPOINT``), ``..._HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``,
``..._CERTIFICATE``; ``OTEL_METRIC_EXPORT_INTERVAL`` (ms, default 60000) paces metric exports,
``OTEL_BSP_*`` the span batches, ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the
collector's resource, and ``OTEL_SDK_DISABLED=true`` turns everything off.

Metrics are the same series ``/metrics`` shows, for every project (attribute ``project``),
cumulative since the process started, so several collectors add up exactly like their
Prometheus counters. Spans are rebuilt from the stored events whose id says they came from
``POST /v1/traces`` (``otel-<trace id>-<span id>``): same trace and span ids, the MCP
attributes mcpmeter keeps, the duration and status; one span per stored event, so an
exporter's retry is forwarded once. Parent links and attributes mcpmeter does not store are
not forwarded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from ... import __version__
from ...events import Row
from ..commits import Commit
from .aggregate import METHOD_FOR_KIND, MetricsState
from .prometheus import Family, project_families

log = logging.getLogger("mcpmeter.server.exporters")

SIGNALS = ("metrics", "traces")
_SCOPE = InstrumentationScope("mcpmeter.server.collector", __version__)
_SEMCONV_NAME = "mcp.server.operation.duration"
_SEMCONV_ATTRS = {"mcp_method_name": "mcp.method.name", "gen_ai_tool_name": "gen_ai.tool.name", "error_type": "error.type"}
_SPAN_ID_PREFIX = "otel-"  # the event ids of rows that came as OTLP spans (``POST /v1/traces``)


def _ms_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        log.warning("%s is not a number of milliseconds; using %s", name, default)
        return default
    return value if value > 0 else default


def _resource() -> Resource:
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "mcpmeter-collector"}))
    return resource


class _CountingSpanExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, count: Callable[[str, str], None]) -> None:
        self.inner, self.count = inner, count

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        self.count("traces", "success" if result == SpanExportResult.SUCCESS else "failure")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class OtlpExporter:
    def __init__(self, state: MetricsState, signals: frozenset[str], project_name: Callable[[int], str] | None = None) -> None:
        self.state = state
        self.signals = frozenset() if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" else signals
        self.project_name = project_name or str
        self.interval = _ms_env("OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000
        self.timeout_ms = _ms_env("OTEL_METRIC_EXPORT_TIMEOUT", 30000)
        self.resource = _resource()
        self._outcomes: dict[tuple[str, str], int] = {(s, r): 0 for s in self.signals for r in ("success", "failure")}
        self._outcome_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = OTLPMetricExporter() if "metrics" in self.signals else None
        self._spans = None
        if "traces" in self.signals:
            self._spans = BatchSpanProcessor(_CountingSpanExporter(OTLPSpanExporter(), self._count))
        self._resources: dict[str, Resource] = {}

    def outcomes(self) -> dict[tuple[str, str], int]:
        with self._outcome_lock:
            return dict(self._outcomes)

    def _count(self, signal: str, result: str) -> None:
        with self._outcome_lock:
            self._outcomes[(signal, result)] = self._outcomes.get((signal, result), 0) + 1

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._metrics is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mcpmeter-otlp-metrics", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_ms / 1000 + 5)
            self._thread = None
        if self._metrics is not None:
            self.export_metrics()  # the last counts, so a clean shutdown loses nothing
            self._metrics.shutdown()
        if self._spans is not None:
            self._spans.shutdown()  # flushes what is queued

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.export_metrics()

    # ---- metrics --------------------------------------------------------------------------------

    def export_metrics(self) -> bool:
        assert self._metrics is not None
        try:
            data = self.metrics_data()
            result = self._metrics.export(data, timeout_millis=self.timeout_ms)
        except Exception as exc:  # never let an exporter problem reach the writer or the loop
            log.warning("OTLP metric export failed: %s", exc)
            result = MetricExportResult.FAILURE
        ok = result == MetricExportResult.SUCCESS
        self._count("metrics", "success" if ok else "failure")
        return ok

    def metrics_data(self) -> MetricsData:
        start = int(self.state.started * 1e9)
        now = time.time_ns()
        merged: dict[str, tuple[Family, list]] = {}
        for project_id, snapshot in sorted(self.state.projects().items()):
            for family in project_families(self.project_name(project_id), snapshot):
                if family.type == "gauge":
                    continue
                entry = merged.setdefault(family.name, (family, []))
                entry[1].extend(self._points(family, start, now))
        metrics = []
        for name, (family, points) in merged.items():
            if not points:
                continue
            if family.type == "histogram":
                otel_name = _SEMCONV_NAME if name == "mcp_server_operation_duration_seconds" else name
                data: Any = Histogram(points, AggregationTemporality.CUMULATIVE)
                metrics.append(Metric(otel_name, family.documentation, "s", data))
            else:
                data = Sum(points, AggregationTemporality.CUMULATIVE, True)
                metrics.append(Metric(family.exposed_name, family.documentation, "", data))
        return MetricsData([ResourceMetrics(self.resource, [ScopeMetrics(_SCOPE, metrics, "")], "")])

    @staticmethod
    def _points(family: Family, start: int, now: int) -> list:
        semconv = family.name == "mcp_server_operation_duration_seconds"
        names = family.label_names
        bounds = [b / 1000 for b in family.bounds_ms]
        points: list[HistogramDataPoint | NumberDataPoint] = []
        for values, value in family._series.items():
            attrs = {}
            for n, v in zip(names, family.const_values + tuple(values)):
                if semconv:
                    if v == "":
                        continue  # the convention leaves an attribute out rather than empty
                    n = _SEMCONV_ATTRS.get(n, n)
                attrs[n] = v
            if family.type == "histogram":
                points.append(HistogramDataPoint(attrs, start, now, value[1], value[0] / 1000, list(value[2:]),
                                                 bounds, None, None))  # type: ignore[arg-type]  # OTLP min/max are optional; the SDK types them float
            else:
                points.append(NumberDataPoint(attrs, start, now, value))
        return points

    # ---- spans ----------------------------------------------------------------------------------

    @property
    def forwards_spans(self) -> bool:
        return self._spans is not None

    def committed(self, commit: Commit) -> None:
        """A writer subscriber (its thread): forward the stored rows that came as OTLP spans."""
        for batch in commit.projects.values():
            spans = [r for r in batch.rows if r.event_id.startswith(_SPAN_ID_PREFIX)]
            if spans:
                self.forward_spans(spans)

    def forward_spans(self, rows: list[Row]) -> None:
        processor = self._spans
        if processor is None:
            return
        for row in rows:
            try:
                span = self._span(row)
            except (ValueError, IndexError):
                continue
            if span is not None:
                processor.on_end(span)

    def _span(self, row: Row) -> ReadableSpan | None:
        parts = row.event_id.split("-")
        if len(parts) != 3 or len(parts[1]) != 32 or len(parts[2]) != 16:
            return None
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
        kind, tool, server = row.kind, row.tool, row.server
        method = METHOD_FOR_KIND.get(kind, kind)
        attributes: dict[str, Any] = {"mcp.method.name": method}
        if tool:
            attributes["gen_ai.tool.name"] = tool
            attributes["gen_ai.operation.name"] = "execute_tool"
        for value, key in ((row.session_id, "mcp.session.id"), (row.protocol_version, "mcp.protocol.version"),
                           (row.error_type, "error.type"), (row.client_name, "mcp.client.name")):
            if value:
                attributes[key] = value
        start = row.ts * 1_000_000
        duration = row.duration_ms or 0.0
        failed = row.ok == 0
        status = Status(StatusCode.ERROR, row.error_message or None) if failed else Status(StatusCode.UNSET)
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        resource = self._resources.get(server)
        if resource is None:
            version = row.server_version
            attrs = {"service.name": server, **({"service.version": version} if version else {})}
            resource = self._resources[server] = Resource(attrs)
            if len(self._resources) > 10_000:
                self._resources.clear()
        return ReadableSpan(
            name=f"{method} {tool}" if tool else method, context=context, resource=resource,
            attributes=attributes, kind=SpanKind.SERVER, status=status, start_time=start,
            end_time=start + int(duration * 1_000_000), instrumentation_scope=_SCOPE,
        )
