"""GET /v1/alerts: the alerts of ``analytics/alerts.py`` firing now, for the dashboard's banner.

The same definitions as the Prometheus rules (``deploy/prometheus/alerts.yml``): the usage
alerts (error budget burning per server and tool, a server gone silent) of the caller's
project, computed from the store; the ingest alert (requests refused) from this collector's
own answers over the last minutes, shown to the operators' project only (like the admin
panel's collector-wide figures). Read scope.
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics import alerts
from ...analytics.periods import iso
from .admin import is_operator


async def get_alerts(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "read")
    now_ms = int(time.time() * 1000)
    firing = await run_in_threadpool(alerts.evaluate, collector.store, principal.project.id, now_ms)
    operator = is_operator(principal)
    if operator and collector.metrics.enabled:
        firing += collector.metrics.recent.firing()
    return JSONResponse({"project": principal.project.name, "at": iso(now_ms), "firing": firing,
                         "ingest_checked": operator and collector.metrics.enabled, "definitions": alerts.describe()})


routes = [Route("/v1/alerts", get_alerts, methods=["GET"])]
