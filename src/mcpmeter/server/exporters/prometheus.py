"""``GET /metrics``: the Prometheus text format, from custom prometheus_client Collectors.

Every scrape goes through a registry of this app (never the global default one): the
project collector of the scraping key's project, and for the collector's operators only,
the collector-health collector and prometheus_client's ``ProcessCollector`` (figures of
every tenant together; a project's key never sees them). Our families are ``Family`` objects: they render
straight to the text format with cached label strings (the generic per-sample exposition of
prometheus_client costs ~12 µs a sample, far too slow for a few thousand histogram series),
and still offer ``samples`` to any generic consumer, so ``prometheus_client.generate_latest``
on the same registry gives the same exposition (a test holds the two equal).
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from operator import add
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from ... import __version__
from .aggregate import COMMIT_BOUNDS_MS, GATEWAY_BOUNDS_MS, SEMCONV_BOUNDS_MS, MetricsState, ProjectMetrics, new_hist, observe

if TYPE_CHECKING:
    from ..collector.app import Collector as MeterCollector
    from .otlp_export import OtlpExporter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HTTP_BOUNDS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
_GZIP_ABOVE = 64 * 1024


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class LabelCache:
    """``name="value",...`` strings per family and label values: built once per series, not per scrape."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._size = 0
        self._families: dict[tuple[str, ...], dict[tuple, Any]] = {}

    def family(self, names: tuple[str, ...]) -> dict[tuple, Any]:
        """The cache of one family: label values -> label string (or, for ``("#buckets", ...)``, bucket lines)."""
        cache = self._families.get(names)
        if cache is None:
            cache = self._families[names] = {}
        return cache

    def build(self, cache: dict[tuple, str], names: tuple[str, ...], values: tuple) -> str:
        if self._size >= self.limit:
            for family in self._families.values():
                family.clear()
            self._size = 0
        self._size += 1
        text = cache[values] = ",".join(f'{n}="{_escape(str(v))}"' for n, v in zip(names, values))
        return text


class Family(Metric):
    """One metric family: ``series`` maps label values (in ``labels`` order) to a number, or
    for histograms to ``[sum_ms, count, bucket_0 .. bucket_n]`` (non-cumulative, milliseconds)."""

    def __init__(self, name: str, documentation: str, typ: str, labels: Sequence[str],
                 series: dict[tuple, Any], bounds_ms: Sequence[float] = (), const: Sequence[tuple[str, str]] = ()) -> None:
        self._series = series
        super().__init__(name, documentation, typ)
        self.const_names = tuple(n for n, _ in const)
        self.const_values = tuple(v for _, v in const)
        self.label_names = self.const_names + tuple(labels)
        self.bounds_ms = tuple(bounds_ms)
        self.les = (*(floatToGoString(b / 1000) for b in self.bounds_ms), "+Inf")

    @property
    def samples(self) -> list[Sample]:
        return list(self._samples())

    @samples.setter
    def samples(self, value: list) -> None:  # Metric.__init__ assigns [] ; the series are the samples
        pass

    @property
    def exposed_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name

    def _samples(self) -> Iterator[Sample]:
        for values, value in self._series.items():
            labels = dict(zip(self.label_names, self.const_values + tuple(values)))
            if self.type != "histogram":
                yield Sample(self.exposed_name, labels, value, None, None)
                continue
            for le, count in zip(self.les, accumulate(value[2:])):
                yield Sample(self.name + "_bucket", {**labels, "le": le}, count, None, None)
            yield Sample(self.name + "_count", labels, value[1], None, None)
            yield Sample(self.name + "_sum", labels, value[0] / 1000, None, None)

    def render(self, out: list[str], labelstr: LabelCache) -> None:
        name = self.exposed_name
        doc = self.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {self.type}\n")
        names, const = self.label_names, self.const_values
        cache = labelstr.family(names)
        get = cache.get
        if self.type != "histogram":
            for values, value in self._series.items():
                values = const + values
                ls = get(values)
                if ls is None:
                    ls = labelstr.build(cache, names, values)
                out.append(f"{name}{{{ls}}} {_number(value)}\n" if ls else f"{name} {_number(value)}\n")
            return
        les = self.les
        prefixes: dict[tuple, list[str]] = labelstr.family(("#buckets", name, *names))  # 'name_bucket{labels,le="0.005"} ' per bucket
        for values, hist in self._series.items():
            values = const + values
            ls = get(values)
            if ls is None:
                ls = labelstr.build(cache, names, values)
            bucket_lines = prefixes.get(values)
            if bucket_lines is None:
                bucket = f"{name}_bucket{{{ls},le=\"" if ls else f"{name}_bucket{{le=\""
                bucket_lines = prefixes[values] = [f'{bucket}{le}"}} ' for le in les]
            out.append("\n".join(map(add, bucket_lines, map(str, accumulate(hist[2:])))))
            ls = _braced(ls)
            out.append(f"\n{name}_count{ls} {hist[1]}\n{name}_sum{ls} {_number(hist[0] / 1000)}\n")


