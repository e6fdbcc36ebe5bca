"""Exporters: what a collector stored, as Prometheus metrics (``GET /metrics``) and as OTLP.

A scrape shows the caller's project's series; the collector-wide ones (every tenant's
ingest, HTTP requests by route, storage, the process) only to the collector's operators
(``dashboard.admin.is_operator``: callers of project ``default``, e.g. ``MCPMETER_METRICS_KEY``).

``Metrics`` is the one object the collector app holds: the state that counts what each commit
really inserted (``state.committed``, which the collector subscribes to its writer when
metrics are on), the ``/metrics`` route, a request-timing middleware, and the optional OTLP
forwarder (``otlp``; its ``committed`` forwards spans, also subscribed by the collector).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import settings
from ...analytics.alerts import RecentRequests
from .aggregate import MetricsState
from .prometheus import CONTENT_TYPE, PrometheusExporter

if TYPE_CHECKING:
    from ..collector.app import Collector
    from .otlp_export import OtlpExporter

__all__ = ["Metrics", "MetricsConfig"]

METRICS_PATH = "/metrics"
_METRICS_PORT_PATHS = frozenset({METRICS_PATH, "/health"})


@dataclass
class MetricsConfig:
    enabled: bool = field(default_factory=lambda: settings.get("MCPMETER_METRICS"))
    max_series: int = field(default_factory=lambda: settings.get("MCPMETER_METRICS_MAX_SERIES"))
    labels: str = field(default_factory=lambda: settings.get("MCPMETER_METRICS_LABELS"))
    port: int | None = field(default_factory=lambda: settings.get("MCPMETER_METRICS_PORT"))
    otlp_export: frozenset[str] = field(default_factory=lambda: settings.get("MCPMETER_OTLP_EXPORT") or frozenset())


class Metrics:
    """Everything metrics-related of one collector app."""

    def __init__(self, collector: Collector, config: MetricsConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self.state = MetricsState(config.max_series, config.labels)
        self.otlp: OtlpExporter | None = None
        if self.enabled and config.otlp_export:
            from .otlp_export import OtlpExporter

            self.otlp = OtlpExporter(self.state, config.otlp_export, self._project_name)
        self.store = collector.store
        self._names: dict[int, str] = {}
        self.prometheus = PrometheusExporter(collector, self.state, self.otlp)
        self.recent = RecentRequests()  # ingest answers per minute: the dashboard's ingest alert

    def _project_name(self, project_id: int) -> str:
        name = self._names.get(project_id)
        if name is None:
            project = self.store.project_by_id(project_id)
            name = self._names[project_id] = project.name if project is not None else str(project_id)
        return name

    @property
    def routes(self) -> list[Route]:
        return [Route(METRICS_PATH, self.endpoint, methods=["GET"])]

    @property
    def middleware(self) -> list[Middleware]:
        return [Middleware(RequestMetrics, metrics=self)]

    def start(self) -> None:
        if self.otlp is not None:
            self.otlp.start()

    def stop(self) -> None:
        if self.otlp is not None:
            self.otlp.stop()

    async def endpoint(self, request: Request) -> Response:
        from ..dashboard.admin import is_operator  # (the dashboard imports the collector, which imports this)

        collector: Collector = request.app.state.collector
        principal = collector.auth.authenticate(request, "read")
        if not self.enabled:
            return JSONResponse({"error": "metrics are turned off on this collector", "hint": "unset MCPMETER_METRICS=false"},
                                status_code=404)
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
        body, gzipped = await run_in_threadpool(self.prometheus.render, principal.project.id, principal.project.name, gzip_ok,
                                                is_operator(principal))
        headers = {"Content-Encoding": "gzip"} if gzipped else None
        return Response(body, media_type=CONTENT_TYPE, headers=headers)


class RequestMetrics:
    """Times every HTTP request by route (a bounded set: the app's own paths, else ``other``),
    and on the metrics port answers only ``/metrics`` and ``/health``."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.port = metrics.config.port
        self._routes: frozenset[str] | None = None

    def _route(self, scope: dict) -> str:
        if self._routes is None:
            app = scope.get("app")
            self._routes = frozenset(getattr(r, "path", "") for r in getattr(app, "routes", ()))
        path = scope.get("path", "")
        return path if path in self._routes else "other"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        server = scope.get("server")
        on_metrics_port = self.port is not None and server and server[1] == self.port
        if scope["type"] == "websocket" and on_metrics_port:  # no live feed on the metrics port either
            await send({"type": "websocket.close", "code": 1008, "reason": "only /metrics and /health are served here"})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if on_metrics_port and (scope.get("path") not in _METRICS_PORT_PATHS or scope.get("method") == "POST"):
            response = JSONResponse({"error": "only /metrics and /health are served on the metrics port",
                                     "hint": "use the collector's main port for the API"}, status_code=404)
            await response(scope, receive, send)
            return
        if (scope.get("path") == METRICS_PATH and scope.get("method") != "POST") or not self.metrics.enabled:
            await self.app(scope, receive, send)  # scrapes are not timed: they would swamp the routes that matter
            return
        start = time.perf_counter()
        status = 500

        async def timed_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = self._route(scope)
            self.metrics.prometheus.http_done(route, status, time.perf_counter() - start)
            self.metrics.recent.add(route, status)
