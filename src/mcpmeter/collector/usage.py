"""GET /v1/usage/*: read-scoped analytics endpoints."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..analytics.periods import window
from ..analytics.summary import summary
from ..exceptions import ValidationError

_SUMMARY_PARAMS = {"period", "from", "to", "server", "tool", "client"}


def _params(request: Request, allowed: set[str]) -> dict[str, str]:
    unknown = set(request.query_params) - allowed
    if unknown:
        raise ValidationError(f"unknown query parameter(s): {', '.join(sorted(unknown))}", hint=f"allowed: {', '.join(sorted(allowed))}")
    return dict(request.query_params)


async def get_summary(request: Request) -> Response:
    collector = request.app.state.collector
    principal = collector.auth.authenticate(request, "read")
    q = _params(request, _SUMMARY_PARAMS)
    win = window(q.get("period"), q.get("from"), q.get("to"))
    result = await run_in_threadpool(
        summary, collector.store, principal.project.id, win, q.get("server"), q.get("tool"), q.get("client")
    )
    result["project"] = principal.project.name
    return JSONResponse(result)
