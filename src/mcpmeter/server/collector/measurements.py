"""POST /v1/measurements and /v1/server-events; GET /v1/usage/measurements and /v1/usage/server-events."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics.periods import iso
from ...events import BatchError
from ...measurements import measurement_rows, server_event_rows
from .ingest import BodyTooLarge, read_body
from .responses import error
from .usage import parse_query


async def _ingest(request: Request, parse, store_rows) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "ingest")
    try:
        body = await read_body(request, collector.config.max_body_bytes, principal)
        rows = parse(body, collector.config.limits)
    except BodyTooLarge:
        return error(413, f"the body is larger than {collector.config.max_body_bytes} bytes", "send smaller batches")
    except BatchError as exc:
        return error(422, str(exc), "see the schema at /openapi.json")
    result = await run_in_threadpool(store_rows, collector.store, principal.project.id, rows)
    return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates, "rejected": []})


async def post_measurements(request: Request) -> Response:
    return await _ingest(request, measurement_rows, lambda store, p, rows: store.ingest_measurements(p, rows))


async def post_server_events(request: Request) -> Response:
    return await _ingest(request, server_event_rows, lambda store, p, rows: store.ingest_server_events(p, rows))


async def get_measurements(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "read")
    q, params = parse_query(request, principal.project.id, {"name", "grain"})
    rows = await run_in_threadpool(collector.store.measurement_days, q.filter, params.get("name"))
    series: dict[tuple, dict] = {}
    for day, server, name, kind, tags, count, total, low, high, last in rows:
        entry = series.setdefault((name, server, kind, tags), {
            "name": name, "server": server, "type": kind, "tags": json.loads(tags), "days": []})
        entry["days"].append({"day": iso(day)[:10], "count": count, "sum": total, "min": low, "max": high,
                              "avg": total / count, "last": last})
    return JSONResponse({"project": principal.project.name, **q.describe(), "series": list(series.values())})


async def get_server_events(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "read")
    q, _ = parse_query(request, principal.project.id, {"grain"})
    rows = await run_in_threadpool(collector.store.server_events, q.filter)
    return JSONResponse({"project": principal.project.name, **q.describe(), "events": [
        {"ts": iso(ts), "server": server, "type": kind, "version": version, "message": message,
         "attributes": json.loads(attrs) if attrs else None}
        for ts, server, kind, version, message, attrs in rows]})


routes = [
    Route("/v1/measurements", post_measurements, methods=["POST"]),
    Route("/v1/server-events", post_server_events, methods=["POST"]),
    Route("/v1/usage/measurements", get_measurements, methods=["GET"]),
    Route("/v1/usage/server-events", get_server_events, methods=["GET"]),
]
