"""GET /v1/usage/*: read-scoped analytics endpoints, one per question."""

from __future__ import annotations

from typing import Any, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...analytics import queries
from ...analytics.periods import window
from ...analytics.queries import Query
from ...analytics.report import build_report
from ...exceptions import ValidationError

COMMON = {"period", "from", "to", "server", "tool", "client"}


def parse_query(request: Request, project_id: int, extra: set[str] = frozenset()) -> tuple[Query, dict[str, str]]:
    params = dict(request.query_params)
    unknown = set(params) - COMMON - extra
    if unknown:
        raise ValidationError(f"unknown query parameter(s): {', '.join(sorted(unknown))}",
                              hint=f"allowed: {', '.join(sorted(COMMON | extra))}")
    win = window(params.get("period"), params.get("from"), params.get("to"), grain=params.get("grain"))
    return Query(project_id, win, params.get("server"), params.get("tool"), params.get("client")), params


def endpoint(answer: Callable[..., dict[str, Any]], extra: set[str] = frozenset(), **options) -> Callable:
    async def handler(request: Request) -> Response:
        collector = request.app.state.collector
        principal = collector.auth.authenticate(request, "read")
        q, params = parse_query(request, principal.project.id, extra | {"grain"})
        result = await run_in_threadpool(answer, collector.store, q, **options)
        return JSONResponse({"project": principal.project.name, **result})

    return handler


routes = [
    Route("/v1/usage/summary", endpoint(queries.summary), methods=["GET"]),
    Route("/v1/usage/tools", endpoint(queries.tools), methods=["GET"]),
    Route("/v1/usage/timeseries", endpoint(queries.timeseries), methods=["GET"]),
    Route("/v1/usage/users", endpoint(queries.users), methods=["GET"]),
    Route("/v1/usage/errors", endpoint(queries.errors), methods=["GET"]),
    Route("/v1/usage/clients", endpoint(queries.clients), methods=["GET"]),
    Route("/v1/usage/sessions", endpoint(queries.sessions), methods=["GET"]),
    Route("/v1/usage/report", endpoint(build_report), methods=["GET"]),
]