def _braced(labels: str) -> str:
    return f"{{{labels}}}" if labels else ""


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return floatToGoString(value)


class _Single:
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self.metric]


def exposition(registry: Any, labelstr: LabelCache | None = None) -> bytes:
    """The text format of everything ``registry`` collects: ``Family`` objects on the fast path,
    anything else (prometheus_client's own collectors) through prometheus_client's exposition."""
    labelstr = labelstr if labelstr is not None else LabelCache()
    out: list[str] = []
    for metric in registry.collect():
        if isinstance(metric, Family):
            metric.render(out, labelstr)
        else:
            out.append(generate_latest(_Single(metric)).decode())
    return "".join(out).encode()


# ---- the collectors ---------------------------------------------------------------------------


def project_families(project_name: str, p: ProjectMetrics | None) -> list[Family]:
    """The MCP series of one project (the gateway's names, the OpenTelemetry MCP convention's
    operation duration, and what the project's SDKs reported dropping)."""
    const = (("project", project_name),)
    p = p or ProjectMetrics(0)
    if p.gateway.compat:  # MCPMETER_METRICS_LABELS=gateway
        return [*p.gateway.mcp_families(p, const), *_own_families(p, const)]
    return [
        Family("mcp_tool_executions", "Tool calls stored by this collector process (duplicates not counted).",
               "counter", ("server", "tool", "success"), p.tool_calls, const=const),
        Family("mcp_tool_execution_duration_seconds", "Duration of tool calls.", "histogram",
               ("server", "tool"), p.tool_duration, GATEWAY_BOUNDS_MS, const),
        Family("mcp_tool_discovery", "tools/list requests (tool discovery).", "counter",
               ("server", "success"), p.discovery, const=const),
        Family("mcp_discovery_duration_seconds", "Duration of tools/list requests.", "histogram",
               ("server",), p.discovery_duration, GATEWAY_BOUNDS_MS, const),
        Family("mcp_auth_requests", "Authentication requests reported as `auth` events.", "counter",
               ("server", "method", "success"), p.auth, const=const),
        Family("mcp_auth_request_duration_seconds", "Duration of authentication requests (`auth` events).",
               "histogram", ("server", "method"), p.auth_duration, GATEWAY_BOUNDS_MS, const),
        Family("mcp_protocol_latency_seconds",
               "Time between protocol steps of a session: initialize_to_tools_list, tools_list_to_tools_call, "
               "initialize_to_tools_call.", "histogram", ("server", "step"), p.protocol, GATEWAY_BOUNDS_MS, const),
        *p.gateway.extra_families(const),
        *_own_families(p, const),
    ]


def _own_families(p: ProjectMetrics, const: tuple) -> list[Family]:
    """The convention's operation duration and mcpmeter's own series of a project (both label sets)."""
    return [
        Family("mcp_server_operation_duration_seconds",
               "MCP request duration as observed by the server (OpenTelemetry MCP semantic conventions).",
               "histogram", ("server", "mcp_method_name", "gen_ai_tool_name", "error_type"), p.operation,
               SEMCONV_BOUNDS_MS, const),
        Family("mcpmeter_sdk_dropped_events", "Events recorders reported dropping (`sdk.dropped` events), by reason.",
               "counter", ("server", "reason"), p.dropped, const=const),
        Family("mcpmeter_metrics_overflow_events", "Events counted under __other__ because the project has "
               "MCPMETER_METRICS_MAX_SERIES (server, tool) series already.", "counter", (), {(): p.overflow}, const=const),
        Family("mcpmeter_metrics_series", "Distinct (server, tool) label pairs of the project.", "gauge", (),
               {(): len(p.pairs)}, const=const),
    ]


class ProjectCollector(Collector):
    """The MCP series of one project, as THIS collector process stored them."""

    def __init__(self, exporter: PrometheusExporter, project_id: int, project_name: str) -> None:
        self.exporter, self.project_id, self.project_name = exporter, project_id, project_name

    def collect(self) -> Iterable[Metric]:
        return project_families(self.project_name, self.exporter.state.project(self.project_id))


