"""The collector's ASGI application, and ``Collector``: every component it is made of, wired in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ... import settings
from ...events import Limits
from ...exceptions import AuthError, MCPMeterError, StorageError
from ...retention import ingest_limits
from ...storage.base import AdminStore
from .. import dashboard
from ..dashboard.live import Live
from ..dashboard.sessions import Sessions
from ..exporters import Metrics, MetricsConfig
from ..oidc import OidcConfig, People
from ..oidc import routes as oidc_routes
from . import admin_security, directory, gateway, ingest, measurements, otlp, usage
from .auth import Authenticator
from .crosssite import CrossSiteGuard
from .inputs import RefuseNul
from .openapi import openapi_schema
from .responses import error
from .security import NameCaps, RateLimited, RateLimits, SignatureChecker
from .writer import Writer

log = logging.getLogger("mcpmeter.server.collector")


@dataclass
class CollectorConfig:
    local_trust: bool = field(default_factory=lambda: settings.get("MCPMETER_LOCAL_TRUST"))
    max_body_bytes: int = field(default_factory=lambda: settings.get("MCPMETER_MAX_BODY_BYTES"))
    limits: Limits = field(default_factory=ingest_limits)  # no event older than the retention (retention.py)
    signature_tolerance: int = field(default_factory=lambda: settings.get("MCPMETER_SIGNATURE_TOLERANCE_SECONDS"))
    rate_limit_per_key: int = field(default_factory=lambda: settings.get("MCPMETER_RATE_LIMIT_PER_KEY"))
    rate_limit_per_ip: int = field(default_factory=lambda: settings.get("MCPMETER_RATE_LIMIT_PER_IP"))
    rate_limit_per_project: int = field(default_factory=lambda: settings.get("MCPMETER_RATE_LIMIT_PER_PROJECT"))
    max_servers: int = field(default_factory=lambda: settings.get("MCPMETER_MAX_SERVERS_PER_PROJECT"))
    max_tools: int = field(default_factory=lambda: settings.get("MCPMETER_MAX_TOOLS_PER_PROJECT"))
    oidc: OidcConfig | None = field(default_factory=lambda: OidcConfig.from_settings())
    key_touch_interval: float = 5.0
    prune_interval: float = field(default_factory=lambda: float(settings.get("MCPMETER_PRUNE_INTERVAL_SECONDS")))
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


class Collector:
    """Every component of one collector app (what the handlers reach as ``request.app.state.collector``).

    Built here and nowhere else: no other module sets a component or a hook; the writer's
    commit subscribers are listed at the end.
    """

    def __init__(self, store: AdminStore, config: CollectorConfig) -> None:
        self.store = store
        self.config = config
        self.started = time.time()
        self.counters = {"accepted": 0, "duplicates": 0, "rejected": 0, "requests_failed": 0}
        self.writer = Writer(store)
        self.sessions = Sessions(store)  # dashboard sign-in: a cookie stands for a key (or a person); rows in the store
        self.people = People(store, config.oidc, self.sessions) if config.oidc is not None else None  # OpenID Connect sign-in
        limits = RateLimits(config.rate_limit_per_key, config.rate_limit_per_ip, config.rate_limit_per_project, store)
        self.auth = Authenticator(store, config.local_trust, limits, self.sessions, self.people)
        self.signatures = SignatureChecker(config.signature_tolerance)
        self.names = NameCaps(store, config.max_servers, config.max_tools)
        self.live = Live()  # /v1/live and the admin panel's ingest rate
        self.metrics = Metrics(self, config.metrics)  # /metrics, request timing, OTLP export
        # What happens with each commit, before its requests are answered:
        self.writer.subscribe(self.live.committed)
        if self.metrics.enabled:
            self.writer.subscribe(self.metrics.state.committed)  # /metrics and OTLP metric export
        if self.metrics.otlp is not None and self.metrics.otlp.forwards_spans:
            self.writer.subscribe(self.metrics.otlp.committed)  # OTLP span forwarding


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    collector: Collector = request.app.state.collector
    problems = []
    if not collector.writer.alive:
        problems.append("the writer thread is not running")
    try:
        await run_in_threadpool(collector.store.schema_version)
    except StorageError as exc:
        problems.append(str(exc))
    if problems:
        return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready", "pending_events": collector.writer.pending_rows})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_schema())


async def _handle_errors(request: Request, exc: Exception) -> Response:
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error(exc.status, str(exc), exc.hint, headers)
    if isinstance(exc, RateLimited):
        return error(429, str(exc), exc.hint, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, StorageError):
        log.error("storage error: %s", exc)
        return error(503, "the store is unavailable; nothing was stored", "retry later", {"Retry-After": "5"})
    if isinstance(exc, MCPMeterError):
        return error(400, str(exc), exc.hint)
    raise exc


def create_app(store: AdminStore, config: CollectorConfig | None = None) -> Starlette:
    collector = Collector(store, config or CollectorConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        collector.writer.start()
        collector.metrics.start()
        tasks = [asyncio.create_task(_touch_keys_forever(collector)), asyncio.create_task(_prune_forever(collector))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await run_in_threadpool(collector.writer.stop)
            await run_in_threadpool(collector.metrics.stop)
            with contextlib.suppress(StorageError):
                await run_in_threadpool(collector.auth.flush_last_used)

    routes = [
        Route("/v1/events", ingest.post_events, methods=["POST"]),
        Route("/v1/traces", otlp.post_traces, methods=["POST"]),
        *usage.routes,
        *measurements.routes,
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *collector.metrics.routes,  # GET /metrics: Prometheus
        Route("/metrics", gateway.post_metrics, methods=["POST"]),  # the MCP gateway's metrics-service API
        *directory.routes,  # /functions/v1/*: the MCP directory's metrics API
        *dashboard.routes(),  # /, /static, /v1/session, /v1/live, /v1/admin/*
        *admin_security.routes,  # /v1/admin/audit, key rotation, access grants, erasing a user
        *oidc_routes(collector),  # /v1/oidc/*: people's sign-in (when MCPMETER_OIDC_ISSUER is set)
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[*collector.metrics.middleware, Middleware(RefuseNul), Middleware(CrossSiteGuard)],  # refusals are timed and counted too
        exception_handlers={MCPMeterError: _handle_errors},
    )
    app.state.collector = collector
    return app


async def _touch_keys_forever(collector: Collector) -> None:
    while True:
        await asyncio.sleep(collector.config.key_touch_interval)
        try:
            await run_in_threadpool(collector.auth.flush_last_used)
        except StorageError as exc:
            log.warning("could not record key use: %s", exc)


async def _prune_forever(collector: Collector) -> None:
    """Enforce retention on a schedule (first run shortly after start)."""
    from ...retention import prune

    delay = min(60.0, collector.config.prune_interval)
    while True:
        await asyncio.sleep(delay)
        delay = collector.config.prune_interval
        try:
            removed = await run_in_threadpool(prune, collector.store)
            if any(removed.values()):
                log.info("pruned expired data: %s", {k: v for k, v in removed.items() if v})
        except StorageError as exc:
            log.warning("pruning failed (will retry): %s", exc)
