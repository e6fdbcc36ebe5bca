"""POST /v1/measurements and /v1/server-events (reading them back is a usage question: analytics/questions.py)."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...exceptions import BatchError, BodyTooLarge, Unstorable
from ...measurements import measurement_rows, server_event_rows
from .ingest import read_body, unstorable
from .responses import error


async def _ingest(request: Request, parse, store_rows) -> Response:
    """The whole request is stored, or nothing of it (an error answer saying why)."""
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "ingest")
    names = collector.names
    if not names.loaded(principal.project.id):
        await run_in_threadpool(names.load, principal.project.id)
    try:
        body = await read_body(request, collector.config.max_body_bytes, principal)
    except BodyTooLarge:
        return error(413, f"the body is larger than {collector.config.max_body_bytes} bytes", "send smaller batches")
    except BatchError as exc:  # not readable as sent (gzip, nesting): 400, as on /v1/events
        return error(400, str(exc), exc.hint or "see the schema at /openapi.json")
    try:
        rows = parse(body, collector.config.limits)
    except BatchError as exc:
        return error(422, str(exc), "see the schema at /openapi.json")
    for server in sorted({row[1] for row in rows}):  # a key bound to servers
        if (why := principal.refused_server(server)) is not None:
            return error(403, f"{why}; nothing of this request was stored", "use the key made for that server")
    refused = names.admit_servers(principal.project.id, {row[1] for row in rows})  # the name caps, as for events
    if refused is not None:
        return error(422, f"{refused}; nothing of this request was stored", "use the project's existing server names")
    try:
        result = await run_in_threadpool(store_rows, collector.store, principal.project.id, rows)
    except Unstorable as exc:
        return unstorable(exc)
    return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates, "rejected": []})


def with_server_id(body: bytes) -> bytes:
    """The MCP directory seed names the server ``server_id``: the body with it as ``server``."""
    if b'"server_id"' not in body:
        return body
    try:
        parsed = json.loads(body)
    except ValueError:
        return body  # measurement_rows reports it
    if isinstance(parsed, dict) and "server_id" in parsed:
        server_id = parsed.pop("server_id")
        if parsed.setdefault("server", server_id) != server_id:
            raise BatchError("server_id and server name different servers; give one of them")
        return json.dumps(parsed).encode()
    return body


async def post_measurements(request: Request) -> Response:
    """Also ``POST /functions/v1/metrics-collect`` (the MCP directory's path: ``directory.py``)."""
    return await _ingest(request, lambda body, limits: measurement_rows(with_server_id(body), limits),
                         lambda store, p, rows: store.ingest_measurements(p, rows))


async def post_server_events(request: Request) -> Response:
    return await _ingest(request, server_event_rows, lambda store, p, rows: store.ingest_server_events(p, rows))


routes = [
    Route("/v1/measurements", post_measurements, methods=["POST"]),
    Route("/v1/server-events", post_server_events, methods=["POST"]),
]