class HealthCollector(Collector):
    """The collector process itself: ingest, writer, storage, auth checks, HTTP requests."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterable[Metric]:
        e = self.exporter
        c = e.collector
        process = e.state.process()
        with e.http_lock:
            requests = dict(e.http_requests)
            durations = {k: v[:] for k, v in e.http_durations.items()}
        families = [
            Family("mcpmeter_collector_info", "The collector's version.", "gauge", ("version",), {(__version__,): 1}),
            Family("mcpmeter_collector_start_time_seconds", "When this collector process started (Unix time).",
                   "gauge", (), {(): float(e.state.started)}),
            Family("mcpmeter_events_ingested", "Events this process stored (new events only).", "counter", (),
                   {(): process["ingested"]}),
            Family("mcpmeter_events_duplicate", "Events this process received that were already stored.", "counter",
                   (), {(): process["duplicates"]}),
            Family("mcpmeter_events_rejected", "Events this process rejected as invalid.", "counter", (),
                   {(): c.counters.get("rejected", 0)}),
            Family("mcpmeter_ingest_requests_failed", "Ingest requests answered 503 (overloaded or store unavailable).",
                   "counter", (), {(): c.counters.get("requests_failed", 0)}),
            Family("mcpmeter_writer_pending_events", "Events waiting for the writer (queue depth).", "gauge", (),
                   {(): c.writer.pending_rows}),
            Family("mcpmeter_writer_commits", "Transactions the writer committed.", "counter", (),
                   {(): process["commits"]}),
            Family("mcpmeter_storage_errors", "Writer transactions that failed (nothing of them was acknowledged).",
                   "counter", (), {(): c.writer.errors}),
            Family("mcpmeter_storage_commit_duration_seconds", "Duration of the writer's transactions.", "histogram",
                   (), {(): process["commit_duration"]}, COMMIT_BOUNDS_MS),
            Family("mcpmeter_auth_checks", "API key checks by this collector, by scope asked and result.", "counter",
                   ("scope", "result"), c.auth.check_counts()),
            Family("mcpmeter_http_requests", "HTTP requests answered, by route and status code.", "counter",
                   ("route", "code"), requests),
            Family("mcpmeter_http_request_duration_seconds", "Time to answer HTTP requests, by route.", "histogram",
                   ("route",), durations, HTTP_BOUNDS_MS),
        ]
        size = e.storage_size()
        if size is not None:
            families.append(Family("mcpmeter_storage_size_bytes", "Size of the store on disk (with its WAL).",
                                   "gauge", (), {(): size}))
        if e.otlp is not None:
            families.append(Family("mcpmeter_otlp_exports", "OTLP exports to OTEL_EXPORTER_OTLP_* endpoints, by "
                                   "signal and result.", "counter", ("signal", "result"), e.otlp.outcomes()))
        return families


class _Scrape:
    """A registry-like view: one project's series, plus the app registry (health, process) when given."""

    def __init__(self, project: Collector, registry: CollectorRegistry | None) -> None:
        self.project, self.registry = project, registry

    def collect(self) -> Iterator[Metric]:
        yield from self.project.collect()
        if self.registry is not None:
            yield from self.registry.collect()


class PrometheusExporter:
    def __init__(self, collector: MeterCollector, state: MetricsState, otlp: OtlpExporter | None = None) -> None:
        self.collector = collector
        self.state = state
        self.otlp = otlp
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HealthCollector(self))
        self.registry.register(ProcessCollector(registry=None))
        self.labelstr = LabelCache()
        self.http_lock = threading.Lock()
        self.http_requests: dict[tuple[str, str], int] = {}
        self.http_durations: dict[tuple[str], list] = {}

    def registry_for(self, project_id: int, project_name: str, operator: bool = True) -> _Scrape:
        """What one scrape shows: the project's series, and the collector's own for an operator."""
        return _Scrape(ProjectCollector(self, project_id, project_name), self.registry if operator else None)

    def render(self, project_id: int, project_name: str, gzip_ok: bool = False, operator: bool = False) -> tuple[bytes, bool]:
        body = exposition(self.registry_for(project_id, project_name, operator), self.labelstr)
        if gzip_ok and len(body) > _GZIP_ABOVE:
            return gzip.compress(body, compresslevel=1), True
        return body, False

    def storage_size(self) -> int | None:
        return self.collector.store.size_bytes()

    def http_done(self, route: str, status: int, seconds: float) -> None:
        with self.http_lock:
            key = (route, str(status))
            self.http_requests[key] = self.http_requests.get(key, 0) + 1
            hist = self.http_durations.get((route,))
            if hist is None:
                hist = self.http_durations[(route,)] = new_hist(HTTP_BOUNDS_MS)
            observe(hist, HTTP_BOUNDS_MS, seconds * 1000)
